"""A resume trains with the optimizer settings its config gives, for each optimizer a model family builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import fit, latest_checkpoint

MUON = ("--model.init_args.optimizer.name", "muon")
GRAPH = "configs/graph_core_oscillators.yaml"
GRAPH_SMALL = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.steps",
               "60", "--data.init_args.n_train", "16", "--data.init_args.window", "8", "--trainer.val_check_interval",
               "3")  # fmt: skip

CASES = [  # (case, config, the run's arguments, the override, what the restored groups then hold)
    ("muon momentum", None, MUON, ("--model.init_args.optimizer.momentum", "0.8"), {0: ("momentum", 0.8)}),
    ("muon ns_steps", None, MUON, ("--model.init_args.optimizer.ns_steps", "3"), {0: ("ns_steps", 3)}),
    ("muon's own rate", None, MUON, ("--model.init_args.optimizer.muon_lr", "0.02"), {0: ("initial_lr", 0.02)}),
    ("graph core's Adam rate", GRAPH, GRAPH_SMALL, ("--model.init_args.config.lr", "0.001"),
     {0: ("initial_lr", 0.001)}),
    ("the run's own settings", None, MUON, (), {}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config", "run", "override", "holds"), CASES, ids=[c[0] for c in CASES])
def test_the_restored_optimizer_takes_the_settings_the_resume_gives(
    tmp_path: Path, case: str, config: str | None, run: tuple, override: tuple, holds: dict
) -> None:
    """The checkpoint's param groups came back whole, so Muon's momentum or a graph core's rate given on resume
    was ignored (then refused); the moments stay the checkpoint's."""
    kwargs = {"config": config} if config else {}
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, *run, "--trainer.max_steps", "3", **kwargs) == 0
    before = _first_optimizer(latest_checkpoint(tmp_path)["optimizer_states"][0])
    assert fit(*root, *run, "--trainer.max_steps", "4", "--ckpt_path", "last", *override, **kwargs) == 0
    after = _first_optimizer(latest_checkpoint(tmp_path)["optimizer_states"][0])
    for index, (name, value) in holds.items():
        assert after["param_groups"][index][name] == pytest.approx(value), after["param_groups"][index]
        assert before["param_groups"][index][name] != pytest.approx(value)
    if not holds:  # untouched: the groups' settings are the checkpoint's
        strip = lambda groups: [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in groups]  # noqa: E731
        assert strip(after["param_groups"]) == strip(before["param_groups"])
    assert after["state"].keys() == before["state"].keys()  # the same moments, carried on


def _first_optimizer(state: dict) -> dict:
    """An optimizer's state dict; for Muon with AdamW, the Muon one (group 0 is Muon's)."""
    return state.get("muon", state)
