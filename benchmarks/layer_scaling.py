"""Forward + backward time and peak memory of one block as the token count grows.

    python benchmarks/layer_scaling.py            # all blocks, 64 .. 12544 tokens (about 7 minutes)
    python benchmarks/layer_scaling.py --baseline DIR   # also the dynamic block of another checkout
    python benchmarks/layer_scaling.py --threads 1      # one core: results in layer_scaling_threads1.*

``--baseline`` names a checkout of an earlier commit (``git worktree add DIR <commit>``); its
``layers`` package is imported in the timing processes as a fifth block, "dynamic (baseline)",
stepped in turn with the others, so the old and new dynamic block are compared in the same run.

Width 192 (the tiny preset's), batch 8, one block of each kind, all measured in the same run.
Each token count is timed in its own process with the blocks stepped in turn; each (block, tokens)
case is then run once more in a fresh process so that the rise of its resident memory is its own.

The cases run with glibc's allocator told to keep freed memory (MALLOC_MMAP_MAX_=0 and no heap
trimming), as PyTorch's CPU performance guide advises through jemalloc/tcmalloc: by default,
buffers over 32 MB are handed back to the kernel at every free and page-faulted in again at the
next step, which taxes every block at 12544 tokens but none at 3136 and would bend the scaling
curves by an allocator threshold rather than by the algorithms.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = "dynamic (baseline)"
if "--baseline" in sys.argv:  # the timing children import the old package as `baseline_layers`
    import importlib.util

    _root = Path(sys.argv[sys.argv.index("--baseline") + 1]).resolve()
    _spec = importlib.util.spec_from_file_location(
        "baseline_layers", _root / "layers" / "__init__.py", submodule_search_locations=[str(_root / "layers")]
    )
    baseline_layers = importlib.util.module_from_spec(_spec)
    sys.modules["baseline_layers"] = baseline_layers
    _spec.loader.exec_module(baseline_layers)

import layers  # noqa: E402
from benchmarks.report import Target, exit_with, write  # noqa: E402

WIDTH, BATCH = 192, 8
SIDES = (8, 14, 28, 56, 112)  # 64, 196, 784, 3136, 12544 tokens
REFERENCE = layers.PRESETS["weightformer_tiny"]
BLOCKS = {
    "attention": lambda: layers.create_block(REFERENCE.replace(mixer="attention", every=1, offset=0), 0),
    "linear_attention": lambda: layers.create_block(REFERENCE.replace(mixer="linear_attention", every=1, offset=0), 0),
    "dynamic": lambda: layers.create_block(REFERENCE, 1),
    "static": lambda: layers.create_block(REFERENCE, 0),
}
if "baseline_layers" in sys.modules:
    BLOCKS[BASELINE] = lambda: baseline_layers.create_block(baseline_layers.PRESETS["weightformer_tiny"], 1)
MIN_SECONDS = 10.0  # the least time the rounds of one token count take
BLOCK_SECONDS = 30.0  # the step time after which a block with three rounds takes no more
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def _step(block: torch.nn.Module, tokens: torch.Tensor) -> float:
    start = time.perf_counter()
    block(tokens).sum().backward()
    tokens.grad = None
    return time.perf_counter() - start


def _setup(side: int) -> tuple[dict[str, torch.nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    blocks = {name: build() for name, build in BLOCKS.items()}
    return blocks, torch.randn(BATCH, side, side, WIDTH, requires_grad=True)


def time_blocks(side: int) -> dict[str, dict]:
    """Median forward+backward seconds of every block, stepping them in turn.

    Interleaving the blocks round by round exposes all of them to the same machine state, so
    their ratios hold even when the machine's speed drifts during the run.
    """
    blocks, tokens = _setup(side)
    for block in blocks.values():  # one-time allocation and kernel selection; not timed
        _step(block, tokens)
    seconds: dict[str, list[float]] = {name: [] for name in blocks}
    start = time.perf_counter()

    def wants_more(name: str) -> bool:
        taken = seconds[name]
        # Small grids step in milliseconds, where nine rounds leave a median that moves by 10 %
        # from run to run: every block keeps stepping for MIN_SECONDS. After that a block stops at
        # nine rounds, or at three once its own steps have taken BLOCK_SECONDS, so that attention
        # at 12544 tokens (20 s a step) no longer leaves the fast blocks three rounds.
        if len(taken) < 3 or time.perf_counter() - start < MIN_SECONDS:
            return True
        return len(taken) < 9 and sum(taken) < BLOCK_SECONDS

    while stepping := [name for name in blocks if wants_more(name)]:
        for name in stepping:
            seconds[name].append(_step(blocks[name], tokens))
    return {name: {"seconds": statistics.median(values), "steps": len(values)} for name, values in seconds.items()}


def peak_memory(block_name: str, side: int) -> float:
    """MiB by which two forward+backward steps of one block raised the process's resident memory
    at their peak, over what it held just before them.

    Two things would hide the steps' memory: heap that start-up freed but kept resident, which the
    steps reuse without a page fault, and a peak already reached during start-up (imports peak
    higher than a block at 64 tokens). So the free heap goes back to the system first, and the
    kernel's high-water mark is reset to the present resident size before the steps.
    """
    torch.manual_seed(0)
    block = BLOCKS[block_name]()
    tokens = torch.randn(BATCH, side, side, WIDTH, requires_grad=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to VmRSS (Linux, proc(5))
    before = _resident_kib("VmRSS")
    _step(block, tokens)
    _step(block, tokens)
    return (_resident_kib("VmHWM") - before) / 1024


def _resident_kib(field: str) -> int:
    """A resident-memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def block_gmacs(block_name: str, side: int) -> float:
    """Forward GMACs of the block for the whole batch, counted on meta tensors."""
    with torch.device("meta"):
        block, tokens = BLOCKS[block_name](), torch.empty(BATCH, side, side, WIDTH)
    return layers.count_macs(block, tokens) / 1e9


