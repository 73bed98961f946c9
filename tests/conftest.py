"""Shared fixtures: small search spaces, the PostgreSQL server CI provides, reading a study back."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from search.records import COUNTED, TrialRecord
from search.storage import open_storage
from search.training.data import DataSpec
from search.training.segment import SegmentJob
from search.training.trainer import TrainSpec

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
