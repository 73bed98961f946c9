"""The trial's device: which one, in what precision, how much of its memory, and its RNG state.

A trial that asked for a GPU gets one or fails with the reason: it trains on the CPU only when
the space says ``resources.allow_cpu_fallback: true``, and its record then says so. Two trials
sharing a GPU each cap their caching allocator at their share, so one cannot fail because its
neighbour grew; the cache is handed back when a segment ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


class NoUsableGpu(RuntimeError):
    """The trial asked for a GPU and this worker has no CUDA device that works."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    cpu_fallback: str | None = None  # why a trial that asked for a GPU trains on the CPU


def cuda_problem() -> str | None:
    """Why CUDA cannot be used in this process, or None when it can."""
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return "torch sees no CUDA device" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
    try:
        torch.zeros(1, device="cuda")  # a broken driver or a lasting CUDA error shows here, not in is_available
    except RuntimeError as err:
        return f"CUDA fails: {str(err).splitlines()[0]}"
    return None


def place(gpus: float, allow_cpu_fallback: bool, host: str) -> Placement:
    """The device of a trial that asked for ``gpus`` GPUs (0: the CPU)."""
    if gpus <= 0:
        return Placement(torch.device("cpu"))
    problem = cuda_problem()
    if problem is None:
        return Placement(torch.device("cuda"))
    if not allow_cpu_fallback:
        raise NoUsableGpu(
            f"the trial asked for a GPU but {host} has no usable CUDA device: {problem} "
            "(set resources.allow_cpu_fallback: true to train such trials on the CPU)"
        )
    return Placement(torch.device("cpu"), cpu_fallback=f"no usable CUDA device on {host}: {problem}")


def claim_memory(device: torch.device, gpus: float) -> None:
    """Cap this process's share of GPU memory at its share of the GPU (a whole GPU: no cap)."""
    if device.type == "cuda" and 0 < gpus < 1:
        torch.cuda.set_per_process_memory_fraction(gpus, device.index)  # None: the current device


def release(device: torch.device | None) -> None:
    """Hand the cached GPU memory back once the segment's tensors are gone."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU runs it natively, else fp16 (with loss scaling); None on the CPU.

    ``torch.cuda.is_bf16_supported()`` also counts emulation, which runs pre-Ampere GPUs at a
    fraction of their fp16 speed: only native support counts here.
    """
    if device.type != "cuda":
        return None  # CPU autocast slows these models down; full precision it is
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def rng_state(device: torch.device) -> dict[str, Any]:
    """The default generators' states: what drop-path masks are drawn from."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
