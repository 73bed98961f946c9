"""Faults, with nothing lost and nothing counted twice: failing trials, killed workers, killed
drivers, Ctrl-C, database connections dropped mid-run, two drivers on one study, concurrent
readers of SQLite, and the safety rules (safe YAML, no pickled code, masked passwords; the
dashboard's loopback-only listening is checked in test_dashboard.py, on its server)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import (
    TINY_SPACE,
    WIDE_SPACE,
    counted,
    fake_search,
    load_study,
    reading,
    records_of,
    repeated_configurations,
    segment_job,
    server_admin,
    sqlite_url,
    start_driver,
    start_fake_driver,
    wait_for,
    write_space,
)
from sqlalchemy.engine import make_url

from search.cli import main
from search.driver import Driver
from search.records import COMPLETE, FAILED, INTERRUPTED, RETRIED, RUNNING, STALE, SURPLUS, TrialRecord, tell
from search.results.report import build_report
from search.space import load_space
from search.storage import StorageError, open_storage, redact
from search.training.segment import run_segment
from search.training.trainer import Trainer, TrainSpec
from tests.fakes import SLOW_EPOCH_S, instant_curve_segment, slow_curve_segment

pytestmark = pytest.mark.usefixtures("session_ray")

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- helpers
def check_accounting(recs: list[TrialRecord], budget: int) -> None:
    """Exactly the budget counted, no trial left running, each interrupted trial retried once."""
    assert len(counted(recs)) == budget
    assert all(r.state != "RUNNING" for r in recs)
    retried = [r.retry_of for r in recs if r.retry_of is not None and r.status != SURPLUS]
    assert len(retried) == len(set(retried))  # no trial retried twice (a surplus retry never ran)
    by_number = {r.number: r for r in recs}
    for original in retried:  # an original that was retried never counts itself
        assert by_number[original].status in RETRIED
    for r in recs:
        if r.status in RETRIED:
            assert r.number in retried or r.state == "WAITING", f"trial {r.number} was never retried"


# ---------------------------------------------------------------------- a trial's own failures
def test_a_trial_that_raises_reports_why():
    bad = segment_job(arch={**segment_job().arch, "embed_dim": 10, "mixer": "attention", "num_heads": 3})
    result, checkpoint = run_segment(bad, None)
    assert result.failure_kind == "exception" and "not divisible by num_heads" in result.failure
    assert checkpoint is None


def test_out_of_memory_is_reported_as_such(monkeypatch):
    def exhausted(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "train_epoch", exhausted)
    result, _ = run_segment(segment_job(), None)
    assert result.failure_kind == "oom" and result.failure.startswith("out of memory: CUDA out of memory")


def test_a_nan_loss_is_reported_as_such():
    result, _ = run_segment(segment_job(training=TrainSpec(epochs=1, batch_size=64, lr=1e9)), None)
    assert result.failure_kind == "nan" and "non-finite training loss" in result.failure


# ---------------------------------------------------------------------- killed workers
def ray_workers(function: str) -> list[int]:
    """Process ids of the Ray workers running ``function`` that this test session started.

    Under pytest-xdist another worker's tests run trials beside ours: a process belongs to this
    one when it inherited its ``PYTEST_XDIST_WORKER`` (Ray passes a driver's environment on to the
    Ray it starts, and that Ray to its workers), which still holds once a killed driver leaves them.
    """
    found = subprocess.run(["pgrep", "-f", f"^ray::{function}"], capture_output=True, text=True).stdout.split()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return [int(pid) for pid in found]
    mine = []
    for pid in found:
        with contextlib.suppress(OSError):  # it may end while we look
            if f"PYTEST_XDIST_WORKER={worker}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                mine.append(int(pid))
    return mine


def test_a_test_sees_only_the_ray_workers_of_its_own_pytest_worker(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw-mine")
    started = {
        worker: subprocess.Popen(
            ["bash", "-c", "exec -a ray::probe_task sleep 30"], env={**os.environ, "PYTEST_XDIST_WORKER": worker}
        )
        for worker in ("gw-mine", "gw-other")
    }
    named = lambda process: Path(f"/proc/{process.pid}/cmdline").read_bytes().startswith(b"ray::probe_task")
    try:
        wait_for(lambda: all(named(process) for process in started.values()), 10, "both processes named")
        assert ray_workers("probe_task") == [started["gw-mine"].pid]
    finally:
        for process in started.values():
            process.kill()
            process.wait()


def training_workers() -> set[int]:
    """Process ids of the Ray workers running a real trial."""
    return set(ray_workers("run_segment"))


def kill_a_worker_once(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a (fake) trial, once it has run for a moment."""
    while not stop.is_set() and not killed:
        found = ray_workers(slow_curve_segment.__name__)
        if found:
            time.sleep(SLOW_EPOCH_S)
            os.kill(found[0], signal.SIGKILL)
            killed.append(found[0])
        time.sleep(0.1)


