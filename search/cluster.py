"""Ray: a local instance by default, or an existing cluster given by its address."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import ray

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
    """Ray cannot be started or reached, or cannot give a trial the resources it asks for."""


def connect(address: str | None, *, cpus: float, gpus: float) -> dict[str, float]:
    """Start or join Ray and check that one trial's resources exist; returns the cluster's totals."""
    if not ray.is_initialized():
        logging.getLogger(_DropTokenNotice.LOGGER).addFilter(_TOKEN_NOTICE_FILTER)  # adding it twice is a no-op
        if address and address != "auto":
            _check_reachable(address)
        try:
            ray.init(
                address=address,
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
    totals = ray.cluster_resources()
    if cpus > totals.get("CPU", 0):
        raise ClusterError(f"each trial asks for {cpus:g} CPUs but the Ray cluster has {totals.get('CPU', 0):g}")
    if gpus > totals.get("GPU", 0):
        raise ClusterError(
            f"each trial asks for {gpus:g} GPUs but the Ray cluster has {totals.get('GPU', 0):g} "
            "(set resources.gpus: 0 to train on CPUs)"
        )
    return totals


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message where ray.init would wait a long time for a dead address."""
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ClusterError(f"cannot parse Ray address {address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


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
