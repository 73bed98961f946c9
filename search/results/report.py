"""The HTML report of a study: one self-contained file (plotly inlined), readable offline.

Sections: accuracy against GMACs, parameters and latency with each Pareto front drawn; the
hypervolume as trials accumulate; which parameters matter for accuracy; how each front
architecture's GMACs grow with resolution (the fitted exponent tells linear from quadratic); a
table of the front.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from layers import ArchConfig, complexity

from ..pareto import front
from ..records import COMPLETE, FAILED, PRUNED, REJECTED, TrialRecord, pareto_front
from ..records import directions as study_directions
from ..records import records as read_records

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
REFERENCE_SYMBOL = {"weightformer": "star", "attention": "diamond", "static": "square"}
SCALES = (1, 2, 3, 4)  # input sizes, as multiples of the searched one, for the scaling plot


# (bold, line break) in the two places a trial is described: plot hover text and model cards.
HTML = ("<b>{}</b>", "<br>")
MARKDOWN = ("**{}**", "\n- ")


def describe(record: TrialRecord, markup: tuple[str, str] = HTML) -> str:
    """The architecture and its figures, a line each."""
    bold, newline = markup
    arch = record.arch or {}
    lines = [
        bold.format(f"trial {record.number}")
        + f" ({record.status})"
        + (f", reference: {record.reference}" if record.reference else "")
    ]
    lines.append(
        f"{arch.get('mixer')}: width {arch.get('embed_dim')}, depth {arch.get('depth')}, "
        f"patch {arch.get('patch_size')}, kernel {arch.get('kernel_size')}"
    )
    if arch.get("mixer") != "static":
        lines.append(f"placement: every {arch.get('every')}, offset {arch.get('offset')}")
    if arch.get("mixer") == "dynamic":
        d = arch["dynamic"]
        parts = [name for name in ("fc1", "dwc", "fc2") if d[name]]
        lines.append(
            f"dynamic {'+'.join(parts)}: {d['linear_predictor']} on {d['pool']}, r={d['rank_ratio']}, "
            f"conv {d['conv_predictor']}, norm {d['norm']}, gate {d['gate']}"
        )
    if record.training:
        lines.append(
            ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.training.items())
        )
    accuracy = f"{record.accuracy:.3f}" if record.accuracy is not None else "-"
    lines.append(
        f"accuracy {accuracy} after {len(record.curve)} epochs, {record.gmacs:.4g} GMACs, "
        f"{record.mparams:.3g} M params" + (f", {record.latency_ms:.2f} ms" if record.latency_ms else "")
    )
    return newline.join(lines)


def _colors(records: Sequence[TrialRecord]) -> dict[str, str]:
    labels = sorted({r.label for r in records})
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def tradeoff_figure(records: Sequence[TrialRecord], x: str, x_title: str) -> go.Figure:
    """Accuracy against one cost, complete trials solid, pruned ones faded, the front as a line."""
    # The cost axis is logarithmic: a cost of 0 (a latency too small to measure) has no place on it.
    usable = [r for r in records if r.accuracy is not None and (getattr(r, x) or 0) > 0]
    colors = _colors(usable)
    fig = go.Figure()
    for label, color in colors.items():
        for status, opacity in ((COMPLETE, 1.0), (PRUNED, 0.35)):
            group = [r for r in usable if r.label == label and r.status == status]
            if not group:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[getattr(r, x) for r in group],
                    y=[r.accuracy for r in group],
                    mode="markers",
                    name=f"{label}" + (" (pruned)" if status == PRUNED else ""),
                    legendgroup=label,
                    opacity=opacity,
                    marker=dict(
                        color=color,
                        size=[16 if r.reference else 9 for r in group],
                        symbol=[REFERENCE_SYMBOL.get(r.reference, "circle") for r in group],
                        line=dict(width=1, color="black"),
                    ),
                    text=[describe(r) for r in group],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    complete = [r for r in usable if r.status == COMPLETE]
    on_front = sorted(
        (complete[i] for i in front([(r.accuracy, getattr(r, x)) for r in complete], ["maximize", "minimize"])),
        key=lambda r: getattr(r, x),
    )
    if on_front:
        fig.add_trace(
            go.Scatter(
                x=[getattr(r, x) for r in on_front],
                y=[r.accuracy for r in on_front],
                mode="lines+markers",
                line=dict(shape="hv", width=3, color="black"),
                marker=dict(size=18, symbol="circle-open", color="black"),
                name="Pareto front",
                text=[describe(r) for r in on_front],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    for r in usable:
        if r.reference:
            fig.add_annotation(
                x=math.log10(getattr(r, x)),
                y=r.accuracy,  # a log axis takes log10 positions
                text=r.reference,
                showarrow=True,
                arrowhead=2,
                ax=25,
                ay=-25,
            )
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title="validation accuracy",
        height=520,
        template="plotly_white",
        legend_title_text="mixer / predictor",
    )
    fig.update_xaxes(type="log")
    return fig


def hypervolume_figure(study: optuna.Study) -> go.Figure | None:
    directions = study_directions(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    worst = [
        min(t.values[i] for t in complete) if d == "maximize" else max(t.values[i] for t in complete)
        for i, d in enumerate(directions)
    ]
    # The reference point sits just beyond the worst value of each objective.
    reference = [
        w - abs(w) * 0.1 - 1e-9 if d == "maximize" else w + abs(w) * 0.1 + 1e-9 for w, d in zip(worst, directions)
    ]
    fig = optuna.visualization.plot_hypervolume_history(study, reference_point=reference)
    fig.update_layout(title=None, height=380, template="plotly_white")
    return fig


def importance_figure(records: Sequence[TrialRecord]) -> go.Figure | None:
    """Random-forest importance of each parameter for final accuracy, conditional ones included."""
    from sklearn.ensemble import RandomForestRegressor

    complete = [r for r in records if r.status == COMPLETE and r.params]
    names = sorted({k for r in complete for k in r.params})
    if len(complete) < 5 or not names:
        return None
    columns, owner = [], []
    for name in names:
        values = [r.params.get(name) for r in complete]
        if all((isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None for v in values):
            columns.append([math.nan if v is None else float(v) for v in values])
            owner.append(name)
            columns.append([float(v is None) for v in values])  # "absent" is information too
            owner.append(name)
        else:
            for level in sorted({str(v) for v in values}):
                columns.append([float(str(v) == level) for v in values])
                owner.append(name)
    features = np.nan_to_num(np.array(columns).T, nan=-1.0)
    target = np.array([r.curve[-1] for r in complete])
    forest = RandomForestRegressor(n_estimators=300, random_state=0, min_samples_leaf=1).fit(features, target)
    importance = dict.fromkeys(names, 0.0)
    for name, value in zip(owner, forest.feature_importances_):
        importance[name] += float(value)
    ranked = sorted(importance.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h", marker_color="#1f77b4"))
    fig.update_layout(
        xaxis_title=f"importance for accuracy ({len(complete)} complete trials, random forest)",
        height=max(300, 26 * len(ranked)),
        template="plotly_white",
        margin=dict(l=200),
    )
    return fig


def scaling_exponent(arch: ArchConfig) -> tuple[list[int], list[float], float]:
    """Tokens and GMACs at growing input sizes, and the log-log slope of GMACs against tokens."""
    tokens, gmacs = [], []
    for scale in SCALES:
        size = (arch.img_size[0] * scale, arch.img_size[1] * scale)
        tokens.append((size[0] // arch.patch_size) * (size[1] // arch.patch_size))
        gmacs.append(complexity(arch, size).gmacs)
    slope = float(np.polyfit(np.log(tokens), np.log(gmacs), 1)[0])
    return tokens, gmacs, slope


def scaling_figure(on_front: Sequence[TrialRecord]) -> tuple[go.Figure | None, dict[int, float]]:
    exponents: dict[int, float] = {}
    if not on_front:
        return None, exponents
    colors = _colors(on_front)
    fig = go.Figure()
    for r in on_front:
        tokens, gmacs, slope = scaling_exponent(ArchConfig.from_dict(r.arch))
        exponents[r.number] = slope
        fig.add_trace(
            go.Scatter(
                x=tokens,
                y=gmacs,
                mode="lines+markers",
                line=dict(color=colors[r.label]),
                name=f"trial {r.number} ({r.label}): exponent {slope:.2f}",
                hovertemplate="%{x} tokens: %{y:.4g} GMACs<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="tokens (input side x1 to x4)")
    fig.update_yaxes(type="log", title="GMACs")
    fig.update_layout(height=440, template="plotly_white")
    return fig, exponents


def front_table(on_front: Sequence[TrialRecord], objectives: Sequence[str], exponents: dict[int, float]) -> str:
    header = [
        "trial",
        "architecture",
        "reference",
        *objectives,
        "params (M)",
        "latency (ms)",
        "epochs",
        "width",
        "depth",
        "GMACs exponent",
    ]
    rows = []
    for r in on_front:
        arch = r.arch or {}
        cells = [
            r.number,
            r.label,
            r.reference or "",
            *(f"{v:.4g}" for v in r.values or []),
            f"{r.mparams:.3g}",
            f"{r.latency_ms:.2f}" if r.latency_ms else "",
            len(r.curve),
            arch.get("embed_dim"),
            arch.get("depth"),
            f"{exponents[r.number]:.2f}" if r.number in exponents else "",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


Section = tuple[str, str, go.Figure | None]  # title, a note under it, the figure (None: not enough data yet)


def html_page(title: str, kind: str, summary: str, sections: Sequence[Section], tail: str = "") -> str:
    """One self-contained page (plotly inlined, nothing fetched): a heading, a summary line, one
    section per figure, then ``tail`` (HTML)."""
    body = []
    for index, (heading, note, fig) in enumerate(sections):
        content = (
            pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"plot{index}")
            if fig is not None
            else '<p class="empty">Not enough complete trials yet.</p>'
        )
        body.append(f"<section><h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p>{content}</section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: {html.escape(kind)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
section {{ margin-bottom: 2.5rem; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .3rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }} th {{ background: #f3f3f3; }}
.empty {{ color: #888; font-style: italic; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
{"".join(body)}{tail}
</body></html>
"""