@pytest.mark.parametrize("retries", [2, 0])
def test_a_worker_killed_mid_trial_is_retried(tmp_path, retries):
    space = write_space(tmp_path, training={"epochs": 3}, trials={"count": 3, "parallel": 2, "retries": retries})
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_worker_once, args=(stop, killed))
    killer.start()
    try:
        driver = Driver(load_space(space), results=tmp_path / "results", segment=slow_curve_segment)
        driver.run()
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed"
    recs = records_of(sqlite_url(tmp_path))
    check_accounting(recs, 3)
    failed = [r for r in recs if r.status == FAILED]
    if retries:
        assert failed == []  # Ray re-ran the killed segment and the trial finished
    else:
        assert len(failed) == 1 and failed[0].reason.startswith("worker lost after 0 retries")


# ---------------------------------------------------------------------- killed drivers
@pytest.mark.slow
def test_the_driver_killed_at_several_points_loses_nothing(tmp_path, local_ray):
    budget = 6
    space = write_space(tmp_path, training={"epochs": 2}, trials={"count": budget, "parallel": 2})
    url = sqlite_url(tmp_path)
    kill_points = [
        ("a trial running", lambda: any(r.status == RUNNING for r in records_of(url))),
        ("2 trials done", lambda: len(counted(records_of(url))) >= 2),
        ("4 trials done", lambda: len(counted(records_of(url))) >= 4),
    ]
    for what, ready in kill_points:
        driver = start_fake_driver(space, tmp_path / "results", local_ray)
        wait_for(ready, 240, what, driver)
        before = {r.number: (r.status, r.values) for r in counted(records_of(url))}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        after = {r.number: (r.status, r.values) for r in records_of(url)}
        for number, outcome in before.items():  # everything finished before the kill is still there, unchanged
            assert after[number] == outcome
    fake_search(space, tmp_path / "results")
    recs = records_of(url)
    check_accounting(recs, budget)
    assert any(r.status == STALE for r in recs)  # the kills did catch trials mid-run


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path):
    # The real command line (its exit code and message are what is checked), with trials long
    # enough to be caught running: at 40 epochs they ended before the interrupt once the small-grid
    # layers got faster. It is started deaf to Ctrl-C, as a background job is: late in the full
    # suite the test process itself passed an ignored or blocked SIGINT on, and the search ran to
    # its end. The rerun only needs its bookkeeping, so it trains nothing.
    space = write_space(tmp_path, training={"epochs": 200}, trials={"count": 3, "parallel": 2})
    url = sqlite_url(tmp_path)
    others = training_workers()  # trials other programs on this machine may be running
    driver = start_driver(space, tmp_path / "results", deaf_to_ctrl_c=True)
    wait_for(lambda: sum(r.status == RUNNING for r in records_of(url)) >= 2, 120, "two running trials", driver)
    time.sleep(1.0)
    started = time.monotonic()
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, _ = driver.communicate(timeout=120)
    assert time.monotonic() - started < 30, out  # stopping does not wait for the trials to finish
    assert driver.returncode == 130, out
    assert "Traceback" not in out and "run the same command again to resume" in out
    recs = records_of(url)
    interrupted = [r for r in recs if r.status == INTERRUPTED]
    assert interrupted and all(r.reason == "interrupted" and r.state == "FAIL" for r in interrupted)
    assert not any(r.state == "RUNNING" for r in recs)
    assert training_workers() - others == set()  # its trials stopped with it
    # its trials are 200 epochs long: curve_segment would sleep 4 s each
    fake_search(space, tmp_path / "results", segment=instant_curve_segment)
    check_accounting(records_of(url), 3)


# ---------------------------------------------------------------------- databases
def drop_connections(url: str, database: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).fetchall()
            return len(rows)
    finally:
        engine.dispose()


def outage(url: str, database: str, seconds: float) -> None:
    """Refuse every connection to ``database`` for a while (the server stays up for the others)."""
    import sqlalchemy

    with server_admin(url) as admin:
        admin.execute(sqlalchemy.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        try:
            admin.execute(
                sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                {"db": database},
            )
            time.sleep(seconds)
        finally:
            admin.execute(sqlalchemy.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))


def named_space(tmp_path: Path, name: str, url: str, **sections) -> Path:
    return write_space(tmp_path, name=name, study={"name": name, "storage": url}, **sections)


def open_connections(url: str, database: str) -> int:
    """Connections to ``database`` now, counted from outside it."""
    import sqlalchemy

    with server_admin(url) as admin:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
        return admin.execute(sqlalchemy.text(query), {"db": database}).scalar()


def test_polling_a_study_leaves_no_connection_open(own_postgres_url):
    storage = open_storage(own_postgres_url)
    optuna.create_study(study_name="tiny", storage=storage)
    storage.engine.dispose()
    database = make_url(own_postgres_url).database
    gc.disable()  # as between the garbage collector's rare full passes, during a long wait
    try:
        for _ in range(20):
            records_of(own_postgres_url)
        assert open_connections(own_postgres_url, database) == 0
    finally:
        gc.enable()


