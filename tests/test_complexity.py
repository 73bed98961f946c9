"""GMACs: hand-derived counts for the dynamic linear layer, linear growth for the dynamic mixers."""

import copy
import importlib
import types

import pytest
import torch

import layers
from layers import PRESETS, ArchConfig
from layers.dynamic_linear import DynamicLinear


def dynamic_linear_macs(n: int, m: int, inp: int, out: int, r: int) -> int:
    """MACs of one sample through a bilateral dynamic linear layer with m context tokens.

    proj: each context token -> in/r + out/r values; dW = (h_a U)^T (h_b V) in whichever
    association is cheaper; the main product x (W0 + dW) over all n tokens.
    """
    ri, ro = inp // r, out // r
    proj = m * inp * (ri + ro)
    factor_first = m * ri * inp + m * ro * out + inp * m * out
    core_first = m * ri * ro + ri * ro * out + inp * ri * out
    return proj + min(factor_first, core_first) + n * inp * out


@pytest.mark.parametrize("side", [4, 14, 56])
def test_dynamic_linear_macs_equal_the_hand_count(side):
    dim, hidden = 192, 768
    layer = DynamicLinear(dim, hidden, PRESETS["weightformer_tiny"].dynamic)
    m = ((side + 1) // 2) ** 2  # avg2 context
    expected = dynamic_linear_macs(side * side, m, dim, hidden, 4)
    with torch.device("meta"):
        tokens = torch.empty(2, side, side, dim)
        assert layers.count_macs(layer.to("meta"), tokens) == 2 * expected


def test_reference_block_macs_include_the_hypernetwork():
    """At 224 px, the tiny preset's dynamic block costs more than a static block by its predictors."""
    cfg = PRESETS["weightformer_tiny"]
    static, dynamic = layers.create_block(cfg, 0), layers.create_block(cfg, 1)
    with torch.device("meta"):
        tokens = torch.empty(1, 14, 14, 192)
        extra = layers.count_macs(dynamic.to("meta"), tokens) - layers.count_macs(static.to("meta"), tokens)
    adaptive_pool = 14 * 3 * 14 * 192 + 3 * 14 * 3 * 192  # pooling to 3x3 runs as two averaging matmuls
    conv_predictor = adaptive_pool + 2 * 9 * 192 * 192  # then two 1x1 convs on the 3x3 pooled map
    fc1_predictor = dynamic_linear_macs(196, 49, 192, 768, 4) - 196 * 192 * 768
    assert extra == conv_predictor + fc1_predictor


def mixer_config(mixer: str, **dynamic) -> ArchConfig:
    cfg = PRESETS["weightformer_tiny"]
    if mixer == "dynamic":
        return cfg.replace(dynamic=dynamic) if dynamic else cfg
    return cfg.replace(mixer=mixer, every=1, offset=0)


DYNAMIC_VARIANTS = {
    "weightformer": {},
    "gap": {"linear_predictor": "gap"},
    "deep": {"linear_predictor": "deep", "hyper_depth": 2},
    "adaptive4": {"pool": "adaptive4"},
    "attn8": {"pool": "attn8"},
    "max2+conv": {"pool": "max2", "conv_predictor": "conv", "fc2": True},
    "amp_dir": {"conv_predictor": "amp_dir"},
}


@pytest.mark.parametrize("variant", sorted(DYNAMIC_VARIANTS))
def test_dynamic_mixers_grow_linearly_with_tokens(variant):
    """x4 tokens (448 -> 896 px, 784 -> 3136 tokens) gives x3.8 to x4.2 GMACs.

    Terms that do not grow with N (the head, the predictors' cores) make the ratio dip below 4 at
    small inputs; from 784 tokens on they are a few percent of the total.
    """
    cfg = mixer_config("dynamic", **DYNAMIC_VARIANTS[variant])
    ratio = layers.complexity(cfg, 896).macs / layers.complexity(cfg, 448).macs
    assert 3.8 <= ratio <= 4.2, ratio


@pytest.mark.parametrize("mixer", ["linear_attention", "static"])
def test_other_linear_mixers_grow_linearly(mixer):
    cfg = mixer_config(mixer)
    ratio = layers.complexity(cfg, 896).macs / layers.complexity(cfg, 448).macs
    assert 3.8 <= ratio <= 4.2, ratio


def test_softmax_attention_grows_faster_than_linear():
    cfg = mixer_config("attention")
    small, large = layers.complexity(cfg, 448).macs, layers.complexity(cfg, 896).macs
    assert large / small > 4.2 * 1.5
    assert (
        large / small
        > layers.complexity(mixer_config("dynamic"), 896).macs / layers.complexity(mixer_config("dynamic"), 448).macs
    )


def test_attention_macs_equal_the_hand_count():
    dim, n, heads = 192, 196, 3
    attention = layers.Attention(dim, heads)
    with torch.device("meta"):
        macs = layers.count_macs(attention.to("meta"), torch.empty(1, 14, 14, dim))
    assert macs == n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim


@pytest.fixture
def costing() -> types.ModuleType:
    """``layers.complexity`` the module (the package's ``complexity`` is the function), with nothing
    remembered: a configuration another test costed first would not be traced again."""
    module = importlib.import_module("layers.complexity")
    module._complexity.cache_clear()
    return module


def test_complexity_builds_the_model_on_meta_tensors(costing, monkeypatch):
    """The base preset (448 px) is costed without allocating a parameter or computing a value."""
    module = costing
    devices = []

    class Recording(module.DynamicBackbone):
        def forward(self, x):
            devices.append((next(self.parameters()).device.type, x.device.type))
            return super().forward(x)

    monkeypatch.setattr(module, "DynamicBackbone", Recording)
    result = layers.complexity(PRESETS["weightformer_base"])
    assert devices == [("meta", "meta")]
    assert result.params == 27_492_136 and result.gmacs > 10


def test_a_configuration_is_traced_once_per_input_size(costing, monkeypatch):
    """A search costs each configuration when it asks for it and again in every report."""
    module = costing
    traced = []
    real = module.count_macs
    monkeypatch.setattr(module, "count_macs", lambda *args: traced.append(args) or real(*args))
    arch = ArchConfig(img_size=12, in_chans=1, num_classes=7, patch_size=2, embed_dim=24, depth=2)
    first = layers.complexity(arch)
    assert layers.complexity(ArchConfig.from_dict(arch.to_dict())) == first
    assert layers.complexity(arch, (12, 12)) == layers.complexity(arch, 12) == first
    assert len(traced) == 1
    assert layers.complexity(arch, 16).macs > first.macs and len(traced) == 2


def test_count_macs_follows_the_convention_on_real_tensors_too():
    """On real tensors the dynamic linear layer took its factored route and attention a fused kernel
    that the counter misses: the tiny preset counted 1.105 GMACs instead of 1.123."""
    torch.manual_seed(0)
    attention = layers.Attention(192, 3)
    tokens = torch.randn(1, 14, 14, 192)
    on_meta = layers.count_macs(copy.deepcopy(attention).to("meta"), tokens.to("meta"))
    assert layers.count_macs(attention, tokens) == on_meta
    assert attention.qkv.weight.device.type == "cpu"  # the module itself is left as it was
