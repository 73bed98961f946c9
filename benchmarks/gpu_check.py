"""The GPU path on a real GPU: trials as the search runs them, one and then two per GPU.

    python benchmarks/gpu_check.py --out DIR         # on a CUDA machine: about 4 minutes on an H100
    python benchmarks/gpu_check.py --cpu --tiny      # the same path on the CPU, small, in a minute

Needs torch (and timm, which ``layers`` builds on) but neither Ray nor Optuna: it runs the trial
body ``search.training.segment.run_segment`` directly, each trial in its own process as a Ray GPU
worker would (``max_calls=1``), on synthetic CIFAR-10-shaped data (nothing is downloaded; a
colour per class makes it learnable). The trials are spaces/cifar10.yaml's reference trials (the
WeightFormer design, softmax attention and static convs at the space's middle width and depth,
patch 4) plus a dynamic model at patch 2, with the space's recipe (batch 256, AMP, crop, flip,
RandAugment 2 ops at magnitude 9) for 2 epochs, run as two 1-epoch segments as at a rung.

1. One process on the GPU per trial: images trained per second of the second segment (model
   build, checkpoint restore, one epoch, evaluation included), peak GPU memory.
2. Two processes sharing the GPU (``resources.gpus: 0.5``: each capped at half the memory): the
   same trial twice at once; images per second each, and the gain of two trials per GPU over one.
3. Latency as trials record it (batch 1, training precision, fastest of 50 forwards) alone and
   while a neighbour trains on the same GPU.
4. The dynamic depthwise conv (per-sample kernels as one grouped conv), forward and backward in
   the training precision: its channels-last grouped form (``layers/dynamic_conv.py``) against
   the plain NCHW layout, on cuDNN.
5. RandAugment per batch of 256, and the host synchronisations it makes (CUDA's sync debug mode).

Writes ``DIR/gpu.json`` and ``DIR/gpu.md`` (default DIR: benchmarks/results), after every phase,
so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import layers  # noqa: E402
from benchmarks.report import RESULTS, Target, exit_with, write  # noqa: E402
from search.training.augment import AugmentSpec, _rand_augment  # noqa: E402
from search.training.data import Dataset, DataSpec, Split  # noqa: E402
from search.training.device import autocast_dtype, device_name  # noqa: E402
from search.training.segment import SegmentJob, run_segment  # noqa: E402
from search.training.trainer import Trainer, TrainSpec, measure_latency  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: spaces/cifar10.yaml's references (search.references at the space's middle: width 256, depth
#: 12, patch 4, drop path 0.1, lr 1.22e-3) and a dynamic model at patch 2 (256 tokens).
_BASE = layers.PRESETS["weightformer_tiny"].replace(
    img_size=32, num_classes=10, patch_size=4, embed_dim=256, depth=12, drop_path_rate=0.1
)
SHAPES = {
    "weightformer": _BASE,
    "attention": _BASE.replace(mixer="attention", num_heads=4),
    "static": _BASE.replace(mixer="static"),
    "dynamic-p2": _BASE.replace(patch_size=2, embed_dim=192, depth=8),
}
RECIPE = TrainSpec(
    epochs=2,
    batch_size=256,
    lr=1.22e-3,
    weight_decay=0.05,
    warmup_epochs=5,
    label_smoothing=0.1,
    augment=AugmentSpec(crop_padding=4, flip=True, randaugment_ops=2, randaugment_magnitude=9),
)
FULL = {"train": 20_000, "val": 5_000}  # under half of CIFAR-10's 45,000 training images: 78 steps an epoch
TINY = {"train": 512, "val": 128}
WORKER_TIMEOUT_S = 150
BUDGET_S = 400  # phases not started by then are skipped (the device tool allows 10 minutes a command)
DEADLINE_S = 540  # and no worker runs past this


# ---------------------------------------------------------------------- what each process does
def synthetic_cifar(sizes: dict[str, int], seed: int = 0) -> Dataset:
    """Random 32x32 RGB images whose class sets a mean colour: learnable, nothing downloaded."""
    generator = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 128, (10, 3, 1, 1), generator=generator)

    def split(n: int) -> Split:
        labels = torch.randint(10, (n,), generator=generator)
        noise = torch.randint(0, 128, (n, 3, 32, 32), generator=generator)
        return Split((noise + palette[labels]).to(torch.uint8), labels)

    return Dataset(split(sizes["train"]), split(sizes["val"]), 10, (32, 32), CIFAR_MEAN, CIFAR_STD)


def shape(name: str, tiny: bool) -> layers.ArchConfig:
    return SHAPES[name].replace(embed_dim=32, depth=3) if tiny else SHAPES[name]


def recipe(tiny: bool) -> TrainSpec:
    return RECIPE if not tiny else TrainSpec(**{**RECIPE.__dict__, "batch_size": 64, "eval_batch_size": 128})


def run_trial(name: str, gpus: float, tiny: bool, threads: int) -> dict[str, Any]:
    """One trial as a worker runs it: two 1-epoch segments, the checkpoint passed between them."""
    data = synthetic_cifar(TINY if tiny else FULL)
    job = SegmentJob(
        arch=shape(name, tiny).to_dict(),
        training=recipe(tiny),
        data=DataSpec(name="cifar10"),  # unused: the data set is given, as the driver ships it
        seed=0,
        start_epoch=0,
        stop_epoch=1,
        gpus=gpus,
        threads=threads,
        measure_latency=True,
        return_weights=False,
    )
    first, checkpoint = run_segment(job, None, data)
    second, _ = run_segment(dataclasses.replace(job, start_epoch=1, stop_epoch=2), checkpoint, data)
    cuda = torch.cuda.is_available() and gpus > 0
    return {
        "trial": name,
        "gpus": gpus,
        "images_per_s": second.images / second.seconds if second.images else None,
        "segment_s": [first.seconds, second.seconds],
        "accuracy": first.curve + second.curve,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "latency_ms": first.latency_ms,
        "latency_how": first.latency_how,
        "device": second.device,
        "failure": first.failure or second.failure,
    }


def probe_latency(gpus: float, tiny: bool, threads: int, wait_for: str | None) -> dict[str, Any]:
    """The weightformer trial's latency as a trial measures it, five times (after ``wait_for`` exists)."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    arch = shape("weightformer", tiny)
    model = layers.create_model(arch).to(device)
    if wait_for:
        while not Path(wait_for).exists():
            time.sleep(0.05)
        time.sleep(3.0)  # the neighbour is well into its training steps
    runs = [measure_latency(model, 3, arch.img_size, device, autocast_dtype(device)) for _ in range(5)]
    return {"latency_ms": runs}


