"""optuna-dashboard as a user meets it: a note on the study and on every trial, each trial's learning
curve as an image, the report and the front's weights as study artifacts, and rejections that
read as rejections. The page checks open the real server, started by ``search dashboard`` with
no flag about artifacts, in headless Chromium.

The server's API and its listening only on loopback are checked on that same server.

One study serves every check here: trials that train nothing (``tests/fakes.py``), a budget that
rejects the references and some samples, and a static mixer that fails on purpose.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPACE, load_study, sqlite_url, write_space
from test_results import CHROMIUM

from search.dashboard import REPORT, curve_name
from search.driver import Driver
from search.optuna_adapter import listed_artifacts, note_handle
from search.records import COMPLETE, FAILED, REJECTED, TrialRecord, pareto_front
from search.records import records as read_records
from search.space import load_space
from search.storage import open_storage
from search.study_client import StudyClient
from tests.fakes import curve_segment

ROOT = Path(__file__).resolve().parent.parent
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


pytestmark = pytest.mark.usefixtures("session_ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def run_quick(space: Path, results: Path) -> None:
    Driver(load_space(space), results=results, segment=curve_segment).run()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, session_ray) -> Path:
    """The finished study, its artifacts in a folder of its own (``study.artifacts``)."""
    folder = tmp_path_factory.mktemp("dashboard")
    space = write_space(
        folder,
        study={"artifacts": str(folder / "shared-store")},
        budget={"max_gmacs": 0.0003},  # rejects width 32 at depth 3, where every reference sits
        trials={"count": 4, "parallel": 2},
        space={**TINY_SPACE, "training.lr": {"value": 1.0e9, "when": {"mixer": "static"}}},  # static fails
        keep_weights="front",
    )
    run_quick(space, folder / "results")
    return folder


@pytest.fixture(scope="module")
def trials(searched) -> dict[str, list[TrialRecord]]:
    by_status: dict[str, list[TrialRecord]] = {}
    for record in read_records(load_study(sqlite_url(searched))):
        by_status.setdefault(record.status, []).append(record)
    assert by_status.get(COMPLETE) and by_status.get(REJECTED) and by_status.get(FAILED), by_status.keys()
    return by_status


@pytest.fixture(scope="module")
def dashboard(searched) -> str:
    """``search dashboard`` on the study, as a user starts it: no flag about artifacts."""
    port = free_port()
    url = sqlite_url(searched)
    server = subprocess.Popen(
        [sys.executable, "-m", "search", "dashboard", "--study", "tiny", "--storage", url, "--port", str(port)],
        cwd=searched,  # the store is not under --results (searched/results): the study says where it is
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.3)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert errors == []


def study_id(searched: Path) -> int:
    return open_storage(sqlite_url(searched), create=False).get_study_id_from_name("tiny")


def open_trial(page, dashboard: str, searched: Path, number: int) -> None:
    page.goto(f"{dashboard}/dashboard/studies/{study_id(searched)}/trials?numbers={number}")
    page.wait_for_selector(f"h4:has-text('Trial {number} (trial_id=')")


def chips(page) -> list[str]:
    """The state chips under the open trial's heading (the list on the left has its own)."""
    return page.locator("h4:has-text('(trial_id=') + div [class*=MuiChip-label]").all_inner_texts()


def test_the_api_serves_every_trial_with_readable_attributes(searched, trials, dashboard):
    summary = next(s for s in get_json(f"{dashboard}/api/studies")["study_summaries"] if s["study_name"] == "tiny")
    served = get_json(f"{dashboard}/api/studies/{summary['study_id']}")["trials"]
    assert len(served) == len(load_study(sqlite_url(searched)).trials)
    number = trials[COMPLETE][0].number
    attrs = {a["key"]: a["value"] for a in next(t for t in served if t["number"] == number)["user_attrs"]}
    assert {"arch", "summary", "gmacs", "mparams", "latency_ms", "curve", "status"} <= set(attrs)
    arch = json.loads(attrs["arch"])  # readable: the whole architecture, not cut short
    assert arch["mixer"] in attrs["summary"] and "dynamic" in arch


def test_a_trial_page_shows_its_note_and_its_learning_curve(searched, trials, dashboard, page):
    record = trials[COMPLETE][0]
    open_trial(page, dashboard, searched, record.number)
    note = page.locator("h5:has-text('Note') + div")
    note.locator(f"text=Trial {record.number}: Complete").wait_for()
    text = note.inner_text()
    assert record.summary in text and "Learning curve" in text and "validation accuracy" in text
    assert f"{record.curve[-1]:.3f}" in text  # the curve's last epoch, in the note's table
    card = page.locator(f"text={curve_name(record.number)}")
    card.wait_for()
    image = page.locator("img[src*='/artifacts/']").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [480, 280]


