"""Dynamic-parameter vision layers: weights predicted from the input, at linear cost.

Importing this package registers the models with timm (without importing timm: see
``timm_models.py``). Everything another package needs is exported here, so that no caller depends
on how the modules below are split.
"""

from .attention import Attention, LinearAttention
from .backbone import DynamicBackbone
from .blocks import Block, create_block
from .complexity import Complexity, complexity, count_macs
from .config import NAMED_FIELDS, ArchConfig
from .dynamic_config import DynamicConfig
from .dynamic_conv import DWConv, DynamicDWConv
from .dynamic_linear import DynamicLinear
from .kernel_predictors import CONV_PREDICTORS
from .linear_predictors import LINEAR_PREDICTORS
from .mixers import MIXERS
from .pooling import POOLS, create_pool, pool_extent
from .presets import PRESETS
from .registry import Registry, unknown_name_message
from .schema import ConfigError, build, coerce_fields, coerce_value, join, load_yaml, save_yaml, type_name
from .timm_models import register_with_timm

register_with_timm()


def create_model(arch: ArchConfig | dict | str) -> DynamicBackbone:
    """Build a backbone from a config object, a mapping, or a YAML/JSON path."""
    return DynamicBackbone(ArchConfig.coerce(arch))


__all__ = [
    "CONV_PREDICTORS",
    "LINEAR_PREDICTORS",
    "MIXERS",
    "NAMED_FIELDS",
    "POOLS",
    "PRESETS",
    "ArchConfig",
    "Attention",
    "Block",
    "Complexity",
    "ConfigError",
    "DWConv",
    "DynamicBackbone",
    "DynamicConfig",
    "DynamicDWConv",
    "DynamicLinear",
    "LinearAttention",
    "Registry",
    "build",
    "coerce_fields",
    "coerce_value",
    "complexity",
    "count_macs",
    "create_block",
    "create_model",
    "create_pool",
    "join",
    "load_yaml",
    "pool_extent",
    "save_yaml",
    "type_name",
    "unknown_name_message",
]
