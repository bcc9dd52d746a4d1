"""Which strategies ``python -m lit_psion`` can run here, and which checkpoint layout each one reads.

Checked before anything of a run is written: a name Lightning's registry does not know, DeepSpeed
without CUDA or without its extra, and Lightning's own FSDP/ModelParallel/DeepSpeed strategies (their
checkpoints bypass lit_psion's manifest) are refused with exit 2; a checkpoint whose layout (one
safetensors file, DCP shards, a DeepSpeed directory) the chosen strategy does not read, with exit 4.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any

import torch
from lightning.pytorch.strategies import StrategyRegistry

from lit_psion.core.checkpoint import DEEPSPEED, SHARDED, SINGLE, VerifiedCheckpoint
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.policy import TransactionPolicy


def refuse_unrunnable_strategy(trainer: Any) -> None:
    """Refuse (exit 2) the strategy of a parsed ``trainer`` config that cannot run here or cannot be verified."""
    _check_name(trainer.strategy)
    _check_policy(trainer.strategy)
    _refuse_one_device_for_many(trainer)
    _refuse_deepspeed_without_cuda(trainer)
    _refuse_unverified_engine(trainer.strategy)
    _refuse_a_non_mesh_strategy_under_mesh_launch(trainer.strategy)


def _refuse_a_non_mesh_strategy_under_mesh_launch(strategy: Any) -> None:
    """A worker ``mesh launch`` started trains with a mesh strategy, whatever form of argument named another (the
    launcher checks the flags and configs it reads; ``--trainer '{strategy: ddp}'`` reaches the fit alone): else
    it trains under torchrun's agent with no membership epoch, receipt or drain."""
    from lit_psion.core.membership import MESH_SETTINGS_ENV

    named = str(strategy.get("class_path") if hasattr(strategy, "get") else strategy)
    if os.environ.get(MESH_SETTINGS_ENV) and "elastic_mesh" not in named and "ElasticMesh" not in named:
        raise ConfigError(f"the strategy is {named!r}, but `mesh launch` trains with elastic_mesh (DDP with receipted "
                          "membership epochs); leave the strategy out (a sharded run continues with `fit --config "
                          "configs/overlays/fsdp.yaml`)")  # fmt: skip


def _check_name(strategy: Any) -> None:
    """A strategy given by name must be one Lightning's StrategyRegistry knows (lit_psion registers its own)."""
    if not isinstance(strategy, str) or strategy == "auto" or strategy in StrategyRegistry:
        return
    close = difflib.get_close_matches(strategy, StrategyRegistry.available_strategies(), n=1)
    ours = [name for name, entry in StrategyRegistry.items() if entry["strategy"].__module__.startswith("lit_psion.")]
    raise ConfigError(f"--trainer.strategy {strategy!r} is not a registered strategy name"
                      f"{f' (did you mean {close[0]}?)' if close else ''}; use ddp, {', '.join(ours)} "
                      "(all: lightning.pytorch.strategies.StrategyRegistry), or give class_path and init_args in "
                      "YAML")  # fmt: skip


def _check_policy(strategy: Any) -> None:
    """A transactional strategy's policy is checked before anything starts, each bad value named (jsonargparse would
    bury :class:`TransactionPolicy`'s own message in a dump of the parsed config)."""
    init_args = strategy.get("init_args") if hasattr(strategy, "get") else None
    policy = init_args.get("policy") if hasattr(init_args, "get") else None
    if policy is None or isinstance(policy, TransactionPolicy):
        return
    TransactionPolicy(**(policy.as_dict() if hasattr(policy, "as_dict") else dict(policy)))


ONE_DEVICE = {"transactional": "transactional_ddp", "TransactionalStrategy": "transactional_ddp",
              "single_device": "ddp", "SingleDeviceStrategy": "ddp"}
"""Strategies that train one process on one device, and the one that trains the same way on several."""


def _device_count(devices: Any) -> int | None:
    """How many devices a ``trainer.devices`` setting names (None: ``auto``, ``-1`` or anything else)."""
    if isinstance(devices, str):
        parts = [part for part in devices.split(",") if part.strip()]
        devices = len(parts) if "," in devices else int(devices) if devices.strip().lstrip("-").isdigit() else None
    if isinstance(devices, list | tuple):
        return len(devices)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 0 else None


def _refuse_one_device_for_many(trainer: Any) -> None:
    """A one-device strategy with several devices or nodes: Lightning trains one process and says nothing, while
    config.yaml records the devices asked for."""
    name = _strategy_name(trainer.strategy)
    if name not in ONE_DEVICE:
        return
    devices, nodes = _device_count(trainer.get("devices")), trainer.get("num_nodes")
    many = f"--trainer.devices {trainer.get('devices')}" if (devices or 0) > 1 else f"--trainer.num_nodes {nodes}"
    if (devices or 0) > 1 or (isinstance(nodes, int) and nodes > 1):
        raise ConfigError(f"--trainer.strategy {name} trains one process on one device, but {many} asks for more "
                          f"(it would quietly train one); use --trainer.strategy {ONE_DEVICE[name]} to train on "
                          "each, or give one device on one node")  # fmt: skip


