"""Where the dynamic layers' time goes: PyTorch op counts and the top ops by self CPU time.

    python benchmarks/layer_profile.py [--baseline DIR]

Profiles (torch.profiler, CPU) a batch-1 forward of the tiny preset at 224 px against the same
backbone with static blocks only, and one forward + backward of the dynamic and static block
(width 192, batch 8) at 64 and 196 tokens. With ``--baseline`` (a checkout of an earlier commit,
as for layer_scaling.py) the same cases run on that checkout's ``layers`` in a subprocess, so the
report shows before and after side by side. It also counts the multiply-adds that the first
dynamic linear layer (FC1) and its static counterpart actually execute, forward and backward
(FlopCounterMode on real tensors, so on the route the layer really takes), against their time:
the rate tells inefficiency from extra arithmetic. Writes benchmarks/results/layer_profile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
TOP = 8


def _profile(run, steps: int) -> dict:
    run()  # one-time allocation and kernel selection; not profiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)
    return {
        "ops": sum(r.count for r in rows) / steps,
        "ms": sum(r.self_cpu_time_total for r in rows) / steps / 1000,
        "top": [(r.key, r.self_cpu_time_total / steps / 1000, r.count / steps) for r in rows[:TOP]],
    }


def cases(layers) -> dict[str, dict]:
    """Every profiled case of one ``layers`` package."""
    torch.manual_seed(0)
    tiny = layers.PRESETS["weightformer_tiny"]
    out = {}
    for mixer in ("dynamic", "static"):
        model = layers.create_model(tiny.replace(mixer=mixer)).eval()
        image = torch.randn(1, 3, 224, 224)

        def forward(model=model, image=image):
            with torch.no_grad():
                model(image)

        out[f"tiny preset, {mixer} blocks: batch-1 forward"] = _profile(forward, 5)
    for side in (8, 14):
        tokens = torch.randn(8, side, side, 192, requires_grad=True)
        for name, index in (("dynamic", 1), ("static", 0)):
            block = layers.create_block(tiny, index)

            def step(block=block, tokens=tokens):
                block(tokens).sum().backward()

            out[f"{name} block, {side * side} tokens: forward + backward"] = _profile(step, 5)
    return out


def fc1_arithmetic(layers) -> dict[str, dict]:
    """Executed forward + backward MMACs and median ms of FC1, dynamic and static, batch 8.

    The depthwise convs are left out: FlopCounterMode over-counts a grouped convolution's backward.
    The gradient is a dense tensor, as in training (the gradient of ``.sum()`` is a broadcast one,
    which slows the static matmuls down).
    """
    tiny = layers.PRESETS["weightformer_tiny"]
    out = {}
    for side in (8, 14):
        torch.manual_seed(0)
        tokens = torch.randn(8, side, side, 192, requires_grad=True)
        grad = torch.randn(8, side, side, tiny.mlp_hidden)
        for name, index in (("dynamic", 1), ("static", 0)):
            fc1 = layers.create_block(tiny, index).mlp.fc1
            with FlopCounterMode(display=False) as counter:
                fc1(tokens).backward(grad)
            seconds = []
            for _ in range(20):
                start = time.perf_counter()
                fc1(tokens).backward(grad)
                seconds.append(time.perf_counter() - start)
            macs = counter.get_total_flops() / 2
            out[f"{name} FC1, {side * side} tokens"] = {"mmacs": macs / 1e6, "ms": statistics.median(seconds) * 1e3}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", metavar="DIR")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.root:  # a child: profile the package found under --root
        sys.path.insert(0, args.root)
        import layers

        print(json.dumps({"profile": cases(layers), "arithmetic": fc1_arithmetic(layers)}))
        return
    roots = {"now": str(ROOT), **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    results = {}
    for label, root in roots.items():
        done = subprocess.run(
            [sys.executable, __file__, "--root", root],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": root},
        )
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    arithmetic = {label: result.pop("arithmetic") for label, result in results.items()}
    results = {label: result["profile"] for label, result in results.items()}
    lines = [
        "# Layer profile",
        "",
        f"torch.profiler on the CPU ({torch.get_num_threads()} threads): ops per step (every aten op "
        "the profiler records, nested ones included) and self CPU ms per step; `python "
        "benchmarks/layer_profile.py --baseline DIR`.",
        "",
        "| case | " + " | ".join(f"{label} ops | {label} ms" for label in roots) + " |",
        "|---|" + "---|---|" * len(roots),
    ]
    for case in results["now"]:
        cells = [f"{results[label][case]['ops']:.0f} | {results[label][case]['ms']:.1f}" for label in roots]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Arithmetic and its rate: FC1, forward + backward, batch 8",
        "",
        "| case | " + " | ".join(f"{label} MMACs | {label} ms | {label} GMAC/s" for label in roots) + " |",
        "|---|" + "---|---|---|" * len(roots),
    ]
    for case in arithmetic["now"]:
        cells = [arithmetic[label][case] for label in roots]
        row = " | ".join(f"{c['mmacs']:.0f} | {c['ms']:.2f} | {c['mmacs'] / c['ms']:.0f}" for c in cells)
        lines.append(f"| {case} | {row} |")
    for label in roots:
        lines += ["", f"## Top ops by self CPU time ({label})"]
        for case, result in results[label].items():
            lines += ["", f"**{case}**", "", "| op | ms per step | calls per step |", "|---|---|---|"]
            lines += [f"| {name} | {ms:.2f} | {calls:.0f} |" for name, ms, calls in result["top"]]
    path = ROOT / "benchmarks" / "results" / "layer_profile.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
