"""Command line: ``python -m search <command>``.

    run        run (or resume) the search a space file describes
Exit codes: 0 done, 1 unexpected error, 2 bad input (space, storage, cluster, data), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from .storage import StorageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def add(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn
    return add


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume the search a space file describes")
    run.add_argument("--space", default="spaces/dynamic.yaml", help="the YAML space (default: %(default)s)")
    run.add_argument("--storage", help="storage URL overriding the space's (sqlite:///... or postgresql://...)")
    run.add_argument("--address", help="join this Ray cluster (host:port, ray://host:port or auto) instead of a local Ray")
    run.add_argument("--results", default="results", help="folder for weights and reports (default: %(default)s)")
    run.add_argument("--quiet", action="store_true", help="log lines instead of the live display")
    return parser


@command("run")
def run(args: argparse.Namespace) -> int:
    from .cluster import ClusterError, shutdown
    from .display import Display
    from .driver import Driver, StudyMismatch
    from .space import load_space

    spec = load_space(args.space, storage=args.storage)
    driver = Driver(spec, results=Path(args.results), address=args.address, display=Display(quiet=args.quiet))
    try:
        driver.run()
    except (ClusterError, StudyMismatch) as err:
        return _usage_error(err)
    except StorageError as err:
        origin = "--storage" if args.storage else f"study.storage in {args.space}"
        return _usage_error(f"{err} ({origin})")
    finally:
        shutdown()
    return EXIT_OK


def _usage_error(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    import warnings

    import optuna

    from .space import SpaceError

    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return COMMANDS[args.command](args)
    except (SpaceError, StorageError) as err:
        return _usage_error(err)
    except KeyboardInterrupt:
        print("interrupted: running trials were recorded as interrupted; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
