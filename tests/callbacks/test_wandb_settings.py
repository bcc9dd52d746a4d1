"""W&B logger settings a fit cannot honour where it runs, refused in one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import fit


@pytest.mark.parametrize(("given", "why"), [((), "no W&B API key here, so it would log offline"),
                                            (("--trainer.logger.init_args.offline", "true"), "offline: true"),
                                            (("WANDB_MODE=offline",), "WANDB_MODE=offline"),
                                            (("WANDB_MODE=dryrun",), "WANDB_MODE=dryrun")],
                         ids=["no API key", "offline", "WANDB_MODE offline", "WANDB_MODE dryrun"])  # fmt: skip
def test_log_model_where_w_and_b_logs_offline_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch, given: tuple,
                                                          why: str) -> None:  # fmt: skip
    """Without an API key lit_psion makes the logger offline, and Lightning refuses offline with log_model: exit 1,
    "Not a valid subclass of Logger", a dump of the parsed settings."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    if given and given[0].startswith("WANDB_MODE="):  # (W&B's own switch, which was let through with log_model)
        monkeypatch.setenv("WANDB_MODE", given[0].partition("=")[2])
        given = ()
    root = tmp_path / "runs"
    assert fit("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(root),
               "--trainer.logger.init_args.log_model", "true", *given) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "log_model True uploads checkpoints, which offline W&B cannot" in err[0], err
    assert why in err[0] and "set log_model false" in err[0]
    assert not root.exists() or not list(root.glob("2*"))
