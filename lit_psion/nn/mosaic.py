"""MOSAIC (seed 003): the compact decoder with a hashed associative memory, opcode and commitment heads.

At ``memory_layer`` the residual stream passes through :class:`HashedMemory`. An opcode head
(``d_model -> 3``: NOP, WRITE_MEM, READ_MEM) reads the stream there; its probabilities gate the
memory: positions write in proportion to P(WRITE_MEM) and read in proportion to P(READ_MEM).

What a position writes is its own state, filed under the address of the position *before* it;
what a position reads is looked up under its own address (one learned projection makes both). A
write so stores "what came after this context", and a read in the same context recalls the token
that followed it, which is the next token it has to predict: the pattern of an induction head, here
unbounded by the attention window. Sharing the projection makes equal states score highest from
the first step (the scores are a Gram matrix, as with Reformer's shared query-key). The memory is
addressed by locality-sensitive hashing: addresses are hashed by ``mem_hashes`` fixed
random-hyperplane functions into ``mem_buckets`` buckets, and a position reads only the earlier
positions filed under a bucket its address shares under some hash (a sparse, causal associative
read, as in LSH attention). Gradients reach the projection through the scores within a bucket,
not through the hashing.

A commitment head (``d_model -> 3``: close, neutral, open) on the final stream emits
``mosaic_commitment_logits``.

The memory is not limited by ``attention_window``: with a sliding-window decoder it is the only
path from a write farther back than the blocks reach to a later read (``benchmarks/mosaic_memory.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from lit_psion.core.errors import ConfigError
from lit_psion.nn.decoder import Block, Decoder, DecoderConfig, check_attention_window
from lit_psion.nn.sizes import size_problem

N_OPCODES, WRITE, READ = 3, 1, 2
MEMORY_ADDRESSING = "previous_position"
"""How :class:`HashedMemory` files a write: under the address of the position before it (see its docs). MOSAIC
checkpoints from before this scheme carry no such entry in their signature, so they are refused, not misread."""


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
    memory: bool = True
    """False: the same decoder and heads without the memory (the ablation baseline)."""
    attention_window: int | None = None
    """Sliding-window attention in the decoder's blocks (None: full causal); the memory reads beyond it."""

    NEW_FIELDS: ClassVar[dict[str, bool | None]] = {"memory": True, "attention_window": None}
    """Fields added after MOSAIC runs were first signed, with their defaults: signed only when changed."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("mem_buckets", "mem_hashes", "mem_key_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not problems and self.mem_hashes > MAX_HASHES:  # the read compares (batch, block, block, hashes) ids
            problems.append(f"mem_hashes must be at most {MAX_HASHES}: each hash adds a (batch, block, block) "
                            f"comparison to every step's memory read (the seed's is 2), got {self.mem_hashes!r}")
        if not problems and self.mem_buckets > 2**63:  # a bucket id is the sum of its bits' powers, in an int64
            problems.append(f"mem_buckets must be at most 2**63 (a bucket id is a 64-bit integer), got "
                            f"{self.mem_buckets!r}")  # fmt: skip
        if not problems and (problem := size_problem("the memory's hyperplanes", self.mem_hashes * self.mem_key_dim
                                                     * self.hash_bits, {"mem_hashes": self.mem_hashes,
                                                                        "mem_key_dim": self.mem_key_dim})):  # fmt: skip
            problems.append(problem)
        if not isinstance(self.memory, bool):
            problems.append(f"memory must be true or false, got {self.memory!r}")
        if problem := check_attention_window(self.attention_window):
            problems.append(problem)
        if problems:
            raise ConfigError("; ".join(problems))

    def signed(self) -> dict:
        """The config as its model signature records it (options added later only when not at their default),
        with the memory's addressing scheme, so a checkpoint whose memory read differently is refused."""
        record = dataclasses.asdict(self)
        for name, default in self.NEW_FIELDS.items():
            if record[name] == default:
                del record[name]
        return {**record, "memory_addressing": MEMORY_ADDRESSING}

    @property
    def hash_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.mem_buckets)))


MAX_HASHES = 64
"""The most hash functions a memory reads with: 100,000 passed the parameter check (the hyperplanes are small) and
a fit's first step grew past this machine's 24 GB until the kernel killed it."""


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
        before = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # (B, T, d): position t holds h[t - 1]
        query, address = self.address(h), self.address(before)  # (B, T, key_dim) each: read here, filed here
        asked, held = self.buckets(query.detach()), self.buckets(address.detach())  # (B, T, hashes) each
        shared = (asked[:, :, None, :] == held[:, None, :, :]).any(-1)  # (B, T, T): query t meets address s
        T = x.shape[1]
        earlier = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
        allowed = shared & earlier
        scores = torch.einsum("btk,bsk->bts", query, address) * self.scale
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
    with the commitment head, ``mosaic_commitment_logits`` (B, T, 3). With ``memory`` off in the
    config there is no memory (the opcode head stays, taught as before, and gates nothing).
    """

    def __init__(self, decoder: DecoderConfig, mosaic: MosaicConfig) -> None:
        super().__init__()
        self.decoder_config, self.config = decoder, mosaic
        self.core = Decoder(decoder, mosaic.attention_window)
        self.memory_layer = mosaic.memory_layer if mosaic.memory_layer is not None else decoder.n_layer // 2
        if not 0 <= self.memory_layer <= decoder.n_layer:
            raise ConfigError(f"memory_layer must be in [0, n_layer={decoder.n_layer}], got {self.memory_layer!r}")
        total = decoder.parameter_count + decoder.d_model * (mosaic.mem_key_dim + 3 * decoder.d_model)
        sizes = {"d_model": decoder.d_model, "mem_key_dim": mosaic.mem_key_dim}
        if mosaic.memory and (problem := size_problem("the decoder and memory", total, sizes)):
            raise ConfigError(problem)
        self.memory = HashedMemory(decoder.d_model, mosaic) if mosaic.memory else None
        self.opcode_head = nn.Linear(decoder.d_model, N_OPCODES)
        self.commitment_head = nn.Linear(decoder.d_model, 3) if mosaic.commitment_head else None
        if self.memory is not None:
            nn.init.zeros_(self.memory.out.weight)  # starts as the plain decoder

    @property
    def blocks(self) -> nn.ModuleList:
        return self.core.blocks

    def hidden_matrices(self) -> list[nn.Parameter]:
        if self.memory is None:
            return self.core.hidden_matrices()
        return [*self.core.hidden_matrices(), self.memory.value.weight, self.memory.out.weight]

    def forward(self, idx: torch.Tensor, memory_gates: bool = True) -> dict[str, torch.Tensor]:
        """Outputs for token ids ``idx`` (B, T); ``memory_gates=False`` forces the write and read gates
        to 0 (the trained model with its memory switched off, an ablation at evaluation)."""
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
                if not memory_gates:
                    gates = torch.zeros_like(gates)
                if self.memory is not None:
                    x = x + self.memory(x, gates[..., WRITE], gates[..., READ])
            if isinstance(block, Block):
                x = block(x, cos, sin)
        x = core.norm(x)
        out = {"logits": core.head(x), "mosaic_opcode_logits": opcode_logits}
        if self.commitment_head is not None:
            out["mosaic_commitment_logits"] = self.commitment_head(x)
        return out
