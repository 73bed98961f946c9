"""The driver: the one process that owns the Optuna study, asks and tells, and schedules on Ray.

Optuna's pruners refuse multi-objective studies and Ray Tune would keep the study in memory, so
the driver does both jobs itself. Its loop:

* ask -> sample the space -> cost the architecture on meta tensors -> reject it if over budget,
  else train it on Ray segment by segment, one segment per early-stopping rung;
* at each rung, let ``early_stopping`` decide whether the trial goes on;
* record every result as a user attribute the moment it arrives, tell Optuna later;
* beat and settle what dead drivers left (``recovery``).

Reproducibility: trial n is asked only once every trial up to n - W has been told (W = twice
the parallel trials), tells happen in ask order and only as the window moves, and a rung decision
for trial n waits until every earlier trial has passed that rung or ended. The sampler's view at
each ask, and so the sequence of configurations, then depends on the seed alone, not on timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from safetensors.torch import save_file

from layers import ArchConfig, ConfigError, complexity

from . import records
from .artifacts import STORE_ATTR, store_folder
from .cluster import Attempt, History, connected, segment_task, share_data, task_name
from .dashboard import DashboardWriter
from .display import Display, Snapshot
from .early_stopping import RungResult, decide, rung_field
from .files import replacing
from .recovery import Recovery
from .references import reference_params
from .samplers import create_sampler, trial_seed
from .space import RecordedSettings, SearchSpec, budget_constraints, describe_sampling, over_budget, sampled_as
from .storage import StorageError, check_storage, masked, redact
from .study_client import StudyClient
from .training.segment import SegmentJob, run_segment
from .training.trainer import TrainSpec

#: Stop asking after this many rejections in a row: the budget and the space barely overlap.
MAX_REJECTED_IN_A_ROW = 200
#: How often a driver with nothing left of its own looks again at the trials other drivers run.
AWAIT_OTHERS_S = 2.0
#: How long a driver that gave a study its uid waits before reading it back (another driver
#: opening the study in the same instant may have written its own over it).
UID_SETTLE_S = 0.5
#: A training step costs its forward pass and a backward pass of about twice that: the usual
#: convention for counting training compute from forward MACs.
TRAIN_MACS_PER_FORWARD_MAC = 3


class StudyMismatch(RuntimeError):
    """The study exists with other objectives than the space asks for."""


@dataclass
class Active:
    """One of this driver's trials between ask and tell."""

    trial_id: int
    number: int
    params: dict[str, Any]
    seed: int  # of its training; its sampling is seeded with trial_seed(study seed, number)
    reference: str | None = None  # reference trials always run to the end
    retry_of: int | None = None  # the trial whose parameters this one runs again
    arch: ArchConfig | None = None
    training: TrainSpec | None = None
    gmacs: float = 0.0
    mparams: float = 0.0
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    gpus: float = 0.0  # the share of a GPU its segments ask for: the space's, or a whole one after an OOM
    history: History = field(default_factory=History)  # where its segments ran
    cpu_fallback: bool = False
    started: float = field(default_factory=time.time)
    compute_s: float = 0.0
    train_macs: float = 0.0
    pending: Any = None  # ObjectRef of the segment in flight
    resumed_from: Any = None  # ObjectRef of the checkpoint the segment in flight started from
    checkpoint: Any = None  # ObjectRef of the checkpoint to continue from
    paused_at: int | None = None  # a rung whose decision waits for earlier trials
    status: str | None = None  # the outcome, once known
    values: list[float] | None = None
    reason: str | None = None

    @property
    def epochs_done(self) -> int:
        return len(self.curve)


