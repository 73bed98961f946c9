"""The architecture config: exact round trips, and clear errors for what cannot be built."""

import pytest
import torch
from arch_variants import VARIANTS

import layers
from layers import PRESETS, ArchConfig, ConfigError


@pytest.mark.parametrize("name", [*sorted(VARIANTS), "weightformer_tiny"])
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip_gives_the_same_config_and_the_same_model(name, fmt, tmp_path):
    cfg = VARIANTS.get(name) or PRESETS[name].replace(img_size=64, num_classes=10)
    path = tmp_path / f"arch.{fmt}"
    cfg.save(path)
    loaded = ArchConfig.load(path)
    assert loaded == cfg
    torch.manual_seed(0)
    original = layers.create_model(cfg).eval()
    rebuilt = layers.create_model(loaded).eval()
    rebuilt.load_state_dict(original.state_dict())
    images = torch.randn(2, 3, *cfg.img_size)
    with torch.no_grad():
        assert torch.equal(original(images), rebuilt(images))


def test_yaml_is_plain_and_readable():
    text = PRESETS["weightformer_tiny"].to_yaml()
    assert "img_size:\n- 224\n- 224" in text and "linear_predictor: bilateral" in text
    assert "!!" not in text  # no python tags: any YAML reader can load it


def test_int_and_list_forms_are_normalised():
    assert ArchConfig(img_size=32).img_size == (32, 32)
    assert ArchConfig(img_size=[32, 48]).img_size == (32, 48)
    assert ArchConfig(mlp_ratio=2).mlp_ratio == 2.0
    assert ArchConfig.from_dict({"dynamic": {"pool": "max2"}}).dynamic.pool == "max2"


@pytest.mark.parametrize(
    "data, path, fragment",
    [
        ({"embed_dims": 64}, "embed_dims", "did you mean 'embed_dim'"),
        ({"dynamic": {"pol": "avg2"}}, "dynamic.pol", "did you mean 'pool'"),
        ({"depth": "six"}, "depth", "expected an integer"),
        ({"depth": True}, "depth", "expected an integer"),
        ({"dynamic": {"fc1": 1}}, "dynamic.fc1", "expected true or false"),
        ({"img_size": [32, 32, 3]}, "img_size", "a list of 2 integers"),
        ({"mixer": "transformer"}, "mixer", "allowed: attention, dynamic, linear_attention, static"),
        ({"dynamic": {"linear_predictor": "bilaterl"}}, "dynamic.linear_predictor", "did you mean 'bilateral'"),
        ({"dynamic": {"pool": "avg0"}}, "dynamic.pool", "at least 1"),
        ({"dynamic": {"pool": "avg02"}}, "dynamic.pool", "write avg2"),  # built avg2, compared unequal
        ({"dynamic": {"pool": "median2"}}, "dynamic.pool", "avg<int>"),
        ({"dynamic": {"norm": "l2"}}, "dynamic.norm", "unit1"),
        ({"dynamic": {"gate": "softmax"}}, "dynamic.gate", "sigmoid"),
        ({"dynamic": {"conv_predictor": "big"}}, "dynamic.conv_predictor", "amp_dir"),
        ({"dynamic": {"linear_act": "tanh"}}, "dynamic.linear_act", "silu"),
        ({"dynamic": {"hyper_depth": 4}}, "dynamic.hyper_depth", "1, 2 or 3"),
        ({"dynamic": {"rank_ratio": 5}}, "dynamic.rank_ratio", "does not divide"),
        ({"dynamic": {"fc1": False, "dwc": False}}, "dynamic", "at least one of fc1, dwc, fc2"),
        (
            {"img_size": 32, "patch_size": 8, "dynamic": {"pool": "avg8"}},
            "dynamic.pool",
            "larger than the 4x4 token grid",
        ),
        (
            {"img_size": 32, "patch_size": 8, "dynamic": {"pool": "avg8", "pool_rounding": "floor"}},
            "dynamic.pool",
            "larger than the 4x4 token grid",
        ),
        ({"dynamic": {"pool_rounding": "round"}}, "dynamic.pool_rounding", "allowed: ceil, floor"),
        ({"drop_path_branches": "mixer"}, "drop_path_branches", "allowed: both, mlp"),
        ({"kernel_size": 4}, "kernel_size", "odd"),
        ({"kernel_size": -1}, "kernel_size", "odd and positive"),  # -1 % 2 == 1: it built, then crashed
        ({"dynamic": {"rank_ratio": 0}}, "dynamic.rank_ratio", "at least 1"),
        ({"offset": -1}, "offset", "not be negative"),
        ({"mixer": "attention", "num_heads": 5}, "num_heads", "not divisible"),
        ({"img_size": 8}, "img_size", "smaller than the patch size"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio", "expected a number"),
    ],
)
def test_invalid_configs_name_the_key_and_what_is_allowed(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        ArchConfig.from_dict(data)
    assert info.value.path == path
    assert fragment in str(info.value)


def test_a_dynamic_config_on_its_own_refuses_a_rank_ratio_it_cannot_build():
    with pytest.raises(ConfigError, match="rank_ratio: must be at least 1"):
        layers.DynamicConfig(rank_ratio=0)  # built, then DynamicLinear divided by zero


def test_floor_rounding_fits_any_grid_of_at_least_one_window():
    cfg = ArchConfig(img_size=(12, 20), patch_size=4, dynamic={"pool": "avg3", "pool_rounding": "floor"})  # 3 x 5
    assert layers.create_model(cfg).blocks[1].mlp.fc1.pool(torch.randn(1, 3, 5, 192)).shape == (1, 1, 192)
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg


def test_gap_predictor_ignores_the_pool_so_any_grid_fits():
    cfg = ArchConfig(img_size=32, patch_size=8, dynamic={"linear_predictor": "gap", "pool": "avg8"})
    assert layers.create_model(cfg)(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_replace_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        PRESETS["weightformer_tiny"].replace(dept=3)


def test_coerce_rejects_other_types():
    with pytest.raises(TypeError):
        ArchConfig.coerce(42)
