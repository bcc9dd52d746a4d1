"""The strategy a config trains with, as settings a resume compares (``checkpoint.run_settings``).

A resume that changes the strategy (transactional to plain, or a policy's limits) trains on otherwise: which steps
roll back, and which batches are left out. It is warned about and recorded like a model or data setting.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

from lit_psion.core.policy import TransactionPolicy

POLICY = "trainer.strategy.policy."


def strategy_settings(trainer: Any) -> dict[str, Any]:
    """``trainer.strategy`` (its class's name; a registered name is read as the class it registers) and its
    ``trainer.strategy.policy.*`` settings (a registered name's: the default policy), from a config's trainer
    section."""
    given = trainer.get("strategy") if isinstance(trainer, dict) else None
    if isinstance(given, dict):
        class_path = str(given.get("class_path", ""))
        init_args = given.get("init_args")
        policy = init_args.get("policy") if isinstance(init_args, dict) else None
        if not isinstance(policy, dict):  # none given: the strategy makes the default one
            policy = _default_policy(_imported(class_path))
        return {"trainer.strategy": class_path.rsplit(".", 1)[-1],
                **{f"{POLICY}{key}": value for key, value in policy.items()}}  # fmt: skip
    if given is None:
        return {}
    strategy = _registered(given)
    if strategy is None:
        return {"trainer.strategy": given}
    return {"trainer.strategy": strategy.__name__,
            **{f"{POLICY}{key}": value for key, value in _default_policy(strategy).items()}}  # fmt: skip


def _default_policy(strategy: type | None) -> dict[str, Any]:
    """The policy a strategy class that takes one makes when given none (else none)."""
    try:
        takes_a_policy = strategy is not None and "policy" in inspect.signature(strategy).parameters
    except (TypeError, ValueError):
        takes_a_policy = False
    return dataclasses.asdict(TransactionPolicy()) if takes_a_policy else {}


def _imported(class_path: str) -> type | None:
    """The class ``class_path`` names, from a module already imported (a recorded config never imports code)."""
    module, _, name = class_path.rpartition(".")
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _registered(name: Any) -> type | None:
    """The class a strategy name registers (``transactional``: TransactionalStrategy), else None."""
    from lightning.pytorch.strategies import StrategyRegistry

    entry = StrategyRegistry[name] if isinstance(name, str) and name in StrategyRegistry else None  # (get builds one)
    strategy = entry.get("strategy") if isinstance(entry, dict) else None
    return strategy if isinstance(strategy, type) else None
