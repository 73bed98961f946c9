"""The GPU path without a GPU: no usable CUDA fails or falls back (and says so), bf16 only where
native, memory capped at the trial's share and handed back, latency in the training precision,
resumed trials exact with drop path on, and image folders decoded by persistent workers.
CUDA is faked where a check needs it."""

from __future__ import annotations

import multiprocessing
import shutil

import pytest
import torch
from conftest import segment_job
from test_data import write_imagefolder

import layers
import search.training.data as data_module
from search.training import device as device_module
from search.training import segment as segment_module
from search.training.data import DataSpec, load_dataset
from search.training.device import autocast_dtype, claim_memory, cuda_problem, release
from search.training.segment import run_segment
from search.training.trainer import Trainer, TrainSpec, latency_method, measure_latency


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_trial_that_asked_for_a_gpu_fails_without_one(monkeypatch):
    no_cuda(monkeypatch)
    result, checkpoint = run_segment(segment_job(gpus=0.5), None)
    assert result.failure_kind == "no_gpu" and checkpoint is None and result.curve == []
    assert "asked for a GPU" in result.failure and result.host in result.failure
    assert "allow_cpu_fallback" in result.failure


def test_the_cpu_fallback_trains_and_says_so(monkeypatch):
    no_cuda(monkeypatch)
    result, _ = run_segment(segment_job(gpus=0.5, allow_cpu_fallback=True), None)
    assert result.failure is None and len(result.curve) == 1
    assert result.device.startswith("cpu") and result.cpu_fallback.startswith("no usable CUDA device on")
    cpu_only, _ = run_segment(segment_job(gpus=0.0), None)
    assert cpu_only.cpu_fallback is None  # a CPU trial asked for nothing more


def test_cuda_that_fails_at_first_use_is_not_usable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def broken(*args, device=None, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    monkeypatch.setattr(device_module.torch, "zeros", broken)
    assert cuda_problem() == "CUDA fails: CUDA error: an illegal memory access was encountered"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, native):
    # A pre-Ampere GPU: bf16 works through emulation only, which is_bf16_supported() counts by default.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert autocast_dtype(torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)
    assert autocast_dtype(torch.device("cpu")) is None


def test_memory_is_capped_at_the_share_and_handed_back(monkeypatch):
    calls = []

    def cap(fraction, device=None):
        # torch resolves a device without an index only when given None: torch.device("cuda") raises
        assert device is None or isinstance(device, int)
        calls.append(("cap", fraction))

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", cap)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty",)))
    cuda = torch.device("cuda")
    claim_memory(cuda, 0.5)
    claim_memory(cuda, 1.0)  # a whole GPU: no cap
    claim_memory(torch.device("cpu"), 0.5)
    release(cuda)
    release(torch.device("cpu"))
    assert calls == [("cap", 0.5), ("empty",)]


def test_every_segment_hands_its_device_back_even_when_it_fails(monkeypatch):
    released = []
    monkeypatch.setattr(segment_module, "release", released.append)
    run_segment(segment_job(), None)
    run_segment(segment_job(training=TrainSpec(epochs=1, batch_size=64, lr=1e9)), None)  # NaN: fails
    assert released == [torch.device("cpu")] * 2


def test_a_resumed_trial_equals_an_uninterrupted_one_with_drop_path():
    """Drop-path masks come from the default generator, whose state travels with the checkpoint."""
    arch = {**segment_job().arch, "drop_path_rate": 0.3}
    training = TrainSpec(epochs=2, batch_size=64)

    def job(start: int, stop: int):
        return segment_job(arch=arch, training=training, start_epoch=start, stop_epoch=stop, return_weights=True)

    straight, _ = run_segment(job(0, 2), None)
    first, checkpoint = run_segment(job(0, 1), None)
    torch.manual_seed(123)  # whatever the worker's process did in between
    second, _ = run_segment(job(1, 2), checkpoint)
    assert first.curve + second.curve == straight.curve
    for name, weight in straight.weights.items():
        torch.testing.assert_close(second.weights[name], weight, rtol=0, atol=0)


def test_latency_is_measured_in_the_training_precision():
    model = layers.create_model(layers.ArchConfig.from_dict(segment_job().arch))
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.get_autocast_dtype("cpu")))
    model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    assert measure_latency(model, 1, (8, 8), torch.device("cpu"), torch.bfloat16, repeats=2) > 0
    assert seen[:2] == [True, torch.bfloat16]
    how = latency_method("NVIDIA H100 80GB HBM3", torch.bfloat16, 0.5)
    assert how.startswith("batch 1, bfloat16 autocast, fastest of") and "0.5 share of the GPU" in how


def test_the_first_segment_records_how_latency_was_measured():
    result, _ = run_segment(segment_job(measure_latency=True), None)
    assert result.latency_ms > 0 and result.latency_how.startswith("batch 1, float32, fastest of 50 forwards")


def test_image_folders_are_decoded_by_the_trials_cpus_in_persistent_workers(tmp_path, monkeypatch):
    from test_data import write_imagefolder

    import search.training.data as data_module

    write_imagefolder(tmp_path)
    monkeypatch.setattr(data_module, "IN_MEMORY_LIMIT", 0)  # stream
    data = load_dataset(DataSpec(name="imagefolder", root=str(tmp_path), img_size=16, val_fraction=0.25))
    arch = layers.ArchConfig(img_size=16, num_classes=3, patch_size=4, embed_dim=16, depth=1, mixer="static")
    trainer = Trainer(layers.create_model(arch), data, TrainSpec(epochs=2, batch_size=4), torch.device("cpu"), 0, 2)
    assert trainer.train_split.workers == 2
    orders, workers = [], []
    for _ in range(2):
        trainer.train_epoch()
        orders.append(list(trainer.train_split._order.indices))
        workers.append({p.pid for p in multiprocessing.active_children()})
    assert len(workers[0]) == 2 and workers[1] == workers[0]  # the same two decoders in both epochs
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # a new order each epoch


def test_a_streamed_data_set_whose_folder_is_missing_fails_saying_where(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "images")
    monkeypatch.setattr(data_module, "IN_MEMORY_LIMIT", 0)  # stream
    spec = DataSpec(name="imagefolder", root=str(tmp_path / "images"), img_size=16)
    shipped = load_dataset.__wrapped__(spec)  # what the driver ships: the index of files
    shutil.rmtree(tmp_path / "images")  # not on this node
    arch = {
        "img_size": [16, 16],
        "in_chans": 3,
        "num_classes": 3,
        "patch_size": 4,
        "embed_dim": 16,
        "depth": 1,
        "mixer": "static",
    }
    result, _ = run_segment(segment_job(arch=arch, data=spec), None, shipped)
    assert result.failure_kind == "data"
    assert str(tmp_path / "images") in result.failure and result.failure.endswith(f"(on {result.host})")
