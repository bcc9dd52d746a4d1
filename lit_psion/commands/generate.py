"""``python -m lit_psion generate PATH [--prompt TEXT]``: sample text from a trained decoder, verified first.

``PATH`` is any model lit_psion writes:

- a run directory (its pointed-to checkpoint; a sharded run's consolidated copy), with the run's
  ``tokenizer.json``; an AdapterLM run samples with its adapters on;
- a ``step-NNNNNN`` checkpoint directory (the tokenizer of the run it sits in, or ``--tokenizer``);
- a merged adapter directory (``adapter merge``'s ``model.safetensors`` + ``merge.json``; its sha256 is
  checked against ``merge.json``), with ``--tokenizer``;
- an adapter window program (its current revision, with the program's tokenizer).

Every weight is digest-checked before it is loaded. MOSAIC runs predict events instead
(``events predict``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from lit_psion.commands import CommandParser
from lit_psion.commands.records import recorded_model_class
from lit_psion.core import canonical_json, read_json, sha256_bytes
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, LitPsionError
from lit_psion.core.text import printable, shell_words

MERGE_RECORD = "merge.json"
MAX_TOKENS, MAX_SAMPLES = 100_000, 1024
"""The most tokens per sample and samples one command draws: each token is a forward pass on the CPU, and
every sample's ids are kept until the end."""


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion generate")
    parser.add_argument("path", type=Path, help="a run, checkpoint, merged adapter or window program directory")
    parser.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to sample (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1, help="independent samples (default 1)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer.json (default: the model's own)")
    parsed = parser.parse_args(args)
    for name, low, high in (("tokens", 1, MAX_TOKENS), ("samples", 1, MAX_SAMPLES), ("top_k", 1, None)):
        value = getattr(parsed, name)
        if value is not None and (value < low or (high is not None and value > high)):
            parser.error(f"--{name} must be in {low}..{high}, got {value}" if high is not None else
                         f"--{name} must be >= {low}, got {value}")  # fmt: skip
    if not math.isfinite(parsed.temperature) or parsed.temperature < 0:
        parser.error(f"--temperature must be a finite number >= 0, got {parsed.temperature}")
    if not 0 <= parsed.seed < 2**63:
        parser.error(f"--seed must be in 0..{2**63 - 1}, got {parsed.seed}")
    try:
        parsed.prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # bytes the shell passed that are not UTF-8 (kept as surrogates)
        byte = error.object[error.start].encode("utf-8", "surrogateescape")
        parser.error(f"--prompt is not UTF-8 text (byte {byte!r} at character {error.start}); give UTF-8 text")
    if not (parsed.path.exists() or parsed.path.is_symlink()):  # said before torch is imported
        _refuse_what_generate_does_not_read(parsed.path)
    texts = sample(parsed.path, parsed.prompt, parsed.tokens, parsed.temperature, parsed.top_k, parsed.seed,
                   parsed.samples, parsed.tokenizer)  # fmt: skip
    for number, text in enumerate(texts, 1):
        if len(texts) > 1:
            print(f"--- sample {number} of {len(texts)} ---")
        print(printable(text))


def sample(path: Path, prompt: str, tokens: int, temperature: float, top_k: int | None, seed: int, samples: int,
           tokenizer_file: Path | None) -> list[str]:  # fmt: skip
    """``samples`` continuations of ``prompt`` by the verified model at ``path``."""
    import torch
    from tokenizers import Tokenizer

    from lit_psion.datamodules.tokenizer import UNKNOWN

    model, own = load_decoder(path)
    tokenizer_path = tokenizer_file or own
    if tokenizer_file is not None and not tokenizer_file.is_file():
        raise ConfigError(f"--tokenizer {str(tokenizer_file)!r} is not a file; give the base run's tokenizer.json")
    recorded = _merged_tokenizer(path)
    if tokenizer_file is not None and recorded is not None and sha256_bytes(tokenizer_file.read_bytes()) != recorded:
        raise ConfigError(f"--tokenizer {str(tokenizer_file)!r} is not the tokenizer the merged model's base was "
                          f"trained with ({MERGE_RECORD} records sha256 {recorded[:16]}...): its ids would mean other "
                          "text; give the base run's tokenizer.json")  # fmt: skip
    if tokenizer_file is not None and own is not None and own.is_file() and \
            sha256_bytes(tokenizer_file.read_bytes()) != sha256_bytes(own.read_bytes()):
        raise ConfigError(f"--tokenizer {str(tokenizer_file)!r} is not the tokenizer {str(path)!r} was trained with "
                          f"({str(own)!r}): its ids would mean other text; leave --tokenizer out")  # fmt: skip
    if tokenizer_path is None or not tokenizer_path.is_file():
        raise ConfigError(f"no tokenizer for {str(path)!r}: give --tokenizer <the base run>/tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as error:  # tokenizers raises its own exception type for a malformed file
        raise ConfigError(f"{str(tokenizer_path)!r} is not a tokenizers JSON file ({error})") from error
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise ConfigError(f"tokenizer {str(tokenizer_path)!r} has {tokenizer.get_vocab_size()} tokens, the model "
                          f"{model.config.vocab_size}; give the tokenizer the model was trained with")  # fmt: skip
    encoding = tokenizer.encode(prompt)
    if unknown := _unknown(prompt, encoding, tokenizer.token_to_id(UNKNOWN)):
        print(f"lit_psion: warning: the tokenizer has no token for {', '.join(map(repr, unknown[:8]))} in --prompt "
              "(the model never saw it; it reads as unknown and prints as nothing)", file=sys.stderr)  # fmt: skip
    ids = encoding.ids or [0]
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids] * samples, dtype=torch.long)
    with torch.no_grad():
        out = model.eval().generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator)
    return [tokenizer.decode(row.tolist()) for row in out]