@pytest.mark.slow
def test_dropped_connections_and_an_outage_are_survived(tmp_path, own_postgres_url, unique_name, local_ray):
    space = named_space(
        tmp_path, unique_name, own_postgres_url, training={"epochs": 2}, trials={"count": 4, "parallel": 2}
    )
    driver = start_fake_driver(space, tmp_path / "results", local_ray)
    database = make_url(own_postgres_url).database
    wait_for(lambda: len(counted(records_of(own_postgres_url, unique_name))) >= 1, 240, "a finished trial", driver)
    assert drop_connections(own_postgres_url, database) > 0  # the driver's connections go away under it
    wait_for(lambda: len(counted(records_of(own_postgres_url, unique_name))) >= 2, 240, "two finished trials", driver)
    outage(own_postgres_url, database, seconds=6)  # then the database refuses everyone for a while
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out
    assert "database unavailable" in out  # it waited and retried rather than failing
    check_accounting(records_of(own_postgres_url, unique_name), 4)


@pytest.mark.slow
def test_two_drivers_share_one_postgres_study(tmp_path, postgres_url, unique_name, local_ray):
    space = named_space(
        tmp_path,
        unique_name,
        postgres_url,
        space=WIDE_SPACE,
        training={"epochs": 3},
        trials={"count": 12, "parallel": 1},
    )
    drivers = [start_fake_driver(space, tmp_path / "results", local_ray, speed="fast") for _ in range(2)]
    for driver in drivers:
        out = driver.communicate(timeout=400)[0]
        assert driver.returncode == 0, out[-4000:]  # the end of its output, where a traceback is
    recs = records_of(postgres_url, unique_name)
    numbers = [r.number for r in recs]
    assert len(numbers) == len(set(numbers))
    check_accounting(recs, 12)  # the total budget, not 12 each
    drivers_seen = {
        t.user_attrs.get("driver") for t in load_study(postgres_url, unique_name).trials if t.state.is_finished()
    }
    assert len(drivers_seen) == 2  # both did work
    references = [r.reference for r in recs if r.reference and r.retry_of is None]
    assert sorted(references) == sorted(set(references))  # the references were enqueued once
    assert repeated_configurations(recs) == []  # each driver samples where the study stands, not from its seed


@pytest.mark.slow
def test_four_parallel_trials_and_a_reader_never_lock_sqlite(tmp_path, local_ray):
    space = write_space(tmp_path, trials={"count": 8, "parallel": 4}, resources={"cpus": 0.5}, training={"epochs": 3})
    url = sqlite_url(tmp_path)
    driver = start_fake_driver(space, tmp_path / "results", local_ray)
    errors, reads = [], 0
    while driver.poll() is None:  # a second process reads (and builds the report) all along
        try:
            if records_of(url):
                with reading(url) as study:
                    build_report(study, tmp_path / "report.html", storage_label="sqlite")
                reads += 1
        except Exception as err:
            errors.append(repr(err))
        time.sleep(0.2)
    out = driver.stdout.read()
    assert driver.returncode == 0, out
    assert "database is locked" not in out and not any("locked" in e for e in errors), errors
    assert reads > 3
    check_accounting(records_of(url), 8)


def _open_when_told(url: str, ready, go, failures) -> None:
    ready.release()
    go.wait()
    try:
        open_storage(url)
    except Exception as err:
        failures.put(repr(err))


