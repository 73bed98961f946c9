"""The WeightFormer presets are exactly docs/design.md section 3, checked against a count made by hand."""

import pytest
import timm
import torch

import layers
from layers import PRESETS, ArchConfig


def weightformer_param_count(
    dim: int,
    classes: int = 1000,
    depth: int = 17,
    in_chans: int = 3,
    patch: int = 16,
    mlp_ratio: int = 4,
    rank_ratio: int = 4,
    k: int = 3,
) -> int:
    """Parameter count derived from the layer list of docs/design.md section 3, independent of the code."""
    hidden = mlp_ratio * dim
    layer_norm = 2 * dim
    stem = in_chans * patch * patch * dim + dim + layer_norm
    fc1 = dim * hidden + hidden
    fc2 = hidden * dim + dim
    static_block = (dim * k * k + dim) + layer_norm + fc1 + fc2
    dyn_dwc = (dim * k * k + dim) + (dim * dim + dim) + dim * dim  # K0, bias, 1x1 conv + bias, 1x1 conv
    rank_in, rank_out = dim // rank_ratio, hidden // rank_ratio
    dyn_fc1 = (
        (dim * hidden + hidden) + (dim * (rank_in + rank_out) + rank_in + rank_out) + rank_in * dim + rank_out * hidden
    )
    dynamic_block = layer_norm + dyn_dwc + layer_norm + dyn_fc1 + fc2
    dynamic = sum(1 for i in range(depth) if i % 3 == 1)
    head = layer_norm + dim * classes + classes
    return stem + dynamic * dynamic_block + (depth - dynamic) * static_block + head


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_hand_count_of_tiny_is_the_published_number():
    assert weightformer_param_count(192) == 7_074_184


@pytest.mark.parametrize(
    "name, dim", [("weightformer_tiny", 192), ("weightformer_small", 384), ("weightformer_base", 384)]
)
def test_timm_presets_match_the_hand_count(name, dim):
    model = timm.create_model(name)
    assert n_params(model) == weightformer_param_count(dim)
    assert layers.complexity(PRESETS[name]).params == weightformer_param_count(dim)


def test_preset_structure_follows_the_design():
    cfg = PRESETS["weightformer_tiny"]
    model = layers.create_model(cfg)
    dynamic = [i for i, block in enumerate(model.blocks) if isinstance(block.mixer, layers.DynamicDWConv)]
    assert dynamic == [1, 4, 7, 10, 13, 16]
    block = model.blocks[1]
    assert isinstance(block.stream_norm, torch.nn.LayerNorm)  # LN1 on the residual stream
    assert isinstance(block.mlp.fc1, layers.DynamicLinear)
    assert isinstance(block.mlp.fc2, torch.nn.Linear)  # FC2 stays static
    assert isinstance(model.blocks[0].stream_norm, torch.nn.Identity)
    assert isinstance(model.blocks[0].mixer_norm, torch.nn.Identity)  # no norm before the static DWConv
    assert model.stem_norm.eps == 1e-6
    assert PRESETS["weightformer_base"].img_size == (448, 448)
    assert PRESETS["weightformer_small"].embed_dim == PRESETS["weightformer_base"].embed_dim == 384


def test_preset_init_follows_the_design():
    torch.manual_seed(0)
    model = layers.create_model(PRESETS["weightformer_tiny"])
    fc1 = model.blocks[1].mlp.fc1
    for tensor in (
        fc1.weight,
        fc1.bias,
        fc1.factors.u,
        fc1.factors.v,
        model.blocks[1].mixer.weight,
        model.blocks[1].mixer.bias,
        model.head.weight,
    ):
        assert 0.015 < tensor.std() < 0.025  # truncated normal, std 0.02 (timm's convention: cut at +-2)
    assert torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(fc1.factors.proj[0].bias) == 0
    assert torch.all(model.head_norm.weight == 1) and torch.count_nonzero(model.head_norm.bias) == 0
    # Convolutions keep PyTorch's default (kaiming-uniform) init: bound 1 / sqrt(fan_in).
    assert model.patch_embed.weight.abs().max() > 0.9 / (3 * 16 * 16) ** 0.5
    assert model.blocks[0].mixer.conv.weight.abs().max() > 0.9 / 3


