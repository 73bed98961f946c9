"""The command line as a new user meets it: help without markup, misuse refused in one line, and a
finished run that says where its results are and what to run next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import sqlite_url, write_space

from search.cli import main
from search.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_code.value.code == 0
    assert "``" not in out  # reST markup from a docstring
    assert "compare" in out and "Exit codes: 0 done" in out


def test_export_of_no_trial_is_refused(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    optuna.create_study(study_name="tiny", storage=open_storage(url), directions=["maximize", "minimize"])
    code = main(["export", "--study", "tiny", "--storage", url, "--top", "0", "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == "error: --top 0: K must be at least 1\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["train", "--dataset", "digits", "--epochs", "1"], ["erf", "--out", "erf.png"]])
def test_a_missing_architecture_says_what_was_expected(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "--arch", "missing.yaml", *command[1:]]) == 2
    assert capsys.readouterr().err == (
        "error: missing.yaml: no such file or folder (expected an exported folder or an architecture YAML)\n"
    )


@pytest.mark.slow
def test_a_quiet_run_shows_only_its_own_lines_and_ends_with_the_next_commands(tmp_path):
    space = write_space(tmp_path, trials={"count": 1, "parallel": 1})
    run = subprocess.run(
        [sys.executable, "-m", "search", "run", "--space", str(space), "--results", str(tmp_path / "r"), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    assert "Token authentication" not in run.stderr  # Ray's notice, on a line of its own making
    lines = run.stdout.splitlines()
    assert run.stdout.endswith("\n")
    assert lines[0].startswith(f"results of study 'tiny': {tmp_path / 'r' / 'tiny'}/ (")
    where = f"--storage {sqlite_url(tmp_path)} --results {tmp_path / 'r'}"
    assert lines[-3:] == [
        f"  python -m search report --study tiny {where}",
        f"  python -m search dashboard --study tiny {where}",
        f"  python -m search export --study tiny {where} --pareto --out {tmp_path / 'r' / 'tiny' / 'export'}",
    ]
