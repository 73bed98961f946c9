"""After a search: the HTML report in a real browser, tables, exports, full training with resume,
evaluation at another size, and the effective receptive field (optuna-dashboard: test_dashboard.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import load_study, sqlite_url, write_space
from safetensors.torch import load_file

import layers
from search.cli import main
from search.records import COMPLETE, STALE, TrialRecord
from search.results.erf import effective_receptive_field
from search.training.data import DataSpec

pytestmark = pytest.mark.usefixtures("session_ray")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def searched(tmp_path_factory, session_ray) -> Path:
    """A finished 6-trial study whose weights were all kept."""
    folder = tmp_path_factory.mktemp("searched")
    space = write_space(folder, trials={"count": 6, "parallel": 2}, keep_weights="all")
    assert main(["run", "--space", str(space), "--results", str(folder / "results"), "--quiet"]) == 0
    return folder


def study_args(folder: Path) -> list[str]:
    return ["--study", "tiny", "--storage", sqlite_url(folder), "--results", str(folder / "results")]


def test_a_report_cut_short_while_written_leaves_the_previous_one_whole(searched, tmp_path, monkeypatch):
    """Drivers ending together write the same report, and the dashboard uploads it: written in
    place, a writer stopped mid-write (or a second one truncating it) left half a page there."""
    from search.results.report import build_report

    report = tmp_path / "report.html"
    report.write_text("the previous report")
    write_text = Path.write_text

    def half_then_stopped(self, data, *args, **kwargs):
        write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        build_report(load_study(sqlite_url(searched)), report, storage_label="sqlite")
    monkeypatch.undo()
    assert report.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # and no temporary file left


def test_report_renders_in_a_real_browser(searched):
    from playwright.sync_api import sync_playwright

    assert main(["report", *study_args(searched)]) == 0
    report = searched / "results" / "tiny" / "report.html"
    assert external_resources(report.read_text()) == []  # self-contained: opens offline
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri())
        page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=30_000)
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == 7
        for i in range(plots.count()):  # every plot drew something
            assert plots.nth(i).locator(".point, .bars path, .scatterlayer path.js-line").count() > 0
        assert page.locator("table tbody tr").count() >= 1  # the front's table
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests  # nothing fetched


def external_resources(document: str) -> list[str]:
    """src/href of script, link and img tags (script bodies are not parsed as markup)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(
                v for k, v in attrs if tag in ("script", "link", "img", "iframe") and k in ("src", "href") and v
            )

    Collector().feed(document)
    return found


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_results_table_has_one_row_per_trial(searched, tmp_path, fmt):
    out = tmp_path / f"trials.{fmt}"
    assert main(["results", *study_args(searched), "--format", fmt, "--out", str(out)]) == 0
    frame = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt](out)
    study = load_study(sqlite_url(searched))
    assert len(frame) == len(study.trials)
    for column in (
        "number",
        "status",
        "accuracy",
        "gmacs",
        "mparams",
        "latency_ms",
        "curve",
        "arch.embed_dim",
        "arch.dynamic.linear_predictor",
        "arch.mixer",
        "arch.img_size",
    ):
        assert column in frame.columns, column
    complete = frame[frame.status == "complete"]
    assert (complete.accuracy > 0).all() and (complete.gmacs > 0).all()