def _unknown(prompt: str, encoding: Any, unknown_id: int | None) -> list[str]:
    """The parts of ``prompt`` (once each, in order) the tokenizer encodes as its unknown token, or that no token
    covers: a character tokenizer knows only the characters of the text it was trained on."""
    spans = [span for token, span in zip(encoding.ids, encoding.offsets, strict=True) if token == unknown_id]
    covered = {i for start, end in encoding.offsets for i in range(start, end)}
    spans += [(i, i + 1) for i in range(len(prompt)) if i not in covered and not prompt[i].isspace()]
    return list(dict.fromkeys(prompt[start:end] for start, end in sorted(spans)))


def load_decoder(path: Path) -> tuple[Any, Path | None]:
    """The verified Decoder at ``path`` (adapters merged in) and the tokenizer that goes with it, if known."""
    from lit_psion.nn.decoder import Decoder, DecoderConfig

    if (path / MERGE_RECORD).is_file():
        return _merged(path)
    from lit_psion.windows.program import Program

    program, run = Program(path), None
    if program.exists():
        from lit_psion.windows.status import verify_program

        verify_program(path)  # the pointer is the last window's outcome, as `window verify` holds it (exit 4 or 5)
        pointer = program.pointer()
        tokenizer: Path | None = program.tokenizer()  # (it was used unchecked: text from another tokenizer)
        state = _load(program.revision(pointer["checkpoint"], pointer["revision"]))
    else:
        from lit_psion.runs import load_run

        _refuse_what_generate_does_not_read(path)
        run = load_run(path)
        run.check_records()  # its tokenizer above all: the one the data manifest recorded, or none
        state = run.state
        tokenizer = run.layout.tokenizer if run.layout is not None else None
    family = (recorded_model_class(run.layout) or "").rsplit(".", 1)[-1] if run and run.layout else ""
    if "decoder_config" not in state or family in NOT_TEXT:
        raise CheckpointError(f"{str(path)!r} holds no text decoder ({NOT_TEXT.get(family, NO_DECODER)})")
    model = Decoder(DecoderConfig(**state["decoder_config"]))
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    adapter = state.get("adapter")
    if adapter is not None:
        from lit_psion.nn.lora import inject_lora

        inject_lora(model, adapter["targets"], adapter["rank"], adapter["alpha"], check_rank=False)
    if missing := [k for k in model.load_state_dict(weights, strict=False).missing_keys]:
        raise CheckpointError(f"{str(path)!r} lacks weights the model needs ({', '.join(missing[:3])})")
    return model, tokenizer


NOT_TEXT = {
    "MosaicLM": "a MosaicLM run predicts events: python -m lit_psion events predict --ckpt RUN EVENTS.jsonl",
    "GraphCore": "a GraphCore run models dynamics, not text: evaluate it with `test --ckpt_path`",
}
"""Model families whose runs ``generate`` does not sample, and what to run instead."""
NO_DECODER = "its checkpoint records no decoder_config; give a DecoderLM or AdapterLM run"


