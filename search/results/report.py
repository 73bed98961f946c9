"""The HTML report of a study: one self-contained file (plotly inlined), readable offline.

Sections: accuracy against GMACs, parameters and latency with each Pareto front drawn; the
hypervolume by trial and by training compute; whether accuracy at the early-stopping rungs
predicts final accuracy; which parameters matter for accuracy, with bootstrap intervals; how
each front architecture's GMACs grow with resolution (the fitted exponent tells linear from
quadratic); a table of the front.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from layers import ArchConfig, complexity

from ..files import replacing
from ..pareto import front
from ..records import COMPLETE, PRUNED, TrialRecord, counts_line, objective_names, pareto_front
from ..records import directions as study_directions
from ..records import records as read_records
from ..space import BudgetSection, RecordedSettings
from .efficiency import hypervolume_curve, reference_point

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
REFERENCE_SYMBOL = {"weightformer": "star", "attention": "diamond", "static": "square"}
SCALES = (1, 2, 3, 4)  # input sizes, as multiples of the searched one, for the scaling plot
TRUST_THRESHOLD = 0.5  # below this rank correlation, decisions at a rung are close to guesses
MIN_TRIALS_FOR_CORRELATION = 4
BOOTSTRAP_RESAMPLES = 30  # importance intervals: enough for a 5-95 % range, cheap enough to redraw live
BOOTSTRAP_TREES = 60


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
    # Only complete and pruned trials are drawn, so only they may carry a reference's label: a
    # reference run that a killed driver left stale, or that failed, has a curve but no marker.
    usable = [
        r for r in records if r.status in (COMPLETE, PRUNED) and r.accuracy is not None and (getattr(r, x) or 0) > 0
    ]
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


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    note: str
    figure: go.Figure | None
    warning: str | None = None  # shown above the figure, in red


def hypervolume_section(
    records: Sequence[TrialRecord], objectives: list[str], directions: list[str], budget: BudgetSection
) -> Section:
    """Hypervolume by trial and by training compute, from one reference point (``efficiency``)."""
    title = "Hypervolume as trials and compute accumulate"
    reference = reference_point(objectives, dataclasses.asdict(budget))
    note = (
        "The volume of objective space the complete trials dominate, against the trials run (left) and the "
        "training compute they spent (right: 3 x forward MACs per image x images trained on). "
    )
    complete = [r.values for r in records if r.status == COMPLETE and r.values]
    if not complete:
        return Section(title, note, None)
    if reference is None:
        # No bound known before the run: the worst value seen, 10 % further out. It moves as
        # trials arrive, so compare such curves within one study only.
        worst = [
            min(v[i] for v in complete) if d == "maximize" else max(v[i] for v in complete)
            for i, d in enumerate(directions)
        ]
        reference = [w - abs(w) * 0.1 if d == "maximize" else w + abs(w) * 0.1 for w, d in zip(worst, directions)]
        note += "The space fixes no bound for every objective: the reference point is the worst value seen, +10 %."
    else:
        fixed = ", ".join(f"{name} {value:g}" for name, value in zip(objectives, reference))
        note += f"Reference point, fixed by the space before the run: {fixed}."
    curve = hypervolume_curve(records, reference, directions)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by trial", "by training compute"))
    for column, x in ((1, [p.trial for p in curve]), (2, [p.compute / 1e12 for p in curve])):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p.hypervolume for p in curve],
                mode="lines+markers",
                line_shape="hv",
                showlegend=False,
                marker_color="#1f77b4",
            ),
            row=1,
            col=column,
        )
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="training compute (TMACs)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    fig.update_layout(height=380, template="plotly_white")
    return Section(title, note, fig)


def rung_correlations(records: Sequence[TrialRecord], epochs: Sequence[int]) -> dict[int, tuple[float, int]]:
    """Spearman correlation of the best accuracy up to each epoch with the final accuracy, over the
    complete trials that trained past it, with how many there were (epochs with too few: left out)."""
    from scipy.stats import spearmanr

    out = {}
    for epoch in epochs:
        curves = [r.curve for r in records if r.status == COMPLETE and len(r.curve) > epoch]
        if len(curves) >= MIN_TRIALS_FOR_CORRELATION:
            result = spearmanr([max(c[:epoch]) for c in curves], [c[-1] for c in curves])
            out[epoch] = (float(np.nan_to_num(result.statistic)), len(curves))
    return out


def trust_section(records: Sequence[TrialRecord], settings: RecordedSettings) -> Section:
    """Whether accuracy at the rungs predicts the final accuracy, which early stopping assumes."""
    title = "Can the early stopping be trusted?"
    epochs = settings.training.epochs
    stopping = settings.early_stopping
    rungs = stopping.rungs_for(epochs) if stopping else tuple(range(1, epochs))
    note = (
        "Early stopping ranks trials by their accuracy at a rung, so it keeps the winners only if that accuracy "
        "ranks trials as their final accuracy does. Bars: the rank correlation (Spearman) of the best accuracy "
        "up to each rung with the final accuracy, over complete trials (survivors of the rungs, which flatters "
        "it). " + ("" if stopping else "This study used no early stopping: the bars show where rungs could be placed.")
    )
    correlations = rung_correlations(records, rungs)
    if not correlations:
        return Section(title, note, None)
    weak = {e: rho for e, (rho, _) in correlations.items() if rho < TRUST_THRESHOLD}
    warning = None
    if stopping and weak:
        listed = ", ".join(f"epoch {e} ({rho:.2f})" for e, rho in weak.items())
        warning = (
            f"Warning: at {listed} the rank correlation is below {TRUST_THRESHOLD}: stopping decisions there "
            "are close to guesses and may stop the best trials. Place the rungs later (early_stopping.rungs)."
        )
    fig = go.Figure(
        go.Bar(
            x=[str(e) for e in correlations],
            y=[rho for rho, _ in correlations.values()],
            marker_color=["#d62728" if rho < TRUST_THRESHOLD else "#2ca02c" for rho, _ in correlations.values()],
            text=[f"{rho:.2f} (n={n})" for rho, n in correlations.values()],
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.add_hline(y=TRUST_THRESHOLD, line_dash="dash", line_color="#888")
    fig.update_layout(
        xaxis_title="rung (epoch)",
        yaxis_title="rank correlation with final accuracy",
        yaxis_range=[-1, 1.15],
        height=340,
        template="plotly_white",
    )
    return Section(title, note, fig, warning)


def forest_importance(features: np.ndarray, target: np.ndarray, trees: int, rng: np.random.Generator) -> np.ndarray:
    """A random forest's impurity importance of each feature, normalised to sum to 1.

    The forest is grown tree by tree, as RandomForestRegressor grows it: each tree on a bootstrap
    sample (drawn as per-row counts used as sample weights), every feature considered at each
    split, importances summed over the trees (one that never splits adds zeros) and normalised,
    which is the forest's mean over the trees that split. The trees are those of
    ``DecisionTreeRegressor(random_state=seed)``, grown without the estimator's per-fit checks,
    which over a report's 1,800 trees took most of its time (``search/sklearn_adapter.py``).
    """
    from ..sklearn_adapter import tree_importances  # here: a report that draws no importance needs no sklearn

    features, target = np.ascontiguousarray(features, dtype=np.float32), np.ascontiguousarray(target, dtype=float)
    total = np.zeros(features.shape[1])
    state = np.random.RandomState()
    for _ in range(trees):
        counts = np.bincount(rng.integers(0, len(target), len(target)), minlength=len(target)).astype(float)
        state.seed(int(rng.integers(2**31 - 1)))
        total += tree_importances(features, target, counts, state)
    return total / total.sum() if total.any() else total


def importance_section(records: Sequence[TrialRecord]) -> Section:
    """Random-forest importance of each parameter for final accuracy, with bootstrap intervals."""
    title = "Parameter importance for accuracy"
    complete = [r for r in records if r.status == COMPLETE and r.params]
    names = sorted({k for r in complete for k in r.params})
    note = (
        "Which choices explain the final accuracy of complete trials (random forest; a conditional parameter "
        f"counts its absence too). Bars: median over {BOOTSTRAP_RESAMPLES} bootstrap resamples of the trials; "
        "whiskers: their 5-95 % range. Where whiskers overlap, the data cannot rank those parameters."
    )
    if len(complete) < 5 or not names:
        return Section(title, note, None)
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
    rng = np.random.default_rng(0)
    samples = np.zeros((BOOTSTRAP_RESAMPLES, len(names)))
    for b in range(BOOTSTRAP_RESAMPLES):
        rows = rng.integers(0, len(complete), len(complete))
        importance = forest_importance(features[rows], target[rows], BOOTSTRAP_TREES, rng)
        for name, value in zip(owner, importance):
            samples[b, names.index(name)] += float(value)
    low, median, high = np.percentile(samples, [5, 50, 95], axis=0)
    order = np.argsort(median)
    fig = go.Figure(
        go.Bar(
            x=median[order],
            y=[names[i] for i in order],
            orientation="h",
            marker_color="#1f77b4",
            error_x=dict(type="data", symmetric=False, array=(high - median)[order], arrayminus=(median - low)[order]),
        )
    )
    fig.update_layout(
        xaxis_title=f"importance for accuracy ({len(complete)} complete trials)",
        height=max(300, 26 * len(names)),
        template="plotly_white",
        margin=dict(l=200),
    )
    return Section(title, note, fig)


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
        rows.append(cells)
    return html_table(header, rows)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, kind: str, summary: str, sections: Sequence[Section], tail: str = "") -> str:
    """One self-contained page (plotly inlined, nothing fetched): a heading, a summary line, one
    section per figure, then ``tail`` (HTML)."""
    body = []
    for index, section in enumerate(sections):
        content = (
            pio.to_html(section.figure, full_html=False, include_plotlyjs=False, div_id=f"plot{index}")
            if section.figure is not None
            else '<p class="empty">Not enough complete trials yet.</p>'
        )
        warning = f'<p class="warning">{html.escape(section.warning)}</p>' if section.warning else ""
        body.append(
            f"<section><h2>{html.escape(section.title)}</h2><p>{html.escape(section.note)}</p>"
            f"{warning}{content}</section>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: {html.escape(kind)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
section {{ margin-bottom: 2.5rem; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .3rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }} th {{ background: #f3f3f3; }}
.empty {{ color: #888; font-style: italic; }}
.warning {{ color: #b00020; font-weight: 600; }}
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
    objectives = objective_names(study)
    directions = study_directions(study)
    on_front = pareto_front(records, directions)
    settings = RecordedSettings.of_study(study.user_attrs)
    scaling, exponents = scaling_figure(on_front)
    sections = [
        Section(
            "Accuracy against GMACs",
            "Each point is a trial: complete trials solid, pruned ones faded at their accuracy "
            "when stopped. Stars, diamonds and squares are the reference trials.",
            tradeoff_figure(records, "gmacs", "GMACs per image"),
        ),
        Section("Accuracy against parameters", "", tradeoff_figure(records, "mparams", "parameters (millions)")),
        Section(
            "Accuracy against measured latency",
            "Inference of one image on the trial's own device.",
            tradeoff_figure(records, "latency_ms", "latency (ms)"),
        ),
        hypervolume_section(records, objectives, directions, settings.budget),
        trust_section(records, settings),
        importance_section(records),
        Section(
            "GMACs against resolution for the front",
            "An exponent near 1 is linear in the number of tokens; softmax attention's grows towards 2.",
            scaling,
        ),
    ]
    summary = (
        f"{counts_line(records)}. Storage: {storage_label}. "
        f"Objectives: {', '.join(f'{n} ({d})' for n, d in zip(objectives, directions))}."
    )
    front_section = f"<section><h2>The Pareto front</h2>{front_table(on_front, objectives, exponents)}</section>"
    document = html_page(study.study_name, "search report", summary, sections, front_section)
    return save_page(document, path)


def save_page(document: str, path: Path) -> Path:
    """Write a page whole, or leave the previous one: drivers ending together write the same
    report, and the dashboard uploads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(document)
    return path
