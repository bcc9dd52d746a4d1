"""What ``window init`` checks of a base and the program's settings before it writes anything: the LoRA shape
fits the base, the data builds with the base's tokenizer and fits its context, and no text held out here was the
base's training text (a base run's, or another program's whose revision it is)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

from lit_psion.core import read_json
from lit_psion.core.errors import ConfigError, DataError
from lit_psion.core.layout import RunLayout
from lit_psion.windows.program import TOKENIZER, Program, corpus


def check_lora(lora: dict[str, Any], decoder_config: dict[str, Any]) -> None:
    """The plan's LoRA targets exist in the base and its rank fits every targeted layer."""
    import torch

    from lit_psion.nn.decoder import Decoder, DecoderConfig
    from lit_psion.nn.lora import inject_lora

    with torch.device("meta"):  # unknown targets, or a rank above a targeted layer's dimension: one line, exit 2
        inject_lora(Decoder(DecoderConfig(**decoder_config)), lora["targets"], lora["rank"], 1.0)


def check_data(data: dict[str, Any], tokenizer: bytes, decoder_config: dict[str, Any], base: Path,
               checkpoint: Path, slices: tuple[int, int] = (1, 0)) -> None:  # fmt: skip
    """The data builds with the base's tokenizer, every character of it is known to that tokenizer, it holds the
    ``slices`` (slice_samples, contributors) one window needs, its context fits the base, and held-out text here was
    not training text of the base (same files, another split)."""
    import tempfile

    from lit_psion.core.manifest import DataManifest

    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / TOKENIZER).write_bytes(tokenizer)
        said = io.StringIO()  # what names the scratch copy of the tokenizer (gone at once) is said below, by the base
        try:
            with contextlib.redirect_stderr(said):
                built = corpus(Program(scratch), data)
                manifest = built.prepare()
        except DataError as error:  # the corpus names fit's flag; a program's data is set in its --config
            raise DataError(str(error).replace("(check --data.files)", "(check window.data.files in the --config; "
                                               "a relative path is from the current directory)")) from error
        finally:
            sys.stderr.write("".join(line for line in said.getvalue().splitlines(True) if scratch not in line))
        unknown = built.tokenizer.token_to_id("<|unk|>")
        if unknown is not None:
            counts = {name: int((built.samples(name).tokens == unknown).sum()) for name in ("train", "val")}
            if any(counts.values()):
                raise DataError(
                    f"the program's data holds {sum(counts.values())} token(s) the base's tokenizer does "
                    "not know (<|unk|>); train the base on this text, or give data in its alphabet"
                )
        samples, (slice_samples, contributors) = len(built.samples("train")), slices
        if samples // slice_samples < contributors:  # (plan refused it: a program that never ran a window)
            raise DataError(f"the program's data has {samples} training samples, {samples // slice_samples} slice(s) "
                            f"of slice_samples {slice_samples}, fewer than the {contributors} contributors a window "
                            "needs; give more text (data.files), or a smaller slice_samples or contributors")
    if built.block_size > decoder_config["block_size"]:
        raise ConfigError(f"data.block_size {built.block_size} exceeds the base's context "
                          f"{decoder_config['block_size']}; use at most that")  # fmt: skip
    for candidate in (base, checkpoint.parent.parent):
        layout = RunLayout.of(candidate)
        if layout.is_run() and layout.data_manifest.is_file():
            trained = DataManifest.from_json_dict(read_json(layout.data_manifest))
            shared = {s.sha256 for s in trained.sources} & {s.sha256 for s in manifest.sources}
            split = ("split_rule", "split_seed", "val_fraction", "test_fraction", "documents")
            if shared and any(getattr(trained, k) != getattr(manifest, k) for k in split):
                theirs = ", ".join(f"{k} {getattr(trained, k)!r}" for k in split)
                raise ConfigError(f"the base trained on the program's data with another split ({theirs}): text held "
                                  "out here was training text there; set data.split, data.val_fraction, "
                                  "data.test_fraction, data.seed and data.documents as the base run did")  # fmt: skip
            return
    _check_split_of_a_program(checkpoint.parent.parent, data)


def _check_split_of_a_program(root: Path, data: dict[str, Any]) -> None:
    """A base that is another program's revision was trained on that program's slices: held-out text here must not
    be its training text (the same files under another split)."""
    import inspect

    from lit_psion.datamodules.corpus import CorpusDataModule

    other = Program(root)
    if not other.exists():
        return
    theirs = other.settings().data
    defaults = {name: p.default for name, p in inspect.signature(CorpusDataModule).parameters.items()}
    keys = ("split", "seed", "val_fraction", "test_fraction", "documents")
    files = lambda d: {str(Path(f).resolve()) for f in ([d["files"]] if isinstance(d.get("files"), str)  # noqa: E731
                                                        else d.get("files") or [])}  # fmt: skip
    if files(theirs) & files(data) and any(theirs.get(k, defaults.get(k)) != data.get(k, defaults.get(k))
                                           for k in keys):  # fmt: skip
        said = ", ".join(f"{k} {theirs.get(k, defaults.get(k))!r}" for k in keys)
        raise ConfigError(f"the base is a revision of the window program {str(root)!r}, which trained on this data "
                          f"with another split ({said}): text held out here was training text there; set data.split, "
                          "data.val_fraction, data.test_fraction, data.seed and data.documents as it did")


def tokenizer_of(base: Path, checkpoint: Path) -> bytes:
    for candidate in (base / TOKENIZER, checkpoint.parent.parent / TOKENIZER):
        if candidate.is_file():
            return candidate.read_bytes()
    raise ConfigError(f"base {str(base)!r} has no {TOKENIZER} beside it; give the base run directory")
