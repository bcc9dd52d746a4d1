"""Adapter windows against one centralized LoRA run: held-out loss per window (honest, poisoned) and wall time.

One base DecoderLM (character-level, trained ``--base-steps`` on ``--data``), then three arms from it:

- ``honest``: ``--windows`` windows of ``--contributors`` honest contributors, each a real
  ``window contribute`` process started by ``window run`` (the wall time is split into train,
  validate and aggregate);
- ``poisoned``: the same windows with one contributor in every window replaced by ``--poison``
  (``shuffled_labels``: trained on shuffled targets; ``x50``: an honest delta scaled by 50);
- ``centralized``: one LoRA run on the union of every slice the windows trained on, with the same
  total steps and batch size, merged into the base.

Every arm is scored on the same gate split (validation samples no contributor trained on).

    python benchmarks/windows.py                       # tinyshakespeare, 3 windows of 4
    python benchmarks/windows.py --quick               # the fixture corpus, a minute

The last line of stdout is one JSON object; ``final_loss_ratio`` is honest / centralized (goal <= 1.05)
and ``poisoned_vs_honest`` is poisoned / honest (goal <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lit_psion.cli import main as cli
from lit_psion.core.run import read_latest
from lit_psion.windows import adversary
from lit_psion.windows.contribute import contribute, train_adapter, train_lora
from lit_psion.windows.coordinator import close_window, open_window, run_window
from lit_psion.windows.data import held_out_loss, slice_indices
from lit_psion.windows.program import SLICE_SEED, Program, corpus, plan_window

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def settings(args: argparse.Namespace) -> dict:
    return {"window": {
        "contributors": args.contributors, "slice_samples": args.slice_samples,
        "data": {"files": str(args.data), "max_bytes": None, "block_size": args.block_size, "split": "hash",
                 "val_fraction": args.val_fraction},
        "lora": {"targets": ["lm_head", "attn_qkv"], "rank": 8, "alpha": 16.0},
        "budget": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr},
        "validator": {"norm_factor": 4.0, "max_regression": 0.01, "held_out_samples": args.held_out},
        "gate": {"min_delta": 0.0},
    }}  # fmt: skip


def gate_loss(program: Program, checkpoint: str, revision: str) -> float:
    from lit_psion.checkpoint_io import load_verified
    from lit_psion.nn.decoder import Decoder, DecoderConfig

    plan = program.plan(program.window_ids()[0])
    state = load_verified(program.revision(checkpoint, revision))
    model = Decoder(DecoderConfig(**state["decoder_config"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    return held_out_loss(model, corpus(program, plan.data).samples("val"), *plan.held_out["gate"])


def run_arm(root: Path, base: Path, config: Path, args: argparse.Namespace, poison: str | None) -> dict:
    assert cli(["window", "init", str(root), "--config", str(config), "--base", str(base)]) == 0
    program = Program(root)
    losses: list[float] = []
    windows = []
    for _ in range(args.windows):
        result = run_window(root, echo=False) if poison is None else _poisoned_window(program, poison)
        pointer = program.pointer()
        if not losses:  # the base's loss, as the first gate scored it
            losses.append(result["scores"]["input_loss"])
        losses.append(gate_loss(program, pointer["checkpoint"], pointer["revision"]))
        windows.append({"decision": result["decision"], "dispositions": result.get("dispositions"),
                        "seconds": {k: round(v, 2) for k, v in result.get("seconds", {}).items()}})  # fmt: skip
    return {"gate_loss_per_window": [round(x, 4) for x in losses], "windows": windows}


def _poisoned_window(program: Program, poison: str) -> dict:
    root = program.root
    plan = plan_window(root)
    open_window(root, plan.window_id)
    started = time.perf_counter()
    for assignment in plan.assignments:
        if assignment.assignment_id != "a00":
            contribute(root, plan.window_id, assignment.assignment_id)
            continue
        transform = adversary.shuffled_labels(0) if poison == "shuffled_labels" else None
        tensors, summary = train_adapter(program, plan, assignment, transform)
        if poison == "x50":
            tensors = adversary.scaled(tensors, 50.0)
        adversary.place(program, plan, assignment, tensors, summary)
    train = time.perf_counter() - started
    promotion = close_window(root, plan.window_id)
    counts: dict[str, int] = {}
    for entry in json.loads((program.window_dir(plan.window_id) / "dispositions.json").read_text())[
            "assignments"].values():  # fmt: skip
        counts[entry["disposition"]] = counts.get(entry["disposition"], 0) + 1
    return {**promotion, "dispositions": counts, "seconds": {"train_in_process": train}}


def centralized(root: Path, args: argparse.Namespace) -> dict:
    """One LoRA run over the union of the windows' slices, the same total steps, merged and scored."""
    from lit_psion.windows.aggregate import Adapter, exact_delta, merged_weights

    program = Program(root)
    plans = [program.plan(w) for w in program.window_ids()]
    stop = max(a.slice.stop for p in plans for a in p.assignments)
    total_steps = sum(p.budget["steps"] for p in plans for _ in p.assignments)
    first = plans[0]
    revision = program.revision(first.input_checkpoint, first.input_revision)
    samples = corpus(program, first.data).samples("train")
    union = slice_indices(samples, 0, stop, first.data.get("seed", SLICE_SEED))  # every slice the windows used
    started = time.perf_counter()
    tensors, summary = train_lora(revision.path, first.lora, {**first.budget, "steps": total_steps}, samples, union,
                                  seed=0)  # fmt: skip
    seconds = time.perf_counter() - started
    from lit_psion.checkpoint_io import load_verified
    from lit_psion.nn.decoder import Decoder, DecoderConfig

    state = load_verified(program.revision(first.input_checkpoint, first.input_revision))
    weights, config = merged_weights(state, exact_delta([Adapter(tensors, first.lora["rank"], first.lora["alpha"],
                                                                 1.0)]))  # fmt: skip
    model = Decoder(DecoderConfig(**config))
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    loss = held_out_loss(model, corpus(program, first.data).samples("val"), *first.held_out["gate"])
    return {"gate_loss": round(loss, 4), "steps": total_steps, "train_seconds": round(seconds, 2),
            "samples": stop, "last_train_loss": round(summary["last_loss"], 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHAKESPEARE)
    parser.add_argument("--quick", action="store_true", help="the fixture corpus and a smaller budget")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--contributors", type=int, default=4)
    parser.add_argument("--slice-samples", type=int, default=640)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--held-out", type=int, default=128)
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--poison", choices=["shuffled_labels", "x50"], default="shuffled_labels")
    args = parser.parse_args()
    if args.quick:
        args.data, args.slice_samples, args.steps, args.block_size = Path("fixtures/tiny_corpus.txt"), 32, 4, 32
        args.batch_size, args.base_steps, args.held_out, args.val_fraction, args.lr = 8, 60, None, 0.15, 0.02
    if not args.data.is_file():
        raise SystemExit(f"benchmark data {str(args.data)!r} not found; give --data FILE or --quick")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="lit_psion-windows-bench-"))
    started = time.perf_counter()
    base_root = work / "runs"
    base_config = work / "base.yaml"
    base_config.write_text(yaml.safe_dump({
        "seed_everything": 3, "trainer": {"max_steps": args.base_steps, "val_check_interval": args.base_steps,
                                          "check_val_every_n_epoch": None, "limit_val_batches": 4,
                                          "num_sanity_val_steps": 0, "enable_model_summary": False,
                                          "default_root_dir": str(base_root)},
        "model": {"class_path": "lit_psion.models.DecoderLM", "init_args": {
            "decoder": {"n_layer": 4, "n_head": 4, "d_model": 128, "dropout": 0.0},
            "optimizer": {"name": "adamw", "lr": 3.0e-3, "warmup_steps": 20}}},
        "data": {"class_path": "lit_psion.datamodules.CorpusDataModule", "init_args": {
            "files": str(args.data), "max_bytes": None, "tokenizer": "char", "block_size": args.block_size,
            "batch_size": 32, "split": "hash", "val_fraction": args.val_fraction}},
        "checkpoint": {"every_n_train_steps": args.base_steps}, "dashboard": {"enabled": False},
    }))  # fmt: skip
    assert cli(["fit", "--config", str(base_config)]) == 0
    base = base_root / read_latest(base_root)
    base_seconds = time.perf_counter() - started
    config = work / "window.yaml"
    config.write_text(yaml.safe_dump(settings(args)))
    honest = run_arm(work / "honest", base, config, args, None)
    poisoned = run_arm(work / "poisoned", base, config, args, args.poison)
    central = centralized(work / "honest", args)
    final_honest, final_poisoned = honest["gate_loss_per_window"][-1], poisoned["gate_loss_per_window"][-1]
    print(json.dumps({
        "benchmark": "windows",
        "data": str(args.data), "windows": args.windows, "contributors": args.contributors,
        "honest": honest, "poisoned": {**poisoned, "poison": args.poison}, "centralized": central,
        "final_loss_ratio": round(final_honest / central["gate_loss"], 4),
        "poisoned_vs_honest": round(final_poisoned / final_honest, 4),
        "goal": {"final_loss_ratio": "<= 1.05 (windows / centralized)", "poisoned_vs_honest": "<= 1.02"},
        "budget": {"steps": args.steps, "batch_size": args.batch_size, "block_size": args.block_size,
                   "slice_samples": args.slice_samples, "lr": args.lr},
        "base": {"steps": args.base_steps, "seconds": round(base_seconds, 1)},
        "threads": torch.get_num_threads(), "work_dir": str(work),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