def test_processes_opening_a_new_database_at_once_all_get_it(tmp_path):
    """A driver, a second driver and a reader may all open a fresh SQLite file in the same moment:
    each must get the storage, not 'table ... already exists' or 'database is locked'."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for attempt in range(20):
        url, ready, go = sqlite_url(tmp_path / str(attempt)), context.Semaphore(0), context.Event()
        (tmp_path / str(attempt)).mkdir()
        openers = [context.Process(target=_open_when_told, args=(url, ready, go, failures)) for _ in range(4)]
        for opener in openers:
            opener.start()
        for _ in openers:  # all four wait at the start line...
            assert ready.acquire(timeout=60), "an opener did not start"
        go.set()  # ...and are let go together
        for opener in openers:
            opener.join(60)
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert not found, found


# ---------------------------------------------------------------------- safety
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_checkpoint_holding_code_is_refused(tmp_path, capsys, how):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    run.mkdir()
    state = {"trainer": Payload(), "curve": []}
    if how == "torch.save":  # the format a checkpoint has: it reaches the loader, which refuses the code
        torch.save(state, run / "checkpoint.pt")
    else:  # a bare pickle is no checkpoint: it is never loaded
        (run / "checkpoint.pt").write_bytes(pickle.dumps(state))
    arch = tmp_path / "arch.yaml"
    arch.write_text("patch_size: 2\nembed_dim: 16\ndepth: 2\n")
    code = main(["train", "--arch", str(arch), "--dataset", "digits", "--epochs", "1", "--out", str(run)])
    expected = "holds more than tensors and numbers" if how == "torch.save" else "is damaged or not a checkpoint"
    assert code == 2 and expected in capsys.readouterr().err
    assert not marker.exists()


def test_passwords_never_appear(tmp_path, postgres_url, unique_name, capsys):
    parsed = make_url(postgres_url)
    with_password = parsed.set(password="hunter2-secret").render_as_string(hide_password=False)
    space = named_space(
        tmp_path, unique_name, with_password, trials={"count": 2, "parallel": 2}, training={"epochs": 1}
    )
    assert main(["run", "--space", str(space), "--results", str(tmp_path / "results"), "--quiet"]) == 0
    args = ["--study", unique_name, "--storage", with_password, "--results", str(tmp_path / "results")]
    assert main(["report", *args]) == 0
    assert main(["export", *args, "--pareto", "--out", str(tmp_path / "export")]) == 0
    assert main(["run", "--space", str(space), "--storage", with_password.replace("5432", "1"), "--quiet"]) == 2
    printed = capsys.readouterr()
    texts = [printed.out, printed.err, json.dumps(load_study(postgres_url, unique_name).user_attrs)]
    texts += [p.read_text() for p in (tmp_path / "results").rglob("*.html")]
    texts += [p.read_text() for p in (tmp_path / "export").rglob("README.md")]
    assert "***" in printed.err  # the unreachable URL was shown, masked
    for text in texts:
        assert "hunter2-secret" not in text


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        # percent-encoded, as a password holding '@' must be: the decoded 'p@ss' is not in the text
        ("storage: postgresql://me:p%40ss@db/search\n", "storage: postgresql://me:***@db/search\n"),
        # a short password is masked in its URL only, not wherever its characters recur
        ("epochs: 10\nstorage: postgresql://u:1@h/db\n", "epochs: 10\nstorage: postgresql://u:***@h/db\n"),
        ('storage: "postgresql+psycopg2://u:a:b/c@h:5432/db"', 'storage: "postgresql+psycopg2://u:***@h:5432/db"'),
        ("storage: postgresql://u@h/db  # no password\n", "storage: postgresql://u@h/db  # no password\n"),
        ("storage: sqlite:////tmp/a:b@c.db\n", "storage: sqlite:////tmp/a:b@c.db\n"),
    ],
)
def test_the_stored_space_masks_every_url_password_as_written(written, stored):
    assert redact(written) == stored


# ---------------------------------------------------------------------- reconciliation, unit by unit
#: A space that no reference trial fits (none uses linear attention): its new study holds no trial.
UNREFERENCED_SPACE = {
    "patch_size": 2,
    "num_heads": 2,
    "mixer": {"choices": ["linear_attention"]},
    "embed_dim": {"choices": [16, 32]},
    "depth": {"low": 2, "high": 3},
}


def idle_driver(tmp_path: Path, space: dict = UNREFERENCED_SPACE):
    """A driver attached to a fresh study, without running it (no Ray needed)."""
    from search.driver import Driver
    from search.space import load_space

    driver = Driver(load_space(write_space(tmp_path, space=space)), results=tmp_path / "results")
    driver.open()
    return driver


def test_a_database_lost_past_the_patience_stops_the_driver_with_its_first_error(tmp_path, monkeypatch):
    """Ending the view read the trials once more: a second wait of the whole patience, whose error,
    about reading the trials, replaced the one that had stopped the run."""
    from search.driver import Driver
    from search.space import load_space
    from search.storage import StorageError
    from search.study_client import StudyClient

    driver = Driver(load_space(write_space(tmp_path, space=UNREFERENCED_SPACE)), results=tmp_path / "results")
    lost = StorageError("the database did not come back within 120 s while trying to record a trial: gone")

    reads, read_before = [], []

    def collect(timeout: float) -> None:
        read_before.append(len(reads))
        raise lost

    monkeypatch.setattr(driver, "_collect", collect)
    monkeypatch.setattr(StudyClient, "records", lambda self: reads.append(1) or [])
    with pytest.raises(StorageError, match="while trying to record a trial: gone"):
        driver._run("shipped")
    assert len(reads) == read_before[0]  # nothing read once the database was lost


def test_a_driver_ending_keeps_the_weights_of_a_trial_another_driver_has_not_yet_told(tmp_path):
    """With two drivers on one results folder, the first to end deleted the weights the other had
    just saved for a trial it was about to tell: off the front as yet, and on it a moment later."""
    from search.records import weights_dir

    driver = idle_driver(tmp_path)
    study = driver.client.study
    study.tell(study.ask(), [0.9, 0.001])  # the front
    study.tell(study.ask(), [0.1, 0.002])  # dominated: its weights go
    study.ask()  # the other driver's, saved, not yet told
    folder = weights_dir(driver.results, driver.spec.study.name)
    folder.mkdir(parents=True)
    for number in range(3):
        (folder / f"trial_{number:05d}.safetensors").write_bytes(b"")
    driver._finish_weights()
    assert sorted(p.name for p in folder.iterdir()) == ["trial_00000.safetensors", "trial_00002.safetensors"]


def test_two_drivers_ending_at_once_remove_the_same_weights_and_both_end_well(tmp_path, monkeypatch):
    """Two drivers on one results folder that end together both list the weights, then both remove
    a dominated trial's: the second found the file gone and its whole run ended in a traceback."""
    from search.records import weights_dir

    driver = idle_driver(tmp_path)
    study = driver.client.study
    study.tell(study.ask(), [0.9, 0.001])  # the front
    study.tell(study.ask(), [0.1, 0.002])  # dominated: its weights go
    folder = weights_dir(driver.results, driver.spec.study.name)
    folder.mkdir(parents=True)
    for number in range(2):
        (folder / f"trial_{number:05d}.safetensors").write_bytes(b"")
    listed = sorted(folder.glob("trial_*.safetensors"))
    (folder / "trial_00001.safetensors").unlink()  # the other driver's removal, after this one listed
    glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed) if self == folder else glob(self, pattern))
    driver._finish_weights()
    assert [p.name for p in folder.iterdir()] == ["trial_00000.safetensors"]