def train_as_neighbour(gpus: float, tiny: bool, threads: int, training_flag: str, stop_flag: str) -> dict[str, Any]:
    """Train the weightformer trial until told to stop, flagging once training has started."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    data = synthetic_cifar(TINY if tiny else {"train": 10_240, "val": 256})
    trainer = Trainer(layers.create_model(shape("weightformer", tiny)), data, recipe(tiny), device, seed=0)
    Path(training_flag).touch()
    epochs, deadline = 0, time.time() + 120
    while not Path(stop_flag).exists() and time.time() < deadline:
        trainer.train_epoch()
        epochs += 1
    return {"epochs": epochs}


def time_ms(fn, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` after warm-up (CUDA events on a GPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def dynamic_dwconv_forms(batch: int, grid: int, dim: int, kernel_size: int, device: torch.device) -> dict[str, Any]:
    """Per-sample depthwise kernels as one grouped conv over B x C channels, in two layouts."""
    torch.manual_seed(0)
    x = torch.randn(batch, grid, grid, dim, device=device, requires_grad=True)  # tokens (B, H, W, C)
    kernel = (0.1 * torch.randn(batch, dim, kernel_size, kernel_size, device=device)).requires_grad_()
    bias = torch.randn(dim, device=device, requires_grad=True)
    pad, weight = kernel_size // 2, lambda: kernel.reshape(batch * dim, 1, kernel_size, kernel_size)

    def channels_last():  # layers/dynamic_conv.py: (H, W, B * C) memory, viewed as (1, B * C, H, W)
        folded = x.permute(1, 2, 0, 3).reshape(1, grid, grid, batch * dim).permute(0, 3, 1, 2)
        y = F.conv2d(folded, weight(), bias.repeat(batch), padding=pad, groups=batch * dim)
        return y.permute(0, 2, 3, 1).reshape(grid, grid, batch, dim).permute(2, 0, 1, 3)

    def nchw():  # the plain layout: (B * C, H, W) contiguous
        folded = x.permute(0, 3, 1, 2).reshape(1, batch * dim, grid, grid)
        y = F.conv2d(folded, weight(), bias.repeat(batch), padding=pad, groups=batch * dim)
        return y.reshape(batch, dim, grid, grid).permute(0, 2, 3, 1)

    dtype = autocast_dtype(device)

    def step(form):
        def run():
            with torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
                y = form()
            y.float().square().mean().backward()

        return run

    with torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
        same = torch.allclose(channels_last().float(), nchw().float(), atol=1e-2, rtol=1e-2)
    return {
        "channels_last_ms": time_ms(step(channels_last), 30, device),
        "nchw_ms": time_ms(step(nchw), 30, device),
        "same_output": same,
        "dtype": str(dtype),
    }


def kernels(tiny: bool, gpus: float, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    batch = 64 if tiny else 256
    out: dict[str, Any] = {"device": device_name(device), "autocast": str(autocast_dtype(device))}
    if device.type == "cuda":
        out["capability"] = list(torch.cuda.get_device_capability(device))
        out["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    for grid, dim in ((8, 32), (16, 32)) if tiny else ((8, 256), (16, 192)):  # patch 4 and 2, widths above
        out[f"dwconv_{grid}x{grid}x{dim}"] = dynamic_dwconv_forms(batch, grid, dim, 3, device)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    out["randaugment_ms"] = time_ms(lambda: _rand_augment(images, 2, 9, generator), 20, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
        try:
            _rand_augment(images, 2, 9, generator)
            out["randaugment_host_syncs"] = 0
        except RuntimeError as err:
            out["randaugment_host_syncs"] = f"at least 1: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return out


WORKERS = {"trial": run_trial, "latency": probe_latency, "neighbour": train_as_neighbour, "kernels": kernels}


# ---------------------------------------------------------------------- the parent: phases and report
def start(kind: str, **kwargs) -> subprocess.Popen:
    """A fresh process for one piece of work, as Ray starts one for each GPU task.

    Each gets the 4 CPU threads a cifar10.yaml trial asks for; on the CPU (a check of the script)
    one, so that two processes do not fight over a small machine's cores."""
    kwargs["threads"] = 4 if kwargs["gpus"] > 0 else 1
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen, deadline: float) -> dict[str, Any]:
    """The worker's result, once it is done or stopped (``deadline``: a time.time())."""
    timeout = max(1.0, min(WORKER_TIMEOUT_S, deadline - time.time()))
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        return {"failure": f"timed out after {timeout:.0f} s", "log": out[-2000:]}
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        return {"failure": f"exit code {process.returncode}", "log": out[-2000:]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json and gpu.md")
    parser.add_argument("--cpu", action="store_true", help="run every phase on the CPU (to check the script)")
    parser.add_argument("--tiny", action="store_true", help="small models and data (to check the script)")
    parser.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="start no phase after this (default %(default)s)"
    )
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="stop every worker by then (%(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[task.pop("kind")](**task)), flush=True)
        return
    whole = 0.0 if args.cpu else 1.0
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --cpu to check the script on the CPU")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "tiny": args.tiny, "cpu": args.cpu}
    began = time.time()
    deadline = began + args.deadline_s

    def phase(name: str, run) -> None:
        if time.time() - began > args.budget_s:
            results.setdefault("skipped", []).append(name)
            print(f"[{time.time() - began:6.1f} s] {name} skipped: over the {args.budget_s:g} s budget", flush=True)
            return
        results[name] = run()
        results["elapsed_s"] = time.time() - began
        report(results, args.out)
        print(f"[{time.time() - began:6.1f} s] {name} done", flush=True)

    def two_per_gpu() -> dict[str, Any]:
        shared = {}
        for name in SHAPES:
            pair = [start("trial", name=name, gpus=whole / 2, tiny=args.tiny) for _ in range(2)]
            shared[name] = [finish(p, deadline) for p in pair]
        return shared

    def latency() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as flags:
            training, stop = str(Path(flags, "training")), str(Path(flags, "stop"))
            quiet = finish(start("latency", gpus=whole, tiny=args.tiny, wait_for=None), deadline)
            neighbour = start("neighbour", gpus=whole / 2, tiny=args.tiny, training_flag=training, stop_flag=stop)
            busy = finish(start("latency", gpus=whole / 2, tiny=args.tiny, wait_for=training), deadline)
            Path(stop).touch()
            return {"alone": quiet, "with_neighbour": busy, "neighbour": finish(neighbour, deadline)}

    phase(
        "one_per_gpu",
        lambda: {name: finish(start("trial", name=name, gpus=whole, tiny=args.tiny), deadline) for name in SHAPES},
    )
    phase("two_per_gpu", two_per_gpu)
    phase("latency", latency)
    phase("kernels", lambda: finish(start("kernels", tiny=args.tiny, gpus=whole), deadline))
    exit_with(report(results, args.out))


