"""The Markdown notes optuna-dashboard shows: one for the study, one for every trial.

Both are read from the stored records (``records.TrialRecord``) and the space, never from the
driver's memory, so that a trial told by another driver (or by the next run, after a crash) gets
the same note as one told by its own driver. Pure functions: the ``dashboard`` module writes them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .records import (
    COMPLETE,
    COUNTED,
    FAILED,
    INTERRUPTED,
    PRUNED,
    REJECTED,
    STALE,
    SURPLUS,
    TrialRecord,
    counts_line,
)
from .records import pareto_front as front_of

if TYPE_CHECKING:
    from .space import Param, SearchSpec

#: A learning curve longer than this is shown in the note at evenly spaced epochs (the last included).
NOTE_CURVE_COLUMNS = 12

#: The first line of a trial's note, by status: what happened, in the words a user looks for.
#: A rejection is said to be one, and not a failure: the dashboard shows it as Pruned.
HEADLINES = {
    COMPLETE: "Complete",
    PRUNED: "Stopped early (pruned)",
    FAILED: "Failed",
    REJECTED: "Rejected before training, not a failure",
    INTERRUPTED: "Interrupted, to be run again",
    STALE: "Left running by a driver that stopped, to be run again",
    SURPLUS: "Not run",
}
#: What a status means for the budget and the sampler, after its reason.
CONSEQUENCES = {
    REJECTED: "No compute was spent. The dashboard lists the trial as Pruned; its constraints "
    "(positive: violated) teach the sampler where the budget lies.",
    INTERRUPTED: "Not counted: its parameters were queued again as a new trial.",
    STALE: "Not counted: its parameters were queued again as a new trial.",
    SURPLUS: "Asked after the study's trial budget was full, or a second retry of a trial that "
    "another trial already runs again; not counted.",
}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _figures(record: TrialRecord) -> str:
    latency = f"{record.latency_ms:.3g} ms" if record.latency_ms is not None else "-"
    return _table(
        ["GMACs", "parameters", "latency", "device", "epochs", "training compute"],
        [
            [
                _number(record.gmacs),
                f"{_number(record.mparams)} M",
                latency,
                record.device or "-",
                len(record.curve),
                f"{record.train_macs:.3g} MACs" if record.train_macs else "-",
            ]
        ],
    )


def curve_table(record: TrialRecord) -> str:
    """The learning curve as a table with epochs as columns, at most NOTE_CURVE_COLUMNS of them."""
    epochs = len(record.curve)
    if epochs <= NOTE_CURVE_COLUMNS:
        shown = list(range(epochs))
    else:
        shown = sorted({round(i * (epochs - 1) / (NOTE_CURVE_COLUMNS - 1)) for i in range(NOTE_CURVE_COLUMNS)})
    rows = [["validation accuracy", *(f"{record.curve[i]:.3f}" for i in shown)]]
    if len(record.train_loss) == epochs:
        rows.append(["training loss", *(f"{record.train_loss[i]:.3f}" for i in shown)])
    return _table(["epoch", *(i + 1 for i in shown)], rows)


def trial_note(record: TrialRecord, objectives: Sequence[str]) -> str:
    """What the trial is, what it measured, its learning curve, and why it stopped if it did not complete."""
    headline = HEADLINES.get(record.status, record.status.capitalize())
    lines = [f"### Trial {record.number}: {headline}", ""]
    origin = [f"reference trial `{record.reference}`"] if record.reference else []
    if record.retry_of is not None:
        origin.append(f"a re-run of trial {record.retry_of}")
    if record.arch:
        lines.append(f"**{record.summary}**" + (f" ({', '.join(origin)})" if origin else ""))
    elif origin:
        lines.append(", ".join(origin).capitalize())
    if record.status == COMPLETE and record.values:
        lines += ["", ", ".join(f"{name} **{value:.4g}**" for name, value in zip(objectives, record.values))]
    if record.status != COMPLETE:
        reason = record.reason or "no reason was recorded"
        why = f"```\n{reason}\n```" if "\n" in reason else f"**Why:** {reason}"
        lines += ["", why]
        if record.status in CONSEQUENCES:
            lines += ["", CONSEQUENCES[record.status]]
    if record.gmacs is not None:
        lines += ["", _figures(record)]
    if record.curve:
        lines += ["", "**Learning curve** (the image below, under Artifacts, draws it)", "", curve_table(record)]
    return "\n".join(lines) + "\n"


def _param_values(param: Param) -> str:
    if param.choices is not None:
        values = ", ".join(str(c) for c in param.choices)
    else:
        values = (
            f"{param.low:g} to {param.high:g}"
            + (" (log)" if param.log else "")
            + (f", step {param.step:g}" if param.step else "")
        )
    if param.when:
        values += " when " + " and ".join(f"{name} in {list(allowed)}" for name, allowed in param.when)
    return values


def _settings(section: object) -> str:
    return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(section).items() if v not in (None, {}))


def study_note(spec: SearchSpec, records: Sequence[TrialRecord]) -> str:
    """The space, the budget, the sampler and early stopping, the references' results and the front."""
    objectives = [o.name for o in spec.objectives]
    searched = [p for p in spec.params if not p.fixed]
    fixed = [p for p in spec.params if p.fixed]
    stopping = _settings(spec.early_stopping) if spec.early_stopping else "off: every trial trains fully"
    lines = [
        f"## Study `{spec.study.name}`",
        "",
        f"Space file `{Path(spec.source).name}`; data `{spec.data.name}`; objectives "
        + ", ".join(f"{o.name} ({o.direction})" for o in spec.objectives)
        + ".",
        "",
        f"{counts_line(records)}. "
        "Rejected trials never trained: the dashboard lists them as Pruned, and each one's note says why.",
        "",
        "### Searched parameters",
        "",
        _table(["parameter", "values"], [[p.name, _param_values(p)] for p in searched]),
    ]
    if fixed:
        lines += ["", "Fixed: " + ", ".join(f"{p.name} = {p.value}" for p in fixed) + "."]
    lines += [
        "",
        "### Budget, sampler and early stopping",
        "",
        _table(
            ["setting", "value"],
            [
                ["budget", _settings(spec.budget) or "none"],
                ["trials", _settings(spec.trials)],
                ["sampler", ", ".join([spec.sampler.name, *(f"{k} {v}" for k, v in spec.sampler.options.items())])],
                ["early stopping", stopping],
                ["training", f"{spec.training.epochs} epochs, batch {spec.training.batch_size}"],
            ],
        ),
    ]
    references = [r for r in records if r.reference and r.status in (*COUNTED, REJECTED)]
    if references:
        lines += [
            "",
            "### References",
            "",
            _table(
                ["reference", "trial", "status", "accuracy", "GMACs", "epochs", "why"],
                [
                    [
                        r.reference,
                        r.number,
                        r.status,
                        _number(r.accuracy, ".3f"),
                        _number(r.gmacs),
                        len(r.curve),
                        "" if r.status == COMPLETE or not r.reason else r.reason.splitlines()[0],
                    ]
                    for r in references
                ],
            ),
        ]
    front = front_of(records, spec.directions)
    lines += ["", f"### Pareto front ({len(front)} trials)", ""]
    if front:
        lines.append(
            _table(
                ["trial", "architecture", *objectives, "params (M)", "latency (ms)", "epochs"],
                [
                    [
                        r.number,
                        r.summary + (f" [{r.reference}]" if r.reference else ""),
                        *(f"{v:.4g}" for v in r.values),
                        _number(r.mparams, ".3g"),
                        _number(r.latency_ms, ".3g"),
                        len(r.curve),
                    ]
                    for r in front
                ],
            )
        )
    else:
        lines.append("No complete trial yet.")
    lines += [
        "",
        "The report and the front's weights are this study's artifacts (below its charts), refreshed when a run ends.",
        "",
        f"_Updated {time.strftime('%Y-%m-%d %H:%M:%S')}._",
    ]
    return "\n".join(lines) + "\n"
