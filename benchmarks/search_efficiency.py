"""Search efficiency: does the default strategy find a better front than random search, for the
same training compute?

    python benchmarks/search_efficiency.py             # about 100 minutes on a 2-core CPU
    python benchmarks/search_efficiency.py --smoke     # the same code path, trivial trial body, seconds

Every run searches ``spaces/dynamic.yaml`` (the default space, nothing changed but the strategy)
until its trials have spent ``COMPUTE_TMACS`` of training compute; running trials finish, so every
run overshoots it, and every history is cut at exactly that compute. Strategies:

* ``default``: the space's own sampler and early stopping, 5 seeds;
* ``random-full``: random sampling, every trial trained fully, no early stopping, 5 seeds;
* ablations, 2 seeds each (``--ablation-seeds``): ``default-sampler-full`` (the default sampler
  without early stopping) and ``random-stopping`` (random sampling with the default early
  stopping);
* and always ``random-stopping (replayed)``: the default early stopping replayed on the
  ``random-full`` runs, which random sampling makes possible without running anything
  (``with_stopping``), up to the compute where the replayed histories run out of trials.

Compute is counted, not timed (``train_macs``: 3 x forward MACs x images trained on), so the
machine's speed on the day cancels out; trial-seconds are reported beside it. Hypervolume uses a
reference point fixed before any run: accuracy 0 and GMACs at the space's ``max_gmacs``
(``search.results.efficiency``, the function the report uses too). The timeout of the space is
dropped so that no run depends on the machine's speed.

Figures (``benchmarks/results/search_efficiency.{json,md,html}``):

* median and interquartile band of hypervolume against compute, per strategy;
* the headline: the compute the default needs to reach random search's final median
  hypervolume, as a fraction of random's compute (target at most 0.50, aim 0.33); if it never
  gets there, the ratio of the two hypervolumes at equal compute instead;
* the rank correlation of the best accuracy up to each epoch with the final accuracy, from the
  runs that trained every trial fully: where rungs can be trusted;
* the default early-stopping rule replayed on those fully trained runs: how many trials it
  would stop, and how many members of the true final front among them;
* constraint learning: on the default space with ``max_gmacs`` at the median configuration's
  GMACs (half the configurations break it), rejections per finished trial in the first and the
  second half of a study (trivial trial body: only the sampler matters here).

Runs are kept under ``--workdir`` (one SQLite file each); a run that finished is not run again,
and one cut short resumes, so an interrupted benchmark loses nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS, Target, exit_with, write  # noqa: E402
from search import cluster  # noqa: E402
from search.display import Display  # noqa: E402
from search.driver import Driver  # noqa: E402
from search.early_stopping import RungResult, decide  # noqa: E402
from search.records import COMPLETE, PRUNED, REJECTED, TrialRecord, objective_values, pareto_front  # noqa: E402
from search.records import records as read_records  # noqa: E402
from search.results.efficiency import CurvePoint, hypervolume_at, hypervolume_curve, reference_point  # noqa: E402
from search.space import SearchSpec, load_space  # noqa: E402
from search.storage import StorageError, open_storage  # noqa: E402
from search.study_client import StudyClient  # noqa: E402
from search.training.segment import SegmentJob, SegmentResult  # noqa: E402

SPACE = ROOT / "spaces" / "dynamic.yaml"
#: The training compute every run spends: about what one default search spends (24 trials with
#: early stopping), or 19 fully trained random configurations (0.31 TMACs each); fixed before any run.
COMPUTE_TMACS = 6.0
STRATEGIES: dict[str, dict] = {
    "default": {},
    "random-full": {"sampler": "random", "early_stopping": False},
    "default-sampler-full": {"early_stopping": False},
    "random-stopping": {"sampler": "random"},
}
SMOKE_COMPUTE_TMACS = 0.3  # a few trials of the trivial body
#: Random configurations costed to find the default space's median GMACs (constraint learning's
#: budget); a smoke run only checks the code path, and each costing traces a model.
PROBES, SMOKE_PROBES = 200, 40
HEADLINE = ("default", "random-full")
FULL_TRAINING = ("random-full", "default-sampler-full")
DONE_KEY = "benchmark_fingerprint"  # a study attribute: the run with this space has finished
GRID_POINTS = 200  # compute points the median curves are drawn at
REPLAYED = "random-stopping (replayed)"


# ---------------------------------------------------------------------- running
def trivial_segment(job: SegmentJob, checkpoint, data=None) -> tuple[SegmentResult, dict]:
    """A trial body that trains nothing: a deterministic, configuration-dependent learning curve
    and the compute a real segment would have counted (``--smoke`` and constraint learning)."""
    key = json.dumps(job.arch, sort_keys=True) + repr(job.training.lr)
    final = 0.1 + 0.8 * (zlib.crc32(key.encode()) % 1000) / 1000
    epochs = range(job.start_epoch, job.stop_epoch)
    curve = [final * (e + 1) / job.training.epochs for e in epochs]
    return SegmentResult(curve=curve, images=1000 * len(curve), latency_ms=1.0, device="none"), {}


def space_for(
    strategy: str, seed: int, workdir: Path, budget_tmacs: float, changes: dict | None = None, name: str | None = None
) -> Path:
    """The default space with the strategy's sampler and early stopping, its own study and storage
    (named ``<name or strategy>-s<seed>``); ``changes`` replace whole sections."""
    space = yaml.safe_load(SPACE.read_text())
    name = f"{name or strategy}-s{seed}"
    space["study"] = {"name": name, "storage": f"sqlite:///{workdir / name}.db", "seed": seed}
    space["trials"] = {**space["trials"], "count": None, "timeout_minutes": None, "max_train_tmacs": budget_tmacs}
    space["keep_weights"] = "none"
    for key, value in {**STRATEGIES[strategy], **(changes or {})}.items():
        space[key] = value
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@dataclass
class Run:
    strategy: str
    seed: int
    spec: SearchSpec
    records: list[TrialRecord]


def run(path: Path, workdir: Path, segment: Callable, log: Callable[[str], None]) -> Run:
    """Run (or resume, or reuse) the search a space file describes."""
    spec = load_space(path)
    fingerprint = hashlib.sha256(spec.text.encode()).hexdigest()[:16]
    strategy, seed = spec.study.name.rsplit("-s", 1)
    done = _finished(spec)
    if done != fingerprint:
        # The driver must be the one to create the study: it enqueues the reference trials only then.
        started = time.time()
        Driver(spec, results=workdir / "results", display=Display(quiet=True), segment=segment).run()
    client, _ = StudyClient.open(spec.study.name, spec.study.storage, spec.directions)
    if done != fingerprint:
        client.set_study_attr(DONE_KEY, fingerprint)
        log(f"{spec.study.name}: {len(client.records())} trials in {time.time() - started:.0f} s")
    return Run(strategy, int(seed), spec, read_records(client.study))


def _finished(spec: SearchSpec) -> str | None:
    """The fingerprint of the run that finished the space's study, None if it does not exist yet."""
    try:
        storage = open_storage(spec.study.storage, create=False)
        return optuna.load_study(study_name=spec.study.name, storage=storage).user_attrs.get(DONE_KEY)
    except (KeyError, StorageError):
        return None


