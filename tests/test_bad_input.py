"""Bad input gets one clear message and exit code 2, never a traceback, and writes nothing.

Each case is a file under tests/bad_spaces/: its ``# expect:`` lines are fragments the message
must contain, its ``# args:`` line extra command-line arguments. A new check adds a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main

CASES = sorted((Path(__file__).parent / "bad_spaces").glob("*.yaml"))
SPECIAL = {"empty": ["is empty"]}


def header(path: Path, key: str) -> list[str]:
    prefix = f"# {key}:"
    return [line[len(prefix) :].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_space_is_refused_cleanly(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = " ".join(header(path, "args")).split()
    code = main(["run", "--space", str(path), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    expected = SPECIAL.get(path.stem) or header(path, "expect")
    assert expected, f"{path.name} has no '# expect:' line"
    for fragment in expected:
        assert fragment in err, err
    if not args:
        assert str(path) in err  # the message names the file
    assert "secret" not in err  # passwords are masked
    assert list(tmp_path.iterdir()) == []  # nothing written: no database, no results/


def test_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--space", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: nope.yaml: no such file\n"
    assert list(tmp_path.iterdir()) == []
