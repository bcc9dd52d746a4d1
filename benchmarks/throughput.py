"""Training throughput (tokens/s) of ``lit_psion fit`` versus a plain PyTorch loop on the same work.

Both sides train the same :class:`lit_psion.nn.Decoder` on the same ``CorpusDataModule`` train
loader with the same batch size, optimizer, schedule and gradient clipping, in this process. The sides
take turns step by step (``--schedule interleave``, the default): a callback of the lit_psion fit runs
one plain step after each of the fit's steps, and each side's step is timed on its own (the fit's from
the end of the plain step before it to its own end, so every hook and callback of the fit counts once).
Steps milliseconds apart see the same machine; whole runs seconds apart (``--schedule alternate``, the
design before 2026-12-05) do not on a VM whose speed swings by 10-20% within seconds, and their
per-round ratios spread wider than the 2% to be measured. Only steady-state steps are timed (after
step ``warmup``), so set-up, warm-up steps and the end-of-fit checkpoint are excluded on both sides.

    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/throughput.py            # the measurement, both sizes
    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/throughput.py --steps 20 --warmup 5 --rounds 1  # smoke
    python benchmarks/throughput.py --config configs/decoder_tiny.yaml   # one size

By default two presets are measured, each at its own batch and block size: ``decoder_tiny`` (16 x 128)
and nanoGPT's CPU "baby GPT" (``shakespeare_char``, 12 x 64, on ../shared/data/tinyshakespeare.txt when
present). The last line of stdout is one JSON object; per size, ``ratio`` is lit_psion tokens/s over
plain tokens/s over every timed step of every round (alternating: the median of the per-round ratios);
``round_ratios`` shows the spread and ``ratio_ci95`` a 95% bootstrap interval over rounds; ``worst_ratio`` is the
lower of the two sizes' (target 0.98).
``median_step_ratio`` and ``p10_step_ratio`` (each side's median and 10th-percentile step time) leave
out the steps that log a row and those another tenant slowed. Both sides run the same model work, timed by
the same hooks (``model_ms``, the plain loop's median Decoder forward and backward; ``lit_psion_model_ms`` and
``lightning_model_ms`` the other sides'), so ``loop_overhead_ms`` (the median
step time outside the model, lit_psion's less plain's) measures what the loops add apart from how fast
this VM computes that minute; ``loop_overhead_ratio`` is plain's median step over that step plus the
overhead. Being medians, these leave out the steps that write a log row (and measure telemetry).

``--against evidence-off`` measures what the evidence layer costs instead: lit_psion with a step
receipt every step, telemetry and a checkpoint every ``--checkpoint-every`` steps (all inside the
timed window) against lit_psion with step receipts, telemetry and checkpoints off. ``overhead`` is
1 - on/off (target <= 3%).

    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/throughput.py --against evidence-off --steps 200

``--floor`` adds a third side to every round: the same model, data, optimizer, schedule and clipping in a bare
Lightning ``Trainer`` (no logger, no callbacks but the step clock, no checkpointing), interleaved with plain
steps of its own. Its
``lightning_floor_ratio`` (bare Lightning over plain, the same statistic as ``ratio``) and
``lightning_loop_overhead_ms`` show how much of the gap is Lightning's own loop, which lit_psion runs inside;
``ratio_over_floor`` is lit_psion's ratio over bare Lightning's (above 1: lit_psion's loop costs less than Lightning's).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import step_clock
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from step_clock import Clock, ModelTimer, SpanClock, StepTimer

from lit_psion.cli import LitPsionCLI
from lit_psion.datamodules import CorpusDataModule
from lit_psion.nn import Decoder, DecoderConfig
from lit_psion.nn.optim import OptimizerConfig, build_optimizer, warmup_cosine

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.98
DEFAULT_CONFIGS = ("decoder_tiny.yaml", "shakespeare_char.yaml")
"""decoder_tiny and nanoGPT's CPU baby-GPT size (issue 17 item 5: both sizes in one run)."""
OVERHEAD_TARGET = 0.03
NEVER = str(10**9)
EVIDENCE_OFF = ["--receipts.every_n_steps", NEVER, "--telemetry.every_n_steps", NEVER]


