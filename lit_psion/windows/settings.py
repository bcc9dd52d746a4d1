"""A window program's settings (``configs/window_lora.yaml``), checked before anything is written.

Every block is a mapping of known keys; integers are integers (a boolean is not one), numbers are finite.
What needs the base model (targets, rank against its layers) or the data is checked by ``window init``
(:func:`lit_psion.windows.founding.init_program`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from lit_psion.core.errors import ConfigError
from lit_psion.core.windows import ValidatorPolicy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProgramSettings:
    """What ``configs/window_lora.yaml`` sets (docs/windows.md).

    Args:
        contributors: How many contributors a window plans for (ids ``c0``, ``c1``, ...).
        slice_samples: Training samples per data slice (one slice per assignment).
        data: CorpusDataModule settings (``files``, ``block_size``, ``split``, ``val_fraction``, ...); the
            tokenizer is always the base run's.
        lora: ``targets``, ``rank``, ``alpha`` of every contribution.
        budget: ``steps``, ``batch_size``, ``lr`` of every contributor.
        validator: :class:`~lit_psion.core.windows.ValidatorPolicy` settings.
        gate: ``min_delta``: held-out improvement a promotion needs.
    """

    contributors: int = 4
    slice_samples: int = 160
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] = dataclasses.field(default_factory=lambda: {"targets": ["lm_head"], "rank": 8,
                                                                      "alpha": 16.0})  # fmt: skip
    budget: dict[str, Any] = dataclasses.field(default_factory=lambda: {"steps": 20, "batch_size": 8, "lr": 0.01})
    validator: dict[str, Any] = dataclasses.field(default_factory=dict)
    gate: dict[str, Any] = dataclasses.field(default_factory=lambda: {"min_delta": 0.0})

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Any, where: str) -> ProgramSettings:
        if not isinstance(values, dict):
            raise ConfigError(f"{where} is not a mapping of window settings; see configs/window_lora.yaml")
        known = {field.name for field in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ConfigError(f"{where}: unknown window setting {unknown[0]!r}; settings are "
                              f"{', '.join(sorted(known))}")  # fmt: skip
        settings = cls(**values)
        settings.check(where)
        return settings

    def check(self, where: str) -> None:
        """Refuse (exit 2) any setting a window could not run with, before anything is written: each block a
        mapping of known keys, integers that are integers (not booleans), positive numbers that are numbers."""
        problems = []
        blocks = {"data": self.data, "lora": self.lora, "budget": self.budget, "validator": self.validator,
                  "gate": self.gate}  # fmt: skip
        for name, block in blocks.items():
            if not isinstance(block, dict):
                raise ConfigError(f"{where}: {name} must be a mapping, got {block!r}; see configs/window_lora.yaml")
        known = {"lora": {"targets", "rank", "alpha"}, "budget": {"steps", "batch_size", "lr"},
                 "validator": {"norm_factor", "max_regression", "held_out_samples"}, "gate": {"min_delta"},
                 "data": corpus_settings()}  # fmt: skip
        for name, keys in known.items():
            if unknown := sorted(set(blocks[name]) - keys):
                problems.append(f"unknown setting {name}.{unknown[0]}; {name} takes {', '.join(sorted(keys))}")
        problems += _integers(contributors=self.contributors, slice_samples=self.slice_samples,
                              **{f"budget.{k}": self.budget.get(k) for k in ("steps", "batch_size")},
                              **{"lora.rank": self.lora.get("rank")})  # fmt: skip
        problems += _positive_numbers(**{"budget.lr": self.budget.get("lr"), "lora.alpha": self.lora.get("alpha")})
        targets = self.lora.get("targets")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            problems.append(f"lora.targets must be a non-empty list of target names, got {targets!r}")
        if "tokenizer_file" in self.data or "tokenizer" in self.data:
            problems.append("data.tokenizer_file / data.tokenizer cannot be set: a window program tokenizes with "
                            "its base run's tokenizer")  # fmt: skip
        policy = self.validator
        problems += _positive_numbers(**{f"validator.{k}": policy[k] for k in ("norm_factor",) if k in policy})
        if "max_regression" in policy:
            problems += _non_negative(**{"validator.max_regression": policy["max_regression"]})
        if policy.get("held_out_samples") is not None:
            problems += _integers(**{"validator.held_out_samples": policy["held_out_samples"]})
        if "min_delta" in self.gate:
            problems += _non_negative(**{"gate.min_delta": self.gate["min_delta"]})
        if not problems:
            problems += ValidatorPolicy(**policy).problems()
        if problems:
            raise ConfigError(f"{where}: {problems[0]}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integers(**values: Any) -> list[str]:
    return [f"{name} must be an integer >= 1, got {value!r}" for name, value in values.items()
            if isinstance(value, bool) or not isinstance(value, int) or value < 1]  # fmt: skip


def _positive_numbers(**values: Any) -> list[str]:
    return [f"{name} must be a number > 0, got {value!r}" for name, value in values.items()
            if not _number(value) or not value > 0]  # fmt: skip


def _non_negative(**values: Any) -> list[str]:
    return [f"{name} must be a number >= 0, got {value!r}" for name, value in values.items()
            if not _number(value) or value < 0]  # fmt: skip


def corpus_settings() -> set[str]:
    """The CorpusDataModule arguments a program's ``data`` may set (all but the tokenizer's; a test holds this list
    to the class's signature, which is not imported here: settings are checked before anything heavy loads)."""
    return {"files", "max_bytes", "vocab_size", "block_size", "documents", "split", "val_fraction", "test_fraction",
            "sample_stride", "seed", "cache_dir", "num_workers", "batch_size"}


def load_settings(path: Path) -> ProgramSettings:
    """The window settings in a YAML file (its ``window:`` block, or the whole file)."""
    if not path.is_file():
        what = "is a directory, not a YAML file" if path.is_dir() else "not found"
        preset = Path(__file__).resolve().parents[2] / "configs" / "window_lora.yaml"  # in the lit_psion checkout
        shown = str(preset) if preset.is_file() else "configs/window_lora.yaml in the lit_psion checkout"
        raise ConfigError(f"window config {str(path)!r} {what}; start from {shown}")
    try:
        values = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as error:
        raise ConfigError(f"window config {str(path)!r} is not UTF-8 text ({error.reason}); give a YAML file"
                          ) from error  # fmt: skip
    except yaml.YAMLError as error:
        raise ConfigError(f"window config {str(path)!r} is not valid YAML ({str(error).splitlines()[0]})") from error
    if isinstance(values, dict) and "window" in values:
        values = values["window"]
    return ProgramSettings.from_mapping(values, repr(str(path)))