def report(results: dict[str, Any], folder: Path) -> bool:
    """gpu.json (everything) and gpu.md (the figures), from whatever phases have run."""
    rows, targets = [], []

    def row(measure: str, value: Any, unit: str, detail: str = "") -> None:
        rows.append({"measure": measure, "value": value, "unit": unit, "detail": detail})

    gains = []
    for name, single in results.get("one_per_gpu", {}).items():
        if single.get("failure"):
            row(f"{name}: one per GPU", "failed", "", single["failure"])
            continue
        row(
            f"{name}: one per GPU",
            single["images_per_s"],
            "images/s",
            f"peak {_gib(single['peak_allocated_gib'])} allocated, {_gib(single['peak_reserved_gib'])} reserved; "
            f"accuracy {single['accuracy']}",
        )
        pair = results.get("two_per_gpu", {}).get(name)
        if not pair:
            continue
        if any(p.get("failure") for p in pair):
            row(f"{name}: two per GPU", "failed", "", "; ".join(str(p.get("failure")) for p in pair))
            continue
        each = [p["images_per_s"] for p in pair]
        gains.append(sum(each) / single["images_per_s"])
        row(
            f"{name}: two per GPU, each",
            statistics.mean(each),
            "images/s",
            f"{each[0]:.0f} and {each[1]:.0f}; peak {_gib(pair[0]['peak_allocated_gib'])} and "
            f"{_gib(pair[1]['peak_allocated_gib'])} "
            f"allocated (cap: half the GPU)",
        )
        row(f"{name}: gain of two trials per GPU over one", gains[-1], "x", "total images/s, two vs one")
    if gains:
        targets.append(
            Target("two trials per GPU / one, mean over trials (throughput)", statistics.mean(gains), 1.0, False)
        )
    latency = results.get("latency")
    if latency and not any(v.get("failure") for v in latency.values()):
        quiet, busy = latency["alone"]["latency_ms"], latency["with_neighbour"]["latency_ms"]
        row("weightformer latency, alone", statistics.median(quiet), "ms", f"5 measurements: {_ms(quiet)}")
        row(
            "weightformer latency, a neighbour training",
            statistics.median(busy),
            "ms",
            f"5 measurements: {_ms(busy)}; the neighbour trained {latency['neighbour'].get('epochs')} epochs",
        )
        targets.append(
            Target(
                "latency with a neighbour / alone (fastest of 50)",
                statistics.median(busy) / statistics.median(quiet),
                1.2,
                True,
            )
        )
    elif latency:
        row("latency", "failed", "", json.dumps(latency)[:500])
    found = results.get("kernels")
    if found and not found.get("failure"):
        for key, forms in found.items():
            if key.startswith("dwconv_"):
                size = key.removeprefix("dwconv_")
                detail = f"forward + backward, {forms['dtype']}, same output: {forms['same_output']}"
                row(f"dynamic depthwise conv {size}, channels-last grouped", forms["channels_last_ms"], "ms", detail)
                row(f"dynamic depthwise conv {size}, plain NCHW", forms["nchw_ms"], "ms", detail)
        row(
            "RandAugment, 2 ops, one batch",
            found["randaugment_ms"],
            "ms",
            f"host syncs: {found.get('randaugment_host_syncs', 'not checked (CPU)')}",
        )
        if found.get("randaugment_host_syncs") == 0:
            targets.append(Target("RandAugment host synchronisations per batch", 0, 0, True))
    elif found:
        row("kernels", "failed", "", found["failure"] + " " + found.get("log", "")[-300:])
    kernel_info = results.get("kernels", {})
    notes = (
        f"{'CPU check run (--cpu): figures say nothing about GPUs. ' if results['cpu'] else ''}"
        f"{'Tiny models and data (--tiny). ' if results['tiny'] else ''}"
        "Trials run by the trial body itself (no Ray), each in its own process, on synthetic CIFAR-10-shaped "
        "data; images/s is the second 1-epoch segment's images over its seconds (model build, checkpoint "
        "restore, training, evaluation). Gains are total images/s of two processes sharing the GPU over one. "
        f"Device: {kernel_info.get('device', '?')}, autocast {kernel_info.get('autocast', '?')}. "
        f"Run took {results.get('elapsed_s', 0):.0f} s."
        + (f" Skipped, over the time budget: {', '.join(results['skipped'])}." if results.get("skipped") else "")
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_raw.json").write_text(json.dumps(results, indent=2))
    return write(
        "gpu",
        "The GPU path on a GPU",
        rows or [{"measure": "nothing yet", "value": "", "unit": "", "detail": ""}],
        targets,
        notes,
        folder,
    )


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} GiB"


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    main()