class PlainStepper:
    """The plain PyTorch loop's training, one optimizer step per :meth:`step`."""

    def __init__(self, args: argparse.Namespace, preset: dict[str, Any]) -> None:
        L.seed_everything(preset.get("seed_everything", 1337), verbose=False)
        self.datamodule, self.model, opt_config = _plain_parts(args, preset)
        self.model.train()
        self.optimizer = build_optimizer(opt_config, self.model, self.model.hidden_matrices())
        schedule = warmup_cosine(opt_config.warmup_steps, opt_config.decay_steps or args.steps, opt_config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.clip = preset["trainer"].get("gradient_clip_val")
        self.batches = (batch for _ in itertools.count() for batch in self.datamodule.train_dataloader())

    def step(self) -> None:
        batch = next(self.batches)
        logits = self.model(batch["input_ids"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


class Interleave(Callback):
    """One plain step after every step of the Lightning fit it is a callback of, each side timed on its own: the
    fit's step from the end of the plain step before it to its own end (so each of the fit's hooks and callbacks
    is counted once a step, wherever it runs), the plain step alone. Steps a few milliseconds apart see the same
    machine, which alternating whole runs cannot promise on a VM whose speed swings within seconds."""

    def __init__(self, stepper: PlainStepper, warmup: int, steps: int) -> None:
        self.stepper, self.fit, self.plain = stepper, SpanClock(warmup, steps), SpanClock(warmup, steps)
        self._since: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        done = trainer.global_step
        self.fit.span(done, self._since, time.perf_counter())
        start = time.perf_counter()
        self.stepper.step()
        self.plain.span(done, start, time.perf_counter())
        self._since = time.perf_counter()


def run_lit_psion(
    args: argparse.Namespace,
    root: Path,
    evidence: bool = True,
    extra: tuple[str, ...] = (),
    interleave: Interleave | None = None,
) -> tuple[Clock, float]:
    """The step clock and the whole-fit seconds of one ``fit`` through the CLI.

    ``evidence`` False turns off step receipts, telemetry and checkpoints; with ``--against evidence-off``
    the evidence side checkpoints every ``--checkpoint-every`` steps. With ``interleave`` the fit's steps take
    turns with its plain steps, and its clocks time both.
    """
    every = str(args.checkpoint_every) if getattr(args, "against", None) == "evidence-off" and evidence else NEVER
    clock = interleave.fit if interleave is not None else Clock(args.warmup, args.steps)
    timer = interleave if interleave is not None else StepTimer(clock)
    cli_args = [
        "fit", "--config", str(args.config), "--trainer.max_steps", str(args.steps),
        "--trainer.default_root_dir", str(root), "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false", "--progress_bar.refresh_rate", "0",
        "--checkpoint.every_n_train_steps", every, "--dashboard.enabled", "false",
        *([] if evidence else EVIDENCE_OFF), *extra,
        "--data.init_args.batch_size", str(args.batch_size), "--data.init_args.block_size", str(args.block_size),
        *(["--data.init_args.files", args.files] if args.files else []),
    ]  # fmt: skip
    start = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's flags
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON result
            LitPsionCLI(args=cli_args, callbacks=[timer])
    finally:
        sys.argv = argv
    if len(clock.ticks) != args.steps - args.warmup + (0 if interleave else 1):
        raise RuntimeError("the lit_psion run ended before its last step was timed")
    return clock, time.perf_counter() - start


def run_plain(args: argparse.Namespace, preset: dict[str, Any]) -> Clock:
    """The step clock of the same training written as a plain PyTorch loop."""
    stepper, clock = PlainStepper(args, preset), Clock(args.warmup, args.steps)
    for step in range(1, args.steps + 1):
        stepper.step()
        clock.tick(step)
    return clock


class BareModule(L.LightningModule):
    """The plain loop's training as a bare LightningModule: the decoder, the loss, the optimizer and schedule."""

    def __init__(self, decoder: Decoder, optimizer: OptimizerConfig, steps: int) -> None:
        super().__init__()
        self.decoder, self.optimizer_config, self.steps = decoder, optimizer, steps

    def training_step(self, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        logits = self.decoder(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())

    def configure_optimizers(self) -> Any:
        config = self.optimizer_config
        optimizer = build_optimizer(config, self.decoder, self.decoder.hidden_matrices())
        schedule = warmup_cosine(config.warmup_steps, config.decay_steps or self.steps, config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def run_bare_lightning(args: argparse.Namespace, preset: dict[str, Any], interleave: Interleave | None = None) -> Clock:
    """The step clock of the plain loop's training run by a bare Lightning ``Trainer`` (the floor under lit_psion)."""
    L.seed_everything(preset.get("seed_everything", 1337), verbose=False)
    datamodule, decoder, opt_config = _plain_parts(args, preset)
    clock = interleave.fit if interleave is not None else Clock(args.warmup, args.steps)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        gradient_clip_val=preset["trainer"].get("gradient_clip_val"), callbacks=[interleave or StepTimer(clock)],
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(BareModule(decoder, opt_config, args.steps), train_dataloaders=datamodule.train_dataloader())
    return clock


def _plain_parts(args: argparse.Namespace, preset: dict[str, Any]) -> tuple[CorpusDataModule, Decoder, OptimizerConfig]:
    """The data module, the decoder and the optimizer settings both non-lit_psion sides train."""
    data = {**preset["data"]["init_args"], "batch_size": args.batch_size, "block_size": args.block_size}
    data["files"] = args.files or data["files"]
    datamodule = CorpusDataModule(**data)
    datamodule.prepare()
    model_args = preset["model"]["init_args"]
    decoder = {**model_args.get("decoder", {}), "vocab_size": datamodule.vocab_size, "block_size": args.block_size}
    return datamodule, Decoder(DecoderConfig(**decoder)), OptimizerConfig(**model_args.get("optimizer", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, nargs="+", default=[REPO / "configs" / c for c in DEFAULT_CONFIGS],
                        help="presets, each at its own batch and block size (default: both sizes)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="leading steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, each one lit_psion run and one plain run")
    parser.add_argument("--files", help="override the presets' data.files (a text file, a glob or 'stdlib')")
    parser.add_argument("--batch-size", type=int, default=None, help="override the presets' batch size")
    parser.add_argument("--block-size", type=int, default=None, help="override the presets' block size")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--against",
        choices=["plain", "evidence-off"],
        default="plain",
        help="the other side: a plain PyTorch loop, or lit_psion with its evidence layer off",
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, help="with --against evidence-off")
    parser.add_argument("--floor", action="store_true", help="also run a bare Lightning Trainer each round (plain)")
    parser.add_argument("--schedule", choices=["interleave", "alternate"], default="interleave",
                        help="against plain: steps take turns inside each fit, or whole runs alternate")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    step_clock.MODEL_TIMER = ModelTimer()
    results = [measure(config_args(args, config)) for config in args.config]
    if len(results) == 1:
        print(json.dumps(results[0]))
        return
    ratios = [r["ratio"] if "ratio" in r else 1 - r["overhead"] for r in results]
    summary = {
        "benchmark": results[0]["benchmark"],
        "sizes": {Path(r["config"]).stem: r for r in results},
        "worst_ratio" if args.against == "plain" else "worst_overhead": (
            min(ratios) if args.against == "plain" else max(r["overhead"] for r in results)
        ),
        "meets_target": all(r["meets_target"] for r in results),
    }
    print(json.dumps(summary))


def config_args(args: argparse.Namespace, config: Path) -> argparse.Namespace:
    """``args`` for one preset: its own data files, batch and block size unless the command line overrides them."""
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    return argparse.Namespace(**{
        **vars(args), "config": config, "batch_size": args.batch_size or data["batch_size"],
        "block_size": args.block_size or data["block_size"], "files": args.files or _local_files(data["files"]),
    })  # fmt: skip


def _local_files(files: str) -> str:
    """The Shakespeare presets name a fixture and expect the real text on the command line: use it when present."""
    shakespeare = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
    return str(shakespeare) if files.startswith("fixtures/") and shakespeare.is_file() else files


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One preset's JSON result: lit_psion against the other side, alternating rounds."""
    preset = yaml.safe_load(args.config.read_text())
    load_before = os.getloadavg()[0]  # well above 0 means something else is running: timings will be noisy
    tokens = args.batch_size * args.block_size * (args.steps - args.warmup)
    lit, plain, bare, bare_plain = list[Clock](), list[Clock](), list[Clock](), list[Clock]()
    fit_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lit_psion_throughput_") as tmp:

        def other(index: int) -> Clock:
            if args.against == "plain":
                return run_plain(args, preset)
            return run_lit_psion(args, Path(tmp) / f"off{index}", evidence=False)[0]

        def interleaved(index: int) -> None:  # each Lightning fit takes turns, step by step, with plain steps
            pairs = [("lit", Interleave(PlainStepper(args, preset), args.warmup, args.steps))]
            if args.floor:
                pairs.append(("bare", Interleave(PlainStepper(args, preset), args.warmup, args.steps)))
            for side, pair in pairs[:: 1 if index % 2 else -1]:
                if side == "lit":
                    fit_seconds.append(run_lit_psion(args, Path(tmp) / f"round{index}", interleave=pair)[1])
                else:
                    run_bare_lightning(args, preset, interleave=pair)
            lit.append(pairs[0][1].fit)
            plain.append(pairs[0][1].plain)
            if args.floor:
                bare.append(pairs[1][1].fit)
                bare_plain.append(pairs[1][1].plain)

        for index in range(args.rounds):  # alternate sides and their order, so drifts hit both alike
            if args.schedule == "interleave" and args.against == "plain":
                interleaved(index)
            else:
                if index % 2:
                    plain.append(other(index))
                clock, total = run_lit_psion(args, Path(tmp) / f"round{index}")
                lit.append(clock)
                fit_seconds.append(total)
                if not index % 2:
                    plain.append(other(index))
                if args.floor and args.against == "plain":
                    bare.append(run_bare_lightning(args, preset))
            rates = (tokens / lit[-1].seconds, tokens / plain[-1].seconds)
            print(f"round {index}: lit_psion {rates[0]:.0f}, {args.against} {rates[1]:.0f} tokens/s", file=sys.stderr)
    lit_rates = [tokens / c.seconds for c in lit]
    plain_rates = [tokens / c.seconds for c in plain]
    interleaved = bool(lit) and isinstance(lit[0], SpanClock)
    # Interleaved: tokens/s over every timed step of every round, each lit_psion step beside a plain step. Else pair
    # each lit_psion run with the plain run beside it: cancels this VM's slow drifts in speed, not its swings.
    ratio = _pooled(plain, lit) if interleaved else _median_ratio(lit_rates, plain_rates)
    lit_median = statistics.median(s for c in lit for s in c.step_seconds)
    plain_median = statistics.median(s for c in plain for s in c.step_seconds)
    # Another tenant on this VM only ever adds time to a step: the fast tail is each side's own cost.
    lit_p10, plain_p10 = (_quantile([s for c in side for s in c.step_seconds], 0.1) for side in (lit, plain))
    # The same model work on both sides: the step time outside it is where the loops differ, and it is far less
    # exposed to this VM's swings in compute speed than the whole step. Medians: the steps that also log
    # (every log_every_n_steps, with telemetry) are left out.
    lit_outside, plain_outside = (statistics.median(s for c in side for s in c.outside_model_seconds)
                                  for side in (lit, plain))  # fmt: skip
    loop_overhead = lit_outside - plain_outside
    context = {
        "config": str(args.config),
        **{key: getattr(args, key) for key in ("steps", "warmup", "rounds", "batch_size", "block_size")},
        "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    if args.against == "evidence-off":
        overhead = 1 - ratio
        result = {
            "benchmark": "evidence_overhead",
            "evidence_on_tokens_per_s": round(statistics.median(lit_rates), 1),
            "evidence_off_tokens_per_s": round(statistics.median(plain_rates), 1),
            "overhead": round(overhead, 4),
            "target": OVERHEAD_TARGET,
            "meets_target": overhead <= OVERHEAD_TARGET,
            "statistic": "overhead = 1 - median over rounds of on/off tokens/s (adjacent runs)",
            "on": "receipt every step, telemetry every log_every_n_steps, sync checkpoint every checkpoint_every",
            "checkpoint_every": args.checkpoint_every,
            "checkpoints_timed": args.steps // args.checkpoint_every - args.warmup // args.checkpoint_every,
            "on_rounds": [round(r, 1) for r in lit_rates],
            "off_rounds": [round(r, 1) for r in plain_rates],
            **context,
        }
        return result
    result = {
        "benchmark": "throughput",
        "lit_psion_tokens_per_s": round(statistics.median(lit_rates), 1),
        "plain_tokens_per_s": round(statistics.median(plain_rates), 1),
        "ratio": round(ratio, 4),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "schedule": "interleave" if interleaved else "alternate",
        "statistic": ("tokens/s over the timed steps of all rounds, each lit_psion step beside a plain step"
                      if interleaved else "tokens/s over the timed steps; median over rounds of lit_psion/plain"),
        "round_ratios": [round(a / b, 4) for a, b in zip(lit_rates, plain_rates, strict=True)],
        **({"ratio_ci95": _bootstrap_ci(plain, lit)} if interleaved else {}),
        "best_of_rounds_ratio": round(max(lit_rates) / max(plain_rates), 4),
        "median_step_ratio": round(plain_median / lit_median, 4),
        "lit_psion_median_step_ms": round(lit_median * 1000, 2),
        "plain_median_step_ms": round(plain_median * 1000, 2),
        "loop_overhead_ms": round(loop_overhead * 1000, 2),
        "lit_psion_outside_model_ms": round(lit_outside * 1000, 2),
        "plain_outside_model_ms": round(plain_outside * 1000, 2),
        "model_ms": round(statistics.median(s for c in plain for s in c.model_seconds) * 1000, 2),
        "lit_psion_model_ms": round(statistics.median(s for c in lit for s in c.model_seconds) * 1000, 2),
        "loop_overhead_ratio": round(plain_median / (plain_median + loop_overhead), 4),
        "p10_step_ratio": round(plain_p10 / lit_p10, 4),
        "lit_psion_p10_step_ms": round(lit_p10 * 1000, 2),
        "plain_p10_step_ms": round(plain_p10 * 1000, 2),
        "lit_psion_rounds": [round(r, 1) for r in lit_rates],
        "plain_rounds": [round(r, 1) for r in plain_rates],
        "lit_psion_fit_wall_s": [round(s, 2) for s in fit_seconds],
        **context,
    }
    if bare:
        bare_rates = [tokens / c.seconds for c in bare]
        bare_outside = statistics.median(s for c in bare for s in c.outside_model_seconds)
        floor = _pooled(bare_plain, bare) if interleaved else _median_ratio(bare_rates, plain_rates)
        result |= {
            "lightning_floor_ratio": round(floor, 4),
            **({"lightning_floor_ci95": _bootstrap_ci(bare_plain, bare)} if interleaved else {}),
            "ratio_over_floor": round(ratio / floor, 4),
            "lightning_tokens_per_s": round(statistics.median(bare_rates), 1),
            "lightning_median_step_ms": round(statistics.median(s for c in bare for s in c.step_seconds) * 1000, 2),
            "lightning_loop_overhead_ms": round((bare_outside - plain_outside) * 1000, 2),
            "lightning_model_ms": round(statistics.median(s for c in bare for s in c.model_seconds) * 1000, 2),
            "lit_psion_over_lightning_ms": round((lit_outside - bare_outside) * 1000, 2),
            "lightning_rounds": [round(r, 1) for r in bare_rates],
        }
    return result


def _pooled(plain: list[Clock], other: list[Clock]) -> float:
    """The other side's tokens/s over plain's, over every timed step of every round."""
    return sum(c.seconds for c in plain) / sum(c.seconds for c in other)


def _bootstrap_ci(plain: list[Clock], other: list[Clock], draws: int = 2000) -> list[float]:
    """A 95% interval of :func:`_pooled` over rounds drawn with replacement (rounds, not steps: the steps of one
    round share that minute's machine). Where the target falls inside it, one reading cannot say which side it is."""
    pairs = [(p.seconds, o.seconds) for p, o in zip(plain, other, strict=True)]
    rng = random.Random(0)
    ratios = sorted(
        sum(p for p, _ in sample) / sum(o for _, o in sample)
        for sample in (rng.choices(pairs, k=len(pairs)) for _ in range(draws))
    )
    return [round(ratios[int(0.025 * draws)], 4), round(ratios[int(0.975 * draws) - 1], 4)]


def _median_ratio(rates: list[float], plain_rates: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(rates, plain_rates, strict=True))


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear interpolation between the nearest ranks)."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


if __name__ == "__main__":
    main()
