"""MOSAIC (seed 003): the compact decoder with a hashed associative memory, opcode and commitment heads.

At ``memory_layer`` the residual stream passes through :class:`HashedMemory`. An opcode head
(``d_model -> 3``: NOP, WRITE_MEM, READ_MEM) reads the stream there; its probabilities gate the
memory: positions write in proportion to P(WRITE_MEM) and read in proportion to P(READ_MEM). The
memory is addressed by locality-sensitive hashing: a learned address projection is hashed by
``mem_hashes`` fixed random-hyperplane functions into ``mem_buckets`` buckets, and a position reads
only the earlier positions that share a bucket with it under some hash (a sparse, causal
associative read, as in LSH attention). Gradients reach the address projection through the
attention scores within a bucket, not through the hashing. A commitment head (``d_model -> 3``:
close, neutral, open) on the final stream emits ``mosaic_commitment_logits``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lit_psion.core.errors import ConfigError
from lit_psion.nn.decoder import Block, Decoder, DecoderConfig

N_OPCODES, WRITE, READ = 3, 1, 2


@dataclasses.dataclass(kw_only=True)
class MosaicConfig:
    """Memory and heads on top of a :class:`DecoderConfig`."""

    mem_buckets: int = 4096
    """Buckets per hash function (rounded up to a power of two)."""
    mem_hashes: int = 2
    """Independent hash functions; a position reads what shares a bucket under any of them."""
    mem_key_dim: int = 32
    """Width of the learned address the hashes and scores use."""
    memory_layer: int | None = None
    """Block after which the memory sits (default: the middle one)."""
    commitment_head: bool = True
    """Emit ``mosaic_commitment_logits`` (close, neutral, open) per token."""
    hash_seed: int = 0
    """Seed of the fixed hyperplanes (part of the model: changing it changes what a checkpoint means)."""

    def __post_init__(self) -> None:
        for name in ("mem_buckets", "mem_hashes", "mem_key_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def hash_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.mem_buckets)))


class HashedMemory(nn.Module):
    def __init__(self, d_model: int, config: MosaicConfig) -> None:
        super().__init__()
        self.address = nn.Linear(d_model, config.mem_key_dim, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.RMSNorm(d_model)
        generator = torch.Generator().manual_seed(config.hash_seed)
        planes = torch.randn(config.mem_hashes, config.mem_key_dim, config.hash_bits, generator=generator)
        self.register_buffer("planes", planes)
        self.register_buffer("powers", 2 ** torch.arange(config.hash_bits))
        self.scale = config.mem_key_dim**-0.5

    def buckets(self, address: torch.Tensor) -> torch.Tensor:
        """Bucket ids (B, T, hashes) of addresses (B, T, key_dim)."""
        bits = torch.einsum("btk,hkn->bthn", address, self.planes) > 0
        return (bits.long() * self.powers).sum(-1)

    def forward(self, x: torch.Tensor, write: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """The memory's contribution to the stream; ``write``/``read`` are gates (B, T) in [0, 1]."""
        h = self.norm(x)
        address = self.address(h)
        codes = self.buckets(address.detach())
        shared = (codes[:, :, None, :] == codes[:, None, :, :]).any(-1)  # (B, T, T)
        T = x.shape[1]
        earlier = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
        allowed = shared & earlier
        scores = torch.einsum("btk,bsk->bts", address, address) * self.scale
        scores = scores + torch.log(write.clamp_min(1e-6))[:, None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        # a null slot (score 0) lets a position read nothing when no earlier write matches
        null = torch.zeros(*scores.shape[:2], 1, dtype=scores.dtype, device=scores.device)
        weights = torch.softmax(torch.cat([scores, null], dim=-1), dim=-1)[..., :-1]
        recalled = weights @ self.value(h)
        return self.out(recalled) * read[..., None]


class Mosaic(nn.Module):
    """The decoder with the memory inserted after ``memory_layer`` and the two heads.

    ``forward`` returns a dict: ``logits`` (B, T, vocab), ``mosaic_opcode_logits`` (B, T, 3) and,
    with the commitment head, ``mosaic_commitment_logits`` (B, T, 3).
    """

    def __init__(self, decoder: DecoderConfig, mosaic: MosaicConfig) -> None:
        super().__init__()
        self.decoder_config, self.config = decoder, mosaic
        self.core = Decoder(decoder)
        self.memory_layer = mosaic.memory_layer if mosaic.memory_layer is not None else decoder.n_layer // 2
        if not 0 <= self.memory_layer <= decoder.n_layer:
            raise ConfigError(f"memory_layer must be in [0, n_layer={decoder.n_layer}], got {self.memory_layer!r}")
        self.memory = HashedMemory(decoder.d_model, mosaic)
        self.opcode_head = nn.Linear(decoder.d_model, N_OPCODES)
        self.commitment_head = nn.Linear(decoder.d_model, 3) if mosaic.commitment_head else None
        nn.init.zeros_(self.memory.out.weight)  # starts as the plain decoder

    @property
    def blocks(self) -> nn.ModuleList:
        return self.core.blocks

    def hidden_matrices(self) -> list[nn.Parameter]:
        return [*self.core.hidden_matrices(), self.memory.value.weight, self.memory.out.weight]

    def forward(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        core = self.core
        T = idx.shape[1]
        if T > self.decoder_config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.decoder_config.block_size}")
        cos, sin = core.rope_cos[:T], core.rope_sin[:T]
        x = core.embed_dropout(core.embed(idx))
        opcode_logits = None
        for index, block in enumerate([*core.blocks, None]):
            if index == self.memory_layer:
                opcode_logits = self.opcode_head(x)
                gates = torch.softmax(opcode_logits, dim=-1)
                x = x + self.memory(x, gates[..., WRITE], gates[..., READ])
            if isinstance(block, Block):
                x = block(x, cos, sin)
        x = core.norm(x)
        out = {"logits": core.head(x), "mosaic_opcode_logits": opcode_logits}
        if self.commitment_head is not None:
            out["mosaic_commitment_logits"] = self.commitment_head(x)
        return out