def build_report(study: optuna.Study, path: Path, *, storage_label: str) -> Path:
    records = read_records(study)
    objectives = list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
    directions = study_directions(study)
    on_front = pareto_front(records, directions)
    counts = {s: sum(r.status == s for r in records) for s in (COMPLETE, PRUNED, FAILED, REJECTED)}
    sections: list[Section] = [
        (
            "Accuracy against GMACs",
            "Each point is a trial: complete trials solid, pruned ones faded at their accuracy "
            "when stopped. Stars, diamonds and squares are the reference trials.",
            tradeoff_figure(records, "gmacs", "GMACs per image"),
        ),
        ("Accuracy against parameters", "", tradeoff_figure(records, "mparams", "parameters (millions)")),
        (
            "Accuracy against measured latency",
            "Inference of one image on the trial's own device.",
            tradeoff_figure(records, "latency_ms", "latency (ms)"),
        ),
        (
            "Hypervolume as trials accumulate",
            "The volume of objective space the front dominates.",
            hypervolume_figure(study),
        ),
        (
            "Parameter importance for accuracy",
            "Which choices explain the final accuracy of complete trials; a "
            "conditional parameter counts its absence too.",
            importance_figure(records),
        ),
    ]
    scaling, exponents = scaling_figure(on_front)
    sections.append(
        (
            "GMACs against resolution for the front",
            "An exponent near 1 is linear in the number of tokens; softmax attention's grows towards 2.",
            scaling,
        )
    )
    summary = (
        f"{len(records)} trials: {counts[COMPLETE]} complete, {counts[PRUNED]} pruned, "
        f"{counts[FAILED]} failed, {counts[REJECTED]} rejected. Storage: {storage_label}. "
        f"Objectives: {', '.join(f'{n} ({d})' for n, d in zip(objectives, directions))}."
    )
    front_section = f"<section><h2>The Pareto front</h2>{front_table(on_front, objectives, exponents)}</section>"
    document = html_page(study.study_name, "search report", summary, sections, front_section)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
    return path
