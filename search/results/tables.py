"""The trial table: one row per trial, architecture fields flattened into columns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..defaults import TABLE_FORMATS
from ..records import TrialRecord


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else key, inner))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: "x".join(map(str, value))}
    return {prefix: value}


def trials_frame(records: Sequence[TrialRecord], objectives: Sequence[str]) -> pd.DataFrame:
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "number": r.number,
            "status": r.status,
            "reference": r.reference,
            "architecture": r.label,
            **{name: (r.values[i] if r.values else None) for i, name in enumerate(objectives)},
            "final_or_best_accuracy": r.accuracy,
            "gmacs": r.gmacs,
            "mparams": r.mparams,
            "latency_ms": r.latency_ms,
            "latency_how": r.latency_how,
            "device": r.device,
            "cpu_fallback": r.cpu_fallback,
            "retries": r.retries,
            "epochs": len(r.curve),
            "wall_time_s": r.wall_time_s,
            "seed": r.seed,
            "retry_of": r.retry_of,
            "reason": r.reason.splitlines()[0] if r.reason else None,
            "curve": json.dumps([round(a, 5) for a in r.curve]),
        }
        row.update(flatten("arch", r.arch or {}))
        row.update(flatten("training", r.training))
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "json":
        frame.to_json(path, orient="records", indent=2)
    else:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(TABLE_FORMATS)}")
    return path
