"""The session commands: init-base, new, fork, run, list, show (seed 000's demo, on lit_psion's substrate)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure

from lit_psion.callbacks import Receipts
from lit_psion.core import atomic_write_bytes, atomic_write_json, atomic_write_text, new_run_id, sha256_file
from lit_psion.core.errors import ConfigError, EvidenceError, TrainingDiverged, TransactionError
from lit_psion.core.layout import RunLayout
from lit_psion.core.policy import MAX_BUFFER_LEN
from lit_psion.core.run import RunContext
from lit_psion.nn.optim import LARGEST_RATE, a_rate
from lit_psion.sessions.modules import BasePretrain, OnlineSession
from lit_psion.sessions.run_binding import BINDING_FILE, binding_text
from lit_psion.sessions.settings import MAX_PRETRAIN_STEPS, MAX_STEPS, MAX_VALUES, fork_copies_optimizer, rollout_values
from lit_psion.sessions.state_checks import GATE_WINDOW, MAX_NS_STEPS, SERVED
from lit_psion.sessions.store import (
    EVENTS,
    METRICS,
    OPTIM,
    OPTIONAL_SETTINGS,
    PLASTIC,
    SCHEMA_VERSION,
    Store,
    tensors_bytes,
    torch_bytes,
)
from lit_psion.sessions.world import Environment, WorldConfig, WorldModel
from lit_psion.strategies import TransactionalStrategy, TransactionPolicy

NEVER = 10**9
CURVES = ("mse_base", "mse_no_update", "mse_with_update", "mse_learner")


class _RunOf(Callback):
    """Holds a session run's RunContext: its receipts' ``config_digest`` is its ``session_run.json``'s."""

    def __init__(self, context: RunContext) -> None:
        self.run_context = context


def _trainer(root: Path, max_steps: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(root),
                     accelerator="cpu", devices=1, **kwargs)  # fmt: skip


