"""Files that others may read while they are written: written beside their place, then moved onto it.

A results folder is shared by every driver of a study and read while runs go on (the dashboard,
a second driver uploading the report, a user's browser). A file written in place can be seen
half-written, by a reader or by a second writer whose truncation cut into the first one's bytes,
and a process stopped mid-write leaves it so. ``os.replace`` within one folder is atomic: a
reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, moved onto ``path`` once the block ends well.

    The name is unique per writer, so two processes writing the same file never share one.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
