"""Several studies side by side: their fronts in one figure, and the hypervolume each reached
against the training compute it spent, all measured from one reference point.

    python -m search compare --study tpe --study random@sqlite:///other.db --out results/compare.html

A study is ``NAME`` (in ``--storage``) or ``NAME@STORAGE_URL``: study names hold no ``@``, so
the first one separates the name from a URL that may hold its own (``postgresql://me@db/search``).
The reference point is ``--reference`` or, by default, ``efficiency.reference_point`` of the
loosest budget among the studies (accuracy 0, the largest ``max_gmacs``, ...), so that every
study's front lies inside it and the same point measures them all.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import yaml

from ..pareto import front
from ..records import COMPLETE, COUNTED, REJECTED, TrialRecord, objective_names, status_counts
from ..records import directions as study_directions
from ..records import records as read_records
from ..space import BudgetSection, RecordedSettings
from .efficiency import CurvePoint, hypervolume_at, hypervolume_curve, reference_point
from .report import PALETTE, Section, describe, html_page, html_table, save_page

BUDGET_KEYS = tuple(f.name for f in dataclasses.fields(BudgetSection))


class CompareError(ValueError):
    """Studies that cannot be put side by side, or a reference point that does not fit them."""


@dataclass(frozen=True)
class StudyRef:
    name: str
    storage: str


def parse_study(text: str, default_storage: str) -> StudyRef:
    """``NAME`` or ``NAME@STORAGE_URL``."""
    name, at, storage = text.partition("@")
    if not name or (at and not storage):
        raise CompareError(f"--study {text!r}: expected NAME or NAME@STORAGE_URL")
    return StudyRef(name, storage or default_storage)


def parse_studies(texts: Sequence[str], default_storage: str) -> list[StudyRef]:
    """Every ``--study``, each study once: the same study twice would draw two identical curves."""
    refs = [parse_study(text, default_storage) for text in texts]
    twice = next((ref for i, ref in enumerate(refs) if ref in refs[:i]), None)
    if twice is not None:
        raise CompareError(f"--study {twice.name!r} of the same storage is given twice")
    return refs


def parse_reference(text: str, objectives: Sequence[str]) -> list[float]:
    try:
        point = [float(v) for v in text.split(",")]
    except ValueError:
        point = []
    if len(point) != len(objectives):
        raise CompareError(
            f"--reference {text!r}: expected {len(objectives)} numbers separated by commas, one per objective "
            f"({', '.join(objectives)})"
        )
    return point


@dataclass(frozen=True)
class Compared:
    """One study as the comparison sees it."""

    label: str
    storage: str  # masked
    objectives: list[str]
    directions: list[str]
    records: list[TrialRecord]
    space: dict[str, Any]  # the space file the study was run with, as stored with it

    @classmethod
    def of(cls, study: optuna.Study, label: str, storage_label: str) -> Compared:
        space = yaml.safe_load(study.user_attrs.get("space", "")) or {}
        objectives = objective_names(study)
        return cls(label, storage_label, objectives, study_directions(study), read_records(study), space)

    @property
    def budget(self) -> dict[str, float | None]:
        return dataclasses.asdict(RecordedSettings.of(self.space).budget)

    @property
    def sampler(self) -> str:
        sampler = self.space.get("sampler", "tpe")
        return sampler.get("name", "tpe") if isinstance(sampler, dict) else str(sampler)

    def curve(self, reference: Sequence[float]) -> list[CurvePoint]:
        return hypervolume_curve(self.records, reference, self.directions)


def check_comparable(studies: Sequence[Compared]) -> None:
    first = studies[0]
    if len(first.objectives) < 2:
        raise CompareError(f"study {first.label!r} has one objective: there is no front to compare")
    for other in studies[1:]:
        if (other.objectives, other.directions) != (first.objectives, first.directions):
            raise CompareError(
                f"studies {first.label!r} and {other.label!r} have different objectives "
                f"({_objectives(first)} against {_objectives(other)}): their fronts do not share axes"
            )
    for study in studies:  # it spent no compute: the comparison at equal compute would be at none
        if not study.records:
            raise CompareError(f"study {study.label!r} has no trial yet: there is nothing to compare it by")


def _objectives(study: Compared) -> str:
    return ", ".join(f"{n} ({d})" for n, d in zip(study.objectives, study.directions))


def shared_reference(studies: Sequence[Compared]) -> list[float]:
    """The reference point of the loosest budget among the studies (each bound at its largest)."""
    budget: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        bounds = [s.budget[key] for s in studies]
        budget[key] = None if None in bounds else max(bounds)
    point = reference_point(studies[0].objectives, budget)
    if point is None:
        unbounded = [s.label for s in studies if reference_point(s.objectives, s.budget) is None]
        raise CompareError(
            f"no reference point: {', '.join(repr(u) for u in unbounded) or 'an objective'} sets no budget bound for "
            f"every objective ({', '.join(studies[0].objectives)}); give one with --reference"
        )
    return point


def fronts_figure(studies: Sequence[Compared]) -> go.Figure:
    """The first objective (accuracy) against the second (a cost): every complete trial faded, each
    study's front on those two objectives drawn as a line."""
    fig = go.Figure()
    y_name, x_name = studies[0].objectives[:2]
    directions = studies[0].directions[:2]
    # The step between two front points follows the edge of what they dominate: along x first
    # when x is a cost (minimised), along y first when x is maximised.
    shape = "hv" if directions[1] == "minimize" else "vh"
    for index, study in enumerate(studies):
        color = PALETTE[index % len(PALETTE)]
        complete = [r for r in study.records if r.status == COMPLETE and r.values]
        points = [r.values[:2] for r in complete]
        on_front = sorted((complete[i] for i in front(points, directions)), key=lambda r: r.values[1])
        for group, name, style in (
            (complete, f"{study.label}: complete trials", dict(mode="markers", opacity=0.35)),
            (on_front, f"{study.label}: front", dict(mode="lines+markers", line=dict(shape=shape, width=3))),
        ):
            fig.add_trace(
                go.Scatter(
                    x=[r.values[1] for r in group],
                    y=[r.values[0] for r in group],
                    name=name,
                    legendgroup=study.label,
                    marker=dict(color=color, size=9 if group is on_front else 7, line=dict(width=1, color="black")),
                    text=[f"{html.escape(study.label)}<br>{describe(r)}" for r in group],
                    hovertemplate="%{text}<extra></extra>",
                    **style,
                )
            )
    fig.update_layout(xaxis_title=x_name, yaxis_title=y_name, height=520, template="plotly_white")
    if all(r.values[1] > 0 for s in studies for r in s.records if r.status == COMPLETE and r.values):
        fig.update_xaxes(type="log")
    return fig


