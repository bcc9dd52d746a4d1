"""Print a generated text sample when fitting ends (a quick look at what the model learned)."""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_psion.core.contracts import TokenizedData
from lit_psion.core.errors import ConfigError
from lit_psion.core.text import printable
from lit_psion.report import PipedConsole

MAX_NEW_TOKENS = 100_000
"""The longest sample (``python -m lit_psion generate``'s bound): a typo must not hang the end of a trained fit."""


class GenerateSample(Callback):
    """Decode ``max_new_tokens`` tokens from ``prompt`` with the datamodule's tokenizer at the end of fit.

    Args:
        prompt: Text the sample continues.
        max_new_tokens: Tokens to generate (0 disables the sample).
        temperature: Sampling temperature (0 is greedy).
        top_k: Keep only the k most likely tokens at each step.
        seed: Seed of the sampling generator (the global RNG is left untouched).
    """

    def __init__(
        self, prompt: str = "\n", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 40,
        seed: int = 0,
    ) -> None:  # fmt: skip
        problems = [] if 0 <= max_new_tokens <= MAX_NEW_TOKENS else [
            f"max_new_tokens must be in [0, {MAX_NEW_TOKENS:,}] (0: no sample), got {max_new_tokens!r}"]
        if not temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {temperature!r}")
        if top_k is not None and top_k < 1:
            problems.append(f"top_k must be >= 1 or null, got {top_k!r}")
        if problems:  # checked now, not after training: a bad sampling setting must not fail a trained run
            raise ConfigError("sample: " + "; ".join(problems))
        self.prompt, self.max_new_tokens, self.temperature, self.top_k, self.seed = (
            prompt, max_new_tokens, temperature, top_k, seed,
        )  # fmt: skip
        self.text: str | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_new_tokens and not isinstance(trainer.datamodule, TokenizedData):  # it sampled nothing, silently
            data = "fit was given no datamodule" if trainer.datamodule is None else \
                f"{type(trainer.datamodule).__name__} has none"  # fmt: skip
            raise ConfigError(f"GenerateSample decodes text with the data's tokenizer, but {data} (remove the "
                              "callback; MOSAIC runs predict events: python -m lit_psion events predict)")  # fmt: skip

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        tokenizer = data.tokenizer if isinstance(data, TokenizedData) else None
        # FSDP2 (a device mesh) or ZeRO-3: every rank's forward gathers the shards, so all ranks sample
        sharded = pl_module.device_mesh is not None or bool(getattr(trainer.strategy, "zero_stage_3", False))
        if not self.max_new_tokens or tokenizer is None or not (trainer.is_global_zero or sharded):
            return
        encoding = tokenizer.encode(self.prompt)
        prompt_ids, unknown = encoding.ids or [0], tokenizer.token_to_id("<|unk|>")
        spans = zip(encoding.ids, encoding.offsets, strict=True)
        unread = sorted({self.prompt[start:end] for token, (start, end) in spans if token == unknown is not None})
        if trainer.is_global_zero and unread:
            print(f"lit_psion: warning: the tokenizer has no token for {', '.join(map(repr, unread[:8]))} in "
                  "GenerateSample's prompt (the model never saw it; it reads as unknown)", file=sys.stderr)  # fmt: skip
        idx = torch.tensor([prompt_ids], device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        out = pl_module.generate(idx, self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                 generator=generator)  # fmt: skip
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        self.text = tokenizer.decode(out[0].tolist())
        console = PipedConsole(highlight=False)
        console.rule("sample")
        console.print(printable(self.text), markup=False)
        console.rule()