# ---------------------------------------------------------------------- analysis
def curve_of(run: Run) -> list[CurvePoint]:
    reference = reference_point([o.name for o in run.spec.objectives], vars(run.spec.budget))
    return hypervolume_curve(run.records, reference, run.spec.directions)


def band(curves: Sequence[Sequence[CurvePoint]], grid: Sequence[float]) -> dict[str, list[float]]:
    """Median and quartiles across runs of the hypervolume reached at each compute of ``grid``."""
    out: dict[str, list[float]] = {"compute_tmacs": [c / 1e12 for c in grid], "median": [], "q1": [], "q3": []}
    for compute in grid:
        values = sorted(hypervolume_at(c, compute) for c in curves)
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
        out["median"].append(median)
        out["q1"].append(q1)
        out["q3"].append(q3)
    return out


def compute_to_reach(curves: Sequence[Sequence[CurvePoint]], target: float, limit: float) -> float | None:
    """The least compute at which the runs' median hypervolume reaches ``target``, within ``limit``."""
    breakpoints = sorted({p.compute for c in curves for p in c if p.compute <= limit})
    for compute in breakpoints:
        if statistics.median(hypervolume_at(c, compute) for c in curves) >= target:
            return compute
    return None


def rank_correlations(runs: Sequence[Run]) -> dict[int, dict[str, float]]:
    """Spearman correlation of the best accuracy up to epoch e with the final accuracy, per epoch:
    the median over runs (each run's complete trials) and over all runs pooled."""
    from scipy.stats import spearmanr

    def correlation(curves: list[list[float]], epoch: int) -> float:
        return float(spearmanr([max(c[:epoch]) for c in curves], [c[-1] for c in curves]).statistic)

    per_run = [[r.curve for r in run.records if r.status == COMPLETE and len(r.curve) > 1] for run in runs]
    epochs = min(len(c) for curves in per_run for c in curves)
    pooled = [c for curves in per_run for c in curves]
    return {
        epoch: {
            "median_over_runs": statistics.median(correlation(curves, epoch) for curves in per_run),
            "pooled": correlation(pooled, epoch),
        }
        for epoch in range(1, epochs)
    }


