"""Which coordinator runs the continuous-training loop: the holder of the ``ct-loop`` lease, fenced by its epoch.

Several coordinators on one PostgreSQL database all ingest, but only one trains and publishes.
Each tries to take (or renew) the lease every ``lease_s / 3``; the holder runs the loop.  A leader
that cannot renew stops its loop before its lease can expire (its own deadline counts from before the
renewal was asked for, so it errs early), and one that stops cleanly releases the lease so another
takes over at its next try instead of after ``lease_s``.

Timing alone cannot stop a leader that was paused (SIGSTOP, a frozen VM) and wakes after another took
over: its loop may be one call away from publishing.  So every write it makes as leader (the CT loop's
store and publish, the rollout driver's tick) runs fenced by the epoch the lease had when it was taken
(``store.fenced``): the database refuses it when the epoch moved on.  A refused write is logged, counted
(``on_refused``) and recorded as a ``fenced_write_refused`` event, and the leader steps down at once.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid

from edgeloop.store import FencedError

log = logging.getLogger("edgeloop.coordinator.leader")

LEASE = "ct-loop"


class LeaderLease:
    """Runs ``on_gain`` when this process takes the lease and ``on_lose`` when it lets it go."""

    def __init__(self, store, node_id: str, lease_s: float, on_gain, on_lose, on_refused=None) -> None:
        self.store = store
        #: unique per process, readable in ``edgeloop status`` and in the lease_acquired event
        self.holder = f"{node_id}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(1, int(lease_s * 1000))
        self.period_s = lease_s / 3.0
        self._on_gain, self._on_lose = on_gain, on_lose
        self._on_refused = on_refused
        self._leading = False
        #: the lease's epoch when this process last took or renewed it (the fencing token; 0: never)
        self.epoch = 0
        #: writes the database refused because the lease had moved on
        self.refused = 0
        self._deadline = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> "LeaderLease":
        self.try_once()
        self._thread = threading.Thread(target=self._run, name="edgeloop-leader-lease", daemon=True)
        self._thread.start()
        return self

    def try_once(self) -> bool:
        """One attempt to take or renew the lease; starts or stops the loop as the answer says."""
        with self._lock:
            asked = time.monotonic()
            try:
                epoch = self.store.acquire_lease(LEASE, self.holder, self.ttl_ms)
            except Exception as exc:  # the database is away: keep leading only until our own deadline
                log.warning("lease %s: cannot renew (%s)", LEASE, str(exc)[:200])
                held = self._leading and time.monotonic() < self._deadline
            else:
                held = epoch > 0
                if held:
                    self._deadline = asked + self.ttl_ms / 1000.0 - self.period_s
                    self.epoch = epoch
            if held and not self._leading:
                try:
                    self._on_gain()
                except Exception as exc:  # e.g. the previous loop thread has not finished yet: next period
                    log.warning("lease %s: cannot start the loop yet (%s)", LEASE, str(exc)[:200])
                    return False
                self._leading = True
                log.info("lease %s taken by %s (epoch %d): running the continuous-training loop", LEASE,
                         self.holder, self.epoch)
            elif not held and self._leading:
                self._leading = False
                log.warning("lease %s lost by %s: stopping the continuous-training loop", LEASE, self.holder)
                self._on_lose()
            return held

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.try_once()

    # ------------------------------------------------------------------ fencing
    def guard(self, fn):
        """``fn`` run fenced: the store's write transactions (this thread's) check our epoch first.

        When we do not lead, the token is epoch 0, which no lease row has: every write is refused (an
        operator's rollback sent to a follower fails with FAILED_PRECONDITION).  A refusal of a write we
        made believing we led is logged, counted, recorded, and makes this process step down.
        """
        @functools.wraps(fn)
        def fenced_call(*args, **kwargs):
            epoch = self.epoch if self._leading else 0
            try:
                with self.store.fenced(LEASE, self.holder, epoch):
                    return fn(*args, **kwargs)
            except FencedError as exc:
                if epoch:
                    self._refused(fn, exc)
                raise
        return fenced_call

    def fence(self, target) -> "Fenced":
        """``target`` (e.g. the store the CT loop writes to) with every method call guarded."""
        return Fenced(target, self)

    def _refused(self, fn, exc: FencedError) -> None:
        self.refused += 1
        what = getattr(fn, "__qualname__", str(fn))[:100]
        log.warning("lease %s: %s refused by the database: %s; stepping down", LEASE, what, str(exc)[:300])
        if self._on_refused is not None:
            self._on_refused()
        try:
            self.store.add_event("fenced_write_refused", "", {"lease": LEASE, "holder": self.holder,
                                                               "epoch": self.epoch, "call": what,
                                                               "error": str(exc)[:300]}, int(time.time() * 1000))
        except Exception as err:  # recording is best effort; the refusal itself already protected the data
            log.warning("lease %s: cannot record the refused write (%s)", LEASE, str(err)[:200])
        # on_lose stops the CT loop and waits for its thread, which may be the one calling us: not here
        threading.Thread(target=self._step_down, name="edgeloop-leader-step-down", daemon=True).start()

    def _step_down(self) -> None:
        with self._lock:
            if self._leading:
                self._leading = False
                log.warning("lease %s: %s stepped down after a fenced write", LEASE, self.holder)
                self._on_lose()

    def stop(self) -> None:
        """Stop trying; stop the loop and release the lease if held (before the store closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.period_s + 30.0)
        with self._lock:
            if self._leading:
                self._leading = False
                self._on_lose()
                try:
                    self.store.release_lease(LEASE, self.holder)
                except Exception as exc:
                    log.warning("lease %s: cannot release (%s); it expires by itself", LEASE, str(exc)[:200])


class Fenced:
    """A view of an object whose method calls run under ``LeaderLease.guard`` (attributes pass through)."""

    def __init__(self, target, leader: LeaderLease) -> None:
        self._target = target
        self._leader = leader

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if callable(value) and not name.startswith("__"):
            return self._leader.guard(value)
        return value
