"""Trial bodies that train nothing, for tests that check the orchestration and not the training.

Ray workers start in the repository root and import these as ``tests.fakes``, so tests import
them by that name too. Run as a module, this file is a driver whose trials use ``curve_segment``
(or ``slow_curve_segment``, for a test that kills something in the middle of a trial):

    python -m tests.fakes SPACE.yaml RESULTS_FOLDER RAY_ADDRESS [fast|slow]

It joins the Ray already running at RAY_ADDRESS (the test session's) rather than starting one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import zlib
from pathlib import Path

import torch

from search.training.segment import SegmentJob, SegmentResult

#: Chance level and the accuracy a fake trial ends near, by mixer: the ranking a real search on
#: the digit tasks shows (static models cannot combine distant tokens).
FINAL_BY_MIXER = {"static": 0.15, "attention": 0.5, "linear_attention": 0.45, "dynamic": 0.8}
EPOCH_S = 0.02  # a fake epoch takes a little time, so that trials overlap as real ones do
SLOW_EPOCH_S = 0.5  # long enough for a test to kill a worker or a driver in the middle of a trial


def fake_final(job: SegmentJob) -> float:
    """A deterministic final accuracy per configuration: the mixer's level, moved by a hash."""
    key = json.dumps(job.arch, sort_keys=True) + repr(job.training.lr)
    jitter = (zlib.crc32(key.encode()) % 1000) / 1000 - 0.5
    return min(0.99, max(0.0, FINAL_BY_MIXER[job.arch.get("mixer", "dynamic")] + 0.2 * jitter))


#: Learning rates above this make a fake trial fail the way a real one does: a NaN loss.
DIVERGING_LR = 1.0


def curve_segment(
    job: SegmentJob, checkpoint, data=None, epoch_s: float = EPOCH_S
) -> tuple[SegmentResult, dict | None]:
    """Accuracy rising linearly to ``fake_final``; the compute a real segment would have counted.
    The trial body's contract is ``run_segment``'s; the data set the driver ships goes unused."""
    if job.training.lr > DIVERGING_LR:
        return SegmentResult(failure="non-finite training loss (nan) in epoch 1", failure_kind="nan"), None
    final = fake_final(job)
    epochs = range(job.start_epoch, job.stop_epoch)
    time.sleep(epoch_s * len(epochs))
    last = job.stop_epoch >= job.training.epochs
    result = SegmentResult(
        curve=[final * (e + 1) / job.training.epochs for e in epochs],
        train_loss=[2.3 / (e + 1) for e in epochs],
        images=100 * len(epochs),
        latency_ms=1.0,
        device="fake",
        # Weights that say whose they are, for the checks of what a run keeps and exports.
        weights={"w": torch.full((4,), float(job.seed))} if last and job.return_weights else None,
    )
    return result, None if last else {"epoch": job.stop_epoch}


def slow_curve_segment(job: SegmentJob, checkpoint, data=None) -> tuple[SegmentResult, dict | None]:
    return curve_segment(job, checkpoint, data, epoch_s=SLOW_EPOCH_S)


def instant_curve_segment(job: SegmentJob, checkpoint, data=None) -> tuple[SegmentResult, dict | None]:
    """``curve_segment`` without its pause: for runs whose trials only need their bookkeeping."""
    return curve_segment(job, checkpoint, data, epoch_s=0.0)


def main(space: str, results: str, address: str, speed: str = "fast") -> None:
    from search.display import Display
    from search.driver import Driver
    from search.space import load_space

    segment = slow_curve_segment if speed == "slow" else curve_segment
    spec = load_space(space)
    Driver(spec, results=Path(results), address=address, display=Display(quiet=True), segment=segment).run()


def _exit_now() -> None:
    """End the process at once once the driver has returned: the interpreter's teardown of torch,
    Ray and the rest takes seconds of CPU on a small machine and checks nothing. A thread that
    would hold the exit up is still a hang the tests should see, so then it exits the usual way."""
    if all(t.daemon or t is threading.main_thread() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
    _exit_now()
