"""What a resume records of a strategy change: the same strategy given another way is no change, and a limit of
infinity is recorded as its receipt can hold it."""

from __future__ import annotations

import lit_psion.strategies  # noqa: F401  (registers `transactional`, imports the class a config names)
from lit_psion.callbacks.checkpoint import changed_settings
from lit_psion.core.digest import canonical_json

PATH = "lit_psion.strategies.transactional.TransactionalStrategy"


def _config(strategy: str) -> str:
    return f"model: {{class_path: m}}\ntrainer:\n  strategy: {strategy}\n"


def test_the_same_strategy_given_by_name_or_by_class_path_is_no_change() -> None:
    """The class-path form with no policy recorded none, the name the defaults: six changes "0.2 -> None"."""
    for other in (f"{{class_path: {PATH}}}", f"{{class_path: {PATH}, init_args: {{policy: null}}}}"):
        assert changed_settings(_config("transactional"), _config(other)) == ()


def test_an_infinite_limit_is_recorded_as_text() -> None:
    """"inf" is how the policy docs say "no limit"; a float infinity made the resumed receipt unencodable (exit 1)."""
    given = _config(f"{{class_path: {PATH}, init_args: {{policy: {{grad_norm_max: .inf}}}}}}")
    changed = changed_settings(_config("transactional"), given)
    assert ("trainer.strategy.policy.grad_norm_max", None, "inf") in changed
    canonical_json({"changed_settings": changed})  # a receipt can hold it
