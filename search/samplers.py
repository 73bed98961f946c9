"""Optuna samplers by name. Multi-objective TPE (multivariate, grouped for conditional spaces,
constant liar for parallel trials) is the default."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from layers import Registry

SAMPLERS: Registry = Registry("sampler")


@SAMPLERS.register("tpe")
def tpe(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    settings = {"multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 10, **options}
    return optuna.samplers.TPESampler(seed=seed, **settings)


@SAMPLERS.register("nsga2")
def nsga2(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **{"population_size": 16, **options})


@SAMPLERS.register("random")
def random(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


@SAMPLERS.register("gp")
def gp(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, **options)


def create_sampler(name: str, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    factory, _ = SAMPLERS.parse(name)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return factory(seed, options)
        except TypeError as err:
            raise ValueError(f"sampler {name!r}: bad option ({err})") from None
