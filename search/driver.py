"""The driver: the one process that owns the Optuna study, asks and tells, and schedules on Ray.

Optuna's pruners refuse multi-objective studies and Ray Tune would keep the study in memory, so
the driver does both jobs itself:

* ask -> sample the space -> cost the architecture on meta tensors -> reject it if over budget,
  else train it on Ray segment by segment, one segment per early-stopping rung;
* at each rung, stop the trial if an earlier trial at the same rung dominates it on
  (accuracy so far, GMACs): multi-objective successive halving in the spirit of MOASHA;
* record every result as a user attribute the moment it arrives, tell Optuna later.

Reproducibility: trial n is asked only once every trial up to n - W has been told (W = twice
the parallel trials), tells happen in ask order and only as the window moves, and a rung decision
for trial n waits until every earlier trial has passed that rung or ended. The sampler's view at
each ask, and so the sequence of configurations, then depends on the seed alone, not on timing.
"""
from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
from safetensors.torch import save_file

from layers import ArchConfig, complexity
from layers.schema import ConfigError

from . import store
from .cluster import connect
from .display import Display, Snapshot
from .pareto import dominates
from .references import reference_params
from .samplers import create_sampler
from .space import SearchSpec, over_budget
from .storage import check_storage, masked, open_storage, redact, with_retries
from .train import TrainSpec
from .trial import SegmentJob, SegmentResult, run_segment

HEARTBEAT_S = 10.0
RECONCILE_S = 30.0
DEAD_AFTER_S = 60.0  # a driver silent this long on another host is presumed dead
MAX_REJECTED_IN_A_ROW = 200


class StudyMismatch(RuntimeError):
    """The study exists with other objectives than the space asks for."""


@dataclass
class Active:
    """One of this driver's trials between ask and tell."""

    trial: optuna.Trial
    number: int
    params: dict[str, Any]
    seed: int
    arch: ArchConfig | None = None
    training: TrainSpec | None = None
    gmacs: float = 0.0
    mparams: float = 0.0
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    device: str = ""
    started: float = field(default_factory=time.time)
    compute_s: float = 0.0
    pending: Any = None  # ObjectRef of the segment in flight
    checkpoint: Any = None  # ObjectRef of the checkpoint to continue from
    paused_at: int | None = None  # a rung whose decision waits for earlier trials
    status: str | None = None  # the outcome, once known
    values: list[float] | None = None
    reason: str | None = None

    @property
    def epochs_done(self) -> int:
        return len(self.curve)