def test_an_outage_is_reported_in_the_databases_own_words():
    """Optuna's wrapper said only that a commit failed, "e.g. exceeding max length", on every line."""
    import sqlalchemy.exc

    from search.storage import StorageError, with_retries

    def commit() -> None:
        cause = Exception('database "search" is not currently accepting connections')
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, cause)
        except sqlalchemy.exc.OperationalError as err:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err

    with pytest.raises(StorageError, match='record a trial: database "search" is not currently accepting'):
        with_retries(commit, "record a trial", patience_s=0.0)


def test_a_run_that_fails_once_the_study_exists_leaves_its_references_queued(tmp_path, monkeypatch):
    """The references were queued only by the run that created the study, after steps that could
    fail: the run after such a failure found the study made and never queued them."""
    import search.driver as driver_module

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(driver_module, "DashboardWriter", full_disk)
    with pytest.raises(OSError):
        idle_driver(tmp_path, TINY_SPACE)
    queued = {t.user_attrs.get("reference") for t in load_study(sqlite_url(tmp_path)).trials}
    assert queued == {"weightformer", "attention", "static"}


def waiting(study: optuna.Study) -> int:
    return sum(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials())


def heartbeat(study: optuna.Study, driver: str, pid: int) -> None:
    from search.recovery import beat_key

    study.set_user_attr(beat_key(driver), {"host": socket.gethostname(), "pid": pid, "beat": time.time()})


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_trial_another_driver_has_just_asked_is_left_alone(tmp_path):
    driver = idle_driver(tmp_path)
    heartbeat(driver.client.study, "other", os.getpid())  # a live driver...
    driver.client.study.ask()  # ...has claimed a trial and not yet written its name on it
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.RUNNING and waiting(driver.client.study) == 0


def test_an_unnamed_claim_is_timed_on_the_settling_drivers_clock(tmp_path, monkeypatch):
    """Optuna records a claim in the claiming host's naive local time: a driver in a time zone
    hours ahead took a trial another live driver had just claimed for hours old, and failed it."""
    import copy
    import datetime

    import search.recovery as recovery_module

    driver = idle_driver(tmp_path)
    heartbeat(driver.client.study, "other", os.getpid())  # a live driver, on a host hours behind...
    driver.client.study.ask()  # ...has just claimed a trial
    as_recorded = copy.copy(driver.client.study.trials[0])
    as_recorded.datetime_start = datetime.datetime.now() - datetime.timedelta(hours=5)
    monkeypatch.setattr(driver.client, "trials", lambda states=None: [as_recorded])
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.RUNNING and waiting(driver.client.study) == 0
    monkeypatch.setattr(recovery_module, "DEAD_AFTER_S", 0.0)  # unnamed for that long, as seen from here
    driver.recovery.reconcile()
    assert waiting(driver.client.study) == 1  # its claimer died before naming it: retried


def test_a_driver_silent_through_an_outage_it_rides_out_is_not_presumed_dead(tmp_path):
    """Presumed dead after 60 s of silence, a driver on another host that rode out a 70 s database
    outage found its trial failed as stale by the first driver back, and crashed telling it."""
    from search.recovery import HEARTBEAT_S, beat_key
    from search.storage import MAX_RETRY_DELAY_S, OUTAGE_PATIENCE_S

    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask({"mixer": optuna.distributions.CategoricalDistribution(["static"])})
    trial.set_user_attr("driver", "other")
    trial.set_user_attr("status", RUNNING)
    silent = HEARTBEAT_S + OUTAGE_PATIENCE_S + MAX_RETRY_DELAY_S  # its last beat, the outage, the last wait
    beat = {"host": "elsewhere", "pid": 1, "beat": time.time() - silent}
    driver.client.study.set_user_attr(beat_key("other"), beat)
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.RUNNING and waiting(driver.client.study) == 0


