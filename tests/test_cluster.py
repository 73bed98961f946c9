"""A real multi-node Ray cluster on this one machine: Ray's own ``cluster_utils.Cluster`` starts a
head and two worker nodes, each worker declaring one logical GPU (Ray's GPU resource is a count;
no CUDA is needed to schedule on it). On it: trials spread over both nodes, half GPUs pack two
trials per GPU, data reaches workers without a shared folder, a node dies mid-trial and nothing is
lost, and a search without an address never joins a cluster it was not pointed at.

Each cluster records its address under its own RAY_TMPDIR, never in /tmp/ray/ray_current_cluster
where any other process's plain ``ray.init()`` would find it, and is shut down by its fixture.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from conftest import counted, load_study, sqlite_url, write_space
from ray.cluster_utils import Cluster

import search.driver
from search import cluster as search_cluster
from search.cli import main
from search.display import Display
from search.driver import TRAIN_MACS_PER_FORWARD_MAC, Driver
from search.records import COMPLETE, COUNTED, FAILED, TrialRecord
from search.space import load_space
from search.training.data import DataSpec
from search.training.segment import SegmentResult

WORKER_NODE = {"num_cpus": 2, "num_gpus": 1}  # two half-GPU trials per node
DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")
IMAGES_PER_EPOCH = 100  # what the trial bodies below report

# The trial bodies below are defined here, a module Ray's workers cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def start_cluster(workers: int = 2) -> tuple[Cluster, list]:
    ray.shutdown()  # leave the session's local Ray (tests/conftest.py starts it again when needed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(**WORKER_NODE) for _ in range(workers)]
    cluster.wait_for_nodes()
    return cluster, nodes


def stop_cluster(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()
    assert not DEFAULT_ADDRESS_FILE.exists() or cluster.address not in DEFAULT_ADDRESS_FILE.read_text()


@pytest.fixture(scope="module")
def ray_tmp():
    """A RAY_TMPDIR of the module's own (short: Ray's socket paths must fit in 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="dws-ray-", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", folder)
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def session_ray_back():
    """The session's local Ray (tests/conftest.py) is left for the clusters here, and started again
    once they are gone and RAY_TMPDIR is restored."""
    local = ray.is_initialized()
    yield
    if local and not ray.is_initialized():
        search_cluster.connect(None, cpus=1, gpus=0)


@pytest.fixture(scope="module")
def module_cluster(session_ray_back, ray_tmp) -> tuple[Cluster, list]:
    """The module's cluster, shared by its tests: the ``Cluster`` and its two worker nodes."""
    cluster, nodes = start_cluster()
    yield cluster, nodes
    stop_cluster(cluster)


@pytest.fixture(scope="module")
def cluster(module_cluster) -> tuple[str, list[str]]:
    """The module's cluster as its tests see it: its address and its worker nodes' ids."""
    cluster, nodes = module_cluster
    return cluster.address, [n.node_id for n in nodes]


def records(folder: Path) -> list[TrialRecord]:
    return [TrialRecord.from_frozen(t) for t in load_study(sqlite_url(folder)).trials]


def attrs(folder: Path) -> list[dict]:
    """The attributes of the trials that ran (not the references still queued)."""
    return [t.user_attrs for t in load_study(sqlite_url(folder)).trials if "status" in t.user_attrs]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    return max(itertools.accumulate(change for _, change in events))


