"""LoRA conformance over every target set: no-op at init, merge equals forward, idempotent, bitwise unmerge."""

from __future__ import annotations

import re

import pytest
import torch

from lit_psion.core.errors import ConfigError
from lit_psion.nn.decoder import Decoder, DecoderConfig
from lit_psion.nn.lora import TARGETS, adapter_params, inject_lora, lora_layers

TARGET_SETS = [["lm_head"], ["attn_qkv", "attn_out"], ["mlp_in", "mlp_out"], list(TARGETS)]


def _model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16))


@pytest.mark.parametrize("targets", TARGET_SETS, ids=lambda t: "+".join(t))
def test_lora_conformance(targets: list[str]) -> None:
    model = _model()
    tokens = torch.randint(50, (2, 16))
    before = model(tokens)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = inject_lora(model, targets)
    assert wrapped and torch.equal(model(tokens), before)  # B = 0: an untrained adapter is a no-op
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_b, std=0.1)
    adapted = model(tokens)
    assert not torch.allclose(adapted, before)
    for layer in lora_layers(model):
        layer.merge()
    merged = model(tokens)
    assert torch.allclose(merged, adapted, atol=1e-5), (merged - adapted).abs().max()
    assert not [k for k in model.state_dict() if "unmerged" in k]  # the kept base weight is not state
    for layer in lora_layers(model):
        layer.merge()  # twice is once
    assert torch.equal(model(tokens), merged)
    for layer in lora_layers(model):
        layer.unmerge()
        layer.unmerge()
    assert torch.equal(model(tokens), adapted)
    base_now = {k.replace(".base", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for key, value in base_state.items():
        assert torch.equal(base_now[key], value), key  # the base (tied embedding included) is untouched


def test_only_adapter_parameters_are_adapters() -> None:
    model = _model()
    inject_lora(model, ["lm_head"], rank=4)
    params = adapter_params(model)
    assert [tuple(p.shape) for p in params] == [(4, 16), (50, 4)]


def test_merge_refuses_a_non_finite_adapter() -> None:
    model = _model()
    inject_lora(model, ["lm_head"])
    layer = lora_layers(model)[0]
    with torch.no_grad():
        layer.lora_b.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        layer.merge()
    assert not layer.merged


@pytest.mark.parametrize(("targets", "message"), [(["lm_haed"], "unknown LoRA target"), (["attn_qkv"], "matches no"),
                                                  ([], "no LoRA targets given"),  # it trained lm_head silently
                                                  (["lm_head", "lm_head"], "'lm_head' is given twice")])  # fmt: skip
def test_bad_targets_are_config_errors(targets: list[str], message: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)) if "attn_qkv" in targets else _model()
    with pytest.raises(ConfigError, match=message):
        inject_lora(model, targets)


BAD_SETTINGS = [({"dropout": 1.5}, "lora_dropout must be in [0, 1)"),
                ({"dropout": float("nan")}, "lora_dropout must be in [0, 1)"),
                ({"alpha": float("nan")}, "alpha must be a number in (0, 1e+06], got nan"),
                ({"alpha": float("inf")}, "alpha must be a number in (0, 1e+06], got inf"),
                ({"alpha": 0.0}, "alpha must be a number in (0, 1e+06], got 0.0"),
                ({"alpha": 1e30}, "alpha must be a number in (0, 1e+06], got 1e+30"),  # every gradient inf, completed
                # It allocated (out x rank) adapters first: out of memory, exit 1.
                ({"rank": 1_000_000_000}, "LoRA rank 1000000000 exceeds the smallest targeted layer's dimension "
                 "(16)")]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), BAD_SETTINGS)
def test_bad_adapter_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        inject_lora(_model(), ["lm_head"], **kwargs)


def test_a_recorded_adapter_loads_whatever_its_rank() -> None:
    """The rank check is a new adapter's: merge and sampling take an adapter as it was trained."""
    with pytest.raises(ConfigError, match="exceeds the smallest targeted layer's dimension"):
        inject_lora(_model(), ["lm_head"], rank=32)
    model = _model()
    assert inject_lora(model, ["lm_head"], rank=32, check_rank=False) == ["head"]
    assert model.head.lora_a.shape == (32, 16)