def _refuse_what_generate_does_not_read(path: Path) -> None:
    """A path that is none of what ``generate`` reads (an exported adapter, a missing path, another directory),
    named with every form it takes."""
    from lit_psion.core.checkpoint import MANIFEST_FILE
    from lit_psion.core.layout import RunLayout

    if RunLayout.of(path).is_run() or (path / MANIFEST_FILE).is_file():
        return
    forms = "a run directory, a checkpoint directory, a merged adapter (adapter merge --out) or a window program"
    if (path / "adapter.json").is_file():
        raise ConfigError(f"{str(path)!r} is an exported adapter, which holds no base weights; give the adapter run "
                          f"itself ({str(path.parent)!r}), or merge it first: python -m lit_psion adapter merge "
                          f"{shell_words(path)} --base BASE_RUN --out DIR")  # fmt: skip
    layout = RunLayout.of(path)
    if layout.receipts.is_file() or layout.checkpoints.is_dir():  # a run that lost its run.json: said as such
        from lit_psion.commands.receipts import run_layout

        run_layout(path)
    what = "does not exist" if not (path.exists() or path.is_symlink()) else "is none of them"
    raise ConfigError(f"generate reads {forms}; {str(path)!r} {what}")


def _merged_tokenizer(path: Path) -> str | None:
    """The sha256 of the tokenizer a merged model's base trained with, as its merge.json records (None elsewhere,
    and for a merge that recorded none)."""
    if not (path / MERGE_RECORD).is_file():
        return None
    recorded = read_json(path / MERGE_RECORD).get("tokenizer_sha256")  # (read and checked by load_decoder first)
    return recorded if isinstance(recorded, str) else None


def _load(verified: Any) -> dict[str, Any]:
    from lit_psion.checkpoint_io import load_verified

    return load_verified(verified)


def _merged(path: Path) -> tuple[Any, None]:
    """A merged adapter directory: ``model.safetensors`` held to the sha256 ``merge.json`` records."""
    from safetensors.torch import load

    from lit_psion.adapters import MERGED_HEADER_KEY, MERGED_TOKENIZER_KEY, refuse_while_written
    from lit_psion.nn.decoder import Decoder, DecoderConfig

    refuse_while_written(path)
    fix = "merge the adapter again (adapter merge)"
    try:
        record = read_json(path / MERGE_RECORD)
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{str(path / MERGE_RECORD)!r} cannot be read ({type(error).__name__}); {fix}") from error
    if not isinstance(record, dict) or not isinstance(record.get("decoder_config"), dict):
        raise CheckpointError(f"{str(path / MERGE_RECORD)!r} records no decoder_config; {fix}")
    data = (path / "model.safetensors").read_bytes() if (path / "model.safetensors").is_file() else b""
    if sha256_bytes(data) != record.get("model_sha256"):
        raise CheckpointError(f"{str(path / 'model.safetensors')!r} is not the merged model {MERGE_RECORD} records "
                              f"(sha256 {record.get('model_sha256')}); {fix}")  # fmt: skip
    if (problem := _against_its_receipt(path, record)) is not None:
        raise EvidenceError(f"{str(path)!r}: {problem}; {fix}")
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        written = header.get(MERGED_HEADER_KEY)
        if written != canonical_json(record["decoder_config"]).decode():
            raise CheckpointError(f"{MERGE_RECORD}'s decoder_config is not the one the merged weights were written "
                                  f"with ({written or 'none recorded: merged by an earlier version'})")  # fmt: skip
        if header.get(MERGED_TOKENIZER_KEY) != record.get("tokenizer_sha256"):
            raise CheckpointError(f"{MERGE_RECORD}'s tokenizer_sha256 is not the one the merged weights were written "
                                  f"with ({header.get(MERGED_TOKENIZER_KEY) or 'none recorded'})")  # fmt: skip
        model = Decoder(DecoderConfig(**record["decoder_config"]))
        model.load_state_dict({k.removeprefix("model."): v for k, v in load(data).items()})
    except (TypeError, ValueError, RuntimeError, LitPsionError) as error:
        raise CheckpointError(f"the merged model in {str(path)!r} cannot be rebuilt ({str(error).splitlines()[0]}); "
                              f"{fix}") from error  # fmt: skip
    return model, None


def _against_its_receipt(path: Path, record: dict[str, Any]) -> str | None:
    """What the merge's own receipt says against ``record`` (its merge.json), or None: the last ``merge`` receipt of
    the directory's log names the merged model's and the adapter's digests, so a merge.json and model.safetensors
    copied in from another merge, which agree with each other, do not agree with it."""
    from lit_psion.adapters import last_receipt

    merge, problem = last_receipt(path, "merge")
    if merge is None:
        return problem
    said = (merge.get("output_digest"), merge.get("adapter_digest"))
    if said != (record.get("model_sha256"), record.get("adapter_sha256")):
        return (f"{MERGE_RECORD} records merged model {str(record.get('model_sha256'))[:12]}... of adapter "
                f"{str(record.get('adapter_sha256'))[:12]}..., its receipt {str(said[0])[:12]}... of "
                f"{str(said[1])[:12]}...: the files were copied in from another merge")  # fmt: skip
    return None