def gpu_spans(trials: list[dict]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """The spans of every run, by the GPU (node, id) Ray gave it."""
    out: dict[tuple[str, int], list] = {}
    for t in trials:
        for node, ids, span in zip(t["nodes"], t["gpu_ids"], t["spans"], strict=True):
            assert len(ids) == 1
            out.setdefault((node, ids[0]), []).append(tuple(span))
    return out


def half_gpu_space(folder: Path, **sections) -> Path:
    """Trials of two segments (a rung at epoch 1) on half a GPU each, logical GPUs allowed."""
    defaults = {
        "training": {"epochs": 2, "batch_size": 4},
        "early_stopping": {"min_epochs": 1, "reduction": 2},
        "resources": {"cpus": 1, "gpus": 0.5, "allow_cpu_fallback": True},
        "keep_weights": "none",
    }
    return write_space(folder, **{**defaults, **sections})


def run_driver(space: Path, folder: Path, address: str, segment) -> None:
    """A search on the cluster: it joins it, and leaves it when it ends (``cluster.connected``)."""
    Driver(
        load_space(space), results=folder / "results", address=address, display=Display(quiet=True), segment=segment
    ).run()


# ---------------------------------------------------------------------- trial bodies
@dataclass(frozen=True)
class Marking:
    """A trial body that trains nothing: it marks its start in ``folder`` (pid, node, epoch) and
    sleeps; the first ``wait_for`` runs wait until that many have started. Its accuracy grows with
    the trial's seed, so no trial dominates a later one and none is pruned."""

    folder: str
    seconds: float = 0.5
    wait_for: int = 0
    ballast: int = 0  # bytes of checkpoint: over 100 KiB lives in the object store of the node that made it

    def __call__(self, job, checkpoint, data):
        node = ray.get_runtime_context().get_node_id()
        Path(self.folder, f"{job.seed}-{job.start_epoch}-{uuid.uuid4().hex}").write_text(f"{node} {os.getpid()}")
        deadline = time.time() + 60
        while len(list(Path(self.folder).iterdir())) < self.wait_for and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(self.seconds)
        epochs = job.stop_epoch - job.start_epoch
        result = SegmentResult(curve=[0.5 + 0.001 * job.seed] * epochs, images=IMAGES_PER_EPOCH * epochs, seconds=1.0)
        result.latency_ms, result.device = 1.0, "none"
        final = job.stop_epoch >= job.training.epochs
        return result, None if final else {"epoch": job.stop_epoch, "ballast": bytes(self.ballast)}


def marks(folder: Path) -> list[tuple[int, int, str, int]]:
    """(seed, start epoch, node, pid) of every run started so far, in no order."""
    out = []
    for path in Path(folder).iterdir():
        seed, epoch, _ = path.name.split("-")
        node, pid = path.read_text().split()
        out.append((int(seed), int(epoch), node, int(pid)))
    return out


@dataclass(frozen=True)
class OutOfMemoryWhenShared:
    """Runs out of memory on any share of a GPU below a whole one."""

    def __call__(self, job, checkpoint, data):
        if job.gpus < 1:
            return SegmentResult(failure="out of memory: CUDA out of memory", failure_kind="oom", images=10), None
        return SegmentResult(curve=[0.5] * (job.stop_epoch - job.start_epoch), latency_ms=1.0), None


# ---------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_the_command_line_spreads_trials_over_both_nodes_with_data_shipped(cluster, tmp_path, monkeypatch, capsys):
    """``python -m search run --address``: real training on both worker nodes, at most two trials per
    GPU, on the CPU for want of CUDA (allowed, and said), from an image folder deleted once loaded."""
    from test_data import write_imagefolder

    address, workers = cluster
    root = tmp_path / "images"
    write_imagefolder(root)
    loaded = search_cluster.share_data

    def share_then_delete(spec: DataSpec, cpus: float, gpus: float):
        shared = loaded(spec, cpus, gpus)
        shutil.rmtree(root)  # no worker can read data.root from now on
        return shared

    monkeypatch.setattr(search.driver, "share_data", share_then_delete)
    space = half_gpu_space(
        tmp_path,
        data={"name": "imagefolder", "root": str(root), "img_size": 16, "val_fraction": 0.25},
        budget={"max_gmacs": 0.1},
        trials={"count": 4, "parallel": 4},
    )
    assert (
        main(["run", "--space", str(space), "--results", str(tmp_path / "results"), "--quiet", "--address", address])
        == 0
    )
    assert not root.exists()
    log = capsys.readouterr().err
    assert "data set 'imagefolder' (" in log and "shipped to every node through Ray's object store" in log
    assert "trains on the CPU: no usable CUDA device on" in log
    trials = [a for a in attrs(tmp_path) if a["status"] in COUNTED]
    assert len(trials) == 4 and all(a["status"] != FAILED for a in trials), [a.get("reason") for a in trials]
    for a in trials:
        assert len(a["nodes"]) == len(a["curve"]) and set(a["nodes"]) <= set(workers)  # one run per segment
        assert a["cpu_fallback"] is True and a["device"].startswith("cpu") and a["retries"] == 0
    assert {n for a in trials for n in a["nodes"]} == set(workers)  # both worker nodes trained
    assert all(most_at_once(spans) <= 2 for spans in gpu_spans(trials).values())


@pytest.mark.slow
def test_half_gpus_pack_two_trials_per_gpu_four_at_once(cluster, tmp_path):
    address, workers = cluster
    folder = tmp_path / "marks"
    folder.mkdir()
    space = half_gpu_space(tmp_path, trials={"count": 4, "parallel": 4})
    run_driver(space, tmp_path, address, Marking(str(folder), wait_for=4))
    trials = attrs(tmp_path)
    assert [a["status"] for a in trials] == [COMPLETE] * 4
    by_gpu = gpu_spans(trials)
    assert set(by_gpu) == {(w, 0) for w in workers}
    assert all(most_at_once(spans) == 2 for spans in by_gpu.values())  # two per GPU, never three
    assert most_at_once([s for spans in by_gpu.values() for s in spans]) == 4  # four at once on two GPUs
    pids = [pid for *_, pid in marks(folder)]
    assert len(pids) == 8 and len(set(pids)) == 8  # every GPU segment in a fresh worker process


def test_out_of_memory_on_a_shared_gpu_is_retried_on_a_whole_one(cluster, tmp_path):
    address, _ = cluster
    space = half_gpu_space(tmp_path, trials={"count": 1, "parallel": 1}, early_stopping=False)
    run_driver(space, tmp_path, address, OutOfMemoryWhenShared())
    (trial,) = attrs(tmp_path)
    assert trial["status"] == COMPLETE and trial["gpus"] == 1.0
    assert trial["oom_on_shared_gpu"].startswith("out of memory")
    assert len(trial["nodes"]) == 2  # the failed run on half a GPU counts too
    assert trial["train_macs"] == pytest.approx(TRAIN_MACS_PER_FORWARD_MAC * trial["gmacs"] * 1e9 * 10)


def test_streamed_image_folders_need_data_root_on_every_node(cluster, tmp_path, monkeypatch):
    from test_data import write_imagefolder

    import search.training.data as data_module

    address, workers = cluster
    write_imagefolder(tmp_path)
    monkeypatch.setattr(data_module, "IN_MEMORY_LIMIT", 0)  # too large to ship: stream from data.root
    ray.init(address=address)
    try:
        spec = DataSpec(name="imagefolder", root=str(tmp_path), img_size=16)
        ref, line = search_cluster.share_data(spec, cpus=1, gpus=0)
        assert "streams from" in line  # every node sees the folder: its index of files travels
        assert not ray.get(ref).in_memory
        missing = str(tmp_path / "elsewhere")
        with pytest.raises(search_cluster.ClusterError) as error:
            search_cluster.require_folder_on_every_node(missing, cpus=1, gpus=0)
        message = str(error.value)
        assert f"data.root {missing!r} is not a folder on Ray node " in message
        assert any(w in message for w in workers) and "every node needs them at that path" in message
    finally:
        ray.shutdown()


@pytest.mark.parametrize(("cpus", "gpus"), [(3, 0), (1, 2)])
def test_a_trial_no_single_node_can_hold_is_refused(cluster, cpus, gpus):
    """The check compared a trial's request with the cluster's totals (4 CPUs, 2 GPUs over two
    nodes of 2 and 1): Ray then left every trial pending for ever."""
    address, _ = cluster
    try:
        with pytest.raises(search_cluster.ClusterError, match="no Ray node has that many") as error:
            search_cluster.connect(address, cpus=cpus, gpus=gpus)
        assert "its nodes: 2 CPUs and 1 GPUs" in str(error.value)
    finally:
        ray.shutdown()


def test_an_address_is_checked_where_this_process_already_runs_ray(cluster):
    """With Ray already up in the process (a notebook, a test session), another address was ignored
    and the search ran on the Ray at hand."""
    address, _ = cluster
    ray.init(address=address)
    try:
        with pytest.raises(search_cluster.ClusterError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
            search_cluster.connect("127.0.0.1:1", cpus=1, gpus=0)
    finally:
        ray.shutdown()


def test_an_address_where_something_else_than_ray_listens_is_refused_at_once():
    """ray.init waited for ever on an open port that was not Ray's (the dashboard's, a database's)."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer_as_http_1() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_as_http_1, daemon=True).start()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(search_cluster.ClusterError, match=f"{address} answers, but not as Ray: give the head"):
            search_cluster.connect(address, cpus=1, gpus=0)


def test_the_attempt_number_counts_retries(cluster):
    """Pins ``ray_adapter.attempt_number``: a task whose first run dies reads 1 in its second."""
    from search import ray_adapter

    @ray.remote(max_retries=1)
    def dies_once() -> int:
        if ray_adapter.attempt_number() == 0:
            os._exit(1)
        return ray_adapter.attempt_number()

    ray.init(address=cluster[0])
    try:
        assert ray.get(dies_once.remote()) == 1
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_node_lost_mid_trial_loses_nothing(module_cluster, tmp_path):
    """A worker node dies while a trial's second or third segment runs on it, the checkpoint it
    started from lost with it: Ray rebuilds that checkpoint on the surviving node (re-running the
    segment that made it) and runs the segment again there. Every trial completes, the budget is
    exact, and the re-runs count in the trials' records. (Late in the file: it takes a worker node
    from the module's cluster, and the one test after it needs only the cluster to be running.)"""
    cluster, nodes = module_cluster
    by_id = {n.node_id: n for n in nodes}
    folder = tmp_path / "marks"
    folder.mkdir()
    removed: list[tuple[str, int]] = []  # (node, seed of the trial whose checkpoint went with it)

    def remove_a_node_under_a_resumed_segment() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            seen = marks(folder)
            ran = {(seed, epoch): node for seed, epoch, node, _ in seen}
            for (seed, epoch), node in ran.items():
                if epoch >= 1 and ran.get((seed, epoch - 1)) == node:  # its checkpoint lives on that node
                    removed.append((node, seed))
                    cluster.remove_node(by_id[node])
                    return
            time.sleep(0.05)

    space = half_gpu_space(  # on CPUs: their worker processes serve segment after segment
        tmp_path,
        training={"epochs": 3, "batch_size": 4},
        trials={"count": 2, "parallel": 2, "retries": 3},
        resources={"cpus": 1},
    )
    killer = threading.Thread(target=remove_a_node_under_a_resumed_segment)
    killer.start()
    try:  # a segment runs a second: time enough to see it start and take its node away
        run_driver(space, tmp_path, cluster.address, Marking(str(folder), seconds=1.0, ballast=300_000))
    finally:
        killer.join()
    assert removed, "no segment resumed on the node that made its checkpoint"
    ((lost, seed),) = removed
    (survivor,) = set(by_id) - {lost}
    trials = attrs(tmp_path)
    assert len(counted(records(tmp_path))) == 2 and [a["status"] for a in trials] == [COMPLETE] * 2
    for a in trials:
        assert len(a["curve"]) == 3  # each epoch once in the learning curve, whatever ran twice
        runs = len(a["nodes"])
        assert a["train_macs"] == pytest.approx(TRAIN_MACS_PER_FORWARD_MAC * a["gmacs"] * 1e9 * IMAGES_PER_EPOCH * runs)
    (hit,) = [a for a in trials if a["seed"] == seed]
    assert hit["retries"] >= 2  # the segment that ran on the lost node, and the one that made its checkpoint
    assert lost in hit["nodes"] and hit["nodes"][-1] == survivor
    assert len(hit["nodes"]) > 3  # that segment's re-run counts in the trial's record


# Last in the file: once this process has started and stopped a Ray of its own, a search that joins
# the cluster from it loses its trials to OwnerDiedError (Ray 2.60), so every search here runs first.
def test_without_an_address_the_search_never_joins_a_running_cluster(cluster):
    address, _ = cluster
    assert address in Path(os.environ["RAY_TMPDIR"], "ray", "ray_current_cluster").read_text()  # findable
    try:
        totals = search_cluster.connect(None, cpus=1, gpus=0)
        assert ray.get_runtime_context().gcs_address != address
        assert totals.get("GPU", 0) == 0  # a fresh local instance, not the cluster's two GPUs
    finally:
        ray.shutdown()
