"""The compact decoder: RMSNorm, RoPE, SwiGLU MLP, causal scaled-dot-product attention.

Bottom-up: norm and rotary helpers, attention, MLP, block, then the model.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_psion.core.errors import ConfigError
from lit_psion.nn.sizes import size_problem


@dataclasses.dataclass(kw_only=True)
class DecoderConfig:
    """Shape and regularisation of a :class:`Decoder`."""

    vocab_size: int = 512
    """Number of token ids the embedding and head cover (set from the tokenizer when left to the data)."""
    block_size: int = 128
    """Longest context the model attends over (RoPE tables are built for this length)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    d_model: int = 128
    """Width of the residual stream."""
    mlp_ratio: float = 8 / 3
    """SwiGLU hidden width as a multiple of ``d_model`` (rounded up to a multiple of 8)."""
    dropout: float = 0.0
    """Dropout on attention weights, the attention output and the MLP output."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head."""
    rope_base: float = 10_000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.d_model % self.n_head:
            problems.append(f"n_head must divide d_model, got n_head={self.n_head!r}, d_model={self.d_model!r}")
        if not problems and (self.d_model // self.n_head) % 2:
            problems.append(f"head_dim (d_model / n_head) must be even for RoPE, got {self.d_model // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            problems.append(f"mlp_ratio must be a finite number > 0, got {self.mlp_ratio!r}")
        if not (math.isfinite(self.rope_base) and self.rope_base > 1):  # 0 or below: infinite or NaN frequencies
            problems.append(f"rope_base must be a finite number > 1, got {self.rope_base!r}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):  # below 0: the RMS of a small row is NaN
            problems.append(f"norm_eps must be a finite number > 0, got {self.norm_eps!r}")
        sizes = ("vocab_size", "block_size", "n_layer", "d_model", "mlp_ratio")
        if not problems and (problem := size_problem("the decoder", self.parameter_count,
                                                     {name: getattr(self, name) for name in sizes})):  # fmt: skip
            problems.append(problem)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def parameter_count(self) -> int:
        """Its parameters and RoPE tables, estimated from the shape (before anything is allocated)."""
        d, embeddings = self.d_model, self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layer * (4 * d * d + 3 * d * self.mlp_hidden + 2 * d) + self.block_size * d

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return 8 * math.ceil(self.mlp_ratio * self.d_model / 8)


def rope_tables(block_size: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotary embeddings, each (block_size, head_dim / 2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def sliding_window_mask(T: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, T) mask, True where query t may attend key s: ``0 <= t - s < window``."""
    offset = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]
    return (offset >= 0) & (offset < window)


def check_attention_window(window: int | None) -> str | None:
    """The problem with an ``attention_window`` value, or None when it is valid."""
    if window is None or (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        return None
    return f"attention_window must be a positive integer or None (full causal attention), got {window!r}"


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of x (B, n_head, T, head_dim) by position."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Causal attention; with ``attention_window`` a position sees itself and the ``window - 1`` before it."""

    def __init__(self, config: DecoderConfig, attention_window: int | None = None) -> None:
        super().__init__()
        if problem := check_attention_window(attention_window):
            raise ConfigError(problem)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.window = attention_window
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, nh, T, hd)
        else:
            mask = sliding_window_mask(T, self.window, x.device)  # (T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class SwiGLU(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, config: DecoderConfig, attention_window: int | None = None) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config, attention_window)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    """A pre-norm decoder-only transformer returning next-token logits (B, T, vocab_size).

    Args:
        config: Its shape.
        attention_window: Sliding-window attention in every block (None: full causal). Stacked, the
            blocks reach ``n_layer * (attention_window - 1)`` positions back. A constructor argument,
            not a config field, so that the configs (and signatures) of existing decoders stay as they were.
    """

    def __init__(self, config: DecoderConfig, attention_window: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.attention_window = attention_window
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, attention_window) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights inside the blocks: the ones Muon orthogonalises."""
        return [module.weight for module in self.blocks.modules() if isinstance(module, nn.Linear)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T), T <= block_size."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_dropout(self.embed(idx))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by sampling ``max_new_tokens`` tokens; returns (B, T + max_new_tokens).

        ``temperature == 0`` picks the most likely token (greedy); ``top_k`` keeps the k most likely.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1, :]  # (B, vocab)
            if temperature < torch.finfo(logits.dtype).tiny:  # 0, or too small to divide by: greedy, its limit
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                # From the largest logit down: a small temperature sends the others to -inf (greedy), where dividing
                # first overflowed them all to inf and softmax to NaN.
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
