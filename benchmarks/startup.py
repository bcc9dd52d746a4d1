"""Start-up: how long each command takes to answer, and to reach the first training step.

Two measurements, each the median of ``--rounds`` alternating runs, every one a fresh process:

* **First step.** Wall clock from starting ``python -m lit_psion fit --config
  configs/decoder_tiny.yaml`` (on ``--corpus``, 2 steps, no sample at the end) to the end of its
  first optimizer step (the ``created_at`` of its first ``trainer_step`` receipt), against a bare
  Lightning script that trains the same :class:`lit_psion.nn.Decoder` with the same Muon optimizer
  on the same corpus: it loads the run's ``tokenizer.json``, encodes the text, and fits with
  ``logger=False``, no checkpointing and no progress bar, printing the time its first
  ``on_train_batch_end`` ends. Both read a warm token cache / tokenizer (a first untimed run fills
  it), so this is the trainer's own start-up: imports, config, run directory, data manifest,
  receipts. Goal: ``first_step_ratio`` <= 1.2.
* **Answers.** Every subcommand that reads evidence rather than trains (``--help``, ``receipts
  verify``, ``ckpt verify``, ``doctor``, ``compare``, ``session list``, ``window status``) on the run
  just made. Goal: each < 1 s.

    python benchmarks/startup.py                        # tinyshakespeare from ../shared/data
    python benchmarks/startup.py --corpus notes.txt --rounds 5

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIG = REPO / "configs" / "decoder_tiny.yaml"
STEPS = 2


def _bare(tokenizer_file: str, corpus: str, block_size: int, batch_size: int) -> None:
    """The bare Lightning script (run as a child process): same model, same corpus, nothing else."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from lit_psion.nn import Decoder, DecoderConfig
    from lit_psion.nn.optim import OptimizerConfig, build_optimizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    ids = torch.tensor(tokenizer.encode(Path(corpus).read_text(encoding="utf-8")).ids, dtype=torch.long)
    windows = ids[: (len(ids) - 1) // block_size * block_size + 1]
    starts = torch.arange(0, len(windows) - block_size - 1, block_size)
    dataset = torch.utils.data.TensorDataset(starts)

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            config = DecoderConfig(vocab_size=tokenizer.get_vocab_size(), block_size=block_size, n_layer=4, n_head=4,
                                   d_model=128)  # fmt: skip
            self.decoder = Decoder(config)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            rows = torch.stack([ids[s : s + block_size + 1] for s in batch[0].tolist()])
            logits = self.decoder(rows[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())

        def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
            if batch_idx == 0:
                print(f"first_step_end {time.time()!r}", flush=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:  # the preset's: Muon on hidden matrices
            config = OptimizerConfig(name="muon", lr=3e-3)
            return build_optimizer(config, self.decoder, self.decoder.hidden_matrices())

    L.seed_everything(1337, verbose=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    trainer = L.Trainer(max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Bare(), loader)


def _fit(corpus: Path, root: Path, env: dict[str, str]) -> tuple[float, Path]:
    """Start lit_psion fit; seconds from the start to its first step receipt, and the run directory."""
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", str(CONFIG), "--data.files", str(corpus),
               "--trainer.max_steps", str(STEPS), "--trainer.default_root_dir", str(root), "--trainer.callbacks",
               "[]"]  # fmt: skip
    started = time.time()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"lit_psion fit failed ({result.returncode}): {result.stderr[-2000:]}")
    run = root / json.loads((root / "latest_run.json").read_text())["run_id"]
    for line in (run / "receipts.jsonl").read_text().splitlines():
        receipt = json.loads(line)
        if receipt["kind"] == "trainer_step":
            return receipt["created_at"] - started, run
    raise SystemExit(f"no trainer_step receipt in {run}")


def _bare_run(tokenizer: Path, corpus: Path, env: dict[str, str]) -> float:
    command = [sys.executable, __file__, "--bare", str(tokenizer), str(corpus)]
    started = time.time()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"bare script failed ({result.returncode}): {result.stderr[-2000:]}")
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("first_step_end ")]
    return float(line.split()[1]) - started


def _answer(args: list[str], env: dict[str, str], rounds: int) -> dict[str, object]:
    times, code = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        command = [sys.executable, "-m", "lit_psion", *args]
        code = subprocess.run(command, cwd=REPO, env=env, capture_output=True).returncode
        times.append(time.perf_counter() - started)
    return {"seconds": round(statistics.median(times), 3), "exit_code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a UTF-8 text file to train on")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"--corpus {str(args.corpus)!r} is not a file; pass a UTF-8 text file")
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LIT_PSION_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": threads}
        _, warm = _fit(args.corpus, Path(tmp) / "warm", env)  # fills the token cache; untimed
        tokenizer = warm / "tokenizer.json"
        lit, bare, runs = [], [], []
        for index in range(args.rounds):
            seconds, run = _fit(args.corpus, Path(tmp) / f"runs{index}", env)
            lit.append(seconds)
            runs.append(run)
            bare.append(_bare_run(tokenizer, args.corpus, env))
        other = Path(tmp) / "runs0"
        answers = {
            "--help": ["--help"],
            "receipts verify": ["receipts", "verify", str(runs[-1])],
            "ckpt verify": ["ckpt", "verify", str(runs[-1])],
            "doctor": ["doctor", str(runs[-1])],
            "compare": ["compare", str(runs[0]), str(runs[-1]), "--out", str(Path(tmp) / "compare")],
            "session list": ["session", "list", "--artifacts_root", str(Path(tmp) / "artifacts")],
            "window status": ["window", "status", str(other)],
        }
        timed = {name: _answer(argv, env, args.rounds) for name, argv in answers.items()}
    ratios = [a / b for a, b in zip(lit, bare, strict=True)]
    report = {
        "corpus": str(args.corpus),
        "rounds": args.rounds,
        "omp_num_threads": threads,
        "first_step_seconds": {"lit_psion": [round(x, 3) for x in lit], "bare_lightning": [round(x, 3) for x in bare]},
        "first_step_median": {"lit_psion": round(statistics.median(lit), 3), "bare": round(statistics.median(bare), 3)},
        "first_step_ratio": round(statistics.median(ratios), 3),
        "first_step_goal": 1.2,
        "answers": timed,
        "slowest_answer_seconds": max(entry["seconds"] for entry in timed.values()),
        "answer_goal_seconds": 1.0,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        _bare(sys.argv[2], sys.argv[3], block_size=128, batch_size=16)
    else:
        main()