def test_export_builds_back_with_timm_and_gives_the_same_outputs(searched, tmp_path):
    out = tmp_path / "export"
    assert main(["export", *study_args(searched), "--pareto", "--out", str(out)]) == 0
    folders = sorted(out.glob("trial_*"))
    assert folders
    torch.manual_seed(0)
    for folder in folders:
        number = int(folder.name.removeprefix("trial_"))
        assert {p.name for p in folder.iterdir()} == {
            "arch.yaml",
            "training.yaml",
            "data.yaml",
            "weights.safetensors",
            "README.md",
        }
        assert DataSpec.load(folder / "data.yaml") == DataSpec(name="digits")  # the search's data section
        arch = layers.ArchConfig.load(folder / "arch.yaml")
        images = torch.randn(3, arch.in_chans, *arch.img_size)
        # The model as the search left it: its config and the weights the run kept.
        original = layers.create_model(arch).eval()
        original.load_state_dict(
            load_file(str(searched / "results" / "tiny" / "weights" / f"trial_{number:05d}.safetensors"))
        )
        rebuilt = timm.create_model(
            "dynamic_backbone",
            arch=str(folder / "arch.yaml"),
            pretrained=True,
            pretrained_cfg_overlay={"file": str(folder / "weights.safetensors")},
        ).eval()
        with torch.no_grad():
            assert torch.equal(rebuilt(images), original(images))
        card = (folder / "README.md").read_text()
        assert f"Trial {number} of study `tiny`" in card and "| accuracy |" in card and "| epoch | accuracy |" in card
    assert main(["export", *study_args(searched), "--top", "2", "--out", str(tmp_path / "top")]) == 0
    assert len(list((tmp_path / "top").glob("trial_*"))) == 2
    assert main(["export", *study_args(searched), "--trial", "0", "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").glob("trial_*")] == ["trial_00000"]
    assert main(["export", *study_args(searched), "--trial", "99", "--out", str(tmp_path / "none")]) == 2


