"""Command line: python -m search <command>.

    run        run (or resume) the search a space file describes
    report     write the study's HTML report (plots, importance, scaling, front table)
    compare    put the fronts of several studies, and their hypervolume against compute, side by side
    dashboard  serve the study with optuna-dashboard, its notes and artifacts included
    results    write the trial table as csv, parquet or json
    export     write the best architectures as folders (config, weights, model card)
    train      train one architecture fully, with checkpoints and resume
    erf        draw a model's effective receptive field

Exit codes: 0 done, 1 unexpected error, 2 bad input (space, storage, cluster, data), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import DEFAULT_RESULTS, DEFAULT_STORAGE, TABLE_FORMATS

if TYPE_CHECKING:  # the commands import what they use: --help stays light
    import torch

    from .training.data import DataSpec

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130  # an unexpected error exits with Python's 1
#: What Ctrl-C leaves behind, by command (after "interrupted").
INTERRUPTED = {
    "run": ": running trials were recorded as interrupted; run the same command again to resume",
    "train": ": the last finished epoch is in the training folder's checkpoint; run the same command again to resume",
}
#: `search train`'s flags for the data keys they set.
DATA_FLAGS = {"root": "data-root", "img_size": "img-size"}
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def add(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn

    return add


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search",
        description="Search attention-free vision architectures whose weights are predicted from the input: "
        "run a search, then inspect, compare and export what it found.",
        epilog=__doc__.strip().splitlines()[-1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume the search a space file describes")
    run.add_argument("--space", default="spaces/dynamic.yaml", help="the YAML space (default: %(default)s)")
    run.add_argument("--storage", help="storage URL overriding the space's (sqlite:///... or postgresql://...)")
    run.add_argument(
        "--address", help="join this Ray cluster (host:port, ray://host:port or auto) instead of a local Ray"
    )
    run.add_argument("--results", default=DEFAULT_RESULTS, help="folder for weights and reports (default: %(default)s)")
    run.add_argument(
        "--artifacts",
        help="artifact store folder overriding the space's study.artifacts (default: results/<study>/artifacts); "
        "a shared mount lets drivers on several machines share it",
    )
    run.add_argument("--quiet", action="store_true", help="log lines instead of the live display")

    def study_command(name: str, help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help)
        command.add_argument("--study", required=True, help="the study name")
        command.add_argument("--storage", default=DEFAULT_STORAGE, help="storage URL (default: %(default)s)")
        command.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
        return command

    study_command("report", "write results/<study>/report.html")
    compare = sub.add_parser(
        "compare", help="the fronts of several studies, and their hypervolume against training compute, side by side"
    )
    compare.add_argument(
        "--study",
        action="append",
        required=True,
        metavar="NAME[@STORAGE_URL]",
        help="a study, in --storage unless @STORAGE_URL follows its name; give --study once per study",
    )
    compare.add_argument("--storage", default=DEFAULT_STORAGE, help="storage of the studies given by name alone")
    compare.add_argument(
        "--reference",
        metavar="V1,V2,...",
        help="the hypervolume's reference point, one value per objective "
        "(default: accuracy 0 and the loosest of the studies' budget bounds)",
    )
    compare.add_argument(
        "--out", default=f"{DEFAULT_RESULTS}/compare.html", help="HTML file to write (default: %(default)s)"
    )
    dashboard = study_command("dashboard", "serve the study with optuna-dashboard, its notes and artifacts included")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    dashboard.add_argument("--port", type=_port, default=8080)
    results = study_command("results", "write the trial table")
    results.add_argument("--format", choices=TABLE_FORMATS, default="csv")
    results.add_argument("--out", help="file to write (default: results/<study>/trials.<format>)")
    export = study_command("export", "export architectures with their weights and model cards")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--pareto", action="store_true", help="every trial of the Pareto front")
    which.add_argument("--top", type=int, metavar="K", help="the K most accurate trials")
    which.add_argument("--trial", type=int, metavar="N", help="trial number N")
    export.add_argument("--out", required=True, help="folder to write into")

    train = sub.add_parser("train", help="train one architecture fully (checkpoints, resume)")
    train.add_argument("--arch", required=True, help="an exported folder or an architecture YAML")
    train.add_argument(
        "--dataset",
        help="digits, digit-pairs, fashion-mnist, mnist, cifar10, cifar100 or imagefolder "
        "(default: an exported folder's, from its data.yaml)",
    )
    train.add_argument(
        "--data-root", help="local folder of mnist/cifar10/cifar100/imagefolder (fashion-mnist: optional)"
    )
    train.add_argument("--img-size", type=int, help="imagefolder: training image size")
    train.add_argument(
        "--val-fraction",
        type=float,
        help="share of the training images held out for validation (default: the search's, else 0.2)",
    )
    train.add_argument("--data-seed", type=int, help="seed of that split (default: the search's, else 0)")
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--init-weights", action="store_true", help="start from the folder's weights.safetensors")
    train.add_argument("--eval-size", type=_size, metavar="S or HxW", help="also evaluate at this input size")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    train.add_argument("--out", help="folder for checkpoints, weights and metrics (default: results/train/<arch>)")

    erf = sub.add_parser("erf", help="draw the effective receptive field of a model")
    erf.add_argument("--arch", required=True, help="an exported folder or an architecture YAML")
    erf.add_argument("--weights", help="weights (safetensors); default: the folder's, else the initialisation")
    erf.add_argument(
        "--images", type=_positive, default=16, help="random images to average over (default: %(default)s)"
    )
    erf.add_argument("--size", type=_size, metavar="S or HxW", help="input size (default: the architecture's)")
    erf.add_argument("--out", required=True, help="PNG file to write")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def _load_study(args: argparse.Namespace, searched: bool = True):
    return _open_study(args.study, args.storage, searched)


def _check_owns_results(results: Path, study) -> None:
    """Refuse to write into results/<name>/ where another study of that name keeps its results."""
    from .records import STUDY_UID, FolderError, foreign_results

    foreign = foreign_results(results, study.study_name, study.user_attrs.get(STUDY_UID))
    if foreign is not None:
        raise FolderError(f"{foreign}: give another --results")


def _open_study(name: str, url: str, searched: bool = True):
    """The study ``name``; with ``searched``, refused unless ``search run`` made it: the report,
    exports and comparisons read what its trials recorded (architecture, curve, status)."""
    import optuna

    from .storage import StorageError, masked, open_storage

    storage = open_storage(url, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study {name!r} in {masked(url)}; studies there: {', '.join(names) or 'none'}") from None
    if searched and "space" not in study.user_attrs:
        raise StorageError(
            f"study {name!r} in {masked(url)} was not made by `search run` (it has no recorded space): "
            "its trials carry no architectures to report, export or compare"
        )
    return study


@command("report")
def report(args: argparse.Namespace) -> int:
    from .records import check_writable, results_dir
    from .results.report import build_report
    from .storage import masked

    study = _load_study(args)
    folder = results_dir(Path(args.results), args.study)
    check_writable(folder, "the results folder")
    _check_owns_results(Path(args.results), study)
    path = build_report(study, folder / "report.html", storage_label=masked(args.storage))
    print(path)
    return EXIT_OK


@command("compare")
def compare(args: argparse.Namespace) -> int:
    from .records import check_writable_file
    from .results.compare import Compared, CompareError, build_comparison, parse_reference, parse_studies
    from .storage import masked

    check_writable_file(Path(args.out), "--out")
    try:
        refs = parse_studies(args.study, args.storage)
        names = [ref.name for ref in refs]
        studies = [
            Compared.of(
                _open_study(ref.name, ref.storage),
                ref.name if names.count(ref.name) == 1 else f"{ref.name} ({masked(ref.storage)})",
                masked(ref.storage),
            )
            for ref in refs
        ]
        reference = parse_reference(args.reference, studies[0].objectives) if args.reference else None
        print(build_comparison(studies, reference, Path(args.out)))
    except CompareError as err:
        return _usage_error(err)
    return EXIT_OK


@command("dashboard")
def dashboard(args: argparse.Namespace) -> int:
    import optuna
    import optuna_dashboard

    from .artifacts import STORE_ATTR, dashboard_store
    from .storage import open_storage

    study = _load_study(args, searched=False)
    try:
        _check_can_listen(args.host, args.port)
    except ValueError as err:
        return _usage_error(err)
    storage = open_storage(args.storage, create=False)
    recorded = {
        s.study_name: s.user_attrs[STORE_ATTR]
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if STORE_ATTR in s.user_attrs
    }
    store = dashboard_store(study.study_name, recorded, Path(args.results))
    print(
        f"optuna-dashboard for study {study.study_name!r}: http://{args.host}:{args.port}/dashboard/studies/"
        f"{storage.get_study_id_from_name(study.study_name)} (artifacts in {store.folders[0]}; "
        "Ctrl-C to stop)",
        flush=True,
    )
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return EXIT_OK


def _check_can_listen(host: str, port: int) -> None:
    """Refuse a port that is taken (8080 often is, or a second dashboard holds it) or a host that is
    not this machine's, before the server prints that it is starting up."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind(address)
    except OSError as err:
        raise ValueError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None


