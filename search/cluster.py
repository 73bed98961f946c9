"""Ray: a local instance or an existing cluster, the task that runs trial bodies, and the data set
every node reads.

Placement is recorded where it happens: each run of a segment notes its node, its GPU ids, its
Ray task id and attempt number, and passes that record on with its checkpoint. The driver thus
learns of every run along the chain that led to a result, including the re-runs Ray made to
rebuild a checkpoint lost with its node, and counts each one once (``History``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import ray_adapter
from .training.data import IN_MEMORY_LIMIT, DataSpec, load_dataset

# glibc hands buffers over 32 MB back to the kernel at every free, so each training step page-
# faults its activations in again; keeping freed memory is worth about 20 % on CPU trials.
WORKER_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


class _DropTokenNotice(logging.Filter):
    """Ray's notice that a new local cluster uses token authentication, its safe default: nothing to
    act on, and the one foreign line among ``--quiet``'s log lines. Its warning that authentication
    is off, which does matter, still shows."""

    LOGGER = "ray._private.authentication.authentication_token_setup"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_TOKEN_NOTICE_FILTER = _DropTokenNotice()


class ClusterError(RuntimeError):
    """Ray cannot be started or reached, or cannot give a trial the resources or data it needs."""


def connect(address: str | None, *, cpus: float, gpus: float) -> dict[str, float]:
    """Start a local Ray (no address) or join a cluster, and check that one trial's resources exist.

    Without an address Ray would join whatever cluster ``ray start`` last recorded on this machine
    (``/tmp/ray/ray_current_cluster``); "local" starts a fresh instance, as the user asked.
    Returns the cluster's total resources.
    """
    if address and address != "auto":
        # also where this process already runs Ray: the search must not quietly use that one
        _check_reachable(address)
    if not ray.is_initialized():
        logging.getLogger(_DropTokenNotice.LOGGER).addFilter(_TOKEN_NOTICE_FILTER)  # adding it twice is a no-op
        try:
            ray.init(
                address=address or "local",
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=True,
                runtime_env={"env_vars": WORKER_ENV},
                **({} if address else {"num_cpus": os.cpu_count()}),
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ClusterError(
                f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: {err}"
            ) from None
    if not trial_nodes(cpus, gpus):
        # Ray's totals sum over nodes, while a task runs on one: a request no single node can
        # hold would leave every trial pending for ever, without an error.
        sizes = sorted(
            {(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in _alive_nodes()}, reverse=True
        )
        listed = ", ".join(f"{c:g} CPUs and {g:g} GPUs" for c, g in sizes[:4]) or "none alive"
        hint = " (set resources.gpus: 0 to train on CPUs)" if gpus and not any(g for _, g in sizes) else ""
        raise ClusterError(
            f"each trial asks for {cpus:g} CPUs and {gpus:g} GPUs on one node, but no Ray node has that "
            f"many (its nodes: {listed}){hint}"
        )
    return ray.cluster_resources()


def _alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]


def trial_nodes(cpus: float, gpus: float) -> list[str]:
    """The ids of the alive Ray nodes that can hold one trial: its CPUs and GPUs on one node."""
    return [
        n["NodeID"]
        for n in _alive_nodes()
        if n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus
    ]


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message where ray.init would wait a long time for a dead address."""
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:  # a port that is not a number, or out of range
        host = port = None
    if not host or not port:
        raise ClusterError(f"cannot parse Ray address {address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            speaks_grpc = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or _answers_http2(connection)
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None
    if not speaks_grpc:  # ray.init would wait for ever on, say, the dashboard's port or a database's
        raise ClusterError(
            f"{address} answers, but not as Ray: give the head node's GCS address (port 6379 unless "
            "`ray start --head --port` said otherwise) or ray://host:10001 for Ray Client"
        )


#: An HTTP/2 client's opening: the preface, then an empty SETTINGS frame (RFC 9113, section 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(connection: socket.socket) -> bool:
    """Whether the server speaks HTTP/2, as Ray's GCS and Ray Client (gRPC) do: it opens with a
    SETTINGS frame (type 4, stream 0); anything else answers otherwise or hangs up."""
    connection.sendall(_HTTP2_PREFACE)
    head = b""
    while len(head) < 9:
        chunk = connection.recv(9 - len(head))
        if not chunk:
            return False
        head += chunk
    return head[3] == 4 and head[5:9] == bytes(4)


@contextlib.contextmanager
def connected(address: str | None, *, cpus: float, gpus: float) -> Iterator[dict[str, float]]:
    """``connect`` for the length of a ``with`` block; Ray is stopped at its end only if the block
    started it, so that a search run inside a program already using Ray (a notebook, a test
    session, a benchmark running many searches) leaves that Ray running."""
    started = not ray.is_initialized()
    try:
        yield connect(address, cpus=cpus, gpus=gpus)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------------- the segment task
@dataclass(frozen=True)
class Execution:
    """One run of a segment, as Ray placed it."""

    id: str  # this run's own
    task: str  # Ray's task id: the same for every run of one segment
    attempt: int  # Ray's attempt number: 0, then one more per re-run (a retry or a reconstruction)
    node: str  # Ray node id
    gpu_ids: list  # the GPUs Ray assigned (empty on CPUs)
    start: float  # wall clock on the worker
    end: float
    seconds: float  # what the trial body reports (its training compute)
    images: int


@dataclass
class Attempt:
    """What a segment task returns to the driver."""

    result: Any  # the trial body's SegmentResult
    executions: list[Execution]  # every run along the chain of checkpoints that led here, this one last


@dataclass
class Carried:
    """A checkpoint on its way to the next segment, with the runs that made it."""

    state: Any
    executions: list[Execution]


def run_attempt(segment: Callable, job: Any, carried: Carried | None, data: Any) -> tuple[Attempt, Carried | None]:
    """Run the trial body ``segment`` on a worker and note where it ran."""
    context = ray.get_runtime_context()
    start = time.time()
    result, state = segment(job, carried.state if carried else None, data)
    execution = Execution(
        id=uuid.uuid4().hex,
        task=context.get_task_id(),
        attempt=ray_adapter.attempt_number(),
        node=context.get_node_id(),
        gpu_ids=list(ray.get_gpu_ids()),
        start=start,
        end=time.time(),
        seconds=result.seconds,
        images=result.images,
    )
    chain = [*(carried.executions if carried else []), execution]
    return Attempt(result, chain), (None if state is None else Carried(state, chain))


def segment_task(gpus: float) -> ray.remote_function.RemoteFunction:
    """The Ray task that runs trial bodies; with GPUs, in a fresh process each time.

    CUDA reads CUDA_VISIBLE_DEVICES once per process, so a process reused for a second GPU task
    can stay on the GPU it saw first while Ray counts it on another; it also keeps its peak memory
    reserved and carries a lasting CUDA error into the next trial. Ray gives GPU tasks their own
    process only when ``num_gpus`` is declared here, not through ``.options()``, so it is asked
    for explicitly. What this costs is the process start: the data set comes from the object
    store (``share_data``), not from disk.
    """
    return ray.remote(max_calls=1 if gpus > 0 else 0)(run_attempt)


def task_name(segment: Callable) -> str:
    """The name Ray gives the task and its worker process (``ray::run_segment``)."""
    return getattr(segment, "__name__", type(segment).__name__)


@dataclass
class History:
    """Where a trial's segments ran, as the driver learns it from their results."""

    executions: list[Execution] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)  # Ray task id -> highest attempt number seen

    def absorb(self, chain: list[Execution]) -> list[Execution]:
        """The runs in ``chain`` not seen before, now recorded (in the order they ran)."""
        seen = {e.id for e in self.executions}
        new = [e for e in chain if e.id not in seen]
        self.executions += new
        for e in new:
            self.attempts[e.task] = max(self.attempts.get(e.task, 0), e.attempt)
        return new

    def attrs(self) -> dict[str, Any]:
        """The trial attributes: node and GPU ids of each run in order, its span, and Ray's re-runs."""
        return {
            "nodes": [e.node for e in self.executions],
            "gpu_ids": [e.gpu_ids for e in self.executions],
            "spans": [[e.start, e.end] for e in self.executions],
            "retries": sum(self.attempts.values()),
        }


