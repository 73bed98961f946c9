"""The command line as a new user meets it: help without markup, misuse refused in one line, and a
finished run that says where its results are and what to run next."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import sqlite_url, write_space
from safetensors.torch import save_file

import layers
from layers import ArchConfig
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
    study = optuna.create_study(study_name="tiny", storage=open_storage(url), directions=["maximize", "minimize"])
    study.set_user_attr("space", "")  # made by a search that has yet to finish a trial
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


def plain_study(tmp_path: Path) -> str:
    """A two-objective study made with Optuna alone, in the default storage's kind of database."""
    url = sqlite_url(tmp_path)
    study = optuna.create_study(study_name="plain", storage=open_storage(url), directions=["maximize", "minimize"])
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), 1.0), n_trials=2)
    return url


@pytest.mark.parametrize(
    "command", [["report"], ["export", "--top", "1", "--out", "ex"], ["compare", "--out", "c.html"]], ids=str
)
def test_a_study_that_search_run_did_not_make_is_refused_where_its_trials_are_read(
    tmp_path, monkeypatch, capsys, command
):
    """Its trials carry no architecture: report and export ended in tracebacks."""
    monkeypatch.chdir(tmp_path)
    url = plain_study(tmp_path)
    assert main([command[0], "--study", "plain", "--storage", url, *command[1:]]) == 2
    err = capsys.readouterr().err
    assert "was not made by `search run`" in err and err.count("\n") == 1, err
    assert main(["results", "--study", "plain", "--storage", url]) == 0  # a table needs nothing of the search


