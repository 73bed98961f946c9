"""What the search needs from Ray beyond its public API, in one place.

A trial's record says how often Ray ran its segments again (``retries``). A re-run keeps its
task id, and Ray counts it in the task's attempt number, but the public runtime context does not
expose that number; the core worker does. ``tests/test_cluster.py`` pins it: a task whose first
attempt dies must read 1 in its second.
"""

from __future__ import annotations

import ray


def attempt_number() -> int:
    """How many times Ray has run the current task before (0 on its first run).

    Retries after a worker or node died and re-runs to reconstruct a lost result both count.
    """
    return ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()
