"""The YAML search space: one file describes a whole study, and is checked before anything runs.

    study:          {name, storage, seed, artifacts}
    data:           search.training.data.DataSpec      (name, root, val_fraction, ...)
    training:       search.training.trainer.TrainSpec  (epochs, batch_size, lr, ..., augment: {...})
    objectives:     {accuracy: maximize, gmacs: minimize}   (also params, latency)
    budget:         {max_gmacs, max_params}    hard limits, checked before any training
    trials:         {count, timeout_minutes, max_train_tmacs, parallel, retries}
    sampler:        tpe | nsga2 | random | gp, or {name, options}
    early_stopping: {rungs or min_epochs, reduction, min_trials} or false
    resources:      {cpus, gpus, allow_cpu_fallback} per trial (fractions of GPUs allowed)
    keep_weights:   front | all | none
    space:          parameters, by config path:
        embed_dim: {choices: [32, 48]}                categorical
        depth: {low: 2, high: 6}                      integer range (also: step)
        training.lr: {low: 1.0e-3, high: 1.0e-2, log: true}   float range
        patch_size: 4                                 fixed value (also: {value: 4})
        dynamic.pool: {choices: [avg2, max2], when: {mixer: dynamic}}   conditional

Every problem is reported as ``SpaceError``: the file, the key path, what is wrong and what is
allowed; the command line turns it into one message and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import optuna
import yaml

from layers import (
    LINEAR_PREDICTORS,
    NAMED_FIELDS,
    ArchConfig,
    ConfigError,
    DynamicConfig,
    build,
    coerce_fields,
    coerce_value,
    complexity,
    join,
    pool_extent,
    type_name,
    unknown_name_message,
)

from .defaults import DEFAULT_STORAGE
from .early_stopping import rung_epochs
from .samplers import SAMPLERS, check_options
from .training.data import DataError, DataInfo, DataSpec, check_reads, describe
from .training.trainer import TrainSpec

#: Each objective and the one direction in which it is better: the report, the front and the
#: samplers' view of rejected trials (accuracy 0 is the worst) all read them so.
OBJECTIVES = {"accuracy": "maximize", "gmacs": "minimize", "params": "minimize", "latency": "minimize"}
DIRECTIONS = ("maximize", "minimize")
KEEP_WEIGHTS = ("front", "all", "none")
# Set by the data set, never by the space.
DATA_FIELDS = ("img_size", "in_chans", "num_classes")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SpaceError(ValueError):
    """A search-space file that cannot run: names the file, the key path and what is allowed."""

    def __init__(self, source: str, path: str, reason: str):
        super().__init__(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")
        self.source, self.path, self.reason = source, path, reason


# ---------------------------------------------------------------------- sections
@dataclass(frozen=True)
class StudySection:
    name: str
    storage: str = DEFAULT_STORAGE
    seed: int | None = 0  # null: each run samples differently
    artifacts: str | None = None  # the artifact store's folder; None: results/<name>/artifacts

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not STUDY_NAME.fullmatch(self.name) or ".." in self.name:
            raise ConfigError(
                "name",
                f"{self.name!r} must be letters, digits, '_', '-' and '.' only "
                "(it names the folder results/<name>/), without '..'",
            )


@dataclass(frozen=True)
class BudgetSection:
    max_gmacs: float | None = None
    max_params: int | None = None

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("max_gmacs", "max_params"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")


@dataclass(frozen=True)
class TrialsSection:
    count: int | None = 20  # trials that finish, are pruned, or fail on their own
    timeout_minutes: float | None = None  # no new trial starts after this much wall-clock time
    max_train_tmacs: float | None = None  # no new trial starts once the trials have spent this much training compute
    parallel: int = 1
    retries: int = 2  # re-runs of a trial whose worker process died

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.count is None and self.timeout_minutes is None and self.max_train_tmacs is None:
            raise ConfigError("count", "set count, timeout_minutes or max_train_tmacs: the study needs an end")
        if self.max_train_tmacs is not None and self.max_train_tmacs <= 0:
            raise ConfigError("max_train_tmacs", "must be positive")
        if self.count is not None and self.count < 1:
            raise ConfigError("count", "must be at least 1")
        if self.timeout_minutes is not None and self.timeout_minutes <= 0:
            raise ConfigError("timeout_minutes", "must be positive")
        if self.parallel < 1:
            raise ConfigError("parallel", "must be at least 1")
        if self.retries < 0:
            raise ConfigError("retries", "must not be negative")


@dataclass(frozen=True)
class SamplerSection:
    name: str = "tpe"
    options: dict = field(default_factory=dict)  # keyword arguments of the Optuna sampler

    def __post_init__(self) -> None:
        coerce_fields(self)
        try:
            SAMPLERS.validate(self.name)
        except ValueError as err:
            raise ConfigError("name", str(err)) from None
        try:
            if self.options:  # the defaults are known to run
                check_options(self.name, self.options)  # refuses bad options now, not mid-run
        except ValueError as err:
            raise ConfigError("options", str(err)) from None


@dataclass(frozen=True)
class EarlyStoppingSection:
    """Successive halving at rungs (see ``early_stopping.py``): at each rung the best 1/reduction
    of the trials that reached it go on. Rungs are the explicit ``rungs`` (epochs), or
    ``min_epochs * reduction^k``; either way only those below a trial's own epoch count apply."""

    rungs: tuple[int, ...] | None = None
    min_epochs: int | None = None  # default 1, when rungs are not given
    reduction: int = 2
    min_trials: int = 4  # earlier trials that must have reached a rung before a trial can be stopped there

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.rungs is not None:
            if self.min_epochs is not None:
                raise ConfigError("rungs", "give rungs or min_epochs, not both")
            if not self.rungs or any(r < 1 for r in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
                raise ConfigError("rungs", f"expected increasing epochs of at least 1, got {list(self.rungs)}")
        if self.min_epochs is not None and self.min_epochs < 1:
            raise ConfigError("min_epochs", "must be at least 1")
        if self.reduction < 2:
            raise ConfigError("reduction", "must be at least 2")
        if self.min_trials < 1:
            raise ConfigError("min_trials", "must be at least 1")

    def rungs_for(self, epochs: int) -> tuple[int, ...]:
        return rung_epochs(epochs, rungs=self.rungs, min_epochs=self.min_epochs or 1, reduction=self.reduction)


@dataclass(frozen=True)
class ResourcesSection:
    cpus: float = 1.0
    gpus: float = 0.0  # fractions share a GPU between trials
    allow_cpu_fallback: bool = False  # a trial whose worker has no usable GPU trains on the CPU (recorded) or fails

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.cpus <= 0:
            raise ConfigError("cpus", "must be positive")
        if self.gpus < 0:
            raise ConfigError("gpus", "must not be negative")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ConfigError("gpus", "above 1 must be a whole number")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str


# ---------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One key of ``space``: sampled (choices or a range) or fixed, possibly conditional."""

    name: str
    hint: Any  # the type of the config field it sets
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None  # for fixed parameters
    when: tuple[tuple[str, tuple], ...] = ()

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    @property
    def is_int(self) -> bool:
        return self.hint is int or (isinstance(self.low, int) and isinstance(self.high, int))

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(name in values and _one_of(values[name], allowed) for name, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.fixed:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def sampled_as(self) -> tuple:
        """What Optuna fixes for the whole study at the first trial that samples it: see ``sampled_as``."""
        if self.choices is not None:
            return ("choices", self.choices)
        return ("integer" if self.is_int else "float", self.log)

    def possible(self) -> tuple | None:
        """All values it can take, or None for a continuous range."""
        if self.fixed:
            return (self.value,)
        if self.choices is not None:
            return self.choices
        if self.is_int:
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:  # Optuna's grid: low + k step, up to the last one not above high
            steps = math.floor((self.high - self.low) / self.step + 1e-9)
            return tuple(self.low + k * self.step for k in range(steps + 1))
        return None

    def contains(self, value: Any) -> bool:
        options = self.possible()
        if options is not None:
            return _one_of(value, options)
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def sampled_as(distribution: optuna.distributions.BaseDistribution) -> tuple:
    """What of a parameter's distribution Optuna keeps for a whole study, refusing any other later:
    a categorical's choices, or a range's kind (integer or float) and scale (log or not)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return ("choices", tuple(distribution.choices))
    kind = "integer" if isinstance(distribution, optuna.distributions.IntDistribution) else "float"
    return (kind, distribution.log)


def describe_sampling(shape: tuple) -> str:
    """``sampled_as``'s tuple in words."""
    kind, detail = shape
    if kind == "choices":
        return f"choices {list(detail)}"
    return f"{'a log-scale' if detail else 'a linear'} {kind} range"


def _one_of(value: Any, options: Sequence[Any]) -> bool:
    # a float grid point computed elsewhere (Optuna's low + k step) may differ from ours in its last bits
    return any(value == o or (isinstance(o, float) and _same_float(value, o)) for o in options)


def _same_float(value: Any, grid_point: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isclose(value, grid_point)


# ---------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SearchSpec:
    source: str
    text: str  # the file as written, kept with the study
    study: StudySection
    data: DataSpec
    data_info: DataInfo
    training: TrainSpec
    objectives: tuple[Objective, ...]
    budget: BudgetSection
    trials: TrialsSection
    sampler: SamplerSection
    early_stopping: EarlyStoppingSection | None
    resources: ResourcesSection
    keep_weights: str
    params: tuple[Param, ...]  # in an order where every condition's parameter comes first

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """The early-stopping rungs of a trial that trains ``epochs`` epochs (sampled or not)."""
        return self.early_stopping.rungs_for(epochs) if self.early_stopping else ()

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """The active parameters' values for one trial (fixed ones included)."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return values

    def configs(self, values: Mapping[str, Any]) -> tuple[ArchConfig, TrainSpec]:
        """The architecture and training recipe of a set of parameter values (may raise ConfigError)."""
        arch: dict[str, Any] = {
            "img_size": self.data_info.img_size,
            "in_chans": self.data_info.in_chans,
            "num_classes": self.data_info.num_classes,
            "dynamic": {},
        }
        training: dict[str, Any] = {}
        for name, value in values.items():
            if name.startswith("training."):
                training[name.removeprefix("training.")] = value
            elif name.startswith("dynamic."):
                arch["dynamic"][name.removeprefix("dynamic.")] = value
            else:
                arch[name] = value
        return ArchConfig.from_dict(arch), dataclasses.replace(self.training, **training)

    def arch_params(self) -> list[Param]:
        return [p for p in self.params if not p.name.startswith("training.")]


@dataclass(frozen=True)
class RecordedSettings:
    """The sections of a space that the report and the exports read back from a study (which
    keeps its space file's text): they need no data set, so they load where the data is absent."""

    data: DataSpec
    training: TrainSpec
    budget: BudgetSection
    early_stopping: EarlyStoppingSection | None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> RecordedSettings:
        stopping = data.get("early_stopping")
        return cls(
            build(DataSpec, section(data, "data"), "data"),
            build(TrainSpec, section(data, "training"), "training"),
            build(BudgetSection, section(data, "budget"), "budget"),
            None
            if stopping is False
            else build(EarlyStoppingSection, section(data, "early_stopping"), "early_stopping"),
        )

    @classmethod
    def of_study(cls, user_attrs: Mapping[str, Any]) -> RecordedSettings:
        return cls.of(yaml.safe_load(user_attrs.get("space", "")) or {})


# ---------------------------------------------------------------------- loading
SECTIONS = (
    "study",
    "data",
    "training",
    "objectives",
    "budget",
    "trials",
    "sampler",
    "early_stopping",
    "resources",
    "keep_weights",
    "space",
)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice: PyYAML's own keeps the
    last value silently, so a second ``epochs:`` further down a section would quietly win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys a merge (<<) brings in may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: the safe loader refuses it itself
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep)


def section(data: Mapping[str, Any], name: str) -> Any:
    """A section's mapping: empty when the section is absent or left blank (``training:``).

    Anything else is passed on as written, for ``build`` to refuse when it is not a mapping: a
    ``budget: false`` or ``early_stopping: 0`` must not quietly stand for the defaults.
    """
    value = data.get(name)
    return {} if value is None else value


def load_space(path: str | Path, *, storage: str | None = None, artifacts: str | None = None) -> SearchSpec:
    """Read and check a space file; ``storage`` and ``artifacts`` override the file's study section."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpaceError(source, "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpaceError(source, "", f"cannot be read: {err}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # the safe loader, stricter
    except DuplicateKey as err:
        raise SpaceError(
            source,
            "",
            f"key {err.key!r} is given twice in one mapping, on lines {err.first_line} and {err.second_line}: "
            "keep one (YAML would silently use the last)",
        ) from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise SpaceError(source, "", f"is not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise SpaceError(source, "", "is empty: a space needs at least study.name and space")
    if not isinstance(data, dict):
        raise SpaceError(
            source, "", f"must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}"
        )
    try:
        return _parse(source, text, data, storage, artifacts)
    except ConfigError as err:
        raise SpaceError(source, err.path, err.reason) from None


def _parse(source: str, text: str, data: dict, storage: str | None, artifacts: str | None) -> SearchSpec:
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(str(key), unknown_name_message("section", key, list(SECTIONS)))
    for required in ("study", "space"):
        if required not in data:
            raise ConfigError(required, "is missing")
    study = build(StudySection, data["study"], "study")
    if storage:
        study = dataclasses.replace(study, storage=storage)
    if artifacts:
        study = dataclasses.replace(study, artifacts=artifacts)
    data_spec = build(DataSpec, section(data, "data"), "data")
    try:
        info = describe(data_spec)
    except DataError as err:  # every DataError is about the folder the data is read from
        raise ConfigError("data.root", str(err)) from None
    except ValueError as err:  # the registry refusing an unknown data set name
        raise ConfigError("data.name", str(err)) from None
    try:
        check_reads(data_spec)
    except ConfigError as err:
        raise ConfigError(join("data", err.path), err.reason) from None
    recorded = RecordedSettings.of(data)
    keep = data.get("keep_weights", "front")
    if keep not in KEEP_WEIGHTS:
        raise ConfigError("keep_weights", unknown_name_message("choice", keep, list(KEEP_WEIGHTS)))
    sampler_raw = data.get("sampler", "tpe")
    sampler = build(SamplerSection, {"name": sampler_raw} if isinstance(sampler_raw, str) else sampler_raw, "sampler")
    spec = SearchSpec(
        source=source,
        text=text,
        study=study,
        data=data_spec,
        data_info=info,
        training=recorded.training,
        objectives=_objectives(data.get("objectives", {"accuracy": "maximize", "gmacs": "minimize"})),
        budget=recorded.budget,
        trials=build(TrialsSection, section(data, "trials"), "trials"),
        sampler=sampler,
        early_stopping=recorded.early_stopping,
        resources=build(ResourcesSection, section(data, "resources"), "resources"),
        keep_weights=keep,
        params=_params(data["space"]),
    )
    _check_single_values(spec)
    _check_grids(spec)
    _check_fixed_budget(spec)
    return spec


def _objectives(raw: Any) -> tuple[Objective, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("objectives", "expected a mapping such as {accuracy: maximize, gmacs: minimize}")
    out = []
    for name, direction in raw.items():
        if name not in OBJECTIVES:
            raise ConfigError(f"objectives.{name}", unknown_name_message("objective", name, list(OBJECTIVES)))
        if direction not in DIRECTIONS:
            raise ConfigError(f"objectives.{name}", unknown_name_message("direction", direction, list(DIRECTIONS)))
        if direction != OBJECTIVES[name]:
            raise ConfigError(
                f"objectives.{name}", f"{name} is only ever searched to {OBJECTIVES[name]}, not {direction}"
            )
        out.append(Objective(name, direction))
    return tuple(out)


def _field_hints() -> dict[str, Any]:
    """Every settable path and its type: architecture fields, dynamic.*, training.* (scalars)."""
    arch = {k: v for k, v in get_type_hints(ArchConfig).items() if k not in DATA_FIELDS and k != "dynamic"}
    dynamic = {f"dynamic.{k}": v for k, v in get_type_hints(DynamicConfig).items()}
    training = {f"training.{k}": v for k, v in get_type_hints(TrainSpec).items() if k != "augment"}
    return {**arch, **dynamic, **training}


def _params(raw: Any) -> tuple[Param, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("space", "expected a mapping of parameters, e.g. {embed_dim: {choices: [32, 64]}}")
    hints = _field_hints()
    params = {}
    for name, spec in raw.items():
        path = f"space.{name}"
        if name in DATA_FIELDS:
            raise ConfigError(path, f"{name} is set by the data set, not by the space")
        if name not in hints:
            raise ConfigError(path, unknown_name_message("parameter", name, sorted(hints)))
        params[name] = _param(name, spec, hints[name], path)
    for name, param in params.items():
        when = []
        for ref, allowed in param.when:
            where = f"space.{name}.when.{ref}"
            if ref not in params:
                raise ConfigError(
                    where,
                    f"refers to {ref!r}, which is not a parameter of this space (parameters: {', '.join(params)})",
                )
            possible = params[ref].possible()
            if possible is None:  # a continuous value would meet the condition almost never
                raise ConfigError(where, f"{ref!r} is continuous: a condition needs choices or a stepped range")
            # read as the parameter's own values are: `1e-3` is a number there, so here too
            allowed = tuple(coerce_value(v, params[ref].hint, where) for v in allowed)
            impossible = [v for v in allowed if not params[ref].contains(v)]
            if impossible:
                raise ConfigError(where, f"{impossible[0]!r} is not a value {ref!r} can take ({list(possible)})")
            when.append((ref, allowed))
        params[name] = dataclasses.replace(param, when=tuple(when))
    return tuple(_ordered(params))


def _param(name: str, spec: Any, hint: Any, path: str) -> Param:
    if not isinstance(spec, Mapping):
        spec = {"value": spec}
    allowed_keys = ("choices", "low", "high", "log", "step", "value", "when")
    for key in spec:
        if key not in allowed_keys:
            raise ConfigError(join(path, str(key)), unknown_name_message("key", key, list(allowed_keys)))
    kinds = [k for k in ("choices", "low", "value") if k in spec]
    if "high" in spec and "low" not in spec:
        kinds.append("low")
    if len(set(kinds)) != 1:
        raise ConfigError(path, "give exactly one of: choices: [...], low: and high:, or a fixed value")
    for key in ("log", "step"):
        if key in spec and kinds[0] != "low":  # it would be ignored without a word
            raise ConfigError(join(path, key), "applies to a range (low: and high:) only")
    when = _when(spec.get("when"), join(path, "when"))
    registry = NAMED_FIELDS.get(name)

    def check_value(value: Any, where: str) -> Any:
        value = coerce_value(value, hint, where)
        if registry is not None:
            try:
                registry.validate(value)
            except ValueError as err:
                raise ConfigError(where, str(err)) from None
        return value

    if "value" in spec:
        return Param(name, hint, value=check_value(spec["value"], join(path, "value")), when=when)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(join(path, "choices"), "expected a non-empty list of values")
        checked = tuple(check_value(v, f"{path}.choices[{i}]") for i, v in enumerate(choices))
        if any(isinstance(v, tuple) for v in checked):
            raise ConfigError(join(path, "choices"), "choices must be single values (numbers, strings, booleans)")
        if len(set(checked)) != len(checked):
            raise ConfigError(join(path, "choices"), "lists a value twice")
        return Param(name, hint, choices=checked, when=when)

    if hint not in (int, float, int | None, float | None):
        raise ConfigError(path, f"{name} takes {type_name(hint)}: use choices: [...] instead of a range")
    numeric = int if hint in (int, int | None) else float
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(path, "a range needs both low: and high:")
        value = _number(spec[key])
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (numeric is int and not isinstance(value, int) and value != int(value))
        ):
            raise ConfigError(
                join(path, key), f"expected {'an integer' if numeric is int else 'a number'}, got {spec[key]!r}"
            )
        spec = {**spec, key: numeric(value)}
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), _number(spec.get("step"))
    if not isinstance(log, bool):
        raise ConfigError(join(path, "log"), f"expected true or false, got {log!r}")
    if low > high:
        raise ConfigError(path, f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ConfigError(join(path, "low"), f"a log range must stay above 0, got low = {low}")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0
    ):
        raise ConfigError(join(path, "step"), f"expected a positive number, got {spec['step']!r}")
    if step is not None and log:
        raise ConfigError(join(path, "step"), "a log range cannot have a step")
    if step is not None and numeric is int:
        if step != int(step):  # Optuna's integer ranges, and the grid listed for conditions, step by whole numbers
            raise ConfigError(join(path, "step"), f"an integer range takes a whole-number step, got {step!r}")
        step = int(step)
    return Param(name, numeric, low=low, high=high, log=log, step=step, when=when)


def _number(value: Any) -> Any:
    """A numeric string as the float it spells (YAML 1.1 reads ``1e-3`` as a string); else ``value``."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # left as it is, for the caller to refuse
            return float(value)
    return value


def _when(raw: Any, path: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(path, "expected a mapping such as {mixer: dynamic} or {mixer: [dynamic, attention]}")
    when = tuple((str(name), tuple(v if isinstance(v, list) else [v])) for name, v in raw.items())
    for name, allowed in when:
        if not allowed:
            raise ConfigError(join(path, name), "an empty list: the parameter would never be sampled")
    return when


def _ordered(params: dict[str, Param]) -> list[Param]:
    """Parameters sorted so that each comes after those its condition reads (file order otherwise)."""
    done: dict[str, Param] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ConfigError(f"space.{name}.when", f"conditions form a cycle: {cycle}")
        visiting.append(name)
        for ref, _ in params[name].when:
            visit(ref)
        visiting.pop()
        done[name] = params[name]

    for name in params:
        visit(name)
    return list(done.values())


def _taken(param: Param | None, default: Any) -> tuple[tuple, bool]:
    """The values a config field takes in a space's configurations, and whether its default is
    one of them: where no parameter sets the field, or where its parameter's condition fails."""
    if param is None:
        return (default,), True
    possible = param.possible()
    if not param.when:
        return possible, False
    return (None if possible is None else (*possible, default)), True


def _check_grids(spec: SearchSpec) -> None:
    """Refuse a patch larger than the data set's images, and a context pool that is larger than
    every token grid the space can produce; a default counts where it stands in for a parameter."""
    by_name = {p.name: p for p in spec.params}
    patches, default_patch = _taken(by_name.get("patch_size"), ArchConfig.patch_size)
    height, width = spec.data_info.img_size
    for patch in patches:
        if patch < 1:
            raise ConfigError("space.patch_size", f"must be at least 1, got {patch}")
        # Every configuration with it would be rejected when sampled: with patch_size fixed, all of them.
        if patch > min(height, width):
            where = "space.patch_size" if "patch_size" in by_name else "space"
            given = _as_default("patch_size", by_name) if default_patch and patch == ArchConfig.patch_size else ""
            raise ConfigError(where, f"a patch of {patch}{given} is larger than the data set's {height}x{width} images")
    mixers, _ = _taken(by_name.get("mixer"), ArchConfig.mixer)
    predictor = by_name.get("dynamic.linear_predictor")
    predictors, _ = _taken(predictor, DynamicConfig.linear_predictor)
    if "dynamic" not in mixers or all(LINEAR_PREDICTORS.parse(v)[0].global_context for v in predictors):
        return  # no dynamic layer, or every predictor ignores the pool
    pool_param = by_name.get("dynamic.pool")
    pools, _ = _taken(pool_param, DynamicConfig.pool)
    if pools is None:
        return
    # A pool parameter whose condition holds for every dynamic mixer leaves the default to the others.
    if pool_param is not None and pool_param.when and _holds_for_dynamic(pool_param):
        pools = pool_param.possible()
    largest_side = max(min(height // p, width // p) for p in patches)
    for pool in pools:
        extent = pool_extent(pool)
        if extent is not None and extent > largest_side:
            given = (
                "" if pool in (pool_param.possible() if pool_param else ()) else _as_default("dynamic.pool", by_name)
            )
            raise ConfigError(
                "space.dynamic.pool" if pool_param else "space",
                f"{pool!r}{given} needs a token grid of at least {extent}x{extent}, "
                f"but the largest this space makes is {largest_side} tokens on its "
                f"short side ({height}x{width} input, patch {min(patches)})",
            )


def _holds_for_dynamic(param: Param) -> bool:
    """Whether ``param``'s condition reads the mixer alone and holds whenever it is dynamic."""
    return all(ref == "mixer" for ref, _ in param.when) and all(_one_of("dynamic", a) for _, a in param.when)


def _as_default(name: str, by_name: dict[str, Param]) -> str:
    if name in by_name:
        return f" (the default, which applies where {name}'s condition does not hold)"
    return f" (the default: set {name})"


def _check_single_values(spec: SearchSpec) -> None:
    """Refuse a value that no trial could run with, in the sections whose checks read one field alone.

    A training recipe's and a dynamic config's checks (epochs at least 1, a hypernetwork depth of 1
    to 3) hold for each field by itself, so every value a parameter there can take is checked now;
    a range's bounds stand for it, as those checks are bounds too. An architecture's checks read
    fields together (heads must divide the width), so a bad combination is rejected when sampled.
    """
    sections = {
        "training.": lambda name, value: dataclasses.replace(spec.training, **{name: value}),
        "dynamic.": lambda name, value: DynamicConfig(**{name: value}),
    }
    for param in spec.params:
        prefix = next((p for p in sections if param.name.startswith(p)), None)
        if prefix is None:
            continue
        values = (param.value,) if param.fixed else param.choices or (param.low, param.high)
        for value in values:
            try:
                sections[prefix](param.name.removeprefix(prefix), value)
            except ConfigError as err:
                raise ConfigError(f"space.{param.name}", f"{value!r} is not allowed: {err.reason}") from None


def _check_fixed_budget(spec: SearchSpec) -> None:
    """A space with nothing architectural to sample is one configuration: it must fit the budget."""
    if any(not p.fixed or p.when for p in spec.arch_params()):
        return
    try:
        arch, _ = spec.configs({p.name: p.value for p in spec.params if p.fixed})
    except ConfigError as err:
        raise ConfigError(f"space.{err.path}", f"the fixed configuration is invalid: {err.reason}") from None
    cost = complexity(arch)
    over = over_budget(spec.budget, cost.gmacs, cost.params)
    if over:
        raise ConfigError("budget", f"the space's only configuration is over budget: {over}")


def budget_constraints(budget: BudgetSection, gmacs: float, params: int) -> dict[str, float]:
    """How far a configuration is from each bound the budget sets, relative to the bound: positive
    when over it. The sampler learns where the budget lies from these (Optuna's constraints)."""
    out = {}
    if budget.max_gmacs is not None:
        out["max_gmacs"] = gmacs / budget.max_gmacs - 1.0
    if budget.max_params is not None:
        out["max_params"] = params / budget.max_params - 1.0
    return out


def over_budget(budget: BudgetSection, gmacs: float, params: int) -> str | None:
    """Why a configuration breaks the hard budget, or None."""
    if budget.max_gmacs is not None and gmacs > budget.max_gmacs:
        return f"{gmacs:.4g} GMACs > max_gmacs {budget.max_gmacs:g}"
    if budget.max_params is not None and params > budget.max_params:
        return f"{params:,} parameters > max_params {budget.max_params:,}"
    return None
