"""What the CLI checks and rewrites of fit/validate/test/predict arguments around LightningCLI's parse.

Plain functions over argv and the parsed config (no Lightning import): Lightning's own optimizer groups
refused, and trainer settings Lightning would accept and then fail on mid-run reported as one line each
(:mod:`lit_psion.commands.argv_forms` rewrites argv into the forms the parser takes).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from lit_psion.commands.class_values import near_setting, not_a_class_path, unfilled_settings
from lit_psion.core.errors import ConfigError, LitPsionError, lit_psion_cause

DEFAULT_ROOT = "runs"


def refuse_lightning_optimizer_groups(argv: list[str]) -> None:
    """LightningCLI's ``--optimizer``/``--lr_scheduler`` would replace the model's own optimizer without a trace in
    its receipts or checkpoint; lit_psion models build theirs from ``model.init_args.optimizer``."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.split(".", 1)[0] in ("--optimizer", "--lr_scheduler"):
            raise ConfigError(f"{flag} is not used: lit_psion models build their optimizer and schedule from "
                              "model.init_args.optimizer (--model.init_args.optimizer.name adamw|muon, .lr, "
                              ".weight_decay, .warmup_steps, .decay_steps, .min_lr_ratio); set those instead")


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` reads as YAML, or one line names the file and where it breaks (jsonargparse's own
    message says only ``"<unicode string>"``)."""
    import yaml  # jsonargparse's own YAML reader

    class _Strict(yaml.SafeLoader):
        """Refuses a key given twice in one mapping (YAML takes the last silently; jsonargparse names no file)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by the loader, not a key
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping",
                                                            key_node.start_mark)  # fmt: skip
                seen.add(key) if isinstance(key, str | int | float | bool) else None
            return super().construct_mapping(node, deep)

    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else arg.split("=", 1)[1] if \
            arg.startswith("--config=") else None  # fmt: skip
        if value is None or not Path(value).is_file():
            continue
        try:
            text = Path(value).read_text(encoding="utf-8")
            if _expanded_nodes(yaml.compose(text, Loader=yaml.SafeLoader), most := _most_nodes()) > most:
                raise ConfigError(f"--config {value!r} holds more than {most} YAML values once its aliases are "
                                  "expanded (a config holds a few hundred); give a settings file such as "
                                  "configs/decoder_tiny.yaml, or raise OMEGACONF_MAX_YAML_EXPANDED_NODES for a file "
                                  "you trust")  # fmt: skip
            loaded = yaml.load(text, Loader=_Strict)  # a SafeLoader that refuses a key given twice
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
            where = getattr(error, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            reason = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(f"--config {value!r} is not valid YAML{at} ({reason}); fix the file") from error
        if not isinstance(loaded, dict):
            what = "is empty" if loaded is None else f"holds a YAML {type(loaded).__name__}"
            raise ConfigError(f"--config {value!r} {what}, not a mapping of settings; give one such as "
                              "configs/decoder_tiny.yaml (trainer:, model:, data:)")  # fmt: skip
        for given in (arg for arg in argv[:i] if arg.startswith("--") and not arg.startswith("--config")):
            flag = given.split("=", 1)[0]
            shown = given if flag.endswith("+") else flag  # --trainer.callbacks+=X: what it adds
            if _sets(loaded, flag.removeprefix("--").removesuffix("+").split(".")):
                raise ConfigError(f"{shown} comes before --config {value!r}, which sets it too, so the file's value "
                                  "would be used; give it after the --config files")  # fmt: skip


MOST_CONFIG_NODES = 10_000
"""OmegaConf's default limit on a config's expanded YAML nodes (beyond it, the message jsonargparse passes on
names no file); ``OMEGACONF_MAX_YAML_EXPANDED_NODES`` sets another, or ``none``."""


def _most_nodes() -> float:
    given = os.environ.get("OMEGACONF_MAX_YAML_EXPANDED_NODES", "").strip().lower()
    if given == "none":
        return math.inf
    return int(given) if given.isdigit() else MOST_CONFIG_NODES


def _expanded_nodes(root: Any, most: float) -> float:
    """How many YAML nodes ``root`` (a composed document) holds with every alias expanded, counted without
    expanding them (an alias bomb stays cheap); ``inf`` past ``most``."""
    import yaml

    sizes: dict[int, float] = {}

    def size(node: Any) -> float:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = math.inf  # a node that contains itself expands without end
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        sizes[id(node)] = total if total <= most else math.inf
        return sizes[id(node)]

    return 0 if root is None else size(root)


def _sets(config: Any, keys: list[str]) -> bool:
    """Whether the YAML mapping ``config`` sets the dotted setting ``keys`` (``init_args`` may be left out), or a
    list above it (``trainer.callbacks``: the file's list replaces the one a setting under it went into)."""
    for key in keys:
        if not isinstance(config, dict):
            return isinstance(config, list)
        if key not in config and isinstance(config.get("init_args"), dict):
            config = config["init_args"]  # --model.optimizer.lr is model.init_args.optimizer.lr
        if key not in config:
            return False
        config = config[key]
    return True


def setting_problems(config: Any, subcommand: str | None) -> list[str]:
    """Trainer settings Lightning would accept and then fail on mid-run (or never finish with), as messages."""
    trainer, problems = config.trainer, unfilled_settings(config)
    if not hasattr(trainer, "get"):
        return [f"trainer must be a mapping of Trainer settings, got {trainer!r}; give trainer: {{max_steps: ...}} "
                "or leave the key out"]  # fmt: skip
    if config.get("weights_only") is False:
        problems.append("weights_only false: lit_psion loads weights from safetensors and everything else with "
                        "torch.load(weights_only=True), never unpickling code; leave it out")  # fmt: skip
    epochs = trainer.get("max_epochs")
    if isinstance(epochs, int) and (epochs == 0 or epochs < -1):
        problems.append(f"trainer.max_epochs must be >= 1 (or -1: no limit), got {epochs!r}")
    for key in ("log_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch"):
        if isinstance(trainer.get(key), int) and trainer.get(key) < 1:
            problems.append(f"trainer.{key} must be >= 1, got {trainer.get(key)!r}")
    if isinstance(trainer.get("limit_train_batches"), int | float) and not trainer.get("limit_train_batches") > 0:
        problems.append(f"trainer.limit_train_batches must be > 0 (it trains nothing), got "
                        f"{trainer.get('limit_train_batches')!r}")  # fmt: skip
    for split in ("val", "test", "predict"):  # Lightning refused -1 after its start-up, as "not [0, 1] or an int"
        limit = trainer.get(f"limit_{split}_batches")
        if isinstance(limit, int | float) and not isinstance(limit, bool) and not (
            limit >= 0 and (isinstance(limit, int) or limit <= 1 or limit % 1 == 0)  # (Lightning reads 2.0 as 2)
        ):
            problems.append(f"trainer.limit_{split}_batches must be a count >= 0 (0: none) or a fraction in "
                            f"[0.0, 1.0], got {limit!r}")  # fmt: skip
    if isinstance(trainer.get("gradient_clip_val"), int | float) and trainer.get("gradient_clip_val") < 0:
        problems.append(f"trainer.gradient_clip_val must be >= 0 (null: no clipping), got "
                        f"{trainer.get('gradient_clip_val')!r}")  # fmt: skip
    interval = trainer.get("val_check_interval")
    if (isinstance(interval, int | float) and not interval > 0) or (
        isinstance(interval, str) and _max_time_problem(interval) is not None and ":" not in interval
    ):  # "nan" or "1e3x" arrive as text, which Lightning would read as a duration
        problems.append(f"trainer.val_check_interval must be > 0 (steps, or a fraction of an epoch), got {interval!r}")
    sanity = trainer.get("num_sanity_val_steps")
    if isinstance(sanity, int) and not isinstance(sanity, bool) and sanity < -1:
        problems.append(f"trainer.num_sanity_val_steps must be >= 0 (or -1: every validation batch), got {sanity!r}")
    max_steps, max_epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        problems.append(f"trainer.max_steps must be >= 1 (or -1 with max_epochs), got {max_steps!r}")
    elif max_steps == -1 and max_epochs in (None, -1) and subcommand == "fit":
        problems.append("trainer.max_steps -1 with no max_epochs never ends; set trainer.max_steps or max_epochs")
    nodes, devices = trainer.get("num_nodes"), trainer.get("devices")
    if isinstance(nodes, int) and nodes < 1:
        problems.append(f"trainer.num_nodes must be >= 1, got {nodes!r}")
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)  # "--trainer.devices -2" arrives as text
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1):
        problems.append(f"trainer.devices must be >= 1, -1 (all) or auto, got {devices!r}")
    if trainer.get("default_root_dir") == "":
        problems.append(f"trainer.default_root_dir is empty; give the directory runs go in (default: {DEFAULT_ROOT})")
    if (problem := _max_time_problem(trainer.get("max_time"))) is not None:
        problems.append(problem)
    if (problem := _strategy_device_problem(trainer.get("strategy"))) is not None:
        problems.append(problem)
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        problems.append(f"seed_everything must be in 0..{2**32 - 1}, got {seed!r}")
    if placeholders := [key for key, value in config.items() if isinstance(value, str) and "BASE_RUN_ID" in value]:
        problems.append(f"{', '.join(placeholders)}: still the preset's placeholder BASE_RUN_ID; give the base run "
                        "directory (runs/<run id>, and its tokenizer.json) in its place")  # fmt: skip
    return problems


def _strategy_device_problem(strategy: Any) -> str | None:
    """A strategy's ``device`` that is no device here (jsonargparse reported its constructor's error as "Expected a
    <class 'str'>", exit 1)."""
    init_args = getattr(strategy, "init_args", None)
    device = init_args.get("device") if hasattr(init_args, "get") else None
    if not isinstance(device, str):
        return None
    import torch  # (a fit's, with a strategy given: Lightning imports it anyway)

    try:
        kind = torch.device(device).type
    except RuntimeError:
        return f"trainer.strategy.device {device!r} is not a device (cpu, cuda:0, ...); leave it out for the default"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"trainer.strategy.device {device!r}: this machine has no CUDA device; give cpu, or leave it out"
    return None


def _max_time_problem(value: Any) -> str | None:
    """``trainer.max_time`` as Lightning reads it (``DD:HH:MM:SS`` or a dict of timedelta fields), if it is not a
    positive duration."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = (int(part) for part in value.split(":"))
            duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        else:
            duration = value if isinstance(value, timedelta) else timedelta(**dict(value))
    except (ValueError, TypeError):
        return f"trainer.max_time must be DD:HH:MM:SS (e.g. 00:01:30:00) or a dict such as {{hours: 2}}, got {value!r}"
    if duration <= timedelta(0):
        return f"trainer.max_time must be a positive duration (it would stop before the first step), got {value!r}"
    return None


_CLASS_PROBLEM = re.compile(r"Problem with given class_path '([^']+)': (.*?)(?= - Expected a | Given value type:| - "
                            r"Problem with given class_path| - Not a valid subclass|$)")  # fmt: skip


_UNION_VALUE = re.compile(r'Parser key "[^"]+": Does not validate against any of the Union subtypes Subtypes: '
                          r"\[(?P<types>(?:[^\[\]]|\[[^\]]*\])*)\].*?Given value: (?P<value>\S+)")  # fmt: skip
_FAILED_IMPORT = re.compile(r"Expected a path but (?P<path>\S+) either not accessible or invalid .*?Errors: - "
                            r"(?P<why>.+?)(?: - |$)")  # fmt: skip
_NOT_SUBCLASS = re.compile(r"Import path (?P<path>\S+) does not correspond to a subclass of (?P<kind>\w+)")
_NO_CLASS = re.compile(r"No module named '[^']+'|module '[^']+' has no attribute '[^']+'")


def _no_class(key: str, path: str, missing: str) -> str:
    """A class path that did not import: a typo in it, or a module it names importing one that is not installed."""
    module, own = re.fullmatch(r"No module named '([^']+)'", missing), path.rsplit(".", 1)[0]
    if module is not None and not f"{own}.".startswith(f"{module[1]}."):  # not its own module, nor a package of it
        return (f"{key}: {own!r}, the module of {path}, imports {module[1]!r}, which is not installed ({missing}); "
                "install it, or change that import")  # fmt: skip
    return f"{key}: no class {path!r} to import ({missing}); check the class_path's module and class name"


_LITERAL = re.compile(r"Expected a typing\.Literal\[(?P<choices>[^\]]*)\]\. Got value: (?P<value>\S+)")
_NO_VALUE = re.compile(r"argument (?P<flag>--\S+): expected one argument")
_PLAIN_VALUE = re.compile(r"Parser key \"[^\"]+\": Expected a <class '(?P<types>[^']+)'>\. Got value:"
                          r"(?: (?!- )(?P<value>\[.*\]|\{.*\}|\S+))?")  # (none: an empty value, before the next "- ")


TOP_LEVEL_FLAGS = ("config", "ckpt_path", "seed_everything", "print_config", "weights_only", "trainer", "model",
                   "data", "checkpoint", "receipts", "telemetry", "dashboard", "progress_bar")  # fmt: skip
"""The training commands' flags outside a group (``fit --help``), for a typo's suggestion."""


def plain_parse_error(message: str, argv: list[str] = ()) -> str:
    """jsonargparse's message for a value of the wrong type, or for a class given settings it does not take, as the
    one line that matters: which setting or class, what was wrong, and where the settings are listed (else
    ``message`` unchanged)."""
    flat = " ".join(message.split())
    if (required := re.fullmatch(r"the following arguments are required: (?P<keys>.+)", flat)) is not None:
        keys = [key.split(".", 1)[-1] for key in required["keys"].split(", ")]
        return (f"no {' and no '.join(keys)} configured; give a preset first (--config configs/decoder_tiny.yaml), "
                "then any overlay (--config configs/overlays/...) and flags")  # fmt: skip
    if (missing := _NO_VALUE.fullmatch(flat)) is not None:
        flag = missing["flag"]  # the parser names the group of a dotted flag whose value it took for a flag
        given = [arg for index, arg in enumerate(argv) if arg.startswith(flag + ".") and "=" not in arg
                 and (index + 1 == len(argv) or argv[index + 1].startswith("-"))]  # (last, or a flag next)
        flag = given[-1] if given else flag
        return (f"{flag} was given no value; give it one, written as --FLAG=VALUE when the value starts "
                "with '-' (such as --model.optimizer.lr=-1e-3)")  # fmt: skip
    if (config := re.fullmatch(r'Parser key "config": (File does not exist|Path is not a file): \'(.+)\'', flat)):
        what = "no such file" if config[1].startswith("File") else "not a file"
        where = "" if Path(config[2]).is_absolute() else f" (a relative path is read from {os.getcwd()!r})"
        return f"--config {config[2]!r}: {what}{where}; give a YAML config such as configs/decoder_tiny.yaml"
    if (unknown := re.search(r"(?:does not accept option '|unrecognized arguments: --)(trainer\.\w+)", flat)):
        import difflib
        import inspect

        from lightning import Trainer

        near = difflib.get_close_matches(unknown[1].split(".", 1)[1], inspect.signature(Trainer).parameters, n=1)
        return f"{message.strip()}" + (f"; did you mean trainer.{near[0]}?" if near else "")
    if (unknown := re.match(r"unrecognized arguments: --(\w+)([\w.]*)(?:[= ]|$)", flat)) is not None:  # top-level
        import difflib

        near = difflib.get_close_matches(unknown[1], TOP_LEVEL_FLAGS, n=1)  # (--dat.batch_size: its group's name)
        return f"{message.strip()}" + (f"; did you mean --{near[0]}{unknown[2]}?" if near and near[0] != unknown[1]
                                       else "")  # (a group spelled right: the setting within it is not known)
    keys = re.findall(r'Parser key "([^"]+)"', flat)
    if keys and (choice := _LITERAL.search(flat)) is not None:  # a setting of fixed choices (an optimizer's name)
        return f"{'.'.join(keys)}: {choice['value']!r} is not one of {choice['choices']}; give one of them"
    failed = _FAILED_IMPORT.search(flat) if keys else None
    if failed is not None and (line := not_a_class_path(keys[0], failed["path"], flat)) is not None:
        return line
    if failed is not None and re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", failed["path"]):  # a class path given
        why = failed["why"].strip()
        if (missing := _NO_CLASS.search(why)) is not None:  # a class path that is not one (a typo)
            return _no_class(keys[0], failed["path"], missing[0])
        if (kind := re.match(r"Import path does not correspond to a subclass of (\w+)", why)) is not None:
            return f"{keys[0]}: {failed['path']} is not a {kind[1]}; give a subclass of {kind[1]}"
        if not why.startswith("Problem with given class_path"):  # it imported its module, which raised
            return f"{keys[0]}: {failed['path']} cannot be imported: {why}; fix the module it is in"
    if "Does not validate against any of the Union subtypes" not in flat:
        value = _PLAIN_VALUE.fullmatch(flat)
        return _wrong_type(keys[0], value["types"], value["value"]) if value is not None else message
    found = [problem for problem in _CLASS_PROBLEM.finditer(flat) if problem[1] not in _base_class_tries(message)]
    if keys and (alien := _NOT_SUBCLASS.search(flat)) is not None and not found:  # a class of another kind
        return f"{keys[0]}: {alien['path']} is not a {alien['kind']}; give a subclass of {alien['kind']}"
    if not found:  # a plain setting, such as trainer.gradient_clip_val
        value = _UNION_VALUE.search(flat)
        return _wrong_type(keys[0], value["types"], value["value"]) if value is not None and keys else message
    (outer, _), (inner, why) = found[0].groups(), found[-1].groups()
    keys = re.findall(r'Parser key "([^"]+)"', flat[: found[-1].end()])
    if keys and _NO_CLASS.fullmatch(why.strip()):  # a class path whose module or class is not there (a typo)
        return _no_class(keys[0], inner, why.strip())
    tail = flat[found[-1].start() :]
    value = _UNION_VALUE.search(tail) or _PLAIN_VALUE.search(tail)
    if value is not None:  # the innermost problem is a value of the wrong type, not a setting the class lacks
        return _wrong_type(".".join(keys), value["types"], value["value"])
    if outer in ("lightning.LightningModule", "lightning.LightningDataModule"):  # settings for a class not yet named
        order = any(arg in ("--config", "-c") or arg.startswith("--config=") for arg in argv)  # (an overlay first)
        return (f"{'.'.join(keys)}: no {keys[0]} class configured for these settings{' when they were read' * order};"
                " give a preset first (--config configs/decoder_tiny.yaml), then any overlay (--config "
                "configs/overlays/...) and flags")  # fmt: skip
    if why.strip().endswith(":") and (scalar := re.search(r"Expected a dot import path string: (\S+)", tail)):
        return (f"{'.'.join(keys)}: {scalar[1]!r} is not a mapping of its settings; give them one by one "
                f"(--{'.'.join(keys)}.KEY VALUE), or as a mapping in a --config file")  # a value for a dataclass
    listed = (f"; `python -m lit_psion fit --{keys[0]}.help {outer}` lists the settings it takes"
              if keys[0] in ("model", "data", "trainer.callbacks") else "")  # fmt: skip
    if why.strip() == "Option 'class_path' is not accepted":  # {class_path: X, KEY: V}: a class's settings beside it
        given = re.search(r"'class_path': '([^']+)'", tail)
        return (f"{'.'.join(keys)}: the settings beside class_path are not read; put them under init_args "
                f"({{class_path: {given[1] if given else 'module.ClassName'}, init_args: {{SETTING: VALUE}}}})")
    if (required := re.fullmatch(r"the following arguments are required: (.+)", why.strip())) is not None:
        return f"{'.'.join(keys)}: {inner.rsplit('.', 1)[-1]} needs {required[1]}, which nothing gave; give it{listed}"
    if (near := near_setting(inner, why.strip())) is not None:  # a setting's name mistyped
        return (f"{'.'.join(keys)}: {inner.rsplit('.', 1)[-1]} has no setting {near[0]!r}; did you mean "
                f"--{'.'.join(keys)}.{near[1]}?{listed}")  # fmt: skip
    return (f"{'.'.join(keys)}: {inner.rsplit('.', 1)[-1]} refuses the settings given for it: {why.strip()} (a "
            f"--config overlay may have set it for another class){listed}")


def _base_class_tries(message: str) -> set[str]:
    """The class paths jsonargparse tried only as the base class of a setting (``lightning.Callback`` beside the
    callback given in ``--trainer.callbacks+=X --trainer.callbacks.KEY=V``): one of a union's alternatives whose
    sibling, at the same depth of the message, is a class that was given."""
    tries = re.findall(r"^( *)- Problem with given class_path '([^']+)'", message, flags=re.MULTILINE)
    bases = set(re.findall(r"<class '(?:\w+\.)*(\w+)'>", message))
    return {path for depth, path in tries if path.rsplit(".", 1)[-1] in bases
            and any(other != path and other_depth == depth for other_depth, other in tries)}  # fmt: skip


def _wrong_type(where: str, types: str, given: str | None) -> str:
    if not given:  # --KEY= (or --KEY '')
        return f"{where} was given an empty value; give it one (--{where}=VALUE), or leave the flag out"
    names = [quoted or generic for quoted, generic in re.findall(r"'([^']+)'|(\w[\w.]*\[[^\]]*\])", types)] or [types]
    if "float" in names and given.lower().lstrip("+-") in ("inf", "infinity"):  # YAML's infinity is .inf
        return (f"{where}: {given!r} is read as text, not a number; write {given[0] if given[0] in '+-' else ''}"
                ".inf where the setting takes no limit, else give a finite number")  # fmt: skip
    if "float" in names and given.lower().lstrip("+-") == "nan":
        return f"{where}: {given!r} is not a number; give a finite one"
    given = "null" if given == "None" else given  # (jsonargparse's word for the null given)
    wanted = " or ".join("null" if name == "NoneType" else name for name in names)
    if all(name.startswith("typing.Literal[") or name == "NoneType" for name in names):  # choices (a precision)
        choices = list(dict.fromkeys(c for name in names for c in name[15:-1].split(", ") if name != "NoneType"))
        null = ", or null" if "NoneType" in names else ""
        return f"{where}: {given!r} is not one of {', '.join(choices)}{null}; give one of them"
    if "int" in names and "float" not in names and re.fullmatch(r"[+-]?\d+\.0", given):  # 1e3 reads as 1000.0
        return (f"{where}: {given!r} is a float, not an int (an exponent or a decimal point makes one); write "
                f"{given[:-2]}")
    return f"{where}: {given!r} is not {'an' if wanted[0] in 'aeiou' else 'a'} {wanted}; give one"


def check_callbacks(callbacks: list[Any], subcommand: str | None = None) -> None:
    """Refuse in one line what Lightning refuses in words about its own settings: its checkpoint callbacks (lit_psion
    writes every checkpoint), and two callbacks keeping state under one ``state_key`` (indistinguishable in a
    checkpoint); warn of a ``predict`` that no callback writes the predictions of."""
    from lightning.pytorch.callbacks import BasePredictionWriter, Callback, Checkpoint  # the fit's (kept light)

    if subcommand == "predict" and not any(isinstance(callback, BasePredictionWriter) for callback in callbacks):
        print("lit_psion: warning: predict writes its predictions nowhere without a prediction writer; add "
              "--trainer.callbacks+=lit_psion.callbacks.PredictionWriter --trainer.callbacks.out DIR",
              file=sys.stderr)  # fmt: skip

    for callback in callbacks:
        if isinstance(callback, Checkpoint):
            name = f"{type(callback).__module__}.{type(callback).__qualname__}"
            raise ConfigError(f"trainer.callbacks: {name} is a Lightning checkpoint callback, and lit_psion writes, "
                              "verifies and points to every checkpoint itself: remove it, and set when checkpoints "
                              "are written with --checkpoint.every_n_train_steps, --checkpoint.keep_last_k and "
                              "--checkpoint.async_write")  # fmt: skip
    holders: dict[str, Any] = {}
    for callback in callbacks:
        if type(callback).state_dict is Callback.state_dict:
            continue  # keeps no state: any number of them
        key = callback.state_key
        if (first := holders.setdefault(key, callback)) is not callback:
            names = [f"{type(held).__module__}.{type(held).__qualname__}" for held in (first, callback)]
            who = f"two {names[0]} callbacks" if names[0] == names[1] else " and ".join(names)
            raise ConfigError(f"trainer.callbacks: {who} keep state under one state_key ({key!r}), so a "
                              "checkpoint could not tell their states "
                              "apart; keep one, or give the class a state_key property that includes its settings "
                              "(Lightning's Callback.state_key)")  # fmt: skip


def expand_home(config: Any) -> None:
    """``~`` in the run root, the data files and the cache directory means the home directory, as a shell would
    make it: a YAML value or a quoted argument reached Lightning as a directory named ``~`` in the working one."""
    def expanded(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)
        return [expanded(item) for item in value] if isinstance(value, list) else value

    trainer = config.get("trainer")
    if trainer is not None and trainer.get("default_root_dir") is not None:
        trainer.default_root_dir = expanded(trainer.default_root_dir)
    data = config.get("data")
    init_args = data.get("init_args") if data is not None and hasattr(data, "get") else None
    for key in ("files", "cache_dir", "tokenizer_file"):
        if init_args is not None and init_args.get(key) is not None:
            init_args[key] = expanded(init_args[key])


CKPT_PATH_HELP = ("'last' (the latest run under --trainer.default_root_dir, from its pointed-to, verified checkpoint) "
                  "or a checkpoint directory (RUN/checkpoints/step-NNNNNN); docs/cli.md")


def describe_ckpt_path(parser: Any) -> None:
    """Lightning's help for --ckpt_path names "best", "hpc" and "registry", which lit_psion refuses: say what it
    takes instead."""
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        for action in getattr(sub, "_actions", ()):
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP


def constructor_error(error: BaseException) -> BaseException:
    """The error a class's constructor raised, when jsonargparse wrapped it (its "Does not validate against any of the
    Union subtypes" message also dumps every setting given): what failed, not the parser's account of it. Followed
    through explicit causes only (``raise ... from``), so an error raised while handling another is the one said."""
    if "Does not validate against any of the Union subtypes" not in str(error):
        return error
    seen = {id(error)}
    while (inner := error.__cause__ or (error.__context__ if _from_jsonargparse(error) else None)) is not None \
            and id(inner) not in seen:  # fmt: skip
        error = inner
        seen.add(id(error))
    return error


def _from_jsonargparse(error: BaseException) -> bool:
    """Whether ``error`` is jsonargparse's own account of another (its wrappers raise them while handling it)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and "/jsonargparse/" in frames[-1].filename


def known_cause(error: BaseException) -> LitPsionError | ArgumentError | argparse.ArgumentError | None:
    """The lit_psion error (or argument error) behind ``error``, following the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, LitPsionError | ArgumentError | argparse.ArgumentError):
            return current
        if isinstance(current, OmegaConfBaseException):  # a --config value OmegaConf cannot take
            where = getattr(current, "full_key", None) or "a --config file"
            reason = str(current).split("\n", 1)[0]
            if isinstance(current, InterpolationResolutionError):
                return ConfigError(f"{where}: its interpolation does not resolve ({reason}); fix the ${{...}} "
                                   "reference in the --config file (an interpolation sees only the keys of its "
                                   "own file: repeat the value there, or use ${oc.env:NAME})")  # fmt: skip
            return ConfigError(f"{where}: {reason} ({type(current).__name__}); fix the --config file")
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return lit_psion_cause(error)  # a collective that lost its peer


def exit_inside_a_fit(stop: SystemExit) -> bool:
    """Whether ``stop`` was raised inside Lightning's fit loop (a callback's or the model's ``sys.exit``), not by
    the command line's parsing (``--help``, a bad flag) or a command choosing its exit code."""
    if isinstance(stop.__context__, KeyboardInterrupt):  # Lightning's own exit after Ctrl-C: handled as such
        return False
    return any("/lightning/pytorch/trainer/" in frame.filename for frame in traceback.extract_tb(stop.__traceback__))

