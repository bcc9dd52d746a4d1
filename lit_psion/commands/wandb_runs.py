"""The W&B logger of a fit: its run named and placed after the lit_psion run, offline without an API key."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lit_psion.core.errors import ConfigError
from lit_psion.core.layout import RunLayout


def place_wandb_runs(loggers: list[Any], layout: RunLayout) -> None:
    """Give each configured WandbLogger the run's id, name and directory; offline without an API key."""
    from jsonargparse import Namespace

    wandb = [entry for entry in loggers
             if isinstance(entry, Namespace) and str(entry.get("class_path", "")).endswith("WandbLogger")]  # fmt: skip
    if len(wandb) > 1:
        projects = ", ".join(repr(entry.init_args.get("project")) for entry in wandb)
        raise ConfigError(f"trainer.logger holds {len(wandb)} WandbLoggers (projects {projects}); a process logs to "
                          "one W&B run, so the others would only reuse it: keep one")  # fmt: skip
    for entry in wandb:
        project = entry.init_args.get("project")
        if isinstance(project, str) and (bad := sorted(set(project) & set(WANDB_PROJECT_FORBIDS))):
            raise ConfigError(f"trainer.logger.init_args.project {project!r} holds {', '.join(map(repr, bad))}, "
                              f"which W&B refuses in a project name ({' '.join(WANDB_PROJECT_FORBIDS)}); name it "
                              "without them")  # fmt: skip
        mode = os.environ.get("WANDB_MODE")
        if mode is not None and mode not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE is {mode!r}; W&B takes one of {', '.join(WANDB_MODES)} (unset it to log "
                              "online with an API key, offline without)")  # fmt: skip
        init_args = entry.init_args
        for key in ("id", "version"):  # (WandbLogger's version is another name for the id)
            if init_args.get(key) not in (None, layout.run_id):
                raise ConfigError(f"trainer.logger.init_args.{key} {init_args.get(key)!r}: lit_psion gives the W&B "
                                  f"run its run's id ({layout.run_id}), so each fit, and each resume of it, logs to "
                                  f"its own W&B run; remove the {key} (a name of your own is kept)")  # fmt: skip
        init_args.save_dir = str(layout.run_dir)
        for key in ("id", "name"):
            if init_args.get(key) is None:
                init_args[key] = layout.run_id
        keyless = not _wandb_api_key() and "WANDB_MODE" not in os.environ
        offline_mode = mode in ("offline", "dryrun")
        if init_args.get("log_model") not in (None, False) and (keyless or init_args.get("offline") or offline_mode):
            why = ("offline: true" if init_args.get("offline") else f"WANDB_MODE={mode}" if offline_mode else
                   "no W&B API key here, so it would log offline")  # fmt: skip
            raise ConfigError(f"trainer.logger.init_args.log_model {init_args.get('log_model')!r} uploads checkpoints, "
                              f"which offline W&B cannot ({why}); set log_model false (lit_psion keeps every "
                              "checkpoint in the run directory), or log in (wandb login) to log online")  # fmt: skip
        if keyless and not init_args.get("offline"):
            init_args.offline = True
            print("lit_psion: no W&B API key: logging to W&B offline under the run directory (wandb sync to upload)",
                  file=sys.stderr)  # fmt: skip


WANDB_PROJECT_FORBIDS = "/\\#?%:"
"""The characters W&B refuses in a project name."""
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
"""The values W&B's settings accept for ``WANDB_MODE``."""


def _wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")
