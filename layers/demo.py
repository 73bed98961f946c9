"""A short tour of the layers: the published presets, and cost against resolution per mixer.

python -m layers.demo
"""

from __future__ import annotations

import timm
import torch

import layers


def main() -> None:
    for name in ("weightformer_tiny", "weightformer_small", "weightformer_base"):
        model = timm.create_model(name)
        cost = layers.complexity(layers.PRESETS[name])
        print(f"{name:>20}: {sum(p.numel() for p in model.parameters()):>11,} parameters, {cost.gmacs:6.2f} GMACs")
    tiny = layers.PRESETS["weightformer_tiny"]
    print("\nGMACs of tiny-sized models against input resolution:")
    print(f"{'mixer':>18}" + "".join(f"{size:>9}px" for size in (224, 448, 896)))
    for mixer in ("dynamic", "static", "linear_attention", "attention"):
        cfg = tiny if mixer == "dynamic" else tiny.replace(mixer=mixer, every=1, offset=0)
        print(f"{mixer:>18}" + "".join(f"{layers.complexity(cfg, size).gmacs:11.2f}" for size in (224, 448, 896)))
    model = timm.create_model("weightformer_tiny", num_classes=10).eval()
    with torch.no_grad():
        print("\nforward of 2 images at 224 px:", tuple(model(torch.randn(2, 3, 224, 224)).shape))


if __name__ == "__main__":
    main()
