"""The space format: shipped spaces load, sampling follows conditions, references fit."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from test_data import write_cifar, write_imagefolder

from layers import complexity
from search.references import reference_params
from search.space import load_space

SPACES = Path(__file__).resolve().parent.parent / "spaces"


def with_root(name: str, root: Path, tmp_path: Path) -> Path:
    data = yaml.safe_load((SPACES / name).read_text())
    data["data"]["root"] = str(root)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_space_loads():
    spec = load_space(SPACES / "dynamic.yaml")
    assert spec.data.name == "digit-pairs" and spec.trials.count >= 20 and spec.trials.parallel == 2
    assert spec.rungs(spec.training.epochs) == (4, 7)
    assert set(reference_params(spec)) == {"weightformer", "attention", "static"}


def test_fashion_space_loads():
    """The real-data CPU search: Debian's Fashion-MNIST files, a documented training subset, all references."""
    spec = load_space(SPACES / "fashion.yaml")
    assert spec.data.name == "fashion-mnist" and spec.data.root is None and spec.data.train_subset == 20_000
    assert spec.data_info.img_size == (28, 28) and spec.trials.parallel == 2
    assert "train_subset" in (SPACES / "fashion.yaml").read_text().split("\n\n")[0]  # said in the header
    assert set(reference_params(spec)) == {"weightformer", "attention", "static"}


def test_cifar_and_imagenet_spaces_load(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    write_cifar(tmp_path / "cifar", 10)
    cifar_spec = load_space(with_root("cifar10.yaml", tmp_path / "cifar", tmp_path))
    assert cifar_spec.resources.gpus == 0.5 and cifar_spec.data_info.num_classes == 10
    write_imagefolder(tmp_path / "imagenet")
    imagenet = load_space(with_root("imagenet.yaml", tmp_path / "imagenet", tmp_path))
    recipe = imagenet.training
    assert (
        recipe.epochs,
        recipe.lr,
        recipe.lr_reference_batch,
        recipe.weight_decay,
        recipe.warmup_epochs,
        recipe.label_smoothing,
    ) == (300, 5e-4, 512, 0.05, 20, 0.1)
    augment = recipe.augment
    assert (
        augment.randaugment_ops,
        augment.randaugment_magnitude,
        augment.mixup,
        augment.cutmix,
        augment.random_erasing,
    ) == (2, 9, 0.8, 1.0, 0.25)
    assert "weightformer" in reference_params(imagenet)


def sample_many(spec, n: int = 60) -> list[dict]:
    study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(spec.sample(trial))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return out


def test_conditional_parameters_exist_only_under_their_condition():
    spec = load_space(SPACES / "dynamic.yaml")
    for values in sample_many(spec):
        assert ("dynamic.linear_predictor" in values) == (values["mixer"] == "dynamic")
        assert ("dynamic.hyper_depth" in values) == (values.get("dynamic.linear_predictor") == "deep")
        assert ("every" in values) == (values["mixer"] != "static")
        assert values["patch_size"] == 4  # fixed values are always there
        assert 2.0e-3 <= values["training.lr"] <= 6.0e-3


def test_sampled_values_build_configs_and_recipes():
    spec = load_space(SPACES / "dynamic.yaml")
    for values in sample_many(spec, 30):
        arch, training = spec.configs(values)
        assert arch.img_size == (8, 40) and arch.in_chans == 1 and arch.num_classes == 10
        assert training.lr == values["training.lr"] and training.epochs == spec.training.epochs
        assert arch.mixer == values["mixer"]
        assert complexity(arch).macs > 0


def test_references_are_the_paper_design_with_the_mixer_swapped():
    spec = load_space(SPACES / "dynamic.yaml")
    fixed = {p.name: p.value for p in spec.params if p.fixed}
    refs = reference_params(spec)
    configs = {name: spec.configs({**fixed, **params})[0] for name, params in refs.items()}
    wf = configs["weightformer"]
    assert (wf.mixer, wf.every, wf.offset) == ("dynamic", 3, 1)
    assert (wf.dynamic.linear_predictor, wf.dynamic.pool, wf.dynamic.conv_predictor, wf.dynamic.norm) == (
        "bilateral",
        "avg2",
        "adaptive",
        "unit1",
    )
    assert configs["attention"].mixer == "attention" and configs["static"].mixer == "static"
    assert len({(c.embed_dim, c.depth) for c in configs.values()}) == 1  # the same width and depth for all


def test_the_weightformer_reference_keeps_the_study_conventions():
    """The preset's odd-grid pooling and drop-path branches do not define the reference: on the
    fashion space's odd 7 x 7 grid it is still enqueued, with the config defaults every trial has."""
    spec = load_space(SPACES / "fashion.yaml")
    fixed = {p.name: p.value for p in spec.params if p.fixed}
    arch, _ = spec.configs({**fixed, **reference_params(spec)["weightformer"]})
    assert arch.grid == (7, 7) and arch.dynamic.pool == "avg2"
    assert (arch.dynamic.pool_rounding, arch.drop_path_branches) == ("ceil", "both")
    default = load_space(SPACES / "dynamic.yaml")
    assert not any("rounding" in p.name or "branches" in p.name for p in default.params)  # the sampled set is unchanged


def test_a_reference_the_space_cannot_express_is_left_out(tmp_path):
    text = (
        (SPACES / "dynamic.yaml")
        .read_text()
        .replace(
            "dynamic.pool: {choices: [global, avg2, max2, adaptive2, attn4]",
            "dynamic.pool: {choices: [max2, adaptive2]",
        )
    )
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert set(reference_params(load_space(path))) == {"attention", "static"}


def test_yaml_1_1_exponents_are_read_as_numbers(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "study: {name: s}\ntraining: {lr: 1e-3}\n"
        "space: {patch_size: 4, training.weight_decay: {low: 1e-4, high: 1e-1, log: true}}\n"
    )
    spec = load_space(path)
    assert spec.training.lr == 1e-3 and spec.params[1].low == 1e-4


def test_yaml_1_1_exponents_are_numbers_in_steps_conditions_and_counts_too(tmp_path):
    """`step: 1e-3` and a condition on `1e-3` were refused as strings, `max_params: 4e7` as no integer."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "study: {name: s}\nbudget: {max_params: 4e7}\n"
        "space: {patch_size: 4, training.lr: {choices: [1e-3, 3e-3]},"
        " training.weight_decay: {low: 1e-3, high: 1e-2, step: 1e-3, when: {training.lr: 1e-3}}}\n"
    )
    spec = load_space(path)
    (decay,) = [p for p in spec.params if p.name == "training.weight_decay"]
    assert decay.step == 1e-3 and decay.when == (("training.lr", (1e-3,)),) and spec.budget.max_params == 40_000_000


def test_a_condition_on_a_stepped_float_matches_the_grid_point_optuna_gives(tmp_path):
    """Optuna gives 0.1 + 2 x 0.1 = 0.30000000000000004: a condition on 0.3 loaded, then never held."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "study: {name: s}\n"
        "space: {patch_size: 4, drop_path_rate: {low: 0.1, high: 0.5, step: 0.1},"
        " drop_path_branches: {choices: [both, mlp], when: {drop_path_rate: [0.3]}}}\n"
    )
    (branches,) = [p for p in load_space(path).params if p.name == "drop_path_branches"]
    assert branches.active({"drop_path_rate": 0.1 + 2 * 0.1}) and not branches.active({"drop_path_rate": 0.4})


