"""Parameters and GMACs of an architecture, measured on meta tensors: no memory, no arithmetic.

GMACs count one multiply-add as 1 (FLOPs / 2), the DeiT / timm / fvcore convention. The count
comes from torch's FlopCounterMode, which sees every matmul, bmm, baddbmm and (grouped)
convolution, so the hypernetwork's own work (building dW and dK) is included.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .backbone import DynamicBackbone
from .config import ArchConfig


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int  # per image

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def count_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds of one forward of ``module``, by the GMACs convention (docs/design.md section 4).

    It is counted on a meta copy whatever the inputs: on real tensors a dynamic linear layer takes
    a cheaper route than the convention counts, and attention a fused kernel the counter misses.
    """
    if any(t.device.type != "meta" for t in (*inputs, *module.parameters(), *module.buffers())):
        module = copy.deepcopy(module).to("meta")
        inputs = tuple(torch.empty_like(t, device="meta") for t in inputs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() // 2


def complexity(arch: ArchConfig, img_size: int | tuple[int, int] | None = None) -> Complexity:
    """Cost of one image through ``arch`` at ``img_size`` (default: the config's own)."""
    size = arch.img_size if img_size is None else img_size
    return _complexity(arch, (size, size) if isinstance(size, int) else tuple(size))


@functools.lru_cache(maxsize=4096)
def _complexity(arch: ArchConfig, size: tuple[int, int]) -> Complexity:
    # Remembered per (config, size): a search costs each configuration when it asks for it and
    # again in every report, and tracing even a small model on meta tensors takes tens of ms.
    with torch.device("meta"):
        model = DynamicBackbone(arch).eval()
        image = torch.empty(1, arch.in_chans, *size)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, macs=count_macs(model, image))