# ---------------------------------------------------------------------- data on every node
def share_data(spec: DataSpec, cpus: float, gpus: float) -> tuple[ray.ObjectRef, str]:
    """Load the data set once, here, and put it in Ray's object store, whence every node reads it.

    A data set held in memory (up to ``IN_MEMORY_LIMIT`` of images) travels whole: workers need
    no copy of ``data.root``, and a segment in a fresh process gets it from its node's object
    store rather than decoding it again. Each node's object store should hold it (Ray gives it
    30 % of the node's memory unless ``ray start --object-store-memory`` says otherwise, and keeps
    larger objects in slower files on the node's disk). A larger
    image folder streams from disk: only its index of files travels, so ``data.root`` must exist
    at the same path on every node that can run a trial (``cpus`` and ``gpus`` on one node),
    which is checked on every such node alive now. Returns the reference and a line for the log.
    """
    dataset = load_dataset.__wrapped__(spec)  # uncached: the object store holds the one copy
    if dataset.in_memory:
        splits = [s for s in (dataset.train, dataset.val, dataset.test) if s is not None]
        size = _gib(sum(s.images.nbytes + s.labels.nbytes for s in splits))
        shipped = f"data set {spec.name!r} ({size}) shipped to every node through Ray's object store"
    else:
        require_folder_on_every_node(spec.root, cpus, gpus)
        size = "its index of files"
        shipped = f"data set {spec.name!r} streams from {spec.root} on every node (over {_gib(IN_MEMORY_LIMIT)})"
    try:
        return ray.put(dataset), shipped
    except ray.exceptions.ObjectStoreFullError:
        raise ClusterError(
            f"data set {spec.name!r} ({size}) fits neither in the object store of the driver's Ray node nor "
            "on its disk: start the node with a larger --object-store-memory or free disk space"
        ) from None


@ray.remote(num_cpus=0)
def _is_folder(path: str) -> tuple[bool, str]:
    return Path(path).expanduser().is_dir(), socket.gethostname()


def require_folder_on_every_node(path: str, cpus: float, gpus: float) -> None:
    """Refuse to start when a node that can run trials cannot see ``path``, naming the node."""
    nodes = trial_nodes(cpus, gpus)
    checks = {
        node: _is_folder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path)
        for node in nodes
    }
    for node, check in checks.items():
        found, host = ray.get(check)
        if not found:
            raise ClusterError(
                f"data.root {path!r} is not a folder on Ray node {node} ({host}): image folders over "
                f"{_gib(IN_MEMORY_LIMIT)} stream from disk on each worker, so every node needs them at that path"
            )


def _gib(size: float) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 28 else f"{size / (1 << 20):.1f} MiB"
