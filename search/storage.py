"""Opening the study storage: SQLite for one machine, PostgreSQL for a cluster.

SQLite is put in WAL mode with a long busy timeout: the driver is the only writer, and readers
(optuna-dashboard, the report) never block it. Passwords never appear in messages: every URL
shown to a user goes through ``masked``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from .defaults import DEFAULT_STORAGE
from .records import unwritable_ancestor

T = TypeVar("T")
SUPPORTED = ("sqlite", "postgresql")
#: How long opening a new database keeps retrying while another process creates it at the same
#: moment (one SQLite attempt may itself wait up to its 60 s busy timeout).
CREATE_PATIENCE_S = 30.0
#: How long a database action keeps retrying through an outage, and the longest wait between tries.
OUTAGE_PATIENCE_S = 120.0
MAX_RETRY_DELAY_S = 10.0


class StorageError(RuntimeError):
    """A storage URL that cannot be used: unparsable, unsupported, or unreachable."""


def masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable storage URL>"


def _parse(url: str):
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(
            f"cannot parse storage URL {masked(url)!r}: expected sqlite:///path.db or "
            "postgresql://user@host:port/database"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED:
        raise StorageError(
            f"storage {masked(url)!r}: unsupported database {parsed.get_backend_name()!r}; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.host:  # SQLAlchemy would drop the host without a word
        raise StorageError(
            f"storage {masked(url)!r}: an SQLite URL names a file, not a host ({parsed.host!r} here): "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return parsed


def check_storage(url: str) -> None:
    """Refuse an unparsable or unreachable storage without writing anything to it."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed.database)  # the file is made on opening; nothing to reach
        return
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10})
    except ImportError as err:
        raise StorageError(
            f"storage {masked(url)} needs a database driver: {err} (pip install 'dynamic-weight-search[postgres]')"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise StorageError(f"cannot open storage {masked(url)}: {_first_line(err)}") from None
    finally:
        engine.dispose()


#: The password of a URL written in a text: what follows ``scheme://user:`` up to the host's ``@``
#: (SQLAlchemy reads a URL's password the same way), as written, percent-encoding included.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]+(?=@)")


_SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite 3 file


def _check_sqlite_file(database: str | None) -> None:
    """Refuse an SQLite file whose folder cannot be made or written, or a file that is no SQLite
    database: opening it would fail only once Ray had started and the data set had loaded."""
    if not database or database == ":memory:":
        return  # refused when opened, before anything is written
    blocking = unwritable_ancestor(Path(database).parent)
    if blocking is not None:
        raise StorageError(
            f"cannot make the SQLite database {database!r}: {blocking} is not a folder this user can write"
        )
    if Path(database).is_file():
        with open(database, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:  # SQLite takes an empty file for a new database
            raise StorageError(f"{database!r} is not an SQLite database")


def redact(text: str) -> str:
    """``text`` (a space file) with the password of every URL in it replaced by ***.

    The URLs are masked where they are written, not by searching for the decoded password: a
    percent-encoded one (``p%40ss`` for ``p@ss``) would not be found, and a short one such as
    ``1`` would also be found in ``epochs: 10``.
    """
    return _URL_PASSWORD.sub(r"\g<head>***", text)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``; ``create`` makes a missing SQLite file's folder."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    engine_kwargs = {
        "pool_pre_ping": True,
        "connect_args": {"timeout": 60} if backend == "sqlite" else {"connect_timeout": 10},
    }
    deadline, delay = time.monotonic() + CREATE_PATIENCE_S, 0.05
    while True:
        try:
            if backend == "sqlite":
                _prepare_sqlite(parsed.database, create)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (
            sqlite3.DatabaseError,  # OperationalError's parent: also a file that is no database
            sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.StorageInternalError,
            ImportError,
        ) as err:
            if time.monotonic() > deadline or not _created_alongside(err):
                raise StorageError(f"cannot open storage {masked(url)}: {_first_line(err)}") from None
            # Opening again finds the schema the other process made: it takes it a tenth of a
            # second, so a short first wait, growing in case it is slower on a loaded machine.
            time.sleep(delay)
            delay = min(2 * delay, 1.0)


def _prepare_sqlite(database: str | None, create: bool) -> None:
    if not database or database == ":memory:":
        raise StorageError(f"an in-memory SQLite database would lose the study: give a file, {DEFAULT_STORAGE}")
    path = Path(database)
    if not path.parent.exists():
        if not create:
            raise StorageError(f"no SQLite database at {database!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
    if not create and not path.exists():
        raise StorageError(f"no SQLite database at {database!r}")
    # WAL lets readers work beside the writer; it is a property of the file, so set it once here.
    with sqlite3.connect(path, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _created_alongside(err: BaseException) -> bool:
    """Whether ``err`` is another process (a second driver, a reader) creating the same new
    database at the same moment: PostgreSQL reports a duplicate key in its catalogue, SQLite a
    table that already exists or, while the other switches the file to WAL, a locked database."""
    return isinstance(err, sqlalchemy.exc.IntegrityError) or any(
        sign in str(err) for sign in ("already exists", "database is locked")
    )


def _first_line(err: BaseException) -> str:
    """The database's own words: Optuna's wrapper says only that a commit failed, and why it might."""
    while isinstance(err, optuna.exceptions.StorageInternalError) and err.__cause__ is not None:
        err = err.__cause__
    return str(getattr(err, "orig", None) or err).strip().splitlines()[0]


def with_retries(
    action: Callable[[], T],
    what: str,
    *,
    patience_s: float = OUTAGE_PATIENCE_S,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run a storage action, retrying through a database restart for up to ``patience_s``."""
    deadline, delay = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return action()
        except (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError,
            optuna.exceptions.StorageInternalError,
        ) as err:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"the database did not come back within {patience_s:.0f} s while trying to "
                    f"{what}: {_first_line(err)}"
                ) from None
            if on_retry:
                on_retry(f"database unavailable while trying to {what} ({_first_line(err)}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
