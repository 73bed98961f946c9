"""Shared fixtures: small search spaces, the PostgreSQL server CI provides, reading a study back."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle
import torch
import yaml

from search.records import COUNTED, TrialRecord
from search.storage import open_storage
from search.training.segment import SegmentJob, SegmentResult

POSTGRES_ENV = "DWS_TEST_POSTGRES_URL"


def sqlite_url(folder: Path) -> str:
    """The storage ``write_space`` gives the study of a space written into ``folder``."""
    return f"sqlite:///{folder / 'search.db'}"


def load_study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def counted(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials the budget counts."""
    return [r for r in records if r.status in COUNTED]


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
        "space": {
            "patch_size": 2,
            "num_heads": 2,
            "mixer": {"choices": ["dynamic", "attention", "static"]},
            "embed_dim": {"choices": [16, 32]},
            "depth": {"low": 2, "high": 3},
            "dynamic.linear_predictor": {"choices": ["bilateral", "gap"], "when": {"mixer": "dynamic"}},
        },
    }
    for key, value in sections.items():
        if key != "space" and isinstance(value, dict) and isinstance(space.get(key), dict):
            space[key] = {**space[key], **value}
        else:
            space[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture
def postgres_url() -> str:
    """The CI PostgreSQL server: skipped when the variable is unset, a failure when it is set but down."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except Exception as err:
        pytest.fail(f"{POSTGRES_ENV} is set but the server cannot be reached: {err}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# Ray's workers cannot import this file (tests/ is not on their path): ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def quick_segment(job: SegmentJob, checkpoint) -> tuple[SegmentResult, None]:
    """A trial body that trains nothing, for tests that need finished trials rather than training.

    Accuracy grows with the epoch and the width; a static model fails as if it had raised, so
    that a study holds failed trials to tell apart from rejected ones; the last segment returns
    weights when asked to."""
    if job.arch.get("mixer") == "static":
        return SegmentResult(failure="RuntimeError('a deliberate failure')", failure_kind="exception"), None
    epochs = range(job.start_epoch, job.stop_epoch)
    final = job.stop_epoch >= job.training.epochs
    return SegmentResult(
        curve=[round(0.2 + 0.1 * e + job.arch["embed_dim"] / 200 + job.arch["depth"] / 50, 4) for e in epochs],
        train_loss=[2.3 / (e + 1) for e in epochs],
        seconds=0.01,
        images=1000,
        latency_ms=0.5,
        device="quick",
        weights={"w": torch.full((4,), float(job.seed))} if final and job.return_weights else None,
    ), None
