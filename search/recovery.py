"""Crash recovery: the heartbeats of the drivers sharing a study, and the trials a dead one left.

A driver can die at any moment (SIGKILL, a lost machine). Its trials then stay RUNNING in the
study forever, and Optuna's own heartbeats do not work with ask-and-tell, so every driver:

* writes a heartbeat (a study attribute) before it asks for a trial, and every few seconds;
* on start, and every half minute, settles the RUNNING trials whose driver is gone: an outcome
  the dead driver recorded but never told is told; anything else is failed as ``stale`` and its
  parameters are queued to run again, once.

Every step can itself be cut short by a crash, so each is done in an order, and with checks,
that make doing it again harmless.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from . import optuna_adapter, records
from .storage import MAX_RETRY_DELAY_S, OUTAGE_PATIENCE_S
from .study_client import StudyClient

HEARTBEAT_S = 10.0  # how often a driver writes its heartbeat
RECONCILE_S = 30.0  # how often a driver looks for trials that dead drivers left
#: A driver silent this long on another host is presumed dead: longer than a live one can be
#: silent, which is through an outage it rides out (after its last beat, and until its next try).
DEAD_AFTER_S = OUTAGE_PATIENCE_S + HEARTBEAT_S + MAX_RETRY_DELAY_S + 10.0


def beat_key(driver: str) -> str:
    """The study attribute that holds a driver's heartbeat."""
    return f"driver:{driver}"


class Recovery:
    def __init__(self, client: StudyClient, driver_id: str, log: Callable[[str], None]):
        self.client, self.driver_id, self.log = client, driver_id, log
        self._last_beat = self._last_reconcile = 0.0
        #: What this driver last saw of a thing it watches (a claim unnamed, another host's beat),
        #: and since when on its own monotonic clock: other hosts' clocks are not comparable to it.
        self._seen: dict[Any, tuple[Any, float]] = {}

    # ------------------------------------------------------------------ heartbeats
    def beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat > HEARTBEAT_S:
            self.client.set_study_attr(
                beat_key(self.driver_id), {"host": socket.gethostname(), "pid": os.getpid(), "beat": now}
            )
            self._last_beat = now

    def owner_alive(self, trial: FrozenTrial, beats: dict[str, Any]) -> bool:
        """Whether the driver that asked ``trial`` may still be working on it."""
        driver = trial.user_attrs.get("driver")
        if driver == self.driver_id:
            return True
        if driver is None:
            # Claimed a moment ago and not yet named by its driver. Every driver beats before it
            # asks, so the claimer can only be a live driver other than this one: with none left,
            # the trial was claimed by one that died in between, and nobody will ever finish it.
            # How long it has stayed unnamed is timed on this driver's clock: the claim's own time
            # is the claiming host's naive local time, hours off for a host in another time zone.
            if self._unchanged_for(("unnamed", trial.number), None) >= DEAD_AFTER_S:
                return False
            return any(
                self._beating(key, beat)
                for key, beat in beats.items()
                if key.startswith(beat_key("")) and key != beat_key(self.driver_id)
            )
        return self._beating(beat_key(driver), beats.get(beat_key(driver)))

    def _beating(self, key: str, beat: dict[str, Any] | None) -> bool:
        """Whether the driver that wrote this heartbeat may still be running.

        A beat is stamped with its host's clock. On this host that clock is ours, and the process
        can be asked directly. Another host's clock may run minutes behind ours: its driver is
        presumed dead only once its beat is old by its stamp and has also stayed unchanged for as
        long on this driver's own clock.
        """
        if not beat:
            return False
        stale_by_stamp = time.time() - beat["beat"] > DEAD_AFTER_S
        if beat["host"] == socket.gethostname():
            return not stale_by_stamp and _pid_alive(beat["pid"])
        return not stale_by_stamp or self._unchanged_for(key, beat["beat"]) < DEAD_AFTER_S

    def _unchanged_for(self, key: Any, value: Any) -> float:
        """Seconds, on this driver's clock, since it first saw ``key`` hold ``value`` (0 if new)."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != value:
            seen = self._seen[key] = (value, time.monotonic())
        return time.monotonic() - seen[1]

    # ------------------------------------------------------------------ settling
    def reconcile_now_and_then(self) -> None:
        """Other drivers may die mid-run: settle their trials once their heartbeat stops."""
        if time.time() - self._last_reconcile > RECONCILE_S:
            self.reconcile()

    def reconcile(self) -> None:
        """Settle trials left RUNNING by drivers that are gone: tell recorded outcomes, retry the rest."""
        self._last_reconcile = time.time()
        running = self.client.trials(states=[TrialState.RUNNING])
        beats = self.client.user_attrs() if running else {}
        for frozen in running:
            if self.owner_alive(frozen, beats):
                continue
            status = frozen.user_attrs.get("status")
            if status not in (None, records.RUNNING, *records.RETRIED):  # recorded but not told
                self.client.tell(frozen.number, status, frozen.user_attrs.get("values"))
            elif status in records.RETRIED:  # its driver died while queueing the retry: finish that
                self.retry_later(frozen.number, status, frozen.user_attrs.get("reason"))
            else:
                self.retry_later(frozen.number, records.STALE, "the driver stopped while it ran")
                self.log(f"trial {frozen.number} was left running by a driver that stopped; retrying its parameters")

    def retry_later(self, number: int, status: str, reason: str) -> None:
        """Fail a trial that was not at fault and queue its parameters to run again.

        Each step may already have been done by a driver that died after it, so none is repeated.
        """
        self.client.set_trial_attrs(self.client.trial_id(number), **records.outcome(status, reason=reason))
        trials = self.client.trials()
        if not any(t.user_attrs.get("retry_of") == number for t in trials):
            frozen = next(t for t in trials if t.number == number)
            carry = {k: frozen.user_attrs[k] for k in ("reference", "seed") if k in frozen.user_attrs}
            self.client.enqueue(optuna_adapter.queued_params(frozen), {**carry, "retry_of": number})
        self.client.tell(number, status, None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
