"""Trial bodies that train nothing, for tests that check the orchestration and not the training.

Ray workers start in the repository root and import these as ``tests.fakes``, so tests import
them by that name too. Run as a module, this file is a driver whose trials use ``curve_segment``:

    python -m tests.fakes SPACE.yaml RESULTS_FOLDER
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path

from search.training.segment import SegmentJob, SegmentResult

#: Chance level and the accuracy a fake trial ends near, by mixer: the ranking a real search on
#: the digit tasks shows (static models cannot combine distant tokens).
FINAL_BY_MIXER = {"static": 0.15, "attention": 0.5, "linear_attention": 0.45, "dynamic": 0.8}
EPOCH_S = 0.02  # a fake epoch takes a little time, so that trials overlap as real ones do


def fake_final(job: SegmentJob) -> float:
    """A deterministic final accuracy per configuration: the mixer's level, moved by a hash."""
    key = json.dumps(job.arch, sort_keys=True) + repr(job.training.lr)
    jitter = (zlib.crc32(key.encode()) % 1000) / 1000 - 0.5
    return min(0.99, max(0.0, FINAL_BY_MIXER[job.arch.get("mixer", "dynamic")] + 0.2 * jitter))


def curve_segment(job: SegmentJob, checkpoint) -> tuple[SegmentResult, dict]:
    """Accuracy rising linearly to ``fake_final``; the compute a real segment would have counted."""
    final = fake_final(job)
    epochs = range(job.start_epoch, job.stop_epoch)
    time.sleep(EPOCH_S * len(epochs))
    curve = [final * (e + 1) / job.training.epochs for e in epochs]
    return SegmentResult(curve=curve, images=100 * len(curve), latency_ms=1.0, device="fake"), {"epoch": job.stop_epoch}


def main(space: str, results: str) -> None:
    from search.display import Display
    from search.driver import Driver
    from search.space import load_space

    Driver(load_space(space), results=Path(results), display=Display(quiet=True), segment=curve_segment).run()


if __name__ == "__main__":
    main(*sys.argv[1:])
