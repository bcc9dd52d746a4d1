"""PromotionGate's settings: one that would make its verdict meaningless is refused when the gate is made."""

from __future__ import annotations

import math
import re

import pytest

from lit_psion.callbacks import PromotionGate
from lit_psion.core.errors import ConfigError

REFUSED = [  # (settings, what the line names); each made a gate that recorded a verdict nothing measured
    ({"max_batches": 0}, "max_batches must be >= 1 (or null: the whole split), got 0"),  # losses 0.0 -> 0.0, "hold"
    ({"max_batches": -3}, "max_batches must be >= 1"),
    ({"min_delta": math.nan}, "min_delta must be a finite number >= 0, got nan"),  # nan < 0 is False: every "promote"
    ({"min_delta": math.inf}, "min_delta must be a finite number >= 0, got inf"),
    ({"min_delta": -1.0}, "min_delta must be a finite number >= 0, got -1.0"),
]


@pytest.mark.parametrize(("settings", "says"), REFUSED, ids=["no batches", "below 0", "nan", "inf", "negative"])
def test_a_gate_setting_that_measures_nothing_is_refused(settings: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        PromotionGate(**settings)


def test_the_settings_that_measure_are_taken() -> None:
    assert PromotionGate(min_delta=0.0, max_batches=1).max_batches == 1
    assert PromotionGate(max_batches=None).max_batches is None
