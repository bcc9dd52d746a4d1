"""Numerics of the compact decoder and its optimizers (plain torch, no Lightning)."""

from __future__ import annotations

import pytest
import torch

from lit_psion.core.errors import ConfigError
from lit_psion.nn.decoder import Decoder, DecoderConfig
from lit_psion.nn.optim import MuonAdamW, OptimizerConfig, build_optimizer, warmup_cosine

TINY = {"vocab_size": 32, "block_size": 16, "n_layer": 2, "n_head": 2, "d_model": 16}


def tiny(**overrides: object) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**{**TINY, **overrides})).eval()


def test_logits_shape() -> None:
    logits = tiny()(torch.randint(0, 32, (3, 10)))
    assert logits.shape == (3, 10, 32)


@pytest.mark.parametrize("position", [0, 5, 15])
def test_a_future_token_never_changes_past_logits(position: int) -> None:
    model = tiny()
    idx = torch.randint(0, 32, (2, 16))
    changed = idx.clone()
    changed[:, position] = (changed[:, position] + 1) % 32
    before, after = model(idx), model(changed)
    assert torch.equal(before[:, :position], after[:, :position])
    assert not torch.allclose(before[:, position:], after[:, position:])


def test_tied_embeddings_share_one_tensor() -> None:
    tied = tiny()
    assert tied.head.weight is tied.embed.weight
    untied = tiny(tie_embeddings=False)
    assert untied.head.weight is not untied.embed.weight


def test_generate_extends_and_greedy_is_deterministic() -> None:
    model = tiny()
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, 20, temperature=0)
    assert out.shape == (1, 23) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, model.generate(prompt, 20, temperature=0))
    top1 = model.generate(prompt, 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, top1), "top_k=1 sampling must equal greedy decoding"


def test_generate_samples_with_a_seeded_generator() -> None:
    model = tiny()
    prompt = torch.tensor([[1]])
    first = model.generate(prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(3))
    again = model.generate(prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_sequence_longer_than_block_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_head": 3}, "n_head must divide d_model"),
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"n_head": 16}, "head_dim"),
        # These trained to a NaN loss and a divergence that blamed the learning rate (exit 7, a failed run).
        ({"rope_base": 0.0}, "rope_base must be a finite number > 1, got 0.0"),
        ({"rope_base": -10.0}, "rope_base must be a finite number > 1, got -10.0"),
        ({"rope_base": float("nan")}, "rope_base must be a finite number > 1, got nan"),
        ({"norm_eps": -1.0}, "norm_eps must be a finite number > 0, got -1.0"),
        ({"norm_eps": float("inf")}, "norm_eps must be a finite number > 0, got inf"),
        ({"mlp_ratio": float("inf")}, "mlp_ratio must be a finite number > 0, got inf"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DecoderConfig(**{**TINY, **overrides})


def test_muon_takes_hidden_matrices_and_adamw_the_rest() -> None:
    model = tiny()
    optimizer = build_optimizer(OptimizerConfig(name="muon"), model, model.hidden_matrices())
    assert isinstance(optimizer, MuonAdamW)
    muon_ids = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    adamw_ids = {id(p) for group in optimizer.adamw.param_groups for p in group["params"]}
    assert muon_ids == {id(p) for p in model.hidden_matrices()}
    assert id(model.embed.weight) in adamw_ids and not muon_ids & adamw_ids
    assert muon_ids | adamw_ids == {id(p) for p in model.parameters()}


def test_muon_adamw_steps_and_round_trips_its_state() -> None:
    model = tiny()
    optimizer = build_optimizer(OptimizerConfig(name="muon", lr=1e-2), model, model.hidden_matrices())
    before = [p.detach().clone() for p in model.parameters()]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(torch.randint(0, 32, (2, 8))).logsumexp(-1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert len(optimizer.state) == len(list(model.parameters()))
    clone = build_optimizer(OptimizerConfig(name="muon", lr=1e-2), model, model.hidden_matrices())
    clone.load_state_dict(optimizer.state_dict())
    restored, original = clone.muon.state_dict()["state"][0], optimizer.muon.state_dict()["state"][0]
    assert torch.equal(restored["momentum_buffer"], original["momentum_buffer"])


def test_warmup_then_cosine_to_the_floor() -> None:
    factor = warmup_cosine(warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert factor(0) < factor(5) < factor(9) <= 1.0
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == factor(500) == pytest.approx(0.1)


WINDOW = 4


def test_attention_window_none_is_the_full_causal_decoder_bitwise() -> None:
    idx = torch.randint(0, 32, (2, 16))
    plain = tiny()
    torch.manual_seed(0)
    unwindowed = Decoder(DecoderConfig(**TINY), attention_window=None).eval()
    assert torch.equal(plain(idx), unwindowed(idx))
    torch.manual_seed(0)
    windowed = Decoder(DecoderConfig(**TINY), attention_window=WINDOW).eval()  # same weights, a window
    assert not torch.allclose(plain(idx)[:, WINDOW:], windowed(idx)[:, WINDOW:])
    assert torch.allclose(plain(idx)[:, :WINDOW], windowed(idx)[:, :WINDOW], atol=1e-6)  # the window covers them


@pytest.mark.parametrize("n_layer", [1, 2])
def test_a_token_beyond_the_stacked_windows_never_reaches_a_later_position(n_layer: int) -> None:
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**{**TINY, "n_layer": n_layer}), attention_window=WINDOW).eval()
    idx = torch.randint(0, 32, (2, 16))
    changed = idx.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 32
    before, after = model(idx), model(changed)
    reach = 2 + n_layer * (WINDOW - 1)  # each block carries a token WINDOW - 1 positions further
    assert torch.equal(before[:, reach + 1 :], after[:, reach + 1 :])
    assert not torch.allclose(before[:, 2 : reach + 1], after[:, 2 : reach + 1])
    assert not torch.allclose(before[:, reach], after[:, reach])  # the farthest position it reaches


@pytest.mark.parametrize("window", [0, -3, 2.5, True, "8"])
def test_a_bad_attention_window_is_refused_quoting_it(window: object) -> None:
    with pytest.raises(ConfigError, match=f"attention_window must be a positive integer or None.*got {window!r}"):
        Decoder(DecoderConfig(**TINY), attention_window=window)


def test_a_model_too_large_to_allocate_is_refused_from_its_config() -> None:
    """d_model 1e9 reached the allocator (exit 1, DefaultCPUAllocator); sizes are now estimated first (exit 2)."""
    import pytest

    from lit_psion.core.errors import ConfigError
    from lit_psion.models.graph_core import GraphCoreConfig
    from lit_psion.nn.decoder import DecoderConfig
    from lit_psion.nn.mosaic import MosaicConfig

    for build, named in ((lambda: DecoderConfig(d_model=1_000_000_000), "d_model=1000000000"),
                         (lambda: MosaicConfig(mem_key_dim=10**12), "mem_key_dim=1000000000000"),
                         (lambda: GraphCoreConfig(state_function="mlp", state_hidden=10**12), "state_hidden=")):
        with pytest.raises(ConfigError, match="lower these sizes") as refused:
            build()
        assert named in str(refused.value)
    assert DecoderConfig(d_model=1024, n_layer=12, vocab_size=50_000).parameter_count > 10**8  # 2e8 (0.8 GB): taken