def hypervolume_figure(studies: Sequence[Compared], reference: Sequence[float], equal_compute: float) -> go.Figure:
    fig = go.Figure()
    for index, study in enumerate(studies):
        curve = study.curve(reference)
        fig.add_trace(
            go.Scatter(
                x=[0.0, *(p.compute for p in curve)],
                y=[0.0, *(p.hypervolume for p in curve)],
                mode="lines+markers",
                line=dict(shape="hv", width=3, color=PALETTE[index % len(PALETTE)]),
                name=study.label,
                text=["start", *(f"after trial {p.trial}" for p in curve)],
                hovertemplate=f"{html.escape(study.label)}, %{{text}}: %{{y:.4g}} at %{{x:.3s}} MACs<extra></extra>",
            )
        )
    if equal_compute > 0:
        fig.add_vline(
            x=equal_compute, line_dash="dash", line_color="#888", annotation_text="compute all studies reached"
        )
    fig.update_layout(
        xaxis_title="cumulative training compute (MACs)", yaxis_title="hypervolume", height=440, template="plotly_white"
    )
    return fig


def summary_table(studies: Sequence[Compared], reference: Sequence[float], equal_compute: float) -> str:
    header = ["study", "storage", "sampler", *COUNTED, REJECTED, "training compute (MACs)", "hypervolume"]
    header.append(f"hypervolume at {equal_compute:.3g} MACs")
    rows = []
    for study in studies:
        curve = study.curve(reference)
        cells = [
            study.label,
            study.storage,
            study.sampler,
            *status_counts(study.records).values(),
            f"{curve[-1].compute:.3g}" if curve else "0",
            f"{curve[-1].hypervolume:.4g}" if curve else "0",
            f"{hypervolume_at(curve, equal_compute):.4g}",
        ]
        rows.append(cells)
    return f"<section><h2>The studies</h2>{html_table(header, rows)}</section>"


def build_comparison(studies: Sequence[Compared], reference: Sequence[float] | None, path: Path) -> Path:
    """The comparison page; ``reference`` None derives it from the studies' budgets."""
    check_comparable(studies)
    reference = list(reference) if reference is not None else shared_reference(studies)
    # The fair comparison: the hypervolume each study had reached by the compute all of them spent.
    equal_compute = min((c[-1].compute if (c := s.curve(reference)) else 0.0) for s in studies)
    point = ", ".join(f"{n} {v:g}" for n, v in zip(studies[0].objectives, reference))
    summary = (
        f"{len(studies)} studies: {', '.join(s.label for s in studies)}. Objectives: {_objectives(studies[0])}. "
        f"Hypervolume reference point, the same for all: {point}."
    )
    sections = [
        Section(
            "Fronts",
            f"{studies[0].objectives[0]} against {studies[0].objectives[1]}: each study's complete trials (faded) "
            "and its front on these two objectives.",
            fronts_figure(studies),
        ),
        Section(
            "Hypervolume against training compute",
            "Trials in the order they were asked; pruned, failed and rejected trials add their compute, "
            "complete ones their point. The dashed line marks the compute every study reached.",
            hypervolume_figure(studies, reference, equal_compute),
        ),
    ]
    document = html_page(
        "Comparison", "studies compared", summary, sections, summary_table(studies, reference, equal_compute)
    )
    return save_page(document, path)