@command("results")
def results(args: argparse.Namespace) -> int:
    from .records import check_writable_file, objective_names, records, results_dir
    from .results.tables import trials_frame, write_table

    out = Path(args.out) if args.out else results_dir(Path(args.results), args.study) / f"trials.{args.format}"
    check_writable_file(out, "the table" if args.out is None else "--out")
    study = _load_study(args, searched=False)  # a table needs nothing of the search
    if args.out is None:
        _check_owns_results(Path(args.results), study)
    found = records(study)
    if not found:
        return _usage_error(f"study {args.study!r} has no trials yet: there is no table to write")
    frame = trials_frame(found, objective_names(study))  # unnamed objectives keep their values too
    print(write_table(frame, out, args.format))
    return EXIT_OK


@command("export")
def export(args: argparse.Namespace) -> int:
    from .records import check_writable, directions, holds_results_of, records
    from .results.export import ExportError, select
    from .results.export import export as write_exports
    from .storage import masked

    study = _load_study(args)
    check_writable(Path(args.out), "the export folder")
    try:
        chosen = select(records(study), directions(study), pareto=args.pareto, top=args.top, trial=args.trial)
    except ExportError as err:
        return _usage_error(err)
    results = Path(args.results)
    missing = "none kept" if holds_results_of(results, study) else "another study of this name keeps its own"
    exported = write_exports(
        study, chosen, Path(args.out), results=results, storage_label=masked(args.storage), replace=args.trial is None
    )
    for folder in exported:
        kept = (folder / "weights.safetensors").exists()
        print(folder if kept else f"{folder} (no weights: {missing} under {args.results})")
    return EXIT_OK


