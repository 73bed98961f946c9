"""Small architectures that together cover every mixer and every value of every strategy axis."""

from layers import ArchConfig

BASE = ArchConfig(img_size=(20, 28), patch_size=4, embed_dim=16, depth=2, every=1, offset=0, num_classes=5, num_heads=2)

AXES = {
    "linear_predictor": ["gap", "linear", "nonlinear", "bilateral", "deep"],
    "conv_predictor": ["gap", "adaptive", "amp_dir", "conv"],
    "pool": ["global", "avg2", "max3", "adaptive2", "attn4"],
    "norm": ["none", "unit1", "layernorm", "tanh"],
    "gate": ["none", "scalar", "sigmoid"],
    "linear_act": ["silu", "gelu", "relu"],
}


def variants() -> dict[str, ArchConfig]:
    """One config per axis value (the rest at defaults, fc2 dynamic too), plus each baseline mixer."""
    out = {mixer: BASE.replace(mixer=mixer) for mixer in ("attention", "linear_attention", "static")}
    for axis, values in AXES.items():
        for value in values:
            out[f"{axis}={value}"] = BASE.replace(dynamic={axis: value, "fc2": True, "hyper_depth": 2})
    out["kernel_size=5"] = BASE.replace(kernel_size=5)
    out["kernel_size=7"] = BASE.replace(kernel_size=7)
    out["deep3"] = BASE.replace(dynamic={"linear_predictor": "deep", "hyper_depth": 3})
    out["rank_ratio=2"] = BASE.replace(dynamic={"rank_ratio": 2})
    out["placement every 2, offset 1"] = BASE.replace(depth=4, every=2, offset=1)
    out["only fc2 dynamic"] = BASE.replace(dynamic={"fc1": False, "dwc": False, "fc2": True})
    return out


VARIANTS = variants()
