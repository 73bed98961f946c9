"""Shared output of the benchmark scripts: figures as JSON, a Markdown table, and target checks.

Each benchmark writes ``benchmarks/results/<name>.json`` and ``<name>.md`` and exits 1 when a
target is missed, so a benchmark run can fail the way a test does.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Target:
    name: str
    value: float
    limit: float
    at_most: bool  # True: value <= limit passes; False: value >= limit passes

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def line(self) -> str:
        sign = "<=" if self.at_most else ">="
        return f"- [{'x' if self.met else ' '}] {self.name}: {self.value:.3g} (target {sign} {self.limit:g})"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key in header) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write(
    name: str, title: str, rows: list[dict[str, Any]], targets: list[Target], notes: str = "", folder: Path = RESULTS
) -> bool:
    """Write the JSON and Markdown results; print the table and targets; return whether all were met."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "rows": rows,
        "targets": [{**t.__dict__, "met": t.met} for t in targets],
    }
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2))
    text = f"# {title}\n\n{notes}\n\n{markdown_table(rows)}\n\n## Targets\n\n" + "\n".join(t.line() for t in targets)
    text += f"\n\nMachine: {json.dumps(payload['machine'])}\n"
    (folder / f"{name}.md").write_text(text)
    print(text)
    return all(t.met for t in targets)


def exit_with(ok: bool) -> None:
    sys.exit(0 if ok else 1)