def test_timm_options_are_honoured():
    model = timm.create_model("weightformer_tiny", num_classes=10, in_chans=1, img_size=64)
    assert model.cfg.num_classes == 10 and model.cfg.in_chans == 1 and model.cfg.img_size == (64, 64)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 192)


@pytest.mark.parametrize("form", ["object", "dict", "yaml"])
def test_generic_timm_entry_builds_from_any_form(form, tmp_path):
    cfg = ArchConfig(img_size=32, patch_size=4, embed_dim=24, depth=3, num_classes=7)
    arch = {"object": cfg, "dict": cfg.to_dict(), "yaml": tmp_path / "arch.yaml"}[form]
    cfg.save(tmp_path / "arch.yaml")
    model = timm.create_model("dynamic_backbone", arch=arch, num_classes=4, drop_path_rate=0.1)
    assert model.cfg == cfg.replace(num_classes=4, drop_path_rate=0.1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_timms_generic_arguments_are_taken_at_values_that_change_nothing():
    """timm's train.py passes drop_rate (and scriptable) on every call: creation raised TypeError."""
    cfg = ArchConfig(img_size=32, patch_size=8, embed_dim=16, depth=2)
    model = timm.create_model("dynamic_backbone", arch=cfg, drop_rate=0.0, global_pool="avg", scriptable=False)
    assert model.cfg == cfg
    with pytest.raises(ValueError, match=r"drop_rate=0\.1: these models take only 0 or 0\.0"):
        timm.create_model("dynamic_backbone", arch=cfg, drop_rate=0.1)


def test_timms_build_flags_are_taken_or_refused_as_these_models_allow():
    """timm consumes scriptable, exportable and no_jit itself: scriptable=True was accepted though
    the models do not script, and device=/dtype=, which timm's own models take, were refused."""
    cfg = ArchConfig(img_size=32, patch_size=8, embed_dim=16, depth=2)
    assert timm.create_model("dynamic_backbone", arch=cfg, exportable=True, no_jit=True).cfg == cfg
    with pytest.raises(ValueError, match="scriptable=True: these models cannot be scripted"):
        timm.create_model("dynamic_backbone", arch=cfg, scriptable=True)
    model = timm.create_model("dynamic_backbone", arch=cfg, device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}
    with pytest.raises(ValueError, match="features_only=True: these models give no feature pyramid"):
        timm.create_model("dynamic_backbone", arch=cfg, features_only=True)


def test_a_users_pretrained_cfg_is_laid_over_the_models_own(tmp_path):
    """It was dropped: a mean given for a data set was ignored, and a weights file was not found."""
    from safetensors.torch import save_file

    cfg = ArchConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=3)
    model = timm.create_model("dynamic_backbone", arch=cfg, pretrained_cfg={"mean": (0.5, 0.5, 0.5)})
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["classifier"] == "head"
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = timm.create_model(
        "dynamic_backbone", arch=cfg, pretrained=True, pretrained_cfg={"file": str(tmp_path / "w.safetensors")}
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="no pretrained tags"):
        timm.create_model("dynamic_backbone", arch=cfg, pretrained_cfg="in1k")


def test_reset_classifier_refuses_a_pool_these_models_do_not_have():
    """timm's reset_classifier(0, "") asks for the unpooled tokens; the tokens were still averaged."""
    model = timm.create_model("dynamic_backbone", arch=ArchConfig(img_size=32, patch_size=8, embed_dim=16, depth=2))
    with pytest.raises(ValueError, match="global_pool='': these models average the tokens"):
        model.reset_classifier(0, "")
    model.reset_classifier(0, "avg")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 16)