def test_a_live_driver_on_a_host_whose_clock_runs_behind_is_not_presumed_dead(tmp_path, monkeypatch):
    """Its beats were read against this host's clock: 200 s behind, a driver beating every 10 s
    looked silent, and its running trial was failed as stale and run twice."""
    import search.recovery as recovery_module

    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask({"mixer": optuna.distributions.CategoricalDistribution(["static"])})
    trial.set_user_attr("driver", "other")
    trial.set_user_attr("status", RUNNING)

    def beat_200_s_behind() -> None:
        beat = {"host": "elsewhere", "pid": 1, "beat": time.time() - 200.0}
        driver.client.study.set_user_attr(recovery_module.beat_key("other"), beat)

    monkeypatch.setattr(recovery_module, "DEAD_AFTER_S", 0.5)
    for _ in range(3):  # it keeps beating
        beat_200_s_behind()
        driver.recovery.reconcile()
        assert waiting(driver.client.study) == 0
        time.sleep(0.6)
    driver.recovery.reconcile()  # silent since its last beat, as timed here: gone
    assert waiting(driver.client.study) == 1


@pytest.mark.usefixtures("session_ray")
def test_a_driver_restarted_while_a_dead_one_still_seems_alive_completes_the_count(tmp_path, monkeypatch):
    """Restarted on another machine before the dead driver's heartbeat went stale, a driver counted
    that driver's running trial as done, found the count full, and ended the study one short."""
    import search.driver as driver_module
    import search.recovery as recovery_module

    space = write_space(tmp_path, space=UNREFERENCED_SPACE, trials={"count": 2, "parallel": 1})
    fake_search(space, tmp_path / "results")
    space.write_text(space.read_text().replace("count: 2", "count: 3"))
    study = load_study(sqlite_url(tmp_path))  # a driver on another machine claims the third, and dies
    trial = study.ask({"mixer": optuna.distributions.CategoricalDistribution(["linear_attention"])})
    trial.set_user_attr("driver", "gone")
    trial.set_user_attr("status", RUNNING)
    study.set_user_attr(recovery_module.beat_key("gone"), {"host": "elsewhere", "pid": 1, "beat": time.time()})
    monkeypatch.setattr(recovery_module, "DEAD_AFTER_S", 2.0)  # its heartbeat goes stale during the run
    monkeypatch.setattr(recovery_module, "RECONCILE_S", 0.5)
    monkeypatch.setattr(driver_module, "AWAIT_OTHERS_S", 0.1)
    fake_search(space, tmp_path / "results")
    recs = records_of(sqlite_url(tmp_path))
    assert [r.status for r in recs] == [COMPLETE, COMPLETE, STALE, COMPLETE] and recs[3].retry_of == 2


def training(url: str) -> bool:
    """Whether a trial's driver has written its status ``running``: the trial is sampled and costed,
    and trains (a trial only claimed already reads as running in its record)."""
    try:
        with reading(url) as study:
            return any(t.user_attrs.get("status") == RUNNING for t in study.trials)
    except (KeyError, StorageError):
        return False


@pytest.mark.usefixtures("session_ray")
def test_a_driver_whose_running_trial_another_driver_settled_lets_it_go(tmp_path):
    """A driver silent past DEAD_AFTER_S (a suspended machine) is taken for dead: another driver
    fails its running trial as stale and queues the retry. Woken, the first driver crashed at its
    next write to that trial, which Optuna refuses once a trial is finished."""
    space = write_space(tmp_path, space=UNREFERENCED_SPACE, training={"epochs": 4}, trials={"count": 2, "parallel": 1})
    url, errors = sqlite_url(tmp_path), []

    def settle_as_another_driver() -> None:
        try:
            wait_for(lambda: training(url), 60, "a training trial")
            other = Driver(load_space(space), results=tmp_path / "results")  # on the same study and space
            other.open()
            other.recovery.retry_later(0, STALE, "the driver stopped while it ran")
        except Exception as err:
            errors.append(err)

    settler = threading.Thread(target=settle_as_another_driver)
    settler.start()
    try:
        fake_search(space, tmp_path / "results", segment=slow_curve_segment)
    finally:
        settler.join()
    assert not errors, errors
    recs = records_of(url)
    assert [r.status for r in recs] == [STALE, COMPLETE, COMPLETE] and recs[1].retry_of == 0


def test_a_trial_named_running_while_another_driver_settled_it_reads_stale(tmp_path, monkeypatch):
    """A driver woken from a long stall wrote "running" on a trial another driver had just failed as
    stale, before that driver told it: the finished trial was reported running for ever."""
    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask()  # claimed by a driver that then stalled
    tell = driver.client.tell

    def named_in_between(number: int, status: str, values: list[float] | None) -> None:
        trial.set_user_attr("status", RUNNING)  # the stalled driver's start, landing before the tell
        tell(number, status, values)

    monkeypatch.setattr(driver.client, "tell", named_in_between)
    driver.recovery.retry_later(0, STALE, "the driver stopped while it ran")
    first, retry = records_of(sqlite_url(tmp_path))
    assert (first.state, first.status, retry.retry_of) == ("FAIL", STALE, 0)


