"""The live terminal view of a search (rich), or plain log lines with ``--quiet``."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .records import (
    COMPLETE,
    COUNTED,
    FAILED,
    PRUNED,
    REJECTED,
    RUNNING,
    TrialRecord,
    pareto_front,
    results_dir,
    status_counts,
)
from .storage import masked

if TYPE_CHECKING:
    from .space import SearchSpec


@dataclass
class Snapshot:
    study: str
    elapsed_s: float
    counts: dict[str, int]
    budget: int | None
    timeout_s: float | None
    objectives: list[str]
    front: list[TrialRecord] = field(default_factory=list)
    finished_this_run: int = 0
    cpu_fallback: int = 0  # trials that asked for a GPU and trained on the CPU

    @classmethod
    def of(
        cls, records: list[TrialRecord], spec: SearchSpec, elapsed_s: float, running: int, finished_this_run: int
    ) -> Snapshot:
        counts = {**status_counts(records), RUNNING: running}
        on_front = pareto_front(records, spec.directions)
        timeout = spec.trials.timeout_minutes * 60 if spec.trials.timeout_minutes else None
        return cls(
            spec.study.name,
            elapsed_s,
            counts,
            spec.trials.count,
            timeout,
            [o.name for o in spec.objectives],
            on_front,
            finished_this_run,
            sum(r.cpu_fallback for r in records),
        )

    @property
    def done(self) -> int:
        return sum(self.counts[s] for s in COUNTED)

    def eta_s(self) -> float | None:
        """Time left: the larger of what the trial count needs at this run's pace, capped by the timeout."""
        estimates = []
        if self.budget is not None and self.finished_this_run:
            remaining = max(0, self.budget - self.done)
            estimates.append(self.elapsed_s / self.finished_this_run * remaining)
        if self.timeout_s is not None:
            estimates.append(max(0.0, self.timeout_s - self.elapsed_s))
        return min(estimates) if estimates else None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class Display:
    """Either a rich Live panel (interactive) or log lines (``quiet``), never both."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(file=sys.stderr if quiet else sys.stdout)
        self.live_view: Live | None = None

    @property
    def live(self) -> bool:
        """Whether a live view is on screen (and so wants snapshots)."""
        return self.live_view is not None

    def start(self, spec: SearchSpec) -> None:
        self.log(
            f"study {spec.study.name!r}: {len(spec.params)} parameters, objectives "
            f"{', '.join(f'{o.name} ({o.direction})' for o in spec.objectives)}, {spec.trials.parallel} in parallel"
        )
        if not self.quiet:
            self.live_view = Live(Text("starting..."), console=self.console, auto_refresh=False, transient=False)
            self.live_view.start()

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        console = self.live_view.console if self.live_view is not None else self.console
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    def trial_ended(self, number: int, status: str, curve: list[float], gmacs: float, reason: str | None) -> None:
        accuracy = f", accuracy {curve[-1]:.3f} after {len(curve)} epochs" if curve else ""
        why = f" ({reason.splitlines()[0]})" if reason and status != COMPLETE else ""
        self.log(f"trial {number} {status}{accuracy}, {gmacs:.4g} GMACs{why}")

    def update(self, snapshot: Snapshot) -> None:
        if self.live_view is not None:
            self.live_view.update(self.render(snapshot), refresh=True)

    def stop(self, snapshot: Snapshot | None) -> None:
        """End the view with the last ``snapshot``, or as it stands where there is none to read."""
        if self.live_view is not None:
            if snapshot is not None:
                self.live_view.update(self.render(snapshot), refresh=True)
            self.live_view.stop()
            self.live_view = None
            if not self.console.is_terminal:  # rich ends the view's last line on a terminal only
                self.console.line()
        elif snapshot is not None:
            c = snapshot.counts
            self.log(
                f"finished: {c[COMPLETE]} complete, {c[PRUNED]} pruned, {c[FAILED]} failed, "
                f"{c[REJECTED]} rejected in {_clock(snapshot.elapsed_s)}"
                + (f", {snapshot.cpu_fallback} trained on the CPU for want of a GPU" if snapshot.cpu_fallback else "")
                + "; front: "
                + "; ".join(f"#{r.number} {r.label} {_values(r)}" for r in snapshot.front)
            )

    def render(self, snapshot: Snapshot) -> Group:
        c = snapshot.counts
        budget = f" of {snapshot.budget}" if snapshot.budget else ""
        header = Text.assemble(
            (f" {snapshot.study} ", "bold reverse"),
            f"  {_clock(snapshot.elapsed_s)} elapsed, about {_clock(snapshot.eta_s())} left\n",
            f" done {snapshot.done}{budget}   ",
            ("running ", "cyan"),
            f"{c[RUNNING]}   ",
            ("complete ", "green"),
            f"{c[COMPLETE]}   ",
            ("pruned ", "yellow"),
            f"{c[PRUNED]}   ",
            ("failed ", "red"),
            f"{c[FAILED]}   ",
            ("rejected ", "magenta"),
            f"{c[REJECTED]}",
            *(
                (("   on the CPU, no usable GPU ", "bold red"), f"{snapshot.cpu_fallback}")
                if snapshot.cpu_fallback
                else ()
            ),
        )
        table = Table(title="Pareto front", title_justify="left", expand=False)
        table.add_column("trial", justify="right")
        table.add_column("architecture")
        for name in snapshot.objectives:
            table.add_column(name, justify="right")
        for record in snapshot.front[:12]:
            tag = f" [{record.reference}]" if record.reference else ""
            table.add_row(str(record.number), Text(record.label + tag), *(f"{v:.4g}" for v in record.values))
        return Group(header, table)


def next_steps(study: str, storage: str, results: Path, default_storage: str, default_results: str) -> str:
    """Where a finished run left its results, and the commands that look at them next.

    The commands repeat ``--storage`` and ``--results`` only where the run used other than the
    defaults, and show the storage masked (a password is never printed)."""
    folder = results_dir(results, study)
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()) if folder.exists() else []
    where = f" --storage {masked(storage)}" if storage != default_storage else ""
    where += f" --results {results}" if str(results) != default_results else ""
    return "\n".join(
        [
            f"results of study {study!r}: {folder}/" + (f" ({', '.join(found)})" if found else ""),
            "next:",
            f"  python -m search report --study {study}{where}",
            f"  python -m search dashboard --study {study}{where}",
            f"  python -m search export --study {study}{where} --pareto --out {folder / 'export'}",
        ]
    )


def _values(record: TrialRecord) -> str:
    return "/".join(f"{v:.4g}" for v in record.values or [])