def test_a_table_of_a_study_search_run_did_not_make_keeps_its_values(tmp_path, monkeypatch):
    """Its objectives have no names, and the table dropped their values."""
    monkeypatch.chdir(tmp_path)
    url = plain_study(tmp_path)
    assert main(["results", "--study", "plain", "--storage", url, "--out", "t.csv"]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["objective 1"].tolist() == [1.0, 1.0] and table["objective 0"].between(0, 1).all()


def test_the_table_of_a_study_with_no_trial_is_refused_in_one_line(tmp_path, capsys):
    """It wrote a file holding one newline, which pandas cannot read back."""
    url = sqlite_url(tmp_path)
    optuna.create_study(study_name="empty", storage=open_storage(url), directions=["maximize", "minimize"])
    assert main(["results", "--study", "empty", "--storage", url, "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert "has no trials yet" in err and err.count("\n") == 1 and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(
    "command",
    [["report", "--results", "a_file/results"], ["export", "--top", "1", "--out", "a_file"]],
    ids=["report", "export"],
)
def test_an_output_folder_that_cannot_be_made_gets_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    url = plain_study(tmp_path)
    optuna.load_study(study_name="plain", storage=open_storage(url)).set_user_attr("space", "")  # as if searched
    (tmp_path / "a_file").write_text("")
    assert main([command[0], "--study", "plain", "--storage", url, *command[1:]]) == 2
    err = capsys.readouterr().err
    assert "is not a folder this user can write" in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["results", "--out", "."], "cannot write --out '.': it is a folder"),
        (["results", "--results", "a_file"], "a_file is not a folder this user can write"),
        (["compare", "--out", "."], "cannot write --out '.': it is a folder"),
    ],
    ids=["results-out", "results-folder", "compare-out"],
)
def test_an_output_file_that_cannot_be_written_gets_one_line(tmp_path, monkeypatch, capsys, command, message):
    """Each ended in a traceback (IsADirectoryError, NotADirectoryError) once the work was done."""
    monkeypatch.chdir(tmp_path)
    url = plain_study(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert main([command[0], "--study", "plain", "--storage", url, *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_storage_file_that_is_not_a_database_gets_one_line(tmp_path, capsys):
    """SQLite's DatabaseError is OperationalError's parent, and was not caught: a traceback, after Ray."""
    from search.storage import StorageError, check_storage

    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    url = f"sqlite:///{text}"
    with pytest.raises(StorageError, match=r"notes\.db' is not an SQLite database"):
        check_storage(url)  # what search run checks before it starts Ray
    assert main(["report", "--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "file is not a database" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("port", ["70000", "0"])
def test_a_port_out_of_range_is_a_usage_error(tmp_path, capsys, port):
    """Python's resolver wrapped port 70000 to 4464, so the check passed and the server crashed;
    port 0 let the system pick one, and the address printed said port 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["dashboard", "--study", "plain", "--storage", sqlite_url(tmp_path), "--port", port])
    assert exit_.value.code == 2 and f"'{port}' is not a port (1 to 65535)" in capsys.readouterr().err


def test_a_dashboard_on_a_port_in_use_gets_one_line(tmp_path, capsys):
    url = plain_study(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--study", "plain", "--storage", url, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port}: ") and err.count("\n") == 1, err


@pytest.fixture
def tiny_arch(tmp_path) -> Path:
    """A patch-2 architecture for the 8x8 digits, as a YAML file."""
    path = tmp_path / "arch.yaml"
    ArchConfig.from_dict(
        {
            "img_size": [8, 8],
            "in_chans": 1,
            "num_classes": 10,
            "patch_size": 2,
            "embed_dim": 16,
            "depth": 1,
            "mixer": "static",
        }
    ).save(path)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "nope.safetensors"], "nope.safetensors"),
        (["--size", "1"], "img_size"),  # below the patch size
        (["--weights", "other.safetensors"], "other.safetensors does not fit"),
        (["--out", "other.safetensors/erf.png"], "is not a folder this user can write"),
        (["--weights", "checkpoint.pt"], "checkpoint.pt is not a safetensors weights file"),
        (["--out", "erfmap"], "erfmap: name a picture file"),
        (["--out", "."], "cannot write --out '.': it is a folder"),
    ],
)
def test_bad_erf_inputs_get_one_line_and_exit_code_2(tiny_arch, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    other = ArchConfig.load(tiny_arch).replace(embed_dim=32)
    save_file(layers.create_model(other).state_dict(), str(tmp_path / "other.safetensors"))
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x04 a pickle, as search train writes")
    out = tmp_path / "erf.png"
    assert main(["erf", "--arch", str(tiny_arch), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_an_erf_over_no_images_is_a_usage_error(tiny_arch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["erf", "--arch", str(tiny_arch), "--images", "0", "--out", str(tmp_path / "erf.png")])
    assert exit_.value.code == 2 and "--images: 0: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "digits", "--device", "bogus"], "--device 'bogus': not a device"),
        (["--dataset", "digits", "--device", "cuda:64"], "--device 'cuda:64': this machine has"),
        (["--dataset", "digits", "--arch", "malformed.yaml"], "malformed.yaml: not valid YAML"),
        ([], "--dataset is needed"),  # a bare architecture YAML says nothing of its data
        # ignored without a word: digits trained at 8x8
        (["--dataset", "digits", "--img-size", "16"], "--img-size: data set 'digits' does not read img_size"),
        (["--dataset", "digits", "--arch", "binary.yaml"], "binary.yaml: not a text file"),  # was a bare codec error
        (["--dataset", "digits", "--arch", "string.yaml"], "string.yaml: expected a mapping"),  # named no file
    ],
)
def test_bad_train_inputs_get_one_line_and_exit_code_2(tiny_arch, tmp_path, capsys, extra, message):
    (tmp_path / "malformed.yaml").write_text("embed_dim: [16\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xf0\x9f\x00\xff" * 8)
    (tmp_path / "string.yaml").write_text("just a string\n")
    out = tmp_path / "trained"
    args = ["train", "--arch", str(tiny_arch), "--epochs", "1", *extra, "--out", str(out)]
    named = ("malformed.yaml", "binary.yaml", "string.yaml")
    assert main([str(tmp_path / a) if a in named else a for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_training_an_export_keeps_the_searchs_validation_split_and_all_its_training_images(tiny_arch, tmp_path):
    """Trained from an export, a model was validated on a split of its own (20 % by default): with
    --init-weights, images its weights had trained on during the search (10 % held out there)."""
    from search.training.data import DataSpec

    folder = tmp_path / "trial_00003"
    folder.mkdir()
    shutil.copy(tiny_arch, folder / "arch.yaml")
    DataSpec(name="digits", val_fraction=0.1, seed=3, train_subset=200).save(folder / "data.yaml")
    assert main(["train", "--arch", str(folder), "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    run = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["run"]
    assert run["data"] == {**asdict(DataSpec(name="digits", val_fraction=0.1, seed=3)), "train_subset": None}


def test_a_checkpoint_written_on_another_device_is_refused(tiny_arch, tmp_path, capsys):
    """Its generators' states are the other device's: resuming from it ended in a traceback."""
    args = ["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["run"]["device"] = "cuda"
    torch.save(state, checkpoint)
    capsys.readouterr()
    assert main(args) == 2
    assert "checkpoint.pt is another run's: its device differ" in capsys.readouterr().err


def test_an_evaluation_size_the_model_cannot_take_is_refused_before_training(tiny_arch, tmp_path, capsys):
    out = tmp_path / "trained"
    args = ["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--eval-size", "1"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eval_size: ") and err.count("\n") == 1, err
    assert not out.exists()  # nothing trained, nothing written


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


def test_a_checkpoint_another_run_left_is_refused(tiny_arch, tmp_path, capsys):
    """The same folder trained on another data set resumed the first run's checkpoint and reported it."""
    args = ["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:4], "digit-pairs", *args[5:]]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is another run's: its data, arch differ" in err and err.count("\n") == 1, err


def test_a_run_from_weights_does_not_resume_one_from_scratch(tiny_arch, tmp_path, capsys):
    """Its checkpoint said nothing of the starting point: --init-weights resumed the scratch run."""
    source = tmp_path / "exported"
    source.mkdir()
    shutil.copy(tiny_arch, source / "arch.yaml")
    save_file(layers.create_model(ArchConfig.load(tiny_arch)).state_dict(), str(source / "weights.safetensors"))
    args = ["train", "--arch", str(source), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--init-weights"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is another run's: its init_weights differ" in err and err.count("\n") == 1, err


def test_a_training_folder_that_cannot_be_made_or_data_that_does_not_load_writes_nothing(tiny_arch, tmp_path, capsys):
    """A file as --out gave a traceback; a data root with nothing to load left arch.yaml and
    training.yaml behind."""
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    args = ["train", "--arch", str(tiny_arch), "--epochs", "1"]
    assert main([*args, "--dataset", "digits", "--out", str(tmp_path / "a_file")]) == 2
    assert "a_file is not a folder this user can write" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main([*args, "--dataset", "cifar10", "--data-root", str(tmp_path / "empty"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_training_into_the_folder_it_reads_is_refused(tiny_arch, tmp_path, capsys):
    """``--out`` the exported folder overwrote its arch.yaml and weights, and the model card no longer held."""
    before = tiny_arch.read_text()
    assert (
        main(["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "is where the architecture is read from" in err and err.count("\n") == 1, err
    assert tiny_arch.read_text() == before and not (tmp_path / "checkpoint.pt").exists()


def test_training_the_folder_it_runs_in_names_its_results_after_it(tiny_arch, tmp_path, monkeypatch):
    """``--arch .`` has no name: every such run trained straight into results/train/."""
    folder = tmp_path / "trial_00004"
    folder.mkdir()
    shutil.copy(tiny_arch, folder / "arch.yaml")
    monkeypatch.chdir(folder)
    assert main(["train", "--arch", ".", "--dataset", "digits", "--epochs", "1"]) == 0
    assert (folder / "results" / "train" / "trial_00004" / "weights.safetensors").exists()


@pytest.mark.parametrize("damage", [b"x\n", None], ids=["not a checkpoint", "truncated"])
def test_a_damaged_checkpoint_gets_one_line(tiny_arch, tmp_path, capsys, damage):
    """A truncated checkpoint gave a traceback; a text file was said to hold more than tensors."""
    args = ["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.write_bytes(damage if damage is not None else checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged or not a checkpoint" in err and err.count("\n") == 1, err


def test_ctrl_c_during_training_says_how_training_resumes(tiny_arch, tmp_path, monkeypatch, capsys):
    """It printed the search's message, about trials that do not exist here."""
    import search.training.full

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.training.full, "train_architecture", interrupted)
    args = ["train", "--arch", str(tiny_arch), "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: the last finished epoch is in") and "trials" not in err, err


def test_init_weights_without_weights_is_refused(tiny_arch, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--arch",
        str(tiny_arch),
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--init-weights",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: init_weights: the architecture has no weights.safetensors") and err.count("\n") == 1
    assert not out.exists()
