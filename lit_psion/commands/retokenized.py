"""doctor's deepest data check: a corpus run's sources tokenized again, from scratch, against its manifest's tokens.

A fit reads a warm token cache after a spot check (ids in the vocabulary, each split's first document): a cache
rewritten together with its record, every document but the first altered, passes it, and the run then trains on
those tokens and records their digests as its own. Only the sources, tokenized again with the run's tokenizer in a
cache nobody else writes, say what the run's text gives. doctor is not on a fit's path, so it pays for that.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Any

from lit_psion.core.audit import Verdict
from lit_psion.core.errors import DataError, LitPsionError
from lit_psion.core.layout import RunLayout
from lit_psion.core.manifest import DataManifest

CORPUS = ("lit_psion.datamodules.CorpusDataModule", "lit_psion.datamodules.corpus.CorpusDataModule")
"""The data class whose runs are tokenized again (the class paths a run's config.yaml may record for it)."""
VERDICT = "tokens"


def retokenized(layout: RunLayout, manifest: DataManifest, config: dict[str, Any]) -> Verdict:
    """The run's sources (found where a resume started here reads them) tokenized again with its tokenizer.json
    into a fresh cache, and the token digests that gives against ``manifest``'s.

    Args:
        config: the ``data`` section of the run's config.yaml (``class_path`` and ``init_args``).
    """
    if config.get("class_path") not in CORPUS:
        return Verdict(VERDICT, True, "not a corpus run's (nothing tokenized to compare)")
    from lit_psion.datamodules import CorpusDataModule

    settings = {**(config.get("init_args") or {}), "tokenizer_file": str(layout.tokenizer), "num_workers": 0}
    try:
        with tempfile.TemporaryDirectory(prefix="lit_psion-doctor-") as fresh, contextlib.redirect_stderr(
                io.StringIO()):  # (its warnings are the fit's to give)
            again = CorpusDataModule(**{**settings, "cache_dir": fresh})._prepare()
    except (LitPsionError, TypeError, ValueError, OSError) as error:  # asked for, and not done: not a pass
        code = error.exit_code if isinstance(error, LitPsionError) else DataError.exit_code
        return Verdict(VERDICT, False, f"the sources could not be tokenized again ({str(error).splitlines()[0][:160]})"
                       "; fix what it names, or run doctor without --tokens", code)  # fmt: skip
    differ = sorted(name for name in set(manifest.token_digests) | set(again.token_digests)
                    if manifest.token_digests.get(name) != again.token_digests.get(name))  # fmt: skip
    if differ:
        return Verdict(VERDICT, False, f"the sources tokenized again with the run's tokenizer give other {differ[0]} "
                       "tokens than the data manifest records: the run trained on tokens its text does not give (a "
                       "token cache altered before the run read it); train again from a cache only you write "
                       "(--data.cache_dir)", DataError.exit_code)  # fmt: skip
    return Verdict(VERDICT, True, f"the sources tokenized again give the manifest's {len(again.token_digests)} "
                   "split digests")  # fmt: skip