@command("train")
def train(args: argparse.Namespace) -> int:
    import dataclasses

    from .records import FolderError, check_writable
    from .training.data import DataError
    from .training.full import read_arch, train_architecture
    from .training.trainer import TrainSpec

    try:
        device = _device(args.device)
        source = read_arch(args.arch)
        data = _train_data(args, source.data)
        recipe = source.recipe or TrainSpec()
        changes = {
            k: v
            for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
            if v is not None
        }
        # resolved: `--arch .` in an exported folder has no name of its own
        out = Path(args.out) if args.out else Path(DEFAULT_RESULTS) / "train" / Path(args.arch).resolve().stem
        check_writable(out, "the training folder")
        arch_folder = Path(args.arch) if Path(args.arch).is_dir() else Path(args.arch).parent
        if out.resolve() == arch_folder.resolve():
            raise ValueError(
                f"--out {out} is where the architecture is read from: training would overwrite its arch.yaml "
                "and weights; give another --out"
            )
        metrics = train_architecture(
            source,
            data,
            dataclasses.replace(recipe, **changes),
            out,
            device=device,
            seed=args.seed,
            eval_size=args.eval_size,
            init_weights=args.init_weights,
        )
    except (FileNotFoundError, DataError, ValueError, FolderError) as err:
        return _usage_error(err)
    print(json.dumps(metrics))
    return EXIT_OK


