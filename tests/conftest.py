"""Shared fixtures: small search spaces, the PostgreSQL server CI provides, reading a study back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import ray
import sqlalchemy
import yaml

from search.records import COUNTED, TrialRecord
from search.records import records as read_records
from search.storage import StorageError, open_storage
from search.training.data import DataSpec
from search.training.segment import SegmentJob
from search.training.trainer import TrainSpec

POSTGRES_ENV = "DWS_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch gets its share of the cores: two workers with a
    thread per core each leave OpenMP threads spinning on cores the other worker holds."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def sqlite_url(folder: Path) -> str:
    """The storage ``write_space`` gives the study of a space written into ``folder``."""
    return f"sqlite:///{folder / 'search.db'}"


def load_study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def counted(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials the budget counts."""
    return [r for r in records if r.status in COUNTED]


#: The space ``write_space`` gives by default: small models of every kind on the 8x8 digits.
TINY_SPACE = {
    "patch_size": 2,
    "num_heads": 2,
    "mixer": {"choices": ["dynamic", "attention", "static"]},
    "embed_dim": {"choices": [16, 32]},
    "depth": {"low": 2, "high": 3},
    "dynamic.linear_predictor": {"choices": ["bilateral", "gap"], "when": {"mixer": "dynamic"}},
}

#: A space where two trials sampling the same configuration by chance is out of the question
#: (the learning rate is continuous): any repeat is the search's doing.
WIDE_SPACE = {
    "patch_size": 2,
    "num_heads": 2,
    "mixer": {"choices": ["dynamic", "attention", "static"]},
    "embed_dim": {"choices": [16, 24, 32]},
    "depth": {"low": 2, "high": 4},
    "training.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
}


def repeated_configurations(records: list[TrialRecord]) -> list[tuple[int, int]]:
    """Pairs of trials that tried the same configuration, a retry and what it retries aside."""
    seen: dict[str, int] = {}
    pairs = []
    for record in records:
        if not record.params or record.retry_of is not None:
            continue
        key = json.dumps(record.params, sort_keys=True)
        if key in seen:
            pairs.append((seen[key], record.number))
        seen.setdefault(key, record.number)
    return pairs


def start_driver(space: Path, results: Path, deaf_to_ctrl_c: bool = False) -> subprocess.Popen:
    """The real command line in a process of its own, training for real; with ``deaf_to_ctrl_c``,
    started with SIGINT ignored and blocked, as a background job or a child of Ray inherits it."""
    command = [sys.executable, "-m", "search", "run", "--space", str(space), "--results", str(results), "--quiet"]
    return _popen(command, _deaf_to_ctrl_c if deaf_to_ctrl_c else None)


def _deaf_to_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def start_fake_driver(space: Path, results: Path, address: str, speed: str = "slow") -> subprocess.Popen:
    """A driver in a process of its own whose trials train nothing (``tests/fakes.py``): for the
    checks of what the driver does when it, or the database, is cut short. It joins the Ray at
    ``address`` (the session's, from ``local_ray``) rather than starting one: it is still a process
    of its own, killed or stopped for real, and its trials still run in Ray workers of its own (a
    Ray job's workers end with it); it skips a Ray start and shutdown, seconds each here."""
    return _popen([sys.executable, "-m", "tests.fakes", str(space), str(results), address, speed])


def _popen(command: list[str], preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds; fail if ``process`` (a driver) exits first or time runs out.
    Polling sleeps between looks: a busy loop would take a core, and the database, from the driver."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the driver exited while waiting for {what}:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@contextlib.contextmanager
def reading(url: str, name: str = "tiny") -> Iterator[optuna.Study]:
    """The study, for reads within the block; its connections close as the block ends.

    ``wait_for`` polls a study five times a second, and a pool left to the garbage collector kept
    every poll's connection open, until a long wait held the hundred a PostgreSQL server allows
    and it refused everyone, the drivers under test included."""
    storage = open_storage(url, create=False)
    try:
        yield optuna.load_study(study_name=name, storage=storage)
    finally:
        storage.engine.dispose()


def records_of(url: str, name: str = "tiny") -> list[TrialRecord]:
    """The study's trials as records; none while its database or study does not exist yet."""
    try:
        with reading(url, name) as study:
            return read_records(study)
    except (KeyError, StorageError):
        return []


def write_space(folder: Path, name: str = "tiny", **sections) -> Path:
    """A search over the 8x8 digits that runs a trial in a second or two.

    Keyword sections update the defaults key by key, except ``space``, which replaces them."""
    space = {
        "study": {"name": name, "storage": sqlite_url(folder), "seed": 0},
        "data": {"name": "digits"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 3.0e-3},
        "budget": {"max_gmacs": 0.01},
        "trials": {"count": 3, "parallel": 2},
        "early_stopping": False,
        "space": TINY_SPACE,
    }
    for key, value in sections.items():
        if key != "space" and isinstance(value, dict) and isinstance(space.get(key), dict):
            space[key] = {**space[key], **value}
        else:
            space[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def segment_job(**changes) -> SegmentJob:
    """One epoch of a tiny model on the 8x8 digits, on the CPU: a trial body's job, for direct calls."""
    arch = {"img_size": [8, 8], "in_chans": 1, "num_classes": 10, "patch_size": 2, "embed_dim": 16, "depth": 2}
    job = dict(
        arch=arch,
        training=TrainSpec(epochs=1, batch_size=64),
        data=DataSpec(name="digits"),
        seed=0,
        start_epoch=0,
        stop_epoch=1,
        gpus=0.0,
        threads=1,
        measure_latency=False,
        return_weights=False,
    )
    return SegmentJob(**{**job, **changes})


@pytest.fixture
def postgres_url() -> str:
    """The CI PostgreSQL server: skipped when the variable is unset, a failure when it is set but down."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except Exception as err:
        pytest.fail(f"{POSTGRES_ENV} is set but the server cannot be reached: {err}")
    finally:
        engine.dispose()
    return url


@contextlib.contextmanager
def server_admin(url: str) -> Iterator[sqlalchemy.Connection]:
    """A connection to the server of ``url`` outside its database (the ``postgres`` one, in
    autocommit), for what cannot run inside a transaction or on the database it changes."""
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture
def own_postgres_url(postgres_url) -> Iterator[str]:
    """A database of this test's own on the CI server, for a test that takes its database away
    (dropped connections, an outage): tests that run beside it, in another pytest worker, keep theirs."""
    name = f"dws_{uuid.uuid4().hex[:12]}"
    with server_admin(postgres_url) as admin:
        admin.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield sqlalchemy.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with server_admin(postgres_url) as admin:
        admin.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def fake_search(space: Path, results: Path, segment: Callable | None = None) -> None:
    """Run the search a space file describes, with a trial body that trains nothing
    (``curve_segment`` unless ``segment`` names another of ``tests/fakes.py``)."""
    from search.display import Display
    from search.driver import Driver
    from search.space import load_space
    from tests.fakes import curve_segment

    segment = segment or curve_segment
    Driver(load_space(space), results=results, display=Display(quiet=True), segment=segment).run()


@pytest.fixture(scope="session")
def session_ray() -> Iterator[None]:
    """One local Ray for the in-process searches of the session: a search leaves running a Ray it
    did not start, so each skips Ray's start-up and finds its workers warm."""
    from search.cluster import connect

    connect(None, cpus=1, gpus=0)
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(session_ray) -> str:
    """The session's Ray, and its address as of this test: the multi-node tests leave it for
    clusters of their own and start it again when they are done, at a new address."""
    return ray.get_runtime_context().gcs_address


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