def init_base(store: Store, config: WorldConfig, pretrain_steps: int, pretrain_batch: int, pretrain_seq: int,
              lr: float, momentum: float, ns_steps: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Pretrain the base model on the base environment and write base/."""
    if min(pretrain_steps, pretrain_batch, pretrain_seq) < 1:
        raise ConfigError("pretrain_steps, pretrain_batch and pretrain_seq must be >= 1, got "
                          f"{pretrain_steps!r}, {pretrain_batch!r}, {pretrain_seq!r}")  # fmt: skip
    if pretrain_steps > MAX_PRETRAIN_STEPS:
        raise ConfigError(f"--pretrain_steps must be at most {MAX_PRETRAIN_STEPS:,} (each step's rollout is held "
                          f"in memory), got {pretrain_steps}")  # fmt: skip
    if (values := rollout_values(config, pretrain_steps * pretrain_batch + 256, pretrain_seq)) > MAX_VALUES:
        raise ConfigError(f"--pretrain_steps {pretrain_steps} x --pretrain_batch {pretrain_batch} rollouts of "
                          f"--pretrain_seq {pretrain_seq} would hold {values:,} numbers in memory, more than "
                          f"{MAX_VALUES:,}: give fewer steps, a smaller batch or shorter rollouts")  # fmt: skip
    check_optimizer(lr, momentum, ns_steps)
    with store.making(store.base_dir, "base_meta.json", "session init-base"):
        sessions = sorted(path.parent.name for path in (store.root / "sessions").glob("*/meta.json"))
        made = f"{len(sessions)} session(s) were made for"
        named = f"({', '.join(sessions[:3])}); a new base would leave them unusable"
        if (store.base_dir / "base_meta.json").is_file() and sessions:  # each would be refused after
            raise ConfigError(f"{str(store.base_dir)!r} already holds a base model, which {made} {named}: give "
                              "another --artifacts_root")  # fmt: skip
        if (store.base_dir / "base_meta.json").is_file():
            raise ConfigError(f"{str(store.base_dir)!r} already holds a base model; a new base would replace it: give "
                              f"another --artifacts_root, or remove {str(store.base_dir)!r} first")  # fmt: skip
        if sessions:  # its base is gone: a new one would not be theirs
            raise ConfigError(f"{str(store.root)!r} holds no base model, but {made} the one it held {named}: restore "
                              f"{str(store.base_dir)!r} from a backup, or give another --artifacts_root")  # fmt: skip
        L.seed_everything(seed, verbose=False)
        module = BasePretrain(config, pretrain_steps, pretrain_batch, pretrain_seq, lr, momentum, ns_steps, seed)
        _trainer(store.root / "base", pretrain_steps).fit(module)
        z, u = module.env.rollout(256, pretrain_seq, torch.Generator().manual_seed(seed + 10_000))
        with torch.no_grad():
            mse = float(module.model.loss(z, u, plastic=False))
        weights = {"A_hat": module.model.A_hat, "B_hat": module.model.B_hat}
        if not math.isfinite(mse) or not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise TrainingDiverged(f"the base's pretraining diverged (held-out one-step MSE {mse:g}): no base was "
                                   f"written; lower --lr (now {lr:g})")  # fmt: skip
        pretrain = {"steps": pretrain_steps, "batch": pretrain_batch, "seq": pretrain_seq, "lr": lr,
                    "momentum": momentum, "ns_steps": ns_steps, "seed": seed}  # fmt: skip
        meta = store.write_base(config, weights, {"pretrain": pretrain, "heldout_mse": mse})
    print(f"base model written to {store.base_dir} (held-out one-step MSE {mse:.5f}, "
          f"signature {meta['model_signature'][:16]})")  # fmt: skip
    return meta


def new_session(store: Store, session_id: str, mu: float, env_mode: str, settings: dict[str, Any]) -> dict:
    """Create a root session: zero plastic weights, a fresh optimizer, the drifted environment ``mu``."""
    base = store.base_meta()
    if env_mode != base["config"]["env_mode"]:
        raise ConfigError(f"env_mode {env_mode!r} differs from the base model's {base['config']['env_mode']!r}")
    settings = {key: None if key in OPTIONAL_SETTINGS and value == math.inf else value  # no limit: null in
                for key, value in settings.items()}  # meta.json, which stays strict JSON  # fmt: skip
    _check_settings(settings)
    store.base_checkpoint()  # a session made for a base whose checkpoint is not the recorded one could never run
    store.index()  # a registry it could not add the session to is refused before anything is written
    with store.creating(session_id, f"session new {session_id}") as directory:
        if (directory / "meta.json").exists():
            raise ConfigError(f"session {session_id!r} already exists in {str(store.root)!r}; pick another "
                              "--session_id")  # fmt: skip
        _refuse_foreign_files(directory, "--session_id")
        config = WorldConfig(**base["config"])
        meta = {"schema_version": SCHEMA_VERSION, "session_id": session_id,
                "model_signature": base["model_signature"], "base_ckpt_hash": base["base_ckpt_hash"],
                "parent_session_id": None, "root_session_id": session_id, "created_at": time.time(), "mu": mu,
                "settings": settings, "runs": []}  # fmt: skip
        store.recover(session_id)  # drops what a crashed `new` of this id staged
        meta = store.commit(meta, {PLASTIC: tensors_bytes(WorldModel(config).plastic_state()), OPTIM: torch_bytes({})})
    print(f"session {session_id} created (mu {mu}, root {session_id})")
    return meta


def _refuse_foreign_files(directory: Path, flag: str) -> None:
    """A new session's directory holds nothing but what a crashed ``new`` or ``fork`` of it left (its lock, staged
    commits, temporary files, all dot-named): files of anyone else's would be overwritten or adopted as the
    session's."""
    if foreign := sorted(path.name for path in directory.iterdir() if not path.name.startswith(".")):
        names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{str(directory)!r} already holds files no session made ({names}); move them out, or "
                          f"pick another {flag}")  # fmt: skip


def settings_problem(settings: dict[str, Any]) -> str | None:
    """What ``session new`` would refuse in a session's recorded ``settings`` (a hand edit of its meta.json), or
    None."""
    try:
        _check_settings({"gate_chunks": 0, **settings})  # a session made before the gate has none
    except (ConfigError, TypeError, KeyError) as error:
        return str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
    return None