def stopping_points(run: Run, stopping_spec: SearchSpec) -> dict[int, int]:
    """The early-stopping rule of ``stopping_spec`` replayed on a fully trained run: the rung epoch
    at which it would have stopped each trial it stops (references never), by trial number.

    Each trial is judged against every lower-numbered trial that reached the rung, as if all of
    them had got there first: a live run judges against those that have, which is the same set
    or a smaller one."""
    stopping = stopping_spec.early_stopping
    names = [o.name for o in run.spec.objectives]
    trained = sorted((r for r in run.records if r.status == COMPLETE and r.curve), key=lambda r: r.number)
    reached: dict[int, list[RungResult]] = {}
    stopped: dict[int, int] = {}
    for record in trained:
        for rung in stopping_spec.rungs(len(record.curve)):
            values = objective_values(
                names,
                accuracy=max(record.curve[:rung]),
                gmacs=record.gmacs,
                mparams=record.mparams,
                latency_ms=record.latency_ms,
            )
            result = RungResult(record.number, tuple(values))
            decision = decide(
                rung,
                result,
                reached.get(rung, []),
                reduction=stopping.reduction,
                min_trials=stopping.min_trials,
                directions=run.spec.directions,
            )
            reached.setdefault(rung, []).append(result)
            if not decision.go_on and record.reference is None:
                stopped[record.number] = rung
                break
    return stopped


def replay_stopping(run: Run, stopping_spec: SearchSpec) -> dict[str, int]:
    """How many trials of a fully trained run the rule would stop, and how many of the run's true
    final front (and its best trial) are among them."""
    stopped = set(stopping_points(run, stopping_spec))
    trained = [r for r in run.records if r.status == COMPLETE and r.curve]
    front = {r.number for r in pareto_front(trained, run.spec.directions)}
    best = max(trained, key=lambda r: r.curve[-1]).number
    return {
        "trials": len(trained),
        "stopped": len(stopped),
        "front": len(front),
        "front_stopped": len(front & stopped),
        "best_stopped": int(best in stopped),
    }


def with_stopping(run: Run, stopping_spec: SearchSpec) -> Run:
    """A fully trained random run as random sampling with early stopping would have run it.

    Random sampling draws each trial's configuration from the study seed and the trial number
    alone, and training is seeded per trial, so the stopping run tries the same configurations,
    in the same order, with the same curves up to each rung; a stopped trial keeps its rung's
    share of the compute and leaves the front. Its history ends where the full run's trials run
    out, short of the full run's compute, since stopping spends less."""
    stops = stopping_points(run, stopping_spec)
    records = []
    for record in run.records:
        rung = stops.get(record.number)
        if rung is not None:
            share = rung / len(record.curve)
            record = dataclasses.replace(
                record,
                status=PRUNED,
                values=None,
                curve=record.curve[:rung],
                train_macs=record.train_macs * share,
                compute_s=record.compute_s * share,
            )
        records.append(record)
    return Run("random-stopping (replayed)", run.seed, run.spec, records)


