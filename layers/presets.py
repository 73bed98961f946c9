"""The published WeightFormer models (docs/design.md section 3) as points of the config space."""

from __future__ import annotations

from .config import ArchConfig, DynamicConfig

#: DynFC1 bilateral on avg2 context (rounding down on odd grids), DynDWC adaptive 3x3, unit1 norm,
#: no gate, FC2 static.
WEIGHTFORMER_DYNAMIC = DynamicConfig(
    fc1=True,
    dwc=True,
    fc2=False,
    linear_predictor="bilateral",
    pool="avg2",
    pool_rounding="floor",
    rank_ratio=4,
    linear_act="silu",
    conv_predictor="adaptive",
    conv_act="gelu",
    norm="unit1",
    gate="none",
)

_WEIGHTFORMER = ArchConfig(
    img_size=(224, 224),
    patch_size=16,
    depth=17,
    mlp_ratio=4.0,
    mixer="dynamic",
    every=3,
    offset=1,
    kernel_size=3,
    drop_path_branches="mlp",
    dynamic=WEIGHTFORMER_DYNAMIC,
)

PRESETS: dict[str, ArchConfig] = {
    "weightformer_tiny": _WEIGHTFORMER.replace(embed_dim=192, drop_path_rate=0.0),
    "weightformer_small": _WEIGHTFORMER.replace(embed_dim=384, drop_path_rate=0.2),
    "weightformer_base": _WEIGHTFORMER.replace(embed_dim=384, img_size=(448, 448), drop_path_rate=0.2),
}