@pytest.mark.usefixtures("session_ray")
def test_a_trial_retried_twice_by_two_drivers_at_once_runs_again_once(tmp_path):
    """Two drivers settling a dead driver's trial in the same instant may each find no retry and
    queue one; both retries ran, and the trial's parameters counted twice."""
    from search.optuna_adapter import queued_params

    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask({"mixer": optuna.distributions.CategoricalDistribution(["linear_attention"])})
    trial.set_user_attr("driver", "gone")
    trial.set_user_attr("status", RUNNING)
    frozen = driver.client.study.trials[0]
    for _ in range(2):  # what the two drivers queued, each before it saw the other's
        driver.client.enqueue(queued_params(frozen), {"retry_of": 0})
    driver.recovery.reconcile()  # the rest of their settling: the trial failed as stale
    space = tmp_path / "tiny.yaml"
    space.write_text(space.read_text().replace("count: 3", "count: 2"))
    fake_search(space, tmp_path / "results", segment=instant_curve_segment)
    recs = records_of(sqlite_url(tmp_path))
    assert [(r.status, r.retry_of) for r in recs] == [(STALE, None), (COMPLETE, 0), (SURPLUS, 0), (COMPLETE, None)]
    check_accounting(recs, 2)


def test_a_trial_claimed_by_a_driver_killed_before_it_named_itself_is_retried(tmp_path):
    driver = idle_driver(tmp_path)
    heartbeat(driver.client.study, "killed", dead_pid())
    driver.client.study.ask()  # the killed driver's last act: a claim it never named
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].user_attrs["status"] == STALE and waiting(driver.client.study) == 1


def test_a_trial_of_a_dead_driver_is_failed_and_retried_once(tmp_path):
    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask({"mixer": optuna.distributions.CategoricalDistribution(["static"])})
    trial.set_user_attr("driver", "gone")
    trial.set_user_attr("status", RUNNING)
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].user_attrs["status"] == STALE and waiting(driver.client.study) == 1
    retry = driver.client.study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.system_attrs["fixed_params"] == {"mixer": "static"}


def test_a_reference_claimed_but_not_yet_sampled_is_retried_as_the_reference(tmp_path):
    driver = idle_driver(tmp_path)
    heartbeat(driver.client.study, "killed", dead_pid())
    driver.client.study.enqueue_trial({"mixer": "static"}, user_attrs={"reference": "static"})
    driver.client.study.ask()  # claimed, killed before it sampled its queued parameters
    driver.recovery.reconcile()
    retry = driver.client.study.trials[1]
    assert retry.system_attrs["fixed_params"] == {"mixer": "static"} and retry.user_attrs["reference"] == "static"


def test_a_retry_recorded_but_not_queued_before_a_crash_is_queued(tmp_path):
    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask({"mixer": optuna.distributions.CategoricalDistribution(["static"])})
    trial.set_user_attr("driver", "gone")
    trial.set_user_attr("status", STALE)  # the dead driver recorded the retry and died
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.FAIL and waiting(driver.client.study) == 1
    assert driver.client.study.trials[1].user_attrs["retry_of"] == 0


def test_a_retry_queued_just_before_a_crash_is_not_queued_twice(tmp_path):
    driver = idle_driver(tmp_path)
    trial = driver.client.study.ask()
    trial.set_user_attr("driver", "gone")
    trial.set_user_attr("status", STALE)  # the dead driver had queued the retry...
    driver.client.study.enqueue_trial({}, user_attrs={"retry_of": 0})  # ...but not told the trial
    driver.recovery.reconcile()
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.FAIL and waiting(driver.client.study) == 1


def fail_once_after_the_claim(monkeypatch, study: optuna.Study) -> None:
    """The database drops the first read that follows the claim of a trial."""
    import sqlalchemy.exc

    calls, before_trial = [], study.sampler.before_trial

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return before_trial(*args)

    monkeypatch.setattr(study.sampler, "before_trial", flaky)