def _check_settings(settings: dict[str, Any]) -> None:
    if settings["chunk"] < 1 or settings["buffer_len"] < 1:
        raise ConfigError(f"chunk and buffer_len must be >= 1, got {settings['chunk']!r} and "
                          f"{settings['buffer_len']!r}")  # fmt: skip
    if settings["chunk"] > MAX_STEPS:  # a run takes at least one chunk and at most MAX_STEPS transitions
        raise ConfigError(f"--chunk must be at most {MAX_STEPS:,} (the most steps one run takes), got "
                          f"{settings['chunk']!r}")  # fmt: skip
    check_optimizer(settings["lr"], settings["momentum"], settings["ns_steps"])
    if settings["gate_chunks"] < 0:
        raise ConfigError(f"gate_chunks must be >= 0 (0: no promotion gate), got {settings['gate_chunks']!r}")
    if math.ceil(settings["buffer_len"] / settings["chunk"]) > MAX_BUFFER_LEN:  # the policy's buffer is in chunks
        most = MAX_BUFFER_LEN * settings["chunk"]
        raise ConfigError(f"--buffer_len must be at most {MAX_BUFFER_LEN} chunks of --chunk {settings['chunk']} "
                          f"({most:,} steps), got {settings['buffer_len']!r}")  # fmt: skip
    _policy(settings)  # raises ConfigError naming the bad value


def check_optimizer(lr: float, momentum: float, ns_steps: int) -> None:
    """Muon's settings, each refused in one line before anything is written (torch would fail mid-run)."""
    if not a_rate(lr):
        raise ConfigError(f"--lr must be a finite number > 0 and at most {LARGEST_RATE:.3g}, got {lr!r}")
    if not math.isfinite(momentum) or not 0 <= momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {momentum!r}")
    if not 1 <= ns_steps <= MAX_NS_STEPS:  # torch's Muon refuses 100 or more at its first step
        raise ConfigError(f"--ns_steps (Newton-Schulz iterations) must be in [1, {MAX_NS_STEPS}], got {ns_steps!r}")


def _policy(settings: dict[str, Any]) -> TransactionPolicy:
    """A session's transaction policy: seed 000's, where a rolled-back update is skipped, never restored or stopped."""
    return TransactionPolicy(
        rollback_tol=math.inf if settings["rollback_tol"] is None else settings["rollback_tol"],  # null: no limit
        buffer_len=math.ceil(settings["buffer_len"] / settings["chunk"]),
        grad_norm_max=settings["grad_norm_max"], state_norm_max=settings["state_norm_max"],
        restore_after=NEVER, stop_after=NEVER,
    )  # fmt: skip


def fork_session(store: Store, parent_id: str, child_id: str, copy_optimizer: bool | None,
                 reset_optimizer: bool | None) -> dict:  # fmt: skip
    """A child with the parent's plastic weights and either a copy of its optimizer state or a fresh one.

    Give one flag and the other follows (``reset_optimizer=True`` alone means no copy); neither means copy.
    """
    copy_optimizer = fork_copies_optimizer(parent_id, child_id, copy_optimizer, reset_optimizer)
    store.session_meta(parent_id)  # says which sessions there are when there is no such one
    store.index()  # a registry it could not add the child to is refused before anything is written
    store.session_dir(child_id)  # a bad child id is refused before the parent is locked
    purpose = f"session fork {parent_id} -> {child_id}"
    with store.lock(store.session_dir(parent_id), purpose), store.creating(child_id, purpose) as child_dir:
        store.recover(parent_id)
        parent = store.session_meta(parent_id)
        store.check_signature(parent)
        store.base_weights()  # the base the child will run on: its digest and finiteness, as run checks them
        if (child_dir / "meta.json").exists():
            raise ConfigError(f"session {child_id!r} already exists; pick another --child_session_id")
        _refuse_foreign_files(child_dir, "--child_session_id")
        # Checked (digest, finiteness) before a state spreads to a child, and copied from the bytes checked. The
        # optimizer state is checked with a fresh one too: a parent missing a recorded file is damaged, not forkable.
        plastic, parent_optimizer = tensors_bytes(store.plastic_state(parent)), store.optimizer_state(parent)
        optimizer = torch_bytes(parent_optimizer if copy_optimizer else {})
        meta = {**parent, "session_id": child_id, "parent_session_id": parent_id,
                "root_session_id": parent["root_session_id"], "created_at": time.time(), "runs": [],
                "forked": {"copy_optimizer": copy_optimizer, "parent_runs": len(parent["runs"])},
                "artifacts": {}}  # fmt: skip
        store.recover(child_id)
        meta = store.commit(meta, {PLASTIC: plastic, OPTIM: optimizer})
    print(f"session {child_id} forked from {parent_id} ({'copied' if copy_optimizer else 'fresh'} optimizer, "
          f"root {meta['root_session_id']})")  # fmt: skip
    return meta