def test_saved_weights_fine_tune_with_other_classes_and_channels(tmp_path):
    """Loaded for a 5-class task, a 10-class checkpoint failed on its head's shape: the pretrained
    config named the requested classes, so timm never dropped the old head."""
    from safetensors.torch import save_file

    cfg = ArchConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=10, in_chans=1)
    trained = timm.create_model("dynamic_backbone", arch=cfg)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    tuned = timm.create_model(
        "dynamic_backbone",
        arch=cfg,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(tmp_path / "w.safetensors")},
        num_classes=5,
        in_chans=3,
    )
    assert tuned.head.out_features == 5 and tuned.patch_embed.weight.shape[1] == 3
    torch.testing.assert_close(tuned.blocks[1].state_dict(), trained.blocks[1].state_dict(), rtol=0, atol=0)


def test_generic_timm_entry_without_arch_is_an_error():
    with pytest.raises(TypeError, match="arch="):
        timm.create_model("dynamic_backbone")


def test_layers_demo_runs(capsys):
    from layers import demo

    demo.main()
    out = capsys.readouterr().out
    assert "7,074,184 parameters" in out and "attention" in out


def test_presets_pool_odd_grids_as_the_published_model_does():
    """At 240 px (15 x 15 tokens) the context is the 7 x 7 whole 2 x 2 windows, dW still divided by N = 225."""
    torch.manual_seed(0)
    fc1 = layers.create_model(PRESETS["weightformer_tiny"].replace(img_size=240)).blocks[1].mlp.fc1.double()
    x = torch.randn(2, 15, 15, 192, dtype=torch.float64)
    assert fc1.pool(x).shape == (2, 49, 192)
    # docs/design.md section 3, written out independently of the layer's code
    heads = fc1.factors
    context = x[:, :14, :14].reshape(2, 7, 2, 7, 2, 192).mean(dim=(2, 4)).reshape(2, 49, 192)
    h = heads.proj(context)
    a = torch.nn.functional.silu(h[..., :48]) @ heads.u
    b = torch.nn.functional.silu(h[..., 48:]) @ heads.v
    dw = a.transpose(1, 2) @ b / (192**0.5 * 225)
    dw = dw / (torch.linalg.vector_norm(dw, dim=1, keepdim=True) + 1)
    torch.testing.assert_close(fc1.delta(x), dw)


def test_other_configurations_keep_ceil_mode_pooling():
    torch.manual_seed(0)
    cfg = PRESETS["weightformer_tiny"].replace(img_size=240, dynamic={"pool_rounding": "ceil"})
    assert ArchConfig().dynamic.pool_rounding == "ceil"
    fc1 = layers.create_model(cfg).blocks[1].mlp.fc1
    assert fc1.pool(torch.randn(1, 15, 15, 192)).shape == (1, 64, 192)


class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _dropped(cfg, index, branch):
    """Whether stochastic depth changes the output of one block in training mode when only ``branch`` is live."""
    torch.manual_seed(0)
    block = layers.create_block(cfg, index, drop_path=0.9)
    setattr(block, "mlp" if branch == "mixer" else "mixer", _Zero())
    x = torch.randn(16, 4, 4, cfg.embed_dim)
    with torch.no_grad():
        return not torch.equal(block.train()(x), block.eval()(x))


@pytest.mark.parametrize("index", [0, 1], ids=["static block", "dynamic block"])
def test_presets_drop_the_mlp_branch_only(index):
    preset = PRESETS["weightformer_small"]
    assert not _dropped(preset, index, "mixer")
    assert _dropped(preset, index, "mlp")
    general = preset.replace(drop_path_branches="both")
    assert ArchConfig().drop_path_branches == "both"
    assert _dropped(general, index, "mixer") and _dropped(general, index, "mlp")


def test_presets_drop_path_rates_are_the_published_ones():
    rates = {name: cfg.drop_path_rate for name, cfg in PRESETS.items()}
    assert rates == {"weightformer_tiny": 0.0, "weightformer_small": 0.2, "weightformer_base": 0.2}
    model = timm.create_model("weightformer_small")
    assert model.blocks[-1].drop_path_mlp.drop_prob == pytest.approx(0.2)
    assert isinstance(model.blocks[-1].drop_path_mixer, torch.nn.Identity)