class Driver:
    def __init__(
        self,
        spec: SearchSpec,
        *,
        results: Path,
        address: str | None = None,
        display: Display | None = None,
        segment: Callable = run_segment,
    ):
        """``segment`` is the trial body run on Ray (see ``training.segment.run_segment`` for its contract)."""
        self.spec, self.results, self.address = spec, results, address
        self.display = display or Display(quiet=True)
        self.id = uuid.uuid4().hex[:12]
        self.window = 2 * spec.trials.parallel
        self.active: list[Active] = []  # asked and not yet told, in ask order
        self.started = time.time()
        self.finished_this_run = 0
        self.rejected_in_a_row = 0
        self.stop_asking = False
        self.segment = segment
        self._remote = segment_task(spec.resources.gpus)
        self.data: ray.ObjectRef | None = None  # the data set, in Ray's object store

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        """Open the study, or create it with its reference trials queued."""
        spec = self.spec
        self.client, created = StudyClient.open(
            spec.study.name, spec.study.storage, spec.directions, on_retry=self.display.log
        )
        if created:  # at once: only the creating driver enqueues them, and nothing may fail before
            self.client.set_study_attr(records.STUDY_UID, uuid.uuid4().hex)  # before any other driver looks
            for name, params in reference_params(spec).items():
                self.client.enqueue(params, {"reference": name})
                self.display.log(f"reference trial {name!r} enqueued")
        study = self.client.study
        stored = records.directions(study)
        names = study.metric_names
        wanted = [o.name for o in spec.objectives]
        if stored != spec.directions or (names and list(names) != wanted):
            raise StudyMismatch(
                f"study {spec.study.name!r} in {masked(spec.study.storage)} was created with objectives "
                f"{list(names or [])} ({', '.join(stored)}); this space asks for {wanted} "
                f"({', '.join(spec.directions)}). Use another study name."
            )
        if not names:
            self.client.retry(lambda: study.set_metric_names(wanted), "name the objectives")
        if not created:
            self._check_same_recipe(self.client.user_attrs())
            self._check_same_sampling()
        self._claim_results_folder()
        self.client.set_study_attr("space", redact(spec.text))
        self.client.set_study_attr("space_file", spec.source)
        self.dashboard = DashboardWriter(self.client, spec, self.results, self.display.log)
        self.client.set_study_attr(STORE_ATTR, str(self.dashboard.folder))
        self.client.before_tell = self.dashboard.before_tell
        self.recovery = Recovery(self.client, self.id, self.display.log)
        self.normalization_recorded = records.NORMALIZATION in self.client.user_attrs()

    def _claim_results_folder(self) -> None:
        """Refuse results/<name>/ where another study of this name (in another storage) keeps its
        results: trial numbers would share one weights folder, and each run's clean-up would delete
        the other's weights or write over them."""
        name = self.spec.study.name
        if records.STUDY_UID not in self.client.user_attrs():  # a study made before studies had one
            self.client.set_study_attr(records.STUDY_UID, uuid.uuid4().hex)
            # Drivers opening such a study at once may each write one: after a pause every one of
            # them reads the last, so that all claim the folder with the same uid.
            time.sleep(UID_SETTLE_S)
        uid = self.client.user_attrs()[records.STUDY_UID]
        foreign = records.foreign_results(self.results, name, uid)
        if foreign is not None:
            raise StudyMismatch(f"{foreign}: use another --results folder or study name")
        if records.results_owner(self.results, name) is None:
            records.claim_results(self.results, name, uid, masked(self.spec.study.storage))

    def _check_same_sampling(self) -> None:
        """Refuse to go on with a study whose parameters are now sampled otherwise than Optuna allows.

        Optuna fixes a parameter's choices, or its range's kind (integer or float) and scale, at its
        first trial and refuses any other, so every trial would fail as it is sampled, and its
        retries, queued with the old values, after it. Bounds and steps may change.
        """
        recorded: dict[str, tuple] = {}
        for trial in self.client.trials():
            for name, distribution in trial.distributions.items():
                recorded.setdefault(name, sampled_as(distribution))
        changes = [
            f"{p.name}: {describe_sampling(recorded[p.name])} -> {describe_sampling(p.sampled_as())}"
            for p in self.spec.params
            if not p.fixed and p.name in recorded and recorded[p.name] != p.sampled_as()
        ]
        if changes:
            raise StudyMismatch(
                f"study {self.spec.study.name!r} was sampled otherwise ({'; '.join(changes[:3])}): Optuna keeps "
                "a parameter's choices, or its range's kind and scale, for the whole study. Use another study name."
            )

    def _check_same_recipe(self, attrs: dict[str, Any]) -> None:
        """Refuse to go on with a study under another training recipe or data set.

        Its trials would not compare with the earlier ones, and the earlier ones would be reported
        and exported with the new recipe: a trial records only what it sampled, over the space's.
        """
        if "space" not in attrs:
            return  # created by a driver that stopped before it wrote the space
        before = RecordedSettings.of_study(attrs)
        changes = [
            f"{section}.{key}: {old!r} -> {new!r}"
            for section, earlier, now in (
                ("data", before.data, self.spec.data),
                ("training", before.training, self.spec.training),
            )
            for key, old, new in _differences(earlier, now)
            if (section, key) != ("data", "root")  # the same files may sit elsewhere on another machine
        ]
        if changes:
            raise StudyMismatch(
                f"study {self.spec.study.name!r} was searched with another recipe ({'; '.join(changes[:3])}): "
                "its trials would not compare with new ones. Use another study name."
            )

    def run(self) -> optuna.Study:
        spec = self.spec
        # Storage, folders and cluster are checked before anything is written, so that a bad URL,
        # folder or address leaves neither a database nor a results folder behind.
        check_storage(spec.study.storage)
        records.check_writable(records.results_dir(self.results, spec.study.name), "the results folder")
        records.check_writable(store_folder(spec.study.artifacts, self.results, spec.study.name), "the artifact store")
        with connected(self.address, cpus=spec.resources.cpus, gpus=spec.resources.gpus):
            self.data, shipped = share_data(spec.data, spec.resources.cpus, spec.resources.gpus)
            return self._run(shipped)

    def _run(self, shipped: str) -> optuna.Study:
        spec = self.spec
        self.open()
        records.results_dir(self.results, spec.study.name).mkdir(parents=True, exist_ok=True)
        self.recovery.beat(force=True)
        self.recovery.reconcile()
        interrupted, storage_lost, waiting, shown = False, False, False, 0.0
        self.display.start(spec)
        self.display.log(shipped)
        try:
            while True:
                self.recovery.beat()
                self.recovery.reconcile_now_and_then()
                self.dashboard.now_and_then()
                self._collect(timeout=0.25)
                self._decide_paused()
                self._ask_more()
                self._tell_ready()
                if self.stop_asking and not self.active:
                    if not self._awaiting_others():
                        break
                    if not waiting:
                        self.display.log("the trial count is full with trials other drivers run: waiting for them")
                    waiting = True
                    time.sleep(AWAIT_OTHERS_S)
                    # Ask again once those trials count or, their driver found dead, are retried.
                    self.stop_asking = False
                if self.display.live and time.time() - shown > 1.0:
                    self.display.update(self._snapshot())
                    shown = time.time()
        except KeyboardInterrupt:
            interrupted = True
            self._interrupt()
        except StorageError:
            storage_lost = True
            raise
        finally:
            # Past the outage patience, a last view would read the database again, wait as long once
            # more, and replace the error the user needs with its own.
            self.display.stop(None if storage_lost else self._snapshot())
            if not storage_lost:
                self._finish_weights()
        self.dashboard.run_ended(publish=not interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return self.client.study

    # ------------------------------------------------------------------ asking
    def _budget_left(self) -> bool:
        count = self.spec.trials.count
        return not self._out_of_time_or_compute() and (count is None or self._ahead_of(None) < count)

    def _out_of_time_or_compute(self) -> bool:
        spec = self.spec
        if spec.trials.timeout_minutes is not None and time.time() - self.started > 60 * spec.trials.timeout_minutes:
            return True
        if spec.trials.max_train_tmacs is not None:
            # What the trials have spent so far, running ones included: they finish what they
            # started, so a study ends a little past its compute budget, never short of it.
            return sum(r.train_macs for r in self.client.records()) >= spec.trials.max_train_tmacs * 1e12
        return False

    def _awaiting_others(self) -> bool:
        """Whether the trial count is full only with trials that other drivers are running.

        Those may yet not count: their driver may have died (a driver restarted on another machine
        sees it beat for ``DEAD_AFTER_S``) and they are then retried. So a driver with nothing
        left of its own waits for them rather than end the study short of its count.
        """
        count = self.spec.trials.count
        if count is None or self.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW or self._out_of_time_or_compute():
            return False
        return sum(t.user_attrs.get("status") in records.COUNTED for t in self.client.trials()) < count

    def _ahead_of(self, number: int | None) -> int:
        """Trials numbered below ``number`` (all if None) that count or may still count.

        A trial another driver has just asked counts before it says what it is: taking it for a
        future count can stop this driver early, but never lets two drivers overrun the budget.
        """
        settled_aside = (records.REJECTED, records.SURPLUS, *records.RETRIED)
        total = 0
        for t in self.client.trials():
            if number is not None and t.number >= number:
                continue
            status = t.user_attrs.get("status")
            if status in records.COUNTED or (
                t.state == optuna.trial.TrialState.RUNNING and status not in settled_aside
            ):
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
        trial_id = self.client.claim()
        number = self.client.retry(lambda: self.client.storage.get_trial_number_from_id(trial_id), "read a trial")
        attrs = self.client.retry(lambda: self.client.storage.get_trial_user_attrs(trial_id), "read a trial")
        # A retry keeps the seed it was first trained with; an unseeded study draws one.
        seed = attrs.get("seed", trial_seed(spec.study.seed, number))
        seed = secrets.randbelow(2**31) if seed is None else seed
        active = Active(
            trial_id,
            number,
            {},
            seed,
            reference=attrs.get("reference"),
            retry_of=attrs.get("retry_of"),
            gpus=spec.resources.gpus,
        )
        self.active.append(active)
        with self._unless_settled_elsewhere(active):
            self._start(active)

    def _start(self, active: Active) -> None:
        """Name a claimed trial this driver's, sample and cost it, and train it or settle it."""
        spec, trial_id, number = self.spec, active.trial_id, active.number
        self.client.set_trial_attrs(trial_id, driver=self.id, seed=active.seed)
        seed = trial_seed(spec.study.seed, number)
        try:
            active.params = self.client.sample(
                trial_id, lambda: create_sampler(spec.sampler.name, seed, spec.sampler.options), spec.sample
            )
            active.arch, active.training = spec.configs(active.params)
        except ConfigError as err:
            return self._reject(active, f"invalid combination: {err}", {"valid": 1.0})
        cost = complexity(active.arch)
        active.gmacs, active.mparams = cost.gmacs, cost.mparams
        over = over_budget(spec.budget, cost.gmacs, cost.params)
        record = {
            "arch": active.arch.to_dict(),
            "training": _training_overrides(spec.training, active.training),
            "gmacs": cost.gmacs,
            "mparams": cost.mparams,
        }
        record["summary"] = records.summary(record["arch"])
        if active.retry_of is not None and self._retried_already(active):
            reason = f"a second retry of trial {active.retry_of}, queued as two drivers settled it at once"
            self._settle(active, records.SURPLUS, reason=reason, **record)
            self.display.log(f"trial {number} not run: {reason}")
            return
        if over:
            self.client.set_trial_attrs(trial_id, **record)
            return self._reject(
                active, f"over budget: {over}", budget_constraints(spec.budget, cost.gmacs, cost.params)
            )
        self.rejected_in_a_row = 0
        self.client.set_trial_attrs(trial_id, **records.started(**record))
        if spec.trials.count is not None and self._ahead_of(active.number) >= spec.trials.count:
            # Another driver on this study filled the budget between our check and our ask.
            self._settle(active, records.SURPLUS, reason="the trial budget was already full")
            self.stop_asking = True
            return
        self._submit(active)

    def _retried_already(self, active: Active) -> bool:
        """Whether a trial numbered below ``active`` retries the same trial.

        Two drivers that settle a dead driver's trial in the same instant may each find no retry
        queued and queue one: Optuna's storage has no atomic claim to prevent it. Every driver
        runs the lower-numbered retry alone, so the pair costs one trial number, not a second run.
        """
        return any(
            t.number < active.number and t.user_attrs.get("retry_of") == active.retry_of for t in self.client.trials()
        )

    def _reject(self, active: Active, reason: str, constraints: dict[str, float]) -> None:
        """Settle a configuration that will not be trained; its constraints teach the sampler why."""
        self.client.constrain(active.trial_id, constraints)
        self._settle(active, records.REJECTED, reason=reason)
        self.display.log(f"trial {active.number} rejected: {reason}")
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            self.stop_asking = True
            self.display.log(
                f"stopping: {MAX_REJECTED_IN_A_ROW} configurations in a row were rejected; "
                "widen the budget or narrow the space"
            )

    # ------------------------------------------------------------------ running
    def next_stop(self, active: Active) -> int:
        """The epoch the trial's next segment trains up to: its next rung, or its last epoch."""
        epochs = active.training.epochs
        return next((r for r in self.spec.rungs(epochs) if r > active.epochs_done), epochs)

    def _submit(self, active: Active) -> None:
        spec = self.spec
        job = SegmentJob(
            arch=active.arch.to_dict(),
            training=active.training,
            data=spec.data,
            seed=active.seed,
            start_epoch=active.epochs_done,
            stop_epoch=self.next_stop(active),
            gpus=active.gpus,
            threads=max(1, int(spec.resources.cpus)),
            measure_latency=active.epochs_done == 0,
            return_weights=spec.keep_weights != "none",
            allow_cpu_fallback=spec.resources.allow_cpu_fallback,
        )
        result_ref, checkpoint_ref = self._remote.options(
            name=task_name(self.segment),
            num_cpus=spec.resources.cpus,
            num_gpus=active.gpus,
            num_returns=2,
            max_retries=spec.trials.retries,
            retry_exceptions=False,
        ).remote(self.segment, job, active.checkpoint, self.data)
        active.pending, active.resumed_from, active.checkpoint = result_ref, active.checkpoint, checkpoint_ref

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
            with self._unless_settled_elsewhere(active):
                self._take(active, ref)

    def _take(self, active: Active, ref: ray.ObjectRef) -> None:
        """Record what a finished segment returned, or why it returned nothing."""
        try:
            attempt: Attempt = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the trial body raised past its own handling
            return self._finish(active, records.FAILED, reason=f"exception: {err.cause!r}")
        except ray.exceptions.RayError as err:  # the worker died more often than retries allow
            return self._finish(
                active,
                records.FAILED,
                reason=f"worker lost after {self.spec.trials.retries} retries: {type(err).__name__}",
            )
        self._absorb(active, attempt)

    @contextlib.contextmanager
    def _unless_settled_elsewhere(self, active: Active) -> Iterator[None]:
        """One step of a trial's bookkeeping; the trial is let go if another driver has settled it.

        A driver silent past ``recovery.DEAD_AFTER_S`` (a suspended machine, a stalled VM) is taken
        for dead: another driver fails its running trials as stale and queues their retries, and
        Optuna then refuses every write to them. What this driver holds of such a trial is dropped;
        the retry runs in its place.
        """
        try:
            yield
        except optuna.exceptions.UpdateFinishedTrialError:
            self.active.remove(active)
            self.display.log(
                f"trial {active.number} was settled by another driver while this one was silent; "
                "its retry runs in its place"
            )

    def _absorb(self, active: Active, attempt: Attempt) -> None:
        # Every run counts, once: re-runs that rebuilt a checkpoint lost with its node included.
        for execution in active.history.absorb(attempt.executions):
            active.compute_s += execution.seconds
            active.train_macs += TRAIN_MACS_PER_FORWARD_MAC * active.gmacs * 1e9 * execution.images
        result = attempt.result
        if result.failure_kind == "oom" and 0 < active.gpus < 1 and not result.cpu_fallback:
            return self._retry_on_a_whole_gpu(active, result.failure)
        active.curve += result.curve
        active.train_loss += result.train_loss
        if result.latency_ms is not None:
            active.latency_ms = result.latency_ms
        if result.mean is not None and not self.normalization_recorded:
            normalization = {"mean": list(result.mean), "std": list(result.std)}
            self.client.set_study_attr(records.NORMALIZATION, normalization)
            self.normalization_recorded = True
        if result.cpu_fallback and not active.cpu_fallback:
            self.display.log(f"trial {active.number} trains on the CPU: {result.cpu_fallback}")
        active.cpu_fallback = active.cpu_fallback or result.cpu_fallback is not None
        self.client.set_trial_attrs(
            active.trial_id,
            curve=active.curve,
            train_loss=active.train_loss,
            latency_ms=active.latency_ms,
            **({"latency_how": result.latency_how} if result.latency_how else {}),
            device=result.device,
            cpu_fallback=active.cpu_fallback,
            host=result.host,
            train_macs=active.train_macs,
            **active.history.attrs(),
        )
        if result.failure:
            return self._finish(active, records.FAILED, reason=f"{result.failure_kind}: {result.failure}")
        if active.epochs_done >= active.training.epochs:
            if result.weights is not None:
                path = records.weights_path(self.results, self.spec.study.name, active.number)
                path.parent.mkdir(parents=True, exist_ok=True)
                with replacing(path) as tmp:
                    save_file(result.weights, str(tmp))
            return self._finish(active, records.COMPLETE, values=self._objective_values(active, active.curve[-1]))
        active.paused_at = active.epochs_done
        self._decide(active)

    def _retry_on_a_whole_gpu(self, active: Active, failure: str) -> None:
        """Out of memory on a shared GPU may be the neighbour's doing: run the segment again, alone."""
        self.display.log(
            f"trial {active.number} ran out of memory on {active.gpus:g} of a GPU: retrying on a whole one"
        )
        active.gpus, active.checkpoint = 1.0, active.resumed_from
        self.client.set_trial_attrs(
            active.trial_id, gpus=active.gpus, oom_on_shared_gpu=failure, train_macs=active.train_macs
        )
        self._submit(active)

    def _objective_values(self, active: Active | records.TrialRecord, accuracy: float) -> list[float]:
        return records.objective_values(
            [o.name for o in self.spec.objectives],
            accuracy=accuracy,
            gmacs=active.gmacs,
            mparams=active.mparams,
            latency_ms=active.latency_ms,
        )

    # ------------------------------------------------------------------ early stopping
    def _decide_paused(self) -> None:
        for active in list(self.active):
            if active.paused_at is not None:
                with self._unless_settled_elsewhere(active):
                    self._decide(active)

    def _decide(self, active: Active) -> None:
        """At a rung: continue, stop (pruned), or wait for earlier trials to reach the rung."""
        rung = active.paused_at
        if any(a.number < active.number and a.status is None and a.epochs_done < rung for a in self.active):
            return  # an earlier trial of ours has yet to reach this rung: decide once it has
        active.paused_at = None
        if active.reference is not None:
            return self._submit(active)
        stopping = self.spec.early_stopping
        earlier = [
            RungResult(r.number, tuple(self._objective_values(r, max(r.curve[:rung]))))
            for r in rung_field(self.client.records(), active.number, rung)
        ]
        decision = decide(
            rung,
            RungResult(active.number, tuple(self._objective_values(active, max(active.curve[:rung])))),
            earlier,
            reduction=stopping.reduction,
            min_trials=stopping.min_trials,
            directions=self.spec.directions,
        )
        if decision.go_on:
            self._submit(active)
        else:
            self._finish(active, records.PRUNED, reason=decision.reason)

    # ------------------------------------------------------------------ telling
    def _finish(
        self, active: Active, status: str, *, values: list[float] | None = None, reason: str | None = None
    ) -> None:
        wall = time.time() - active.started
        self._settle(active, status, values=values, reason=reason, wall_time_s=wall, compute_s=active.compute_s)
        self.finished_this_run += status in records.COUNTED
        self.display.trial_ended(active.number, status, active.curve, active.gmacs, reason)

    def _settle(
        self, active: Active, status: str, *, values: list[float] | None = None, reason: str | None = None, **attrs
    ) -> None:
        """Record a trial's outcome, and only then hold it as settled here.

        In that order a Ctrl-C during the write (which may wait out an outage) leaves the trial
        unsettled, so the interrupt retries it; the other order told Optuna a status that the
        trial's record lacked, and the trial was neither counted nor retried.
        """
        self.client.set_trial_attrs(active.trial_id, **records.outcome(status, values=values, reason=reason, **attrs))
        active.status, active.values, active.reason = status, values, reason

    def _tell_oldest(self) -> bool:
        if not self.active or self.active[0].status is None:
            return False
        oldest = self.active.pop(0)
        self.client.tell(oldest.number, oldest.status, oldest.values)
        return True

    def _tell_ready(self) -> None:
        """Once no more trials will be asked, tell finished trials as soon as their turn comes."""
        if self.stop_asking:
            while self._tell_oldest():
                pass

    # ------------------------------------------------------------------ interrupts and weights
    def _interrupt(self) -> None:
        """Ctrl-C: stop running trials, record them as interrupted (retried by the next run), tell all."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
        try:
            for active in self.active:
                if active.pending is not None:
                    ray.cancel(active.pending, force=True)
            for active in list(self.active):
                with self._unless_settled_elsewhere(active):
                    if active.status is None:
                        self.recovery.retry_later(active.number, records.INTERRUPTED, "interrupted")
                        self.display.trial_ended(
                            active.number, records.INTERRUPTED, active.curve, active.gmacs, "interrupted"
                        )
                    else:
                        self.client.tell(active.number, active.status, active.values)
            self.active.clear()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _finish_weights(self) -> None:
        """keep_weights: front removes the weights of settled trials the front does not hold.

        A trial still running may be another driver's on this results folder, with its weights
        saved and its outcome not yet told: it may yet join the front, and that driver cleans up
        after it at its own end.
        """
        if self.spec.keep_weights != "front":
            return
        folder = records.weights_dir(self.results, self.spec.study.name)
        if not folder.exists():
            return
        all_records = self.client.records()
        kept = {r.number for r in records.pareto_front(all_records, self.spec.directions)}
        kept |= {r.number for r in all_records if r.state == optuna.trial.TrialState.RUNNING.name}
        for path in folder.glob("trial_*.safetensors"):
            if int(path.stem.removeprefix("trial_")) not in kept:
                path.unlink(missing_ok=True)  # another driver ending at once may have removed it first

    def _snapshot(self) -> Snapshot:
        return Snapshot.of(
            self.client.records(),
            self.spec,
            time.time() - self.started,
            running=sum(1 for a in self.active if a.status is None),
            finished_this_run=self.finished_this_run,
        )


def _differences(before: Any, now: Any) -> list[tuple[str, Any, Any]]:
    """The fields of two dataclasses of one type that differ: (name, before, now)."""
    old, new = dataclasses.asdict(before), dataclasses.asdict(now)
    return [(key, old[key], new[key]) for key in old if old[key] != new[key]]


def _training_overrides(base: TrainSpec, actual: TrainSpec) -> dict[str, Any]:
    """The training fields a trial changed from the space's recipe (what the space sampled)."""
    return {key: value for key, _, value in _differences(base, actual)}