def run_session(store: Store, session_id: str, steps: int, seed: int) -> dict[str, Any]:
    """Run the session online for ``steps`` transitions: predict, then one transactional Muon step per chunk.

    The session is locked for the whole run (a second writer gets exit 8), every artifact is checked
    against its recorded digest before use, and the new state is committed with its digests at the end.
    """
    config = store.base_config()  # says how to create the base when there is none
    if (values := rollout_values(config, 1, steps)) > MAX_VALUES:
        raise ConfigError(f"--steps {steps} of this base's n_state {config.n_state} and u_dim {config.u_dim} would "
                          f"hold {values:,} numbers in memory, more than {MAX_VALUES:,}: run the session several "
                          "times with fewer steps")  # fmt: skip
    store.session_meta(session_id)  # says which sessions there are when there is no such one
    store.index()  # the run is registered at its end: a broken registry is refused before it starts
    directory = store.session_dir(session_id)
    with store.lock(directory, f"session run {session_id}"):
        store.recover(session_id)
        meta = store.session_meta(session_id)
        store.check_signature(meta)
        settings = meta["settings"]
        if (problem := settings_problem(settings)) is not None:
            raise EvidenceError(f"{str(directory / 'meta.json')!r} records settings session new refuses ({problem}); "
                                "restore it from a backup, or create the session again")  # fmt: skip
        if steps < settings["chunk"]:
            raise ConfigError(f"--steps {steps} is shorter than one chunk ({settings['chunk']}); use at least that")
        events = store.read_artifact(meta, EVENTS, optional=True) or b""  # checked before it is appended to
        model, served, window = _session_model(store, meta)
        L.seed_everything(seed, verbose=False)
        optimizer = dict(lr=settings["lr"], momentum=settings["momentum"], ns_steps=settings["ns_steps"],
                         optimizer_state=store.optimizer_state(meta) or None)  # fmt: skip
        gate = settings.get("gate_chunks", 0)  # a session made before the gate has no gate_chunks: none
        module = OnlineSession(model, Environment(model.config, meta["mu"]), steps, settings["chunk"], seed,
                               **optimizer, gate_chunks=gate, served=served, margins=window)  # fmt: skip
        strategy = TransactionalStrategy(_policy(settings), device="cpu")
        run_id = new_run_id()
        run_dir = directory / "runs" / run_id
        if (directory / "runs").is_symlink() or ((directory / "runs").exists() and not (directory / "runs").is_dir()):
            raise EvidenceError(f"{str(directory / 'runs')!r} is not the session's runs directory (a file or a link "
                                "in its place): restore it, or move it aside, then run the command again")
        run_dir.mkdir(parents=True)
        binding = binding_text(session_id, meta, run_id, steps, seed)  # the session this run is in (receipts bind it)
        atomic_write_text(run_dir / BINDING_FILE, binding)
        context = RunContext(layout=RunLayout.of(run_dir), stage=OnlineSession.stage, config_yaml=binding)
        trainer = _trainer(run_dir, len(module.chunks), strategy=strategy, callbacks=[_RunOf(context), Receipts()])
        trainer.fit(module)
        served = module.gate.served if gate else model.plastic_state()  # no gate: it serves what it learned
        plastic = {**model.plastic_state(), **{SERVED + k: v for k, v in served.items()},
                   GATE_WINDOW: torch.tensor(module.gate.margins, dtype=torch.float64).reshape(-1, 2)}  # fmt: skip
        if not all(bool(torch.isfinite(t).all()) for t in plastic.values()):
            raise TransactionError(f"session {session_id!r}: run {run_id} left a non-finite plastic state; nothing "
                                   "was saved and the session keeps its state from before the run")  # fmt: skip
        metrics = _write_run(run_dir, module, strategy, session_id, run_id, steps, seed)
        files = {path.name: sha256_file(path) for path in sorted(run_dir.iterdir()) if path.is_file()}
        meta["runs"] = [*meta["runs"], {"run_id": run_id, "steps": steps, "seed": seed, **metrics["final"],
                                        "files": files}]  # fmt: skip
        lines = "".join(json.dumps({"run_id": run_id, **event}, sort_keys=True) + "\n" for event in module.events)
        store.commit(meta, {PLASTIC: tensors_bytes(plastic), OPTIM: torch_bytes(trainer.optimizers[0].state_dict()),
                            EVENTS: events + lines.encode(),
                            METRICS: (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()})  # fmt: skip
    _print_metrics(metrics)
    return metrics


def _session_model(store: Store, meta: dict[str, Any]) -> tuple[WorldModel, dict[str, torch.Tensor], list]:
    """The world model with the verified base weights and the session's verified plastic state (the learner's),
    the plastic weights it serves (the learner's too where none were recorded) and its gate's window so far."""
    model = WorldModel(store.base_config())
    base = store.base_weights()
    with torch.no_grad():
        model.A_hat.copy_(base["A_hat"])
        model.B_hat.copy_(base["B_hat"])
    state = store.plastic_state(meta)
    model.load_plastic_state(state)
    learner = model.plastic_state()
    served = {name: state.get(SERVED + name, tensor).clone() for name, tensor in learner.items()}
    window = [tuple(row) for row in state[GATE_WINDOW].tolist()] if GATE_WINDOW in state else []
    return model, served, window


def _write_run(run_dir: Path, module: OnlineSession, strategy: TransactionalStrategy, session_id: str, run_id: str,
               steps: int, seed: int) -> dict[str, Any]:  # fmt: skip
    rows = module.rows
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["step", *CURVES], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "per_step.csv", text.getvalue())
    atomic_write_json(run_dir / "update_events.json", module.events)
    tail = rows[len(rows) - max(1, len(rows) // 4) :]
    metrics = {
        "session_id": session_id, "run_id": run_id, "steps": len(rows), "seed": seed,
        "updates": len(module.events), "commits": strategy.commits, "rollbacks": strategy.rolled_back,
        "promotions": len(module.promoted_at), "promoted_at": module.promoted_at,
        "rollbacks_by_reason": {k: v for k, v in strategy.rollbacks.items() if v},
        "mean": {c: statistics.fmean(r[c] for r in rows) for c in CURVES},
        "final": {c: statistics.fmean(r[c] for r in tail) for c in CURVES},
        "final_window": len(tail),
    }  # fmt: skip
    atomic_write_bytes(
        run_dir / "mse_curve.png", _plot(rows, window=max(1, steps // 50), title=f"{session_id} {run_id}")
    )
    return metrics


def _plot(rows: list[dict[str, float]], window: int, title: str) -> bytes:
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    steps = [r["step"] for r in rows]
    labels = {"mse_base": "base", "mse_no_update": "session, no updates", "mse_with_update": "session, with updates",
              "mse_learner": "learner (promoted when better)"}  # fmt: skip
    for (curve, label), style in zip(labels.items(), ("--", "-", "-", ":"), strict=True):
        values = [r[curve] for r in rows]
        smooth = [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
        axes.plot(steps, smooth, style, label=label, linewidth=2 if style == "--" else 1.2)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(f"one-step MSE (mean of {window})")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _print_metrics(metrics: dict[str, Any]) -> None:
    final, mean = metrics["final"], metrics["mean"]
    print(f"[metrics] session={metrics['session_id']} run={metrics['run_id']} steps={metrics['steps']} "
          f"updates={metrics['updates']} commits={metrics['commits']} rollbacks={metrics['rollbacks']} "
          f"promotions={metrics['promotions']}")  # fmt: skip
    for curve in CURVES:
        print(f"  {curve:<16} final={final[curve]:.6f} mean={mean[curve]:.6f}")
