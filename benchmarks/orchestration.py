"""Orchestration cost: (a) overhead per trial, (b) trials per hour with 1 and 2 parallel trials.

    python benchmarks/orchestration.py            # about 3 minutes on a 2-core machine

(a) runs 40 trials whose body returns at once, through the whole path: ask -> sample -> cost on
meta tensors -> record -> Ray task -> record -> tell, on SQLite. The figure is the median
interval between consecutive trial completions with one trial at a time. Target: under 0.5 s.

(b) runs the same 16 real tiny trials (digit-pairs, 2 epochs, 1 CPU each) with 1 and then 2
trials in parallel, on warm workers (as in any search longer than a minute), with the random
sampler so that both runs try the same configurations. Target: 2 parallel trials finish at
least 1.7x as many trials per hour.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import Target, exit_with, write  # noqa: E402
from search import cluster  # noqa: E402
from search.display import Display  # noqa: E402
from search.driver import Driver  # noqa: E402
from search.records import COUNTED, TrialRecord  # noqa: E402
from search.records import records as read_records  # noqa: E402
from search.space import load_space  # noqa: E402
from search.training.segment import SegmentJob, SegmentResult  # noqa: E402


def trivial_segment(job: SegmentJob, checkpoint, data) -> tuple[SegmentResult, None]:
    """A trial body that does no work: what remains is the orchestration."""
    return SegmentResult(curve=[0.5] * (job.stop_epoch - job.start_epoch), latency_ms=0.0, device="none"), None


def space(folder: Path, name: str, count: int, parallel: int, epochs: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "study": {"name": name, "storage": f"sqlite:///{folder / 'bench.db'}", "seed": 0},
                "data": {"name": "digit-pairs"},
                "training": {"epochs": epochs, "batch_size": 64},
                "trials": {"count": count, "parallel": parallel},
                "sampler": "random",  # the same configurations whatever the parallelism
                "early_stopping": False,
                "keep_weights": "none",
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
    return path


def run(folder: Path, name: str, count: int, parallel: int, epochs: int, **driver_options) -> list[TrialRecord]:
    spec = load_space(space(folder, name, count, parallel, epochs))
    Driver(spec, results=folder / "results", display=Display(quiet=True), **driver_options).run()
    study = optuna.load_study(study_name=name, storage=spec.study.storage)
    return [r for r in read_records(study) if r.status in COUNTED]


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, targets = [], []
    # One Ray for every run, as in a long search: workers stay warm between the runs.
    with tempfile.TemporaryDirectory() as tmp, cluster.connected(None, cpus=1, gpus=0):
        folder = Path(tmp)
        records = run(folder, "overhead", 40, 1, 1, segment=trivial_segment)
        starts = _started_at(folder, "overhead")
        ends = sorted(starts[r.number] + r.wall_time_s for r in records)
        intervals = [b - a for a, b in itertools.pairwise(ends)]
        overhead = statistics.median(intervals)
        rows.append(
            {
                "measure": "overhead per trial (trivial body, 1 at a time)",
                "value": overhead,
                "unit": "s",
                "trials": len(records),
            }
        )
        targets.append(Target("median overhead per trial (s)", overhead, 0.5, at_most=True))

        run(folder, "warmup", 2, 2, 1)  # both workers import torch and build the data set once, as in a long search
        rates = {}
        for parallel in (1, 2):
            name = f"throughput{parallel}"
            records = run(folder, name, 16, parallel, 2)
            starts = _started_at(folder, name)
            span = max(starts[r.number] + r.wall_time_s for r in records) - min(starts.values())
            rates[parallel] = len(records) / span * 3600
            rows.append(
                {
                    "measure": f"real tiny trials, {parallel} in parallel",
                    "value": rates[parallel],
                    "unit": "trials/hour",
                    "trials": len(records),
                }
            )
        targets.append(Target("trials per hour, 2 parallel / 1", rates[2] / rates[1], 1.7, at_most=False))
    notes = (
        "Local Ray, SQLite storage, 2-core CPU. Overhead: median interval between consecutive completions "
        "of trials whose body returns at once. Throughput: the same 16 seeded configurations (digit-pairs, "
        "2 epochs, 1 CPU per trial) on warm workers, first start to last completion."
    )
    exit_with(write("orchestration", "Orchestration", rows, targets, notes))


def _started_at(folder: Path, name: str) -> dict[int, float]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'bench.db'}")
    return {t.number: t.user_attrs["started_at"] for t in study.trials if "started_at" in t.user_attrs}


if __name__ == "__main__":
    main()