class Driver:
    def __init__(self, spec: SearchSpec, *, results: Path, address: str | None = None,
                 display: Display | None = None, segment: Callable = run_segment):
        """``segment`` is the trial body run on Ray (see ``trial.run_segment`` for its contract)."""
        self.spec, self.results, self.address = spec, results, address
        self.display = display or Display(quiet=True)
        self.id = uuid.uuid4().hex[:12]
        self.window = 2 * spec.trials.parallel
        self.active: list[Active] = []  # asked and not yet told, in ask order
        self.started = time.time()
        self.finished_this_run = 0
        self.rejected_in_a_row = 0
        self.stop_asking = False
        self._last_beat = self._last_reconcile = 0.0
        self._remote = ray.remote(segment)

    # ------------------------------------------------------------------ setup
    def open(self) -> tuple[optuna.Study, bool]:
        """The study, and whether this driver created it (several drivers may start at once)."""
        spec = self.spec
        storage = open_storage(spec.study.storage)
        sampler = create_sampler(spec.sampler.name, spec.study.seed, spec.sampler.options)
        try:
            study = self._db(lambda: optuna.create_study(
                study_name=spec.study.name, storage=storage, sampler=sampler, directions=spec.directions),
                "create the study")
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # the database's unique name decides who was first
            study = self._db(lambda: optuna.load_study(study_name=spec.study.name, storage=storage, sampler=sampler),
                             "open the study")
            created = False
        stored = store.directions(study)
        names = study.metric_names
        wanted = [o.name for o in spec.objectives]
        if stored != spec.directions or (names and list(names) != wanted):
            raise StudyMismatch(
                f"study {spec.study.name!r} in {masked(spec.study.storage)} was created with objectives "
                f"{list(names or [])} ({', '.join(stored)}); this space asks for {wanted} ({', '.join(spec.directions)}). "
                "Use another study name.")
        if not names:
            self._db(lambda: study.set_metric_names(wanted), "name the objectives")
        self._db(lambda: study.set_user_attr("space", redact(spec.text, spec.study.storage)), "store the space")
        self._db(lambda: study.set_user_attr("space_file", spec.source), "store the space")
        return study, created

    def run(self) -> optuna.Study:
        spec = self.spec
        # Storage and cluster are checked before anything is written, so that a bad URL or address
        # leaves neither a database nor a results folder behind.
        check_storage(spec.study.storage)
        connect(self.address, cpus=spec.resources.cpus, gpus=spec.resources.gpus)
        study, created = self.open()
        store.results_dir(self.results, spec.study.name).mkdir(parents=True, exist_ok=True)
        self.study = study
        self._beat(force=True)
        self._reconcile()
        if created:
            for name, params in reference_params(spec).items():
                self._db(lambda: study.enqueue_trial(params, user_attrs={"reference": name}), "enqueue a reference")
                self.display.log(f"reference trial {name!r} enqueued")
        interrupted, shown = False, 0.0
        self.display.start(spec)
        try:
            while True:
                self._beat()
                self._reconcile_now_and_then()
                self._collect(timeout=0.25)
                self._decide_paused()
                self._ask_more()
                self._tell_ready()
                if self.stop_asking and not self.active:
                    break
                if self.display.live and time.time() - shown > 1.0:
                    self.display.update(self._snapshot())
                    shown = time.time()
        except KeyboardInterrupt:
            interrupted = True
            self._interrupt()
        finally:
            self.display.stop(self._snapshot())
            self._finish_weights()
        if interrupted:
            raise KeyboardInterrupt
        return study

    # ------------------------------------------------------------------ asking
    def _budget_left(self) -> bool:
        spec = self.spec
        if spec.trials.timeout_minutes is not None and time.time() - self.started > 60 * spec.trials.timeout_minutes:
            return False
        if spec.trials.count is None:
            return True
        return self._counted_or_running() < spec.trials.count

    def _counted_or_running(self) -> int:
        """Trials that count towards the budget, plus those on their way to counting, in storage."""
        return self._ahead_of(None)

    def _ahead_of(self, number: int | None) -> int:
        """Trials numbered below ``number`` (all if None) that count or may still count.

        A trial another driver has just asked counts before it says what it is: taking it for a
        future count can stop this driver early, but never lets two drivers overrun the budget.
        """
        trials = self._db(lambda: self.study.get_trials(deepcopy=False), "read the trials")
        settled_aside = (store.REJECTED, store.SURPLUS, *store.RETRIED)
        total = 0
        for t in trials:
            if number is not None and t.number >= number:
                continue
            status = t.user_attrs.get("status")
            if status in store.COUNTED or (t.state == optuna.trial.TrialState.RUNNING and status not in settled_aside):
                total += 1
        return total

    def _ask_more(self) -> None:
        parallel = self.spec.trials.parallel
        while not self.stop_asking:
            executing = sum(1 for a in self.active if a.pending is not None or a.paused_at is not None)
            if executing >= parallel:
                return
            if len(self.active) >= self.window and not self._tell_oldest():
                return  # the window is full and its oldest trial is still running
            if not self._budget_left():
                self.stop_asking = True
                return
            self._ask_one()

    def _ask_one(self) -> None:
        spec = self.spec
        trial = self._ask_trial()
        attrs = trial.user_attrs
        seed = attrs.get("seed", (spec.study.seed or 0) * 100_003 + trial.number)
        active = Active(trial, trial.number, {}, seed)
        self.active.append(active)
        writer = store.TrialWriter(trial)
        self._db(lambda: writer.set(driver=self.id, seed=seed), "record a trial")
        try:
            active.params = self._sample(active)
            active.arch, active.training = spec.configs(active.params)
        except ConfigError as err:
            return self._reject(active, f"invalid combination: {err}")
        cost = complexity(active.arch)
        active.gmacs, active.mparams = cost.gmacs, cost.mparams
        over = over_budget(spec.budget, cost.gmacs, cost.params)
        record = {"arch": active.arch.to_dict(), "training": _training_overrides(spec.training, active.training),
                  "gmacs": cost.gmacs, "mparams": cost.mparams}
        record["summary"] = store.summary(record["arch"])
        if over:
            self._db(lambda: writer.set(**record), "record a trial")
            return self._reject(active, f"over budget: {over}")
        self.rejected_in_a_row = 0
        self._db(lambda: writer.started(**record), "record a trial")
        if spec.trials.count is not None and self._ahead_of(active.number) >= spec.trials.count:
            # Another driver on this study filled the budget between our check and our ask.
            active.status, active.reason = store.SURPLUS, "the trial budget was already full"
            self._db(lambda: writer.outcome(store.SURPLUS, reason=active.reason), "record a surplus trial")
            self.stop_asking = True
            return
        self._submit(active)

    def _ask_trial(self) -> optuna.Trial:
        # Two steps, each retried alone: retrying a whole Study.ask after the database failed
        # between its write and its reads would claim a second trial and orphan the first.
        trial_id = self._db(lambda: store.claim_trial(self.study), "ask for a trial")
        return self._db(lambda: store.trial_handle(self.study, trial_id), "ask for a trial")

    def _sample(self, active: Active) -> dict[str, Any]:
        """The trial's parameter values; each suggestion is a database write, retried like any other."""
        attempts = 0

        def sample() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # A fresh handle knows which suggestions the database kept (one whose reply was
                # lost included), so none is written twice: Optuna refuses a second write.
                active.trial = store.trial_handle(self.study, active.trial._trial_id)
            return self.spec.sample(active.trial)

        return self._db(sample, "sample a trial")

    def _reject(self, active: Active, reason: str) -> None:
        active.status, active.reason = store.REJECTED, reason
        self._db(lambda: store.TrialWriter(active.trial).outcome(store.REJECTED, reason=reason), "record a rejection")
        self.display.log(f"trial {active.number} rejected: {reason}")
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            self.stop_asking = True
            self.display.log(f"stopping: {MAX_REJECTED_IN_A_ROW} configurations in a row were rejected; "
                             "widen the budget or narrow the space")

    # ------------------------------------------------------------------ running
    def _next_stop(self, active: Active) -> int:
        epochs = active.training.epochs
        return next((r for r in self.spec.rungs(epochs) if r > active.epochs_done), epochs)

    def _submit(self, active: Active) -> None:
        spec = self.spec
        stop = self._next_stop(active)
        job = SegmentJob(
            arch=active.arch.to_dict(), training=active.training, data=spec.data,
            seed=active.seed, start_epoch=active.epochs_done, stop_epoch=stop, use_gpu=spec.resources.gpus > 0,
            threads=max(1, int(spec.resources.cpus)), measure_latency=active.epochs_done == 0,
            return_weights=spec.keep_weights != "none",
        )
        result_ref, checkpoint_ref = self._remote.options(
            num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus, num_returns=2,
            max_retries=spec.trials.retries, retry_exceptions=False,
        ).remote(job, active.checkpoint)
        active.pending, active.checkpoint = result_ref, checkpoint_ref

    def _collect(self, timeout: float) -> None:
        pending = {a.pending: a for a in self.active if a.pending is not None}
        if not pending:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)  # back as soon as one is done
        if ready:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in ready:
            active = pending[ref]
            active.pending = None
            try:
                result: SegmentResult = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the trial body raised past its own handling
                self._finish(active, store.FAILED, reason=f"exception: {err.cause!r}")
                continue
            except ray.exceptions.RayError as err:  # the worker died more often than retries allow
                self._finish(active, store.FAILED, reason=f"worker lost after {self.spec.trials.retries} retries: "
                                                          f"{type(err).__name__}")
                continue
            self._absorb(active, result)

    def _absorb(self, active: Active, result: SegmentResult) -> None:
        active.curve += result.curve
        active.train_loss += result.train_loss
        active.compute_s += result.seconds
        if result.latency_ms is not None:
            active.latency_ms, active.device = result.latency_ms, result.device
        writer = store.TrialWriter(active.trial)
        self._db(lambda: writer.set(curve=active.curve, train_loss=active.train_loss, latency_ms=active.latency_ms,
                                    device=active.device, host=result.host), "record progress")
        if result.failure:
            return self._finish(active, store.FAILED, reason=f"{result.failure_kind}: {result.failure}")
        if active.epochs_done >= active.training.epochs:
            if result.weights is not None:
                path = store.weights_path(self.results, self.spec.study.name, active.number)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(result.weights, str(path))
            return self._finish(active, store.COMPLETE, values=self._objective_values(active))
        active.paused_at = active.epochs_done
        self._decide(active)

    def _objective_values(self, active: Active) -> list[float]:
        measures = {"accuracy": active.curve[-1], "gmacs": active.gmacs, "params": active.mparams,
                    "latency": active.latency_ms or 0.0}
        return [measures[o.name] for o in self.spec.objectives]

    # ------------------------------------------------------------------ early stopping
    def _decide_paused(self) -> None:
        for active in self.active:
            if active.paused_at is not None:
                self._decide(active)

    def _decide(self, active: Active) -> None:
        """At a rung: continue, stop (pruned), or wait for earlier trials to reach the rung."""
        rung = active.paused_at
        if any(a.number < active.number and a.status is None and a.epochs_done < rung for a in self.active):
            return  # an earlier trial of ours has yet to reach this rung: decide once it has
        records = self._db(lambda: store.records(self.study), "read the trials")
        mine = (max(active.curve[:rung]), active.gmacs)
        directions = ["maximize", "minimize"]
        for record in records:
            if record.number < active.number and record.gmacs is not None and len(record.curve) >= rung:
                theirs = (max(record.curve[:rung]), record.gmacs)
                if dominates(theirs, mine, directions):
                    active.paused_at = None
                    return self._finish(active, store.PRUNED, reason=f"dominated at epoch {rung} by trial {record.number}")
        active.paused_at = None
        self._submit(active)

    # ------------------------------------------------------------------ telling
    def _finish(self, active: Active, status: str, *, values: list[float] | None = None,
                reason: str | None = None) -> None:
        active.status, active.values, active.reason = status, values, reason
        wall = time.time() - active.started
        self._db(lambda: store.TrialWriter(active.trial).outcome(status, values=values, reason=reason,
                                                                 wall_time_s=wall, compute_s=active.compute_s),
                 "record an outcome")
        self.finished_this_run += status in store.COUNTED
        self.display.trial_ended(active.number, status, active.curve, active.gmacs, reason)

    def _tell_oldest(self) -> bool:
        if not self.active or self.active[0].status is None:
            return False
        oldest = self.active.pop(0)
        self._db(lambda: store.tell(self.study, oldest.number, oldest.status, oldest.values), "tell a trial")
        return True

    def _tell_ready(self) -> None:
        """Once no more trials will be asked, tell finished trials as soon as their turn comes."""
        if self.stop_asking:
            while self._tell_oldest():
                pass

    # ------------------------------------------------------------------ crash and interrupt handling
    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat > HEARTBEAT_S:
            beat = {"host": socket.gethostname(), "pid": os.getpid(), "beat": now}
            self._db(lambda: self.study.set_user_attr(beat_key(self.id), beat), "write the heartbeat")
            self._last_beat = now

    def _owner_alive(self, trial: optuna.trial.FrozenTrial, beats: dict[str, Any]) -> bool:
        """Whether the driver that asked ``trial`` may still be working on it."""
        driver = trial.user_attrs.get("driver")
        if driver == self.id:
            return True
        if driver is None:
            # Claimed a moment ago and not yet named by its driver. Every driver beats before it
            # asks, so the claimer can only be a live driver other than this one: with none left,
            # the trial was claimed by one that died in between, and nobody will ever finish it.
            if time.time() - trial.datetime_start.timestamp() >= DEAD_AFTER_S:
                return False
            return any(_beating(beat) for key, beat in beats.items()
                       if key.startswith(beat_key("")) and key != beat_key(self.id))
        return _beating(beats.get(beat_key(driver)))

    def _reconcile_now_and_then(self) -> None:
        """Other drivers may die mid-run: settle their trials once their heartbeat stops."""
        if time.time() - self._last_reconcile > RECONCILE_S:
            self._reconcile()

    def _reconcile(self) -> None:
        """Settle trials left RUNNING by drivers that are gone: tell recorded outcomes, retry the rest."""
        self._last_reconcile = time.time()
        running = self._db(lambda: self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]),
                           "read the trials")
        beats = self._db(lambda: self.study.user_attrs, "read the heartbeats") if running else {}
        for frozen in running:
            if self._owner_alive(frozen, beats):
                continue
            status = frozen.user_attrs.get("status")
            if status not in (None, store.RUNNING, *store.RETRIED):  # an outcome was recorded but not told
                self._db(lambda: store.tell(self.study, frozen.number, status, frozen.user_attrs.get("values")),
                         "tell a trial")
                continue
            trial = self._db(lambda: store.trial_handle(self.study, frozen._trial_id), "read a trial")
            if status in store.RETRIED:  # its driver died while queueing the retry: finish that
                self._retry_later(trial, status, frozen.user_attrs.get("reason"))
            else:
                self._retry_later(trial, store.STALE, "the driver stopped while it ran")
                self.display.log(f"trial {frozen.number} was left running by a driver that stopped; retrying its parameters")

    def _retry_later(self, trial: optuna.Trial, status: str, reason: str) -> None:
        """Fail a trial that was not at fault and queue its parameters to run again.

        Each step may already have been done by a driver that died after it, so none is repeated.
        """
        self._db(lambda: store.TrialWriter(trial).outcome(status, reason=reason), "record a retry")
        trials = self._db(lambda: self.study.get_trials(deepcopy=False), "read the trials")
        if not any(t.user_attrs.get("retry_of") == trial.number for t in trials):
            frozen = next(t for t in trials if t.number == trial.number)
            carry = {k: frozen.user_attrs[k] for k in ("reference", "seed") if k in frozen.user_attrs}
            self._db(lambda: self.study.enqueue_trial(store.planned_params(frozen),
                                                      user_attrs={**carry, "retry_of": trial.number}),
                     "enqueue a retry")
        self._db(lambda: store.tell(self.study, trial.number, status, None), "tell a trial")

    def _interrupt(self) -> None:
        """Ctrl-C: stop running trials, record them as interrupted (retried by the next run), tell all."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
        try:
            for active in self.active:
                if active.pending is not None:
                    ray.cancel(active.pending, force=True)
            for active in self.active:
                if active.status is None:
                    self._retry_later(active.trial, store.INTERRUPTED, "interrupted")
                    self.display.trial_ended(active.number, store.INTERRUPTED, active.curve, active.gmacs, "interrupted")
                else:
                    self._db(lambda: store.tell(self.study, active.number, active.status, active.values), "tell a trial")
            self.active.clear()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _finish_weights(self) -> None:
        """keep_weights: front removes the weights of trials the front no longer holds."""
        if self.spec.keep_weights != "front":
            return
        folder = store.weights_dir(self.results, self.spec.study.name)
        if not folder.exists():
            return
        all_records = self._db(lambda: store.records(self.study), "read the trials")
        on_front = {r.number for r in store.pareto_front(all_records, self.spec.directions)}
        for path in folder.glob("trial_*.safetensors"):
            if int(path.stem.removeprefix("trial_")) not in on_front:
                path.unlink()

    # ------------------------------------------------------------------ helpers
    def _db(self, action: Callable[[], Any], what: str) -> Any:
        return with_retries(action, what, on_retry=self.display.log)

    def _snapshot(self) -> Snapshot:
        all_records = self._db(lambda: store.records(self.study), "read the trials")
        return Snapshot.of(all_records, self.spec, time.time() - self.started,
                           running=sum(1 for a in self.active if a.status is None),
                           finished_this_run=self.finished_this_run)


def _training_overrides(base: TrainSpec, actual: TrainSpec) -> dict[str, Any]:
    """The training fields a trial changed from the space's recipe (what the space sampled)."""
    return {k: v for k, v in actual.__dict__.items() if getattr(base, k) != v}


def beat_key(driver: str) -> str:
    """The study attribute that holds a driver's heartbeat."""
    return f"driver:{driver}"


def _beating(beat: dict[str, Any] | None) -> bool:
    """Whether the driver that wrote this heartbeat may still be running."""
    if not beat or time.time() - beat["beat"] > DEAD_AFTER_S:
        return False
    return _pid_alive(beat["pid"]) if beat["host"] == socket.gethostname() else True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
