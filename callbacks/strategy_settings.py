"""The strategy a config trains with, as settings a resume compares (``checkpoint.run_settings``).

A resume that changes the strategy (transactional to plain, or a policy's limits) trains on otherwise: which steps
roll back, and which batches are left out. It is warned about and recorded like a model or data setting.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from lit_psion.core.policy import TransactionPolicy

POLICY = "trainer.strategy.policy."


def strategy_settings(trainer: Any) -> dict[str, Any]:
    """``trainer.strategy`` (its class's name; a registered name is read as the class it registers) and its
    ``trainer.strategy.policy.*`` settings (a registered name's: the default policy), from a config's trainer
    section."""
    given = trainer.get("strategy") if isinstance(trainer, dict) else None
    if isinstance(given, dict):
        policy = (given.get("init_args") or {}).get("policy")
        settings = {f"{POLICY}{key}": value for key, value in policy.items()} if isinstance(policy, dict) else {}
        return {"trainer.strategy": str(given.get("class_path", "")).rsplit(".", 1)[-1], **settings}
    if given is None:
        return {}
    strategy = _registered(given)
    if strategy is None:
        return {"trainer.strategy": given}
    try:
        takes_a_policy = "policy" in inspect.signature(strategy).parameters
    except (TypeError, ValueError):
        takes_a_policy = False
    defaults = dataclasses.asdict(TransactionPolicy()) if takes_a_policy else {}
    return {"trainer.strategy": strategy.__name__, **{f"{POLICY}{key}": value for key, value in defaults.items()}}


def _registered(name: Any) -> type | None:
    """The class a strategy name registers (``transactional``: TransactionalStrategy), else None."""
    from lightning.pytorch.strategies import StrategyRegistry

    entry = StrategyRegistry[name] if isinstance(name, str) and name in StrategyRegistry else None  # (get builds one)
    strategy = entry.get("strategy") if isinstance(entry, dict) else None
    return strategy if isinstance(strategy, type) else None