def test_searched_values_are_read_as_the_training_section_reads_them(tmp_path):
    """A value in space: is coerced exactly as the same value in training: would be."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "study: {name: s}\ntraining: {grad_clip: 1}\n"
        "space: {patch_size: 4, training.lr: {choices: [1e-3, 3e-3]}, "
        "training.grad_clip: {choices: [1, 2.0]}, training.weight_decay: 1e-2}\n"
    )
    spec = load_space(path)
    by_name = {p.name: p for p in spec.params}
    assert spec.training.grad_clip == 1.0
    assert by_name["training.lr"].choices == (1e-3, 3e-3)
    assert by_name["training.grad_clip"].choices == (1.0, 2.0)
    assert by_name["training.weight_decay"].value == 1e-2


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_every_sampler_works_with_the_conditional_space(sampler):
    from search.samplers import create_sampler

    spec = load_space(SPACES / "dynamic.yaml")
    study = optuna.create_study(
        directions=spec.directions,
        sampler=create_sampler(sampler, 0, {"n_startup_trials": 3} if sampler in ("tpe", "gp") else {}),
    )
    seen = set()
    for i in range(8):
        trial = study.ask()
        values = spec.sample(trial)
        arch, _ = spec.configs(values)
        seen.add(values["mixer"])
        study.tell(trial, [0.1 * (i % 5), complexity(arch).gmacs])
    assert len(study.trials) == 8 and len(seen) >= 2


def test_references_take_the_middle_value_the_space_can_take(tmp_path):
    """A stepped float range gave the references its arithmetic middle, off the grid (Optuna warned
    and trained it anyway); an integer log range the arithmetic middle; numeric choices the middle
    of the list as written."""
    from conftest import write_space

    space = {
        "patch_size": 2,
        "num_heads": 2,
        "mixer": {"choices": ["dynamic", "attention", "static"]},
        "embed_dim": {"choices": [64, 16, 32]},
        "depth": {"low": 1, "high": 16, "log": True},
        "drop_path_rate": {"low": 0.0, "high": 0.35, "step": 0.1},
    }
    spec = load_space(write_space(tmp_path, space=space, budget={"max_gmacs": 1.0}))
    references = reference_params(spec)
    assert set(references) == {"weightformer", "attention", "static"}
    for values in references.values():
        assert values["embed_dim"] == 32 and values["depth"] == 4
        assert values["drop_path_rate"] in (0.1, 0.2)