def test_the_study_note_describes_the_search_and_its_front(searched, trials, dashboard, page):
    page.goto(f"{dashboard}/dashboard/studies/{study_id(searched)}/note")
    page.wait_for_selector("text=Searched parameters")
    text = page.locator("body").inner_text()
    for fragment in ("Study tiny", "tiny.yaml", "max_gmacs 0.0003", "sampler", "References", "Pareto front"):
        assert fragment in text, fragment
    front = pareto_front([r for group in trials.values() for r in group], ["maximize", "minimize"])
    assert all(r.summary in text for r in front)


def test_a_rejected_trial_is_not_labelled_a_failure(searched, trials, dashboard, page):
    rejected = trials[REJECTED][0]
    open_trial(page, dashboard, searched, rejected.number)
    page.wait_for_selector("text=Rejected before training, not a failure")
    assert chips(page) == ["Pruned"]
    assert "over budget" in page.locator("h5:has-text('Note') + div").inner_text()
    failed = trials[FAILED][0]  # a real failure, for contrast
    open_trial(page, dashboard, searched, failed.number)
    page.wait_for_selector(f"text=Trial {failed.number}: Failed")
    assert chips(page) == ["Fail"]


def test_the_study_offers_its_report_and_the_fronts_weights(searched, trials, dashboard, page):
    front = pareto_front([r for group in trials.values() for r in group], ["maximize", "minimize"])
    weights = {f"trial_{r.number:05d}.safetensors" for r in front}
    page.goto(f"{dashboard}/dashboard/studies/{study_id(searched)}")
    page.wait_for_selector("text=Study Artifacts")
    for name in (REPORT, *weights):
        page.locator(f"text={name}").first.wait_for()
    # Downloadable: what the dashboard serves is the file the run kept.
    storage = open_storage(sqlite_url(searched), create=False)
    listed = {m.filename: m for m in listed_artifacts(storage.get_study_system_attrs(study_id(searched)))}
    assert set(listed) == {REPORT, *weights}
    for name in weights:
        with urllib.request.urlopen(f"{dashboard}/artifacts/{study_id(searched)}/{listed[name].artifact_id}") as reply:
            assert reply.read() == (searched / "results" / "tiny" / "weights" / name).read_bytes()
    assert (searched / "shared-store" / listed[REPORT].artifact_id).exists()  # in the configured store


def test_every_trial_has_a_note_and_each_that_trained_one_curve(searched, trials):
    from optuna_dashboard import get_note

    storage = open_storage(sqlite_url(searched), create=False)
    study = optuna.load_study(study_name="tiny", storage=storage, sampler=optuna.samplers.RandomSampler())
    client = StudyClient(study, storage)
    for record in (r for group in trials.values() for r in group):
        note = get_note(note_handle(study, client.trial_id(record.number)))
        assert note.startswith(f"### Trial {record.number}:"), note
        curves = [m.filename for m in listed_artifacts(study.trials[record.number].system_attrs)]
        assert curves == ([curve_name(record.number)] if record.curve else [])


def test_the_dashboard_listens_on_loopback_only(dashboard):
    port = int(dashboard.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
    address = outbound_address()
    if address is not None:  # and from this machine's own network address, nothing answers
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{address}:{port}/api/meta", timeout=2).close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port``, IPv4 and IPv6 (Linux's /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            host, hex_port = fields[1].split(":")
            state = fields[3]
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(host)  # 32-bit words, each in the host's byte order
                words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
                if sys.byteorder == "little":
                    words = [word[::-1] for word in words]
                found.add(str(ipaddress.ip_address(b"".join(words))))
    return found


def outbound_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_later_run_replaces_the_report_and_keeps_only_the_fronts_weights(tmp_path):
    space = write_space(tmp_path, budget={"max_gmacs": 0.0003}, trials={"count": 2, "parallel": 1})
    run_quick(space, tmp_path / "results")
    space.write_text(space.read_text().replace("count: 2", "count: 5"))
    run_quick(space, tmp_path / "results")
    study = load_study(sqlite_url(tmp_path))
    storage = open_storage(sqlite_url(tmp_path), create=False)
    listed = [
        m.filename for m in listed_artifacts(storage.get_study_system_attrs(storage.get_study_id_from_name("tiny")))
    ]
    front = pareto_front(read_records(study), ["maximize", "minimize"])
    assert sorted(listed) == sorted([REPORT, *(f"trial_{r.number:05d}.safetensors" for r in front)])
    store = Path(study.user_attrs["artifact_store"])
    assert store == (tmp_path / "results" / "tiny" / "artifacts").resolve()
    assert len(list(store.iterdir())) == len(listed) + sum(len(listed_artifacts(t.system_attrs)) for t in study.trials)
