"""A 20-trial study under fire: Ray workers and the driver are killed at random moments.

    python benchmarks/faults.py [--seed 0]        # a few minutes on a 2-core machine

Every few seconds (seeded), the script SIGKILLs either a Ray worker in the middle of a trial or
the driver itself, and restarts the driver whenever it is dead, until the study is complete.
Before each kill it notes every finished trial and its values; afterwards it checks that none
went missing or changed. It prints and writes: trials finished, trials retried after a driver
kill, workers killed, drivers killed, trials lost (must be 0) and trials counted twice (must be 0).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import Target, exit_with, write  # noqa: E402
from search.records import COUNTED  # noqa: E402
from search.records import records as read_records  # noqa: E402
from search.storage import StorageError, open_storage  # noqa: E402

BUDGET = 20


def space(folder: Path) -> tuple[Path, str]:
    """The space file, and the storage URL it names."""
    path, url = folder / "faults.yaml", f"sqlite:///{folder / 'faults.db'}"
    path.write_text(
        yaml.safe_dump(
            {
                "study": {"name": "faults", "storage": url, "seed": 0},
                "data": {"name": "digit-pairs", "pairs": 2000},
                "training": {"epochs": 4, "batch_size": 64},
                "trials": {"count": BUDGET, "parallel": 2, "retries": 3},
                "early_stopping": {"min_epochs": 2, "reduction": 2},
                "space": {
                    "patch_size": 4,
                    "num_heads": 2,
                    "mixer": {"choices": ["dynamic", "attention", "static"]},
                    "embed_dim": {"choices": [16, 32]},
                    "depth": {"low": 2, "high": 3},
                },
            }
        )
    )
    return path, url


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="faults", storage=open_storage(url, create=False))


def finished(url: str) -> dict[int, tuple[str, list[float] | None]]:
    try:
        study = load(url)
    except (StorageError, KeyError):  # no database or no study yet; any other failure must be seen
        return {}
    return {r.number: (r.status, r.values) for r in read_records(study) if r.status in COUNTED}


def running_workers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "^ray::run_segment"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, url = space(folder)
        command = [
            sys.executable,
            "-m",
            "search",
            "run",
            "--space",
            str(path),
            "--results",
            str(folder / "results"),
            "--quiet",
        ]
        driver: subprocess.Popen | None = None
        seen: dict[int, tuple[str, list[float] | None]] = {}
        lost: set[int] = set()
        worker_kills = driver_kills = driver_runs = 0
        started = driver_started = time.monotonic()
        while True:
            if driver is None or driver.poll() is not None:
                if driver is not None and driver.returncode == 0:
                    break
                driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                driver_runs, driver_started = driver_runs + 1, time.monotonic()
            time.sleep(rng.uniform(3, 8))
            if driver.poll() is not None:
                continue
            seen.update(finished(url))
            # A driver needs about 10 s to start Ray and its workers: kill younger ones and nothing would finish.
            if rng.random() < 0.6 or time.monotonic() - driver_started < 15:
                workers = running_workers()
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    worker_kills += 1
                    print(
                        f"{time.monotonic() - started:6.1f} s: killed a worker ({len(seen)} trials finished)",
                        flush=True,
                    )
            else:
                driver.send_signal(signal.SIGKILL)
                driver.wait()
                driver_kills += 1
                print(
                    f"{time.monotonic() - started:6.1f} s: killed the driver ({len(seen)} trials finished)", flush=True
                )
            now = finished(url)
            lost |= {n for n, outcome in seen.items() if now.get(n) != outcome}
        final = finished(url)
        lost |= {n for n, outcome in seen.items() if final.get(n) != outcome}
        records = read_records(load(url))
        retried = [r for r in records if r.retry_of is not None]
        originals = {r.retry_of for r in retried}
        twice = sum(1 for r in records if r.number in originals and r.status in COUNTED) + max(0, len(final) - BUDGET)
        elapsed = time.monotonic() - started
    rows = [
        {"measure": "trials finished (complete, pruned or failed)", "value": len(final)},
        {"measure": "trials retried after a driver kill", "value": len(retried)},
        {"measure": "workers killed mid-trial", "value": worker_kills},
        {"measure": "drivers killed", "value": driver_kills},
        {"measure": "driver runs", "value": driver_runs},
        {"measure": "trials lost", "value": len(lost)},
        {"measure": "trials counted twice", "value": twice},
        {"measure": "wall time (s)", "value": round(elapsed, 1)},
    ]
    targets = [
        Target("trials finished", len(final), BUDGET, at_most=False),
        Target("trials lost", len(lost), 0, at_most=True),
        Target("trials counted twice", twice, 0, at_most=True),
    ]
    notes = (
        f"A {BUDGET}-trial study (digit-pairs, 4 epochs, rungs at 2, 2 parallel, retries 3) on SQLite and a local Ray, "
        f"with a seeded (seed {args.seed}) kill every 3-8 s: a Ray worker mid-trial, or (40 %, once it has run "
        "15 s) the driver."
    )
    exit_with(write("faults", "Faults", rows, targets, notes))


if __name__ == "__main__":
    main()
