"""``search compare``: the fronts of studies from different storages in one figure, and their
hypervolume against training compute measured from one reference point."""

from __future__ import annotations

import pytest
from conftest import load_study, sqlite_url, write_space
from test_dashboard import BROWSER_ARGS
from test_results import CHROMIUM

from search.cli import main
from search.driver import Driver
from search.records import records as read_records
from search.results.compare import Compared, CompareError, parse_studies, parse_study, shared_reference
from search.results.efficiency import hypervolume_curve
from search.space import load_space
from tests.fakes import curve_segment

pytestmark = pytest.mark.usefixtures("session_ray")

MAXIMIZE_MINIMIZE = ["maximize", "minimize"]


@pytest.fixture(scope="module")
def storages(tmp_path_factory, session_ray) -> dict[str, str]:
    """Two finished studies, each in a storage of its own: TPE under one budget, random under a looser one."""
    urls = {}
    for name, sampler, max_gmacs in (("tpe", "tpe", 0.0003), ("random", "random", 0.0005)):
        folder = tmp_path_factory.mktemp(name)
        space = write_space(
            folder, name=name, sampler=sampler, budget={"max_gmacs": max_gmacs}, trials={"count": 3, "parallel": 1}
        )
        Driver(load_space(space), results=folder / "results", segment=curve_segment).run()
        urls[name] = sqlite_url(folder)
    return urls


