"""Dynamic-parameter vision layers: weights predicted from the input, at linear cost.

Importing this package registers the models with timm.
"""
from .backbone import DynamicBackbone
from .complexity import Complexity, complexity, count_macs
from .config import ArchConfig, ConfigError, DynamicConfig
from .dynamic_conv import DWConv, DynamicDWConv
from .dynamic_linear import DynamicLinear
from .attention import Attention, LinearAttention
from .blocks import Block, MIXERS, create_block
from .pooling import POOLS, create_pool
from .presets import PRESETS
from . import timm_models  # noqa: F401  (registers the timm entry points)


def create_model(arch: "ArchConfig | dict | str") -> DynamicBackbone:
    """Build a backbone from a config object, a mapping, or a YAML/JSON path."""
    return DynamicBackbone(ArchConfig.coerce(arch))


__all__ = [
    "ArchConfig", "Attention", "Block", "Complexity", "ConfigError", "DWConv", "DynamicBackbone",
    "DynamicConfig", "DynamicDWConv", "DynamicLinear", "LinearAttention", "MIXERS", "POOLS", "PRESETS",
    "complexity", "count_macs", "create_block", "create_model", "create_pool",
]