def settings_follow_the_name(argv: list[str]) -> list[str]:
    """``argv`` with ``--trainer.strategy NAME`` given as NAME's class path when ``--trainer.strategy.KEY`` settings
    follow it (jsonargparse applies settings to a class path only): ``--trainer.strategy transactional_ddp
    --trainer.strategy.policy.rollback_tol 0.5`` means that strategy with that policy. The settings a name is
    registered with (``ddp``: ``start_method: popen``) are given first, so the user's own come after and win."""
    flag = "--trainer.strategy"
    if not any(arg.startswith(flag + ".") for arg in argv):
        return argv
    out: list[str] = []
    at = 0
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value, form, end = argv[i + 1], "{}", i + 2
        elif arg.startswith(flag + "="):
            value, form, end = arg.split("=", 1)[1], flag + "={}", i + 1
        else:
            continue
        entry = dict.get(StrategyRegistry, value)  # the entry (StrategyRegistry.get would build the strategy)
        if entry is None or not any(a.startswith(flag + ".") for a in argv[end:]):
            continue
        cls = entry["strategy"]
        presets = [f"{flag}.{key}={_flag_value(preset)}" for key, preset in (entry.get("init_params") or {}).items()]
        out += [*argv[at : end - 1], form.format(f"{cls.__module__}.{cls.__qualname__}"), *presets]
        at = end
    return out + argv[at:]


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _strategy_name(strategy: Any) -> str:
    """The registered name or class name a config gives for the strategy (``""`` for anything else)."""
    if isinstance(strategy, str):
        return strategy
    if hasattr(strategy, "get"):  # a class_path + init_args mapping (jsonargparse's Namespace, a dict)
        return str(strategy.get("class_path", "")).rsplit(".", 1)[-1]
    return type(strategy).__name__ if strategy is not None else ""


SHARDED_NAMES = ("sharded", "ShardedStrategy", "transactional_sharded", "TransactionalShardedStrategy")
"""The registry and class names of the strategies that write and read sharded (DCP) checkpoints."""


def _layout_of(strategy: Any) -> str:
    """The checkpoint layout a strategy writes and reads."""
    name = _strategy_name(strategy)
    if name in SHARDED_NAMES:
        return SHARDED
    return DEEPSPEED if "deepspeed" in name.lower() else SINGLE


LAYOUT_HINTS = {
    SHARDED: "resume it with --config configs/overlays/fsdp.yaml (or --trainer.strategy sharded), or read it as one "
             "model after `python -m lit_psion ckpt consolidate RUN_DIR`",
    DEEPSPEED: "resume it with the DeepSpeed overlay that wrote it (configs/overlays/deepspeed_zero2.yaml or _zero3)",
    SINGLE: "resume it with the strategy that wrote it (single device, ddp, transactional, elastic_mesh)",
}  # fmt: skip


def refuse_another_layout(checkpoint: VerifiedCheckpoint, strategy: Any, fitting: bool) -> None:
    """A checkpoint loads only under a strategy that reads its layout (one safetensors file, DCP shards, DeepSpeed);
    refused before the run is touched (its run.json keeps its status)."""
    wanted = _layout_of(strategy)
    if checkpoint.layout != wanted:
        raise CheckpointError(f"checkpoint {checkpoint.path.name} of run {checkpoint.manifest.run_id} is a "
                              f"{checkpoint.layout} checkpoint, but --trainer.strategy "
                              f"{_strategy_name(strategy) or 'auto'} reads {wanted} ones; "
                              f"{LAYOUT_HINTS[checkpoint.layout]}")  # fmt: skip
    if fitting and checkpoint.manifest.consolidated_from is not None:
        raise CheckpointError(f"checkpoint {str(checkpoint.path)!r} is a consolidated model (no optimizer state): a "
                              "fit cannot resume from it; fine-tune it with --model.init_args.base_checkpoint, or "
                              "resume the sharded run with --config configs/overlays/fsdp.yaml --ckpt_path last")


def _refuse_deepspeed_without_cuda(trainer: Any) -> None:
    """Lightning's DeepSpeed strategy needs CUDA and the ``deepspeed`` extra: refused up front, naming the fix."""
    if "deepspeed" not in _strategy_name(trainer.strategy).lower():
        return
    if trainer.get("accelerator") == "cpu" or not torch.cuda.is_available():
        raise ConfigError("DeepSpeed needs a CUDA GPU, and this machine has none (or --trainer.accelerator is cpu); "
                          "on CPU shard with FSDP2 instead: --config configs/overlays/fsdp.yaml")  # fmt: skip
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("DeepSpeed is not installed; install the extra: DS_BUILD_OPS=0 pip install "
                          "--no-build-isolation -c constraints.txt -e '.[deepspeed]'")  # fmt: skip


def _refuse_unverified_engine(strategy: Any) -> None:
    """Lightning's own FSDP, ModelParallel and DeepSpeed strategies write checkpoints past lit_psion's
    CheckpointIO (no manifest, no pointer); lit_psion's subclasses of them write verified ones."""
    name = _strategy_name(strategy)
    if name in ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy") or (
            isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed"))):  # fmt: skip
        raise ConfigError(f"--trainer.strategy {name} writes checkpoints lit_psion cannot verify; use "
                          "configs/overlays/fsdp.yaml (lit_psion.strategies.ShardedStrategy, FSDP2, CPU or CUDA) or "
                          "configs/overlays/deepspeed_zero2.yaml / _zero3.yaml (VerifiedDeepSpeedStrategy, CUDA)")