def drop_the_second_parameter_write(storage, reply_lost: bool) -> list[str]:
    """Make the database fail the second parameter write, before its commit or just after it (the
    reply is lost); returns the names of the parameters whose write was attempted, in order."""
    import sqlalchemy.exc
    from sqlalchemy import event

    attempts: list[str] = []
    lost = {"pending": False}

    def on_execute(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO TRIAL_PARAMS"):
            attempts.append(next(v for v in parameters if isinstance(v, str)))
            if len(attempts) == 2:
                if not reply_lost:
                    raise sqlalchemy.exc.OperationalError(statement, parameters, Exception("server closed"))
                lost["pending"] = True

    def on_commit(connection):
        if lost.pop("pending", False):
            connection.connection.dbapi_connection.commit()  # the write lands...
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed"))  # ...its reply does not

    event.listen(storage.engine, "before_cursor_execute", on_execute)
    event.listen(storage.engine, "commit", on_commit)
    return attempts


@pytest.mark.parametrize("reply_lost", [False, True])
def test_an_outage_while_sampling_is_retried_and_writes_each_parameter_once(tmp_path, reply_lost):
    driver = idle_driver(tmp_path)
    attempts = drop_the_second_parameter_write(driver.client.storage, reply_lost)
    params = driver.client.sample(
        driver.client.claim(), lambda: optuna.samplers.RandomSampler(seed=0), driver.spec.sample
    )
    stored = driver.client.study.trials[0].params
    searched = {p.name for p in driver.spec.params if not p.fixed and p.active(params)}
    assert stored == {name: params[name] for name in searched}  # every suggestion kept, as returned
    assert len(driver.client.study.trials) == 1 and attempts.count(attempts[1]) == (1 if reply_lost else 2)


def test_a_trial_sampled_through_an_outage_gets_the_configuration_it_would_have_had(tmp_path):
    """The retry sampled with the first attempt's sampler, whose generator had moved on: the
    parameters not yet written came out otherwise, and a seeded study depended on the timing."""
    from search.samplers import create_sampler, trial_seed
    from search.study_client import StudyClient

    def configuration(folder: Path, outage: bool) -> dict:
        folder.mkdir()
        client, _ = StudyClient.open("seeded", sqlite_url(folder), ["maximize", "minimize"])

        def sampler(number: int):
            return lambda: create_sampler("tpe", trial_seed(0, number), {"n_startup_trials": 2})

        def space(trial: optuna.Trial) -> dict:
            return {"a": trial.suggest_float("a", 0, 1), "b": trial.suggest_float("b", 0, 1)}

        for number in range(4):  # past TPE's start-up
            params = client.sample(client.claim(), sampler(number), space)
            client.tell(number, COMPLETE, [params["a"], params["b"]])
        if outage:
            drop_the_second_parameter_write(client.storage, reply_lost=False)
        return client.sample(client.claim(), sampler(4), space)

    assert configuration(tmp_path / "calm", False) == configuration(tmp_path / "outage", True)


def test_a_ctrl_c_while_a_trials_outcome_is_written_leaves_it_to_be_retried(tmp_path, monkeypatch):
    """Interrupted during the write (which may wait out an outage), a finished trial was told to
    Optuna as complete while its record still said running: never counted, never retried."""
    from search.driver import Active

    driver = idle_driver(tmp_path)
    trial_id = driver.client.claim()
    driver.client.set_trial_attrs(trial_id, driver=driver.id, status=RUNNING)
    active = Active(trial_id, 0, {}, 0, curve=[0.5, 0.7])
    driver.active.append(active)
    write = driver.client.storage.set_trial_user_attr

    def ctrl_c_at_the_status(trial_id, key, value):
        if key == "status":
            raise KeyboardInterrupt
        write(trial_id, key, value)

    monkeypatch.setattr(driver.client.storage, "set_trial_user_attr", ctrl_c_at_the_status)
    with pytest.raises(KeyboardInterrupt):
        driver._finish(active, COMPLETE, values=[0.7, 0.001])
    monkeypatch.setattr(driver.client.storage, "set_trial_user_attr", write)
    driver._interrupt()
    recs = records_of(sqlite_url(tmp_path))
    assert [(r.status, r.retry_of) for r in recs] == [(INTERRUPTED, None), ("waiting", 0)]  # failed, and queued again


def test_a_ctrl_c_lets_go_of_a_trial_another_driver_has_settled(tmp_path):
    """Interrupted after a silence in which another driver settled its trial, a driver crashed in
    its Ctrl-C bookkeeping: queueing the retry wrote to a finished trial."""
    from search.driver import Active

    driver, other = idle_driver(tmp_path), idle_driver(tmp_path)
    trial_id = driver.client.claim()
    driver.client.set_trial_attrs(trial_id, driver=driver.id, status=RUNNING)
    driver.active.append(Active(trial_id, 0, {}, 0))
    other.recovery.retry_later(0, STALE, "the driver stopped while it ran")
    driver._interrupt()
    recs = records_of(sqlite_url(tmp_path))
    assert [(r.status, r.retry_of) for r in recs] == [(STALE, None), ("waiting", 0)] and driver.active == []


def test_an_outage_during_an_ask_claims_one_trial_not_two(tmp_path, monkeypatch):
    driver = idle_driver(tmp_path)
    fail_once_after_the_claim(monkeypatch, driver.client.study)
    trial = driver.client.handle(driver.client.claim())
    assert [t.number for t in driver.client.study.trials] == [trial.number] == [0]  # no orphan left RUNNING


def test_an_outage_during_an_ask_never_loses_a_queued_trial(tmp_path, monkeypatch):
    driver = idle_driver(tmp_path)
    driver.client.study.enqueue_trial({"mixer": "static"}, user_attrs={"reference": "static"})
    fail_once_after_the_claim(monkeypatch, driver.client.study)
    trial = driver.client.handle(driver.client.claim())
    assert trial.user_attrs["reference"] == "static" and len(driver.client.study.trials) == 1
    assert driver.client.study.trials[0].state == optuna.trial.TrialState.RUNNING


def test_telling_a_trial_again_after_a_lost_reply_is_harmless(tmp_path):
    driver = idle_driver(tmp_path)
    driver.client.study.ask()
    values = [0.5] * len(driver.client.study.directions)
    tell(driver.client.study, 0, COMPLETE, values)
    tell(driver.client.study, 0, COMPLETE, values)  # the retry of a write that had landed
    assert (
        driver.client.study.trials[0].state == optuna.trial.TrialState.COMPLETE
        and driver.client.study.trials[0].values == values
    )