def child(*args: str, baseline: str | None = None, threads: int | None = None) -> object:
    extra = ["--baseline", baseline] if baseline else []
    # torch and MKL size their thread pools from this variable when the process starts
    thread_env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    out = subprocess.run(
        [sys.executable, __file__, *args, *extra],
        env={**os.environ, **ALLOCATOR_ENV, **thread_env},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", type=int, metavar="SIDE", help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=2, metavar=("BLOCK", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", metavar="DIR", help="a checkout whose dynamic block is timed alongside")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads in the timing processes (default: one per core); the results get a _threadsN suffix",
    )
    args = parser.parse_args()
    if args.time:
        print(json.dumps(time_blocks(args.time)))
        return
    if args.memory:
        print(json.dumps(peak_memory(args.memory[0], int(args.memory[1]))))
        return

    if args.threads:
        torch.set_num_threads(args.threads)  # so that the results record the timing processes' count
    rows = []
    for side in SIDES:
        timed = child("--time", str(side), baseline=args.baseline, threads=args.threads)
        for name in timed:
            row = {
                "block": name,
                "tokens": side * side,
                **timed[name],
                "peak_mib": child("--memory", name, str(side), baseline=args.baseline, threads=args.threads),
                "gmacs": block_gmacs(name, side),
            }
            print(
                f"{name:>16} {row['tokens']:>6} tokens: {row['seconds']:.4f} s, {row['peak_mib']:.0f} MiB", flush=True
            )
            rows.append(row)
    time_of = {(r["block"], r["tokens"]): r["seconds"] for r in rows}
    tokens = [s * s for s in SIDES]
    gmacs_of = {(r["block"], r["tokens"]): r["gmacs"] for r in rows}
    growth = max(time_of["dynamic", b] / time_of["dynamic", a] for a, b in itertools.pairwise(tokens[1:]))
    targets = [
        Target("dynamic block: worst time growth per x4 tokens", growth, 4.6, at_most=True),
        Target(
            "attention / dynamic time at 3136 tokens",
            time_of["attention", 3136] / time_of["dynamic", 3136],
            3.0,
            at_most=False,
        ),
        Target(
            "attention / dynamic time at 12544 tokens",
            time_of["attention", 12544] / time_of["dynamic", 12544],
            10.0,
            at_most=False,
        ),
        *(
            Target(
                f"dynamic / static time at {n} tokens, over 1.1 x their GMACs ratio "
                f"({gmacs_of['dynamic', n] / gmacs_of['static', n]:.2f})",
                time_of["dynamic", n] / time_of["static", n] / (1.1 * gmacs_of["dynamic", n] / gmacs_of["static", n]),
                1.0,
                at_most=True,
            )
            for n in (64, 196)
        ),
        *(
            Target(
                f"dynamic / baseline dynamic time at {n} tokens",
                time_of["dynamic", n] / time_of[BASELINE, n],
                1.0,
                at_most=True,
            )
            for n in tokens
            if args.baseline and n >= 784
        ),
        Target(
            "dynamic / static time at 3136 tokens",
            time_of["dynamic", 3136] / time_of["static", 3136],
            1.3,
            at_most=True,
        ),
    ]
    table = [
        {
            "block": r["block"],
            "tokens": r["tokens"],
            "fwd+bwd s": r["seconds"],
            "rounds": r["steps"],
            "x static time": r["seconds"] / time_of["static", r["tokens"]],
            "fwd GMACs": r["gmacs"],
            "x static GMACs": r["gmacs"] / gmacs_of["static", r["tokens"]],
            "peak MiB": r["peak_mib"],
        }
        for r in sorted(rows, key=lambda r: (list(BLOCKS).index(r["block"]), r["tokens"]))
    ]
    notes = (
        f"One block, width {WIDTH}, batch {BATCH}, float32 on the CPU with {torch.get_num_threads()} torch threads: "
        f"median seconds of a forward + backward step (blocks stepped in turn for at least {MIN_SECONDS:.0f} s, "
        f"then up to 9 rounds, or 3 for a block whose steps took {BLOCK_SECONDS:.0f} s), and how far two steps "
        "raised a fresh process's resident memory at their peak (MiB); forward GMACs of the batch for comparison."
    )
    name = f"layer_scaling_threads{args.threads}" if args.threads else "layer_scaling"
    exit_with(write(name, "Layer scaling", table, targets, notes))


if __name__ == "__main__":
    main()