def rejections_by_half(records: Sequence[TrialRecord]) -> tuple[float, float]:
    """Rejections per finished trial among the first and the second half of the finished trials."""
    finished = [r for r in sorted(records, key=lambda r: r.number) if r.status != REJECTED and r.curve]
    middle = finished[len(finished) // 2].number

    def rate(chosen: list[TrialRecord], rejected: list[TrialRecord]) -> float:
        return len(rejected) / max(1, len(chosen))

    rejected = [r for r in records if r.status == REJECTED]
    return (
        rate([r for r in finished if r.number < middle], [r for r in rejected if r.number < middle]),
        rate([r for r in finished if r.number >= middle], [r for r in rejected if r.number >= middle]),
    )


def figure(bands: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    import plotly.graph_objects as go

    colours = {
        "default": "#d62728",
        "random-full": "#1f77b4",
        "default-sampler-full": "#ff7f0e",
        "random-stopping": "#2ca02c",
        REPLAYED: "#2ca02c",
    }
    fig = go.Figure()
    for strategy, b in bands.items():
        colour = colours.get(strategy, "#7f7f7f")
        x = b["compute_tmacs"]
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=b["q3"] + b["q1"][::-1],
                fill="toself",
                opacity=0.2,
                line=dict(width=0),
                fillcolor=colour,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=b["median"],
                name=strategy,
                line=dict(color=colour, width=3, shape="hv", dash="dash" if strategy == REPLAYED else "solid"),
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="training compute (TMACs)",
        yaxis_title="hypervolume",
        template="plotly_white",
        height=520,
    )
    fig.write_html(path, include_plotlyjs="cdn")


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the headline strategies")
    parser.add_argument("--ablation-seeds", type=int, default=2, help="seeds of each ablation")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / ".work" / "search_efficiency")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the figures")
    parser.add_argument("--smoke", action="store_true", help="trivial trial body and a tiny budget: checks the code")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(STRATEGIES),
        help="only run these strategies' searches (repeatable), without the analysis",
    )
    args = parser.parse_args(argv)

    segment = trivial_segment if args.smoke else None
    budget = SMOKE_COMPUTE_TMACS if args.smoke else COMPUTE_TMACS
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    runs: dict[str, list[Run]] = {}
    with cluster.connected(None, cpus=1, gpus=0):  # one Ray for every run: its workers stay warm
        for strategy in args.only or STRATEGIES:
            seeds = args.seeds if strategy in HEADLINE else args.ablation_seeds
            for seed in range(seeds):
                path = space_for(strategy, seed, args.workdir, budget)
                runs.setdefault(strategy, []).append(run(path, args.workdir, segment or _real_segment(), log))
        if args.only:
            return
        constraint_rates = _constraint_learning(
            args.workdir,
            seeds=2 if args.smoke else 5,
            count=16 if args.smoke else 40,
            probes=SMOKE_PROBES if args.smoke else PROBES,
            log=log,
        )

    limit = budget * 1e12
    grid = [limit * i / GRID_POINTS for i in range(GRID_POINTS + 1)]
    curves = {s: [curve_of(r) for r in rs] for s, rs in runs.items()}
    bands = {s: band(c, grid) for s, c in curves.items()}
    random_final = statistics.median(hypervolume_at(c, limit) for c in curves["random-full"])
    default_final = statistics.median(hypervolume_at(c, limit) for c in curves["default"])
    reached = compute_to_reach(curves["default"], random_final, limit)
    default_spec = load_space(space_for("default", 0, args.workdir, budget))
    # Random sampling with the default early stopping, replayed on the random-full runs: up to the
    # compute where the first replayed history runs out of trials (at most the budget), compared there.
    replayed = [curve_of(with_stopping(r, default_spec)) for r in runs["random-full"]]
    reach = min([limit, *(c[-1].compute for c in replayed)])
    bands[REPLAYED] = band(replayed, [g for g in grid if g <= reach])
    at_reach = {
        name: statistics.median(hypervolume_at(c, reach) for c in group)
        for name, group in (
            ("default", curves["default"]),
            ("random-full", curves["random-full"]),
            (REPLAYED, replayed),
        )
    }
    # The spread behind the median: where each default seed alone reaches random's final median.
    per_seed = [compute_to_reach([c], random_final, limit) for c in curves["default"]]
    per_seed_text = ", ".join("never" if c is None else f"{c / limit:.2f}" for c in per_seed)

    rows = []
    for strategy, rs in runs.items():
        finals = [hypervolume_at(c, limit) for c in curves[strategy]]
        within = [[r for r in run.records if _spent_before(run.records, r) < limit] for run in rs]
        rows.append(
            {
                "strategy": strategy,
                "seeds": len(rs),
                "median hypervolume at equal compute": statistics.median(finals),
                "spread (min-max)": f"{min(finals):.4g}-{max(finals):.4g}",
                "trials (median)": statistics.median(len(w) for w in within),
                "complete (median)": statistics.median(sum(r.status == COMPLETE for r in w) for w in within),
                "trial-seconds (median)": statistics.median(sum(r.compute_s for r in w) for w in within),
            }
        )
    fully_trained = [r for s in FULL_TRAINING for r in runs.get(s, [])]
    correlations = rank_correlations(fully_trained)
    replays = [replay_stopping(r, default_spec) for r in fully_trained]

    targets = []
    if reached is not None:
        fraction = reached / limit
        headline = (
            f"the default reaches random search's final median hypervolume at {fraction:.2f} of its compute; "
            f"at equal compute its median hypervolume is {default_final / random_final:.3f}x random's"
        )
        targets.append(
            Target(
                "compute to reach random's final median hypervolume / random's compute", fraction, 0.50, at_most=True
            )
        )
    else:
        fraction = None
        headline = (
            f"the default never reaches random search's final median hypervolume within the same compute; "
            f"hypervolume ratio at equal compute: {default_final / random_final:.3f}"
        )
        targets.append(
            Target(
                "median hypervolume, default / random, at equal compute",
                default_final / random_final,
                1.0,
                at_most=False,
            )
        )
    first, second = (statistics.median(x) for x in zip(*constraint_rates))
    targets.append(
        Target("rejections per finished trial, second half / first half", second / max(first, 1e-9), 1.0, at_most=True)
    )
    wall = time.time() - started
    correlation_lines = "\n".join(
        f"| {e} | {c['median_over_runs']:.2f} | {c['pooled']:.2f} |" for e, c in correlations.items()
    )
    replay_total = {k: sum(r[k] for r in replays) for k in replays[0]}
    notes = (
        f"Space `spaces/dynamic.yaml`; every run cut at {budget:g} TMACs of training compute; reference point "
        f"accuracy 0, GMACs {default_spec.budget.max_gmacs:g}. Headline: {headline}. Each default seed alone "
        f"reaches that hypervolume at these fractions of the compute: {per_seed_text}. "
        f"Benchmark wall time {wall / 60:.1f} min{' (smoke run: trivial trial body)' if args.smoke else ''}.\n\n"
        "Rank correlation (Spearman) of the best accuracy up to epoch e with the final accuracy, complete trials "
        "of the fully trained runs:\n\n| epoch | median over runs | pooled |\n|---|---|---|\n"
        f"{correlation_lines}\n\n"
        f"The default early stopping replayed on the {len(replays)} fully trained runs: it would stop "
        f"{replay_total['stopped']} of {replay_total['trials']} trials, {replay_total['front_stopped']} of the "
        f"{replay_total['front']} members of the runs' true final fronts, and the best trial of "
        f"{replay_total['best_stopped']} run(s).\n\n"
        f"Ablation, random sampling with the default early stopping, replayed on the {len(replayed)} random-full "
        f"runs (same configurations and curves; a stopped trial keeps its rung's compute): the replayed histories "
        f"reach {reach / 1e12:.2f} TMACs before the first runs out of trials. There the median hypervolume is "
        + ", ".join(f"{v:.4g} for {k}" for k, v in at_reach.items())
        + ".\n\n"
        "Constraint learning (max_gmacs at the median configuration's GMACs, trivial trial body): rejections per "
        f"finished trial fall from {first:.2f} in the first half of a study to {second:.2f} in the second "
        f"(median of {len(constraint_rates)} seeds)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"Hypervolume against training compute (median and interquartile band, {args.seeds} seeds headline)"
    figure(bands, args.out / "search_efficiency.html", title)
    extra = {
        "compute_tmacs": budget,
        "headline_fraction": fraction,
        "per_seed_fraction": [None if c is None else c / limit for c in per_seed],
        "random_final_median_hypervolume": random_final,
        "default_final_median_hypervolume": default_final,
        "rank_correlation": correlations,
        "stopping_replay": replays,
        "constraint_learning": constraint_rates,
        "bands": bands,
        "replayed_stopping": {"reach_tmacs": reach / 1e12, "median_hypervolume_at_reach": at_reach},
        "wall_s": wall,
    }
    exit_with(write("search_efficiency", "Search efficiency", rows, targets, notes, folder=args.out, extra=extra))


def _real_segment() -> Callable:
    from search.training.segment import run_segment

    return run_segment


def _spent_before(records: Sequence[TrialRecord], record: TrialRecord) -> float:
    """Training compute spent by the trials numbered below ``record``."""
    return sum(r.train_macs for r in records if r.number < record.number)


def _constraint_learning(
    workdir: Path, seeds: int, count: int, probes: int, log: Callable[[str], None]
) -> list[tuple[float, float]]:
    """Rejection rates in the first and second half of TPE studies where half the space is over budget."""
    from layers import complexity

    probe = load_space(space_for("default", 0, workdir, 1.0))
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(directions=probe.directions, sampler=sampler)
    gmacs = []
    for _ in range(probes):
        trial = study.ask()
        with contextlib.suppress(ValueError):  # an invalid combination has no GMACs
            gmacs.append(complexity(probe.configs(probe.sample(trial))[0]).gmacs)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    median_gmacs = statistics.median(gmacs)
    rates = []
    for seed in range(seeds):
        changes = {
            "budget": {"max_gmacs": median_gmacs},
            "trials": {"count": count, "parallel": 2},
            "early_stopping": False,
        }
        path = space_for("default", seed, workdir, 1.0, changes=changes, name="constraints")
        rates.append(rejections_by_half(run(path, workdir, trivial_segment, log).records))
    return rates


if __name__ == "__main__":
    main()