def _device(name: str | None) -> torch.device:
    """``--device``, checked before anything is written (default: cuda when there is one)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: training runs on cpu or cuda")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _train_data(args: argparse.Namespace, searched: DataSpec | None) -> DataSpec:
    """The data set to train on: the search's (an exported folder's data.yaml) unless ``--dataset``
    names another, with the command line's settings on top.

    The search's split is kept so that the validation images are the ones the search held out:
    with another split, ``--init-weights`` would be validated on images its weights trained on.
    All its training images are used, even where the search trained on a subset of them.
    """
    import dataclasses

    from layers import ConfigError

    from .training.data import DataSpec, check_reads

    if args.dataset is None and searched is None:
        raise ValueError(f"--dataset is needed: {args.arch} is not an exported folder with a data.yaml")
    base = searched if args.dataset in (None, getattr(searched, "name", None)) else DataSpec(name=args.dataset)
    changes = {
        key: value
        for key, value in (
            ("root", args.data_root),
            ("img_size", args.img_size),
            ("val_fraction", args.val_fraction),
            ("seed", args.data_seed),
        )
        if value is not None
    }
    spec = dataclasses.replace(base, train_subset=None, **changes)
    try:
        check_reads(spec)
    except ConfigError as err:  # only a flag can set what the data set does not read
        raise ValueError(f"--{DATA_FLAGS.get(err.path, err.path)}: {err.reason}") from None
    return spec


@command("erf")
def erf(args: argparse.Namespace) -> int:
    import torch

    import layers

    from .records import check_writable_file
    from .results.erf import check_picture_name, effective_receptive_field, save_map
    from .training.full import read_arch, read_weights

    check_writable_file(Path(args.out), "--out")
    try:
        check_picture_name(Path(args.out))
        source = read_arch(args.arch)
        arch = source.arch if args.size is None else source.arch.replace(img_size=args.size)
        weights = Path(args.weights) if args.weights else source.weights
        state = None if weights is None else read_weights(weights)
        model = layers.create_model(arch)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"{weights} does not fit {args.arch}: {' '.join(str(err).split())[:300]}") from None
    except (FileNotFoundError, ValueError) as err:
        return _usage_error(err)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, arch.in_chans, *arch.img_size, generator=generator)
    save_map(effective_receptive_field(model, images), Path(args.out))
    print(args.out)
    return EXIT_OK


def _listen_for_ctrl_c() -> None:
    """Let Ctrl-C (SIGINT) reach the search, however it was started.

    A process inherits an ignored or blocked SIGINT from whatever started it (a background job
    of a non-interactive shell, or a parent that blocked it, as Ray does in the processes it
    starts), and Python then never raises KeyboardInterrupt: the search would run on to its end
    instead of recording its running trials as interrupted."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)


@command("run")
def run(args: argparse.Namespace) -> int:
    from .cluster import ClusterError
    from .display import Display, next_steps
    from .driver import Driver, StudyMismatch
    from .records import FolderError
    from .space import load_space
    from .storage import StorageError
    from .training.data import DataError

    spec = load_space(args.space, storage=args.storage, artifacts=args.artifacts)
    driver = Driver(spec, results=Path(args.results), address=args.address, display=Display(quiet=args.quiet))
    _listen_for_ctrl_c()
    try:
        driver.run()
    except (ClusterError, StudyMismatch, DataError, FolderError) as err:
        return _usage_error(err)
    except StorageError as err:
        origin = "--storage" if args.storage else f"study.storage in {args.space}"
        return _usage_error(f"{err} ({origin})")
    print(next_steps(spec.study.name, spec.study.storage, Path(args.results), DEFAULT_STORAGE, DEFAULT_RESULTS))
    return EXIT_OK


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 1 <= port <= 65535:  # 0 would let the system pick one, which the printed address could not say
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return port


def _usage_error(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # first, so that --help and usage errors import nothing heavy
    import warnings

    import optuna

    from .records import FolderError
    from .space import SpaceError
    from .storage import StorageError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return COMMANDS[args.command](args)
    except (SpaceError, StorageError, FolderError) as err:
        return _usage_error(err)
    except KeyboardInterrupt:
        print(f"interrupted{INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
