"""How a window program is founded (``window init``): its tokenizer, revision 0 from the verified base, the pointer
at it, then ``program.json``, the commit point, which records revision 0's digest (``window verify`` holds
``revisions/base`` to it and to the base it was made from)."""

from __future__ import annotations

from pathlib import Path

from lit_psion.core import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_json
from lit_psion.core.checkpoint import verify_checkpoint
from lit_psion.core.errors import ConfigError, EvidenceError
from lit_psion.core.layout import RunLayout
from lit_psion.core.text import shell_words
from lit_psion.windows.program import BASE_REVISION, FORMAT_VERSION, PROGRAM, TOKENIZER, Program
from lit_psion.windows.settings import ProgramSettings


def init_program(root: Path, settings: ProgramSettings, base: str | Path) -> dict[str, str]:
    """Create a program under ``root`` from the verified base run or checkpoint ``base``: tokenizer, revision 0,
    the pointer at it, then ``program.json`` (settings), the commit point. Everything is checked before anything is
    written; an init cut short leaves no program, and running it again starts over.

    Raises:
        ConfigError: ``root`` already holds a program, is a file or a run directory; ``base`` is neither a run
            nor a checkpoint directory; the LoRA shape does not fit the base; the base trained on the program's
            data with another split (its training text would be held out here).
        EvidenceError: ``root`` holds windows but no ``program.json`` (exit 5).
        CheckpointError: the base does not verify, is not a DecoderLM, or carries adapters of its own.
        DataError: the data does not build, or holds text the base's tokenizer does not know.
    """
    from lit_psion.checkpoint_io import write_checkpoint
    from lit_psion.models.adapter_lm import load_base
    from lit_psion.windows.base_checks import check_data, check_lora, tokenizer_of

    program = Program(root)
    if program.exists() and not program.init_cut_short():
        raise ConfigError(f"{str(root)!r} already holds a window program; plan its next window with "
                          f"python -m lit_psion window plan {shell_words(root)}")  # fmt: skip
    if not program.exists() and (root / "windows").exists():
        raise EvidenceError(f"{str(root / PROGRAM)!r} is missing but {str(root)!r} holds windows; restore "
                            f"{PROGRAM} from a backup (a new program goes in a directory of its own)")  # fmt: skip
    if root.exists() and not root.is_dir():
        raise ConfigError(f"program root {str(root)!r} is a file; give a directory (it is created if missing)")
    if RunLayout.of(root).is_run():
        raise ConfigError(f"{str(root)!r} is a run directory; give the program a directory of its own")
    if not Path(base).exists():
        raise ConfigError(f"base {str(base)!r} does not exist; give a DecoderLM run directory (runs/<run_id>)")
    state, path, digest, _ = load_base(base)  # refuses an AdapterLM run: give the base it adapts
    check_lora(settings.lora, state["decoder_config"])
    tokenizer = tokenizer_of(Path(base), path)
    data = {**settings.data}
    data["files"] = [str(Path(f).resolve()) for f in ([data["files"]] if isinstance(data.get("files"), str)
                                                      else data.get("files", []))]  # fmt: skip
    slices = (settings.slice_samples, settings.contributors)  # one window's
    check_data(data, tokenizer, state["decoder_config"], Path(base), path, slices)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / TOKENIZER, tokenizer)
    revision_dir = root / BASE_REVISION
    write_checkpoint({"global_step": 0, "state_dict": state["state_dict"], "decoder_config": state["decoder_config"],
                      "model_signature": state.get("model_signature"),
                      "lit_psion": {"writer": "window init", "parent": digest}}, revision_dir)  # fmt: skip
    revision = verify_checkpoint(revision_dir)
    fixed = {**settings.to_json_dict(), "data": data}
    record = {"format_version": FORMAT_VERSION, "settings": fixed, "settings_sha256": sha256_json(fixed),
              "base": {"checkpoint_digest": digest, "path": str(path)}, "tokenizer_sha256": sha256_bytes(tokenizer),
              "revision_0": revision.manifest_sha256, "next_slice": 0}  # fmt: skip
    program.move_pointer(revision.manifest_sha256, BASE_REVISION, None)
    atomic_write_json(root / PROGRAM, record)  # the commit point: an init cut short before it has made no program
    return {"revision": revision.manifest_sha256, "base": digest}
