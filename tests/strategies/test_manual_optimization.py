"""A transactional strategy refuses, before its run exists, what it cannot do: a model that steps its own optimizers
(``automatic_optimization = False``; Lightning's closure for it is empty, so every step trained unjudged: no
transaction receipt, ``grad_norm_max 1e-9`` passed, a NaN step was applied, while the run said it was
transactional), and a ``device`` that is no device here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.models import DecoderLM
from tests.helpers import TINY


class ManualLM(DecoderLM):
    """The decoder, stepping its optimizer and schedule itself."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer, loss = self.optimizers(), super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.lr_schedulers().step()
        return loss


@pytest.mark.parametrize(("command", "strategy"), [("fit", "transactional"), ("fit", "auto"),
                                                  ("validate", "transactional")])  # fmt: skip
def test_a_model_that_steps_itself_is_refused_by_the_transactional_strategy(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, strategy: str
) -> None:
    capsys.readouterr()
    code = main([command, "--config", TINY, "--model.class_path", f"{__name__}.ManualLM", "--trainer.strategy",
                 strategy, "--trainer.gradient_clip_val", "null", "--trainer.max_steps", "3",
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    if strategy == "auto" or command == "validate":  # (the model trains alone, and an evaluation takes no step:
        assert code == 0  # it is training under the strategy that is refused)
        return
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error")]
    assert code == 2 and len(err) == 1 and "automatic_optimization is False" in err[0], err
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.mark.parametrize(("device", "says"), [("bogus", "is not a device"), ("cpu:x", "is not a device"),
                                              ("cuda:0", "no CUDA device")])  # fmt: skip
def test_a_strategy_device_that_is_none_here_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                device: str, says: str) -> None:  # fmt: skip
    # (jsonargparse reported the constructor's error as "Expected a <class 'str'>", exit 1)
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    capsys.readouterr()
    code = main(["fit", "--config", TINY, "--trainer.strategy", "transactional", "--trainer.strategy.device", device,
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error")]
    assert code == 2 and len(err) == 1 and f"trainer.strategy.device {device!r}" in err[0] and says in err[0], err
    assert not any(tmp_path.iterdir())