def test_an_export_onto_a_file_is_refused_before_any_trial_is_written(searched, tmp_path, capsys):
    """A file named like the second trial's folder gave a traceback after the first was written."""
    out = tmp_path / "top"
    out.mkdir()
    assert main(["export", *study_args(searched), "--top", "2", "--out", str(tmp_path / "probe")]) == 0
    second = sorted(p.name for p in (tmp_path / "probe").iterdir())[1]
    (out / second).write_text("")
    capsys.readouterr()
    assert main(["export", *study_args(searched), "--top", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot make an export folder") and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == [second]


def test_an_exported_cards_timm_call_gives_the_normalisation_the_search_trained_with(searched, tmp_path, monkeypatch):
    """timm's data config of an exported digits model said ImageNet's three-channel mean and std:
    inputs normalised so scored 0.40 where the search's normalisation scored 0.57."""
    out = tmp_path / "export"
    assert main(["export", *study_args(searched), "--trial", "0", "--out", str(out)]) == 0
    card = (out / "trial_00000" / "README.md").read_text()
    assert "normalised with mean (0.3) and std (0.38)" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(out / "trial_00000")
    scope: dict = {}
    exec(snippet, scope)  # the card's own code, as a user pastes it
    config = timm.data.resolve_data_config(model=scope["model"])
    assert config["mean"] == (0.3,) and config["std"] == (0.38,)


def test_the_front_exported_again_drops_the_trials_that_left_it_and_single_trials_add_up(searched, tmp_path):
    """Trial folders of an earlier export stayed beside the new front: the folder stopped being the front."""
    import yaml

    def exported(how: list[str], out: Path) -> list[str]:
        assert main(["export", *study_args(searched), *how, "--out", str(out)]) == 0
        return sorted(p.name for p in out.glob("trial_*"))

    top2 = exported(["--top", "2"], tmp_path / "probe")
    out = tmp_path / "export"
    top3 = exported(["--top", "3"], out)
    (dropped,) = set(top3) - set(top2)
    (out / dropped / "notes.txt").write_text("mine")  # a file the user put there stays, with its folder
    (out / "trial_99999").mkdir()  # a folder no export wrote is never touched
    assert exported(["--top", "2"], out) == sorted([*top3, "trial_99999"])
    assert [p.name for p in (out / dropped).iterdir()] == ["notes.txt"]
    assert yaml.safe_load((out / "exported.yaml").read_text()) == {"study": "tiny", "trials": top2}
    exported(["--trial", dropped.removeprefix("trial_")], out)  # one trial adds to the set
    assert yaml.safe_load((out / "exported.yaml").read_text())["trials"] == top3
    assert all((out / name / "arch.yaml").exists() for name in top3)


def test_the_card_of_a_trial_that_never_trained_claims_no_latency_or_time():
    """A rejected trial's card said "0.000 ms on None" and "0.0 s" of training."""
    from search.records import REJECTED
    from search.results.export import Provenance, model_card
    from search.training.trainer import TrainSpec

    recipe = TrainSpec(epochs=4)
    provenance = Provenance("tiny", "sqlite:///s.db", "tiny.yaml", ["accuracy", "gmacs"], DataSpec(), recipe)
    record = TrialRecord(number=4, state="PRUNED", status=REJECTED, params={}, values=None, mparams=9.0, gmacs=2.0)
    record.arch = layers.ArchConfig().to_dict()
    card = model_card(provenance, record, recipe, has_weights=False)
    assert "| latency | not measured |" in card and "| training wall time | did not train |" in card


def test_a_pruned_trials_card_says_how_long_it_trained_and_keeps_its_table_whole():
    """A trial pruned after 2 of 4 epochs was said to be trained for 4; with no values, a blank line
    split its table in two."""
    from search.records import PRUNED
    from search.results.export import Provenance, model_card
    from search.training.trainer import TrainSpec

    recipe = TrainSpec(epochs=4)
    provenance = Provenance("tiny", "sqlite:///s.db", "tiny.yaml", ["accuracy", "gmacs"], DataSpec(), recipe)
    record = TrialRecord(
        number=2, state="PRUNED", status=PRUNED, params={}, values=None, curve=[0.3, 0.4], mparams=0.1, gmacs=0.01
    )
    record.arch = layers.ArchConfig().to_dict()
    card = model_card(provenance, record, recipe, has_weights=False)
    assert "trained for 2 of the recipe's 4 epochs, batch" in card
    assert "|---|---|\n| parameters |" in card


def test_top_k_is_the_most_accurate_whatever_the_objectives():
    from search.results.export import select

    def complete(number, accuracy, gmacs):
        return TrialRecord(
            number=number, state="COMPLETE", status=COMPLETE, params={}, values=[gmacs, accuracy], curve=[accuracy]
        )

    records = [complete(0, 0.2, 0.001), complete(1, 0.9, 0.009), complete(2, 0.5, 0.002), complete(3, 0.7, 0.05)]
    assert [r.number for r in select(records, ["minimize", "maximize"], top=2)] == [1, 3]
    assert {r.number for r in select(records, ["minimize", "maximize"], pareto=True)} == {0, 1, 2}


def test_a_cost_of_zero_is_left_off_the_log_axis():
    """A reference trial whose latency measured 0 (a trial body too quick to time) broke the report."""
    from search.results.report import tradeoff_figure

    figures = dict(arch={"mixer": "static"}, gmacs=0.1, mparams=0.1)
    records = [
        TrialRecord(
            0, "COMPLETE", COMPLETE, {}, [0.5, 0.1], curve=[0.5], latency_ms=0.0, reference="static", **figures
        ),
        TrialRecord(1, "COMPLETE", COMPLETE, {}, [0.6, 0.2], curve=[0.6], latency_ms=2.0, **figures),
    ]
    figure = tradeoff_figure(records, "latency_ms", "latency (ms)")
    assert sorted(x for trace in figure.data for x in trace.x) == [2.0, 2.0]  # the trial and the front through it


def test_only_drawn_trials_carry_a_references_label():
    """A reference run left stale by a killed driver, then run again, had two labels, one on nothing."""
    from search.results.report import tradeoff_figure

    figures = dict(arch={"mixer": "static"}, gmacs=0.1, mparams=0.1, reference="weightformer")
    records = [
        TrialRecord(0, "FAIL", STALE, {}, None, curve=[0.4], **figures),
        TrialRecord(1, "COMPLETE", COMPLETE, {}, [0.6, 0.1], curve=[0.5, 0.6], retry_of=0, **figures),
    ]
    figure = tradeoff_figure(records, "gmacs", "GMACs")
    assert [(a.text, a.y) for a in figure.layout.annotations] == [("weightformer", 0.6)]


def trained(number: int, curve: list[float], params: dict | None = None, gmacs: float = 0.001) -> TrialRecord:
    return TrialRecord(
        number, "COMPLETE", COMPLETE, params or {}, [curve[-1], gmacs], curve=curve, gmacs=gmacs, train_macs=1e12
    )


@pytest.mark.parametrize("rungs", [[1, 2], [2]])
def test_the_trust_section_warns_only_at_rungs_that_rank_trials_unlike_the_end(rungs):
    """At epoch 1 these trials rank in the reverse of their final order (correlation -1), at
    epoch 2 in the same order (1)."""
    from search.results.report import trust_section
    from search.space import RecordedSettings

    records = [trained(i, [0.25 - 0.05 * i, 0.5 + 0.05 * i, 0.6 + 0.05 * i]) for i in range(6)]
    settings = RecordedSettings.of({"training": {"epochs": 3}, "early_stopping": {"rungs": rungs}})
    section = trust_section(records, settings)
    assert list(section.figure.data[0].y) == pytest.approx([-1.0, 1.0][-len(rungs) :])
    if 1 in rungs:
        assert "epoch 1 (-1.00)" in section.warning and "epoch 2" not in section.warning
    else:
        assert section.warning is None


def test_importance_intervals_separate_a_deciding_parameter_from_noise():
    """A parameter that sets the accuracy stands clear of one that does not: its 5 % bound is
    above the other's 95 % bound (the whiskers the report draws)."""
    from search.results.report import importance_section

    noise = [0.3, 0.8, 0.1, 0.6, 0.9, 0.2, 0.7, 0.4, 0.5, 0.0, 0.35, 0.65]
    records = [
        trained(i, [0.9 if i % 2 else 0.1], {"mixer": "dynamic" if i % 2 else "static", "lr": lr})
        for i, lr in enumerate(noise)
    ]
    bars = importance_section(records).figure.data[0]
    rows = dict(zip(bars.y, zip(bars.x, bars.error_x.array, bars.error_x.arrayminus)))
    (mixer, _, mixer_below), (lr, lr_above, _) = rows["mixer"], rows["lr"]
    assert mixer - mixer_below > lr + lr_above


def test_the_tree_by_tree_forest_gives_a_random_forests_importances():
    """Grown tree by tree, the forest ranks and weighs features as RandomForestRegressor does:
    on a target that two of four features set, both give the same shares within sampling noise."""
    from sklearn.ensemble import RandomForestRegressor

    from search.results.report import forest_importance

    rng = np.random.default_rng(1)
    features = rng.random((40, 4))
    target = 2 * features[:, 0] + features[:, 1] + 0.01 * rng.random(40)
    ours = forest_importance(features, target, 200, np.random.default_rng(0))
    sklearns = RandomForestRegressor(n_estimators=200, random_state=0).fit(features, target).feature_importances_
    assert ours.sum() == pytest.approx(1.0)
    assert ours == pytest.approx(sklearns, abs=0.03)
    assert ours[0] > ours[1] > max(ours[2], ours[3])


def test_the_report_draws_hypervolume_against_compute_with_the_benchmarks_function():
    from search.results.efficiency import hypervolume_curve
    from search.results.report import hypervolume_section
    from search.space import BudgetSection

    records = [trained(0, [0.5], gmacs=0.002), trained(1, [0.8], gmacs=0.003), trained(2, [0.6], gmacs=0.001)]
    directions = ["maximize", "minimize"]
    section = hypervolume_section(records, ["accuracy", "gmacs"], directions, BudgetSection(max_gmacs=0.004))
    by_compute = section.figure.data[1]
    curve = hypervolume_curve(records, [0.0, 0.004], directions)
    assert list(by_compute.x) == [p.compute / 1e12 for p in curve] == [1.0, 2.0, 3.0]
    assert list(by_compute.y) == [p.hypervolume for p in curve]
    assert "accuracy 0, gmacs 0.004" in section.note


def test_an_export_without_weights_leaves_none_of_an_earlier_export(searched, tmp_path, capsys):
    """Exported again into the same folder, from a run whose weights are elsewhere, a trial kept the
    earlier export's weights beside its new arch.yaml: train and erf then loaded them."""
    out = tmp_path / "export"
    assert main(["export", *study_args(searched), "--trial", "0", "--out", str(out)]) == 0
    assert (out / "trial_00000" / "weights.safetensors").exists()
    elsewhere = [*study_args(searched)[:4], "--results", str(tmp_path / "other")]
    capsys.readouterr()
    assert main(["export", *elsewhere, "--trial", "0", "--out", str(out)]) == 0
    assert not (out / "trial_00000" / "weights.safetensors").exists()
    assert "(no weights: none kept under" in capsys.readouterr().out


def test_full_training_can_start_from_exported_weights_on_another_data_set(searched, tmp_path, capsys):
    from test_data import write_imagefolder

    assert main(["export", *study_args(searched), "--trial", "0", "--out", str(tmp_path / "export")]) == 0
    write_imagefolder(tmp_path / "images")  # 3 classes of RGB images, where the search saw 1-channel digits
    code = main(
        [
            "train",
            "--arch",
            str(tmp_path / "export" / "trial_00000"),
            "--dataset",
            "imagefolder",
            "--data-root",
            str(tmp_path / "images"),
            "--img-size",
            "8",
            "--epochs",
            "1",
            "--init-weights",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "new for this data set: head.bias, head.weight, patch_embed.weight" in out
    trained = load_file(str(tmp_path / "run" / "weights.safetensors"))
    assert trained["head.weight"].shape[0] == 3 and trained["patch_embed.weight"].shape[1] == 3


def train_cmd(arch: Path, out: Path) -> list[str]:
    options = ["--dataset", "digits", "--epochs", "6", "--batch-size", "16"]
    return [sys.executable, "-m", "search", "train", "--arch", str(arch), *options, "--out", str(out)]


@pytest.mark.slow
def test_full_training_resumes_after_interruption(tmp_path):
    arch = tmp_path / "arch.yaml"
    layers.ArchConfig(patch_size=2, embed_dim=16, depth=2, every=1, offset=0).save(arch)
    straight = subprocess.run(train_cmd(arch, tmp_path / "straight"), cwd=ROOT, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    interrupted = subprocess.Popen(
        train_cmd(arch, tmp_path / "resumed"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoint = tmp_path / "resumed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert interrupted.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert not (tmp_path / "resumed" / "metrics.json").exists()  # it really was cut short
    resumed = subprocess.run(train_cmd(arch, tmp_path / "resumed"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the interruption changed nothing
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert len(metrics["curve"]) == 6


def test_training_evaluates_at_another_size(tmp_path):
    arch = tmp_path / "arch.yaml"
    layers.ArchConfig(patch_size=2, embed_dim=32, depth=3, every=1, offset=0).save(arch)
    options = ["--dataset", "digits", "--epochs", "8", "--batch-size", "32", "--lr", "5e-3", "--eval-size", "10"]
    code = main(["train", "--arch", str(arch), *options, "--out", str(tmp_path / "run")])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["img_size"] == [8, 8] and metrics["eval_size"] == [10, 10]
    # The same dynamic weights run on 25 tokens instead of 16 and still read the digits (chance
    # is 10 %), though not as well as at the size they were trained at, with no scale augmentation.
    assert metrics["val_accuracy"] > 0.8
    assert metrics["val_accuracy_at_eval_size"] > 0.4


def erf_model(mixer: str) -> layers.DynamicBackbone:
    torch.manual_seed(0)
    return layers.create_model(
        layers.ArchConfig(img_size=64, patch_size=4, embed_dim=32, depth=2, mixer=mixer, every=1, offset=0, num_heads=2)
    )


def test_erf_of_a_static_model_is_bounded_and_of_attention_is_not(tmp_path):
    images = torch.randn(4, 3, 64, 64)
    static = effective_receptive_field(erf_model("static"), images)
    # 16x16 tokens, centre token (8, 8); two 3x3 depthwise convs reach +-2 tokens: pixels 24..43.
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[24:44, 24:44] = True
    assert static[inside].sum() > 0 and static[~inside].abs().max() == 0
    attention = effective_receptive_field(erf_model("attention"), images)
    assert (attention > 0).all()  # every pixel moves the centre token
    dynamic = effective_receptive_field(erf_model("dynamic"), images)
    assert (dynamic[~inside] > 0).mean(dtype=torch.float32) > 0.9  # dynamic weights reach beyond the conv window
    arch = tmp_path / "arch.yaml"
    layers.ArchConfig(img_size=64, patch_size=4, embed_dim=32, depth=2, mixer="static").save(arch)
    assert main(["erf", "--arch", str(arch), "--out", str(tmp_path / "erf.png"), "--images", "2"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "erf.png").size == (512, 512)
