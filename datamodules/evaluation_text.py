"""Which text a trained corpus checkpoint may be evaluated on: other text, tokenized with the run's tokenizer.

``validate``, ``test`` and ``predict`` may read a checkpoint on text none of whose files it trained on (by content
or by path: a file it trained on and edited since still holds text it trained on), with the run's own tokenizer.
An evaluation writes nothing into the run, so no receipt records that data: its scores are the command's output.
"""

from __future__ import annotations

import os
from pathlib import Path

from lit_psion.core.errors import DataManifestMismatch
from lit_psion.core.layout import RunLayout
from lit_psion.core.manifest import DataManifest


def trained_on_any_of(trained: DataManifest, current: DataManifest, ckpt_path: str | None) -> bool:
    """Whether ``current`` holds a file the checkpoint trained on (then it is held to the run's data, unchanged).

    Raises:
        DataManifestMismatch: other text under a path the run trained on (its split could hold out documents it
            trained on), or other text with another tokenizer (its token ids would mean other text).
    """
    if {source.sha256 for source in trained.sources} & {source.sha256 for source in current.sources}:
        return True
    given = {os.path.realpath(source.path): source.path for source in current.sources}  # ./a.txt, a link: a.txt
    if same := sorted(given[at] for source in trained.sources if (at := os.path.realpath(source.path)) in given):
        raise DataManifestMismatch(f"refusing to evaluate the checkpoint on {same[0]!r}: the run trained on a file "
                                   "of that path, whose content differs (edited since, or another file under the "
                                   "same relative path): its split could hold out text the run trained on; "
                                   "evaluate the run's data unchanged, or give other text under another path")
    if trained.tokenizer_digest != current.tokenizer_digest:
        ckpt = RunLayout.of(Path(ckpt_path or ".").parent.parent).tokenizer
        raise DataManifestMismatch(f"refusing to evaluate the checkpoint on other text with another tokenizer "
                                   f"({current.tokenizer_digest[:12]}..., it was trained with "
                                   f"{trained.tokenizer_digest[:12]}...): its token ids would mean other text; "
                                   f"give the run's own: --data.tokenizer_file "
                                   f"{ckpt if ckpt.is_file() else 'RUN_DIR/tokenizer.json'}")  # fmt: skip
    return False