def test_compare_draws_studies_from_two_storages_against_one_reference(storages, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "compare.html"
    args = ["compare", "--study", f"tpe@{storages['tpe']}", "--study", f"random@{storages['random']}"]
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(out.as_uri())
        page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
        assert page.locator(".js-plotly-plot").count() == 2
        legend = page.locator(".legendtext").evaluate_all("texts => texts.map(t => t.textContent)")
        assert {"tpe: front", "random: front", "tpe", "random"} <= set(legend), legend
        summary = page.locator("body > p").first.inner_text()
        rows = {
            cells[0]: cells for cells in (row.locator("td").all_inner_texts() for row in page.locator("tbody tr").all())
        }
        browser.close()
    assert errors == []
    # One reference for both: accuracy 0 and the looser of the two budgets.
    assert "accuracy 0, gmacs 0.0005" in summary
    for name, url in storages.items():
        curve = hypervolume_curve(read_records(load_study(url, name)), [0.0, 0.0005], MAXIMIZE_MINIMIZE)
        assert rows[name][-2] == f"{curve[-1].hypervolume:.4g}"


def test_a_given_reference_point_is_used(storages, tmp_path):
    out = tmp_path / "compare.html"
    args = ["compare", "--study", f"tpe@{storages['tpe']}", "--study", f"random@{storages['random']}"]
    assert main([*args, "--reference", "0.1,0.002", "--out", str(out)]) == 0
    assert "accuracy 0.1, gmacs 0.002" in out.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--study", "missing"], "no study 'missing'"),
        (["--reference", "0"], "--reference '0': expected 2 numbers separated by commas"),
        (["--study", "@sqlite:///x.db"], "expected NAME or NAME@STORAGE_URL"),
    ],
)
def test_bad_comparisons_get_one_line_and_exit_code_2(storages, tmp_path, capsys, extra, message):
    code = main(["compare", "--study", "tpe", "--storage", storages["tpe"], *extra, "--out", str(tmp_path / "c.html")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "c.html").exists()


def study(label: str, budget: dict | None, objectives=("accuracy", "gmacs")) -> Compared:
    return Compared(label, "sqlite:///x.db", list(objectives), MAXIMIZE_MINIMIZE, [], {"budget": budget})


def test_the_reference_comes_from_the_loosest_budget_or_is_asked_for():
    assert shared_reference([study("a", {"max_gmacs": 0.5}), study("b", {"max_gmacs": 2.0})]) == [0.0, 2.0]
    with pytest.raises(CompareError, match=r"'b' sets no budget bound .* give one with --reference"):
        shared_reference([study("a", {"max_gmacs": 0.5}), study("b", None)])


def test_a_study_without_objective_names_asks_for_a_reference():
    """A study made with Optuna alone names its objectives "objective 0", ...: a KeyError escaped."""
    unnamed = study("plain", {"max_gmacs": 1.0}, objectives=("objective 0", "objective 1"))
    with pytest.raises(CompareError, match="give one with --reference"):
        shared_reference([unnamed])


def test_a_study_is_named_alone_or_with_its_storage():
    assert parse_study("tpe", "sqlite:///a.db") == parse_study("tpe@sqlite:///a.db", "sqlite:///b.db")
    # Study names hold no '@', so the first one ends the name, whatever the URL holds.
    assert parse_study("tpe@postgresql://me@db:5432/search", "").storage == "postgresql://me@db:5432/search"


def test_studies_with_other_objectives_are_refused(tmp_path):
    from search.results.compare import build_comparison

    latency = Compared("b", "x", ["accuracy", "latency"], MAXIMIZE_MINIMIZE, [], {})
    with pytest.raises(CompareError, match="different objectives"):
        build_comparison([study("a", {"max_gmacs": 1.0}), latency], None, tmp_path / "c.html")


def test_only_complete_trials_enter_the_fronts(storages):
    """A rejected or failed trial has no objective values: none is invented for the figure."""
    from search.results.compare import fronts_figure

    compared = Compared.of(load_study(storages["tpe"], "tpe"), "tpe", "x")
    complete = [r for r in compared.records if r.status == "complete"]
    assert len(complete) < len(compared.records)  # the budget rejected some
    plotted = sum(len(trace.x) for trace in fronts_figure([compared]).data if trace.name.endswith("complete trials"))
    assert plotted == len(complete)


def test_a_front_steps_along_the_edge_of_what_it_dominates():
    """With the cost first and accuracy on the x axis, the front's steps went along x first, across
    configurations that no trial reaches."""
    from search.records import TrialRecord
    from search.results.compare import fronts_figure

    def record(number: int, values: list[float]) -> TrialRecord:
        return TrialRecord(number, "COMPLETE", "complete", {}, values, curve=[0.5], gmacs=1.0, mparams=0.1)

    cost_first = Compared(
        "c", "x", ["gmacs", "accuracy"], ["minimize", "maximize"], [record(0, [1, 0.5]), record(1, [2, 0.8])], {}
    )
    accuracy_first = Compared(
        "a", "x", ["accuracy", "gmacs"], ["maximize", "minimize"], [record(0, [0.5, 1]), record(1, [0.8, 2])], {}
    )
    shapes = [
        next(trace.line.shape for trace in fronts_figure([study]).data if trace.name.endswith("front"))
        for study in (cost_first, accuracy_first)
    ]
    assert shapes == ["vh", "hv"]


def test_a_study_given_twice_is_refused():
    """Two identical legend entries merged into one group, with nothing said."""
    with pytest.raises(CompareError, match="--study 'tiny' of the same storage is given twice"):
        parse_studies(["tiny", "other", "tiny@sqlite:///s.db"], "sqlite:///s.db")
    assert len(parse_studies(["tiny", "tiny@sqlite:///t.db"], "sqlite:///s.db")) == 2  # two storages: two studies


def test_a_study_with_no_trial_is_refused(storages, tmp_path):
    """Its compute was 0, so the comparison at equal compute read 0 for every study, with no word why."""
    from search.results.compare import build_comparison

    searched = Compared.of(load_study(storages["tpe"], "tpe"), "tpe", "x")
    empty = Compared("empty", "x", searched.objectives, searched.directions, [], {})
    with pytest.raises(CompareError, match="study 'empty' has no trial yet"):
        build_comparison([searched, empty], [0.0, 1.0], tmp_path / "c.html")
    assert not (tmp_path / "c.html").exists()
