"""Which coordinator runs the continuous-training loop: the holder of the ``ct-loop`` lease.

Several coordinators on one PostgreSQL database all ingest, but only one trains and publishes.
Each tries to take (or renew) the lease every ``lease_s / 3``; the holder runs the loop.  A leader
that cannot renew stops its loop before its lease can expire (its own deadline counts from before the
renewal was asked for, so it errs early), and one that stops cleanly releases the lease so another
takes over at its next try instead of after ``lease_s``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid

log = logging.getLogger("edgeloop.coordinator.leader")

LEASE = "ct-loop"


class LeaderLease:
    """Runs ``on_gain`` when this process takes the lease and ``on_lose`` when it lets it go."""

    def __init__(self, store, node_id: str, lease_s: float, on_gain, on_lose) -> None:
        self.store = store
        #: unique per process, readable in ``edgeloop status`` and in the lease_acquired event
        self.holder = f"{node_id}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(1, int(lease_s * 1000))
        self.period_s = lease_s / 3.0
        self._on_gain, self._on_lose = on_gain, on_lose
        self._leading = False
        self._deadline = 0.0
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
        asked = time.monotonic()
        try:
            held = self.store.acquire_lease(LEASE, self.holder, self.ttl_ms)
        except Exception as exc:  # the database is away: keep leading only until our own deadline
            log.warning("lease %s: cannot renew (%s)", LEASE, str(exc)[:200])
            held = self._leading and time.monotonic() < self._deadline
        else:
            if held:
                self._deadline = asked + self.ttl_ms / 1000.0 - self.period_s
        if held and not self._leading:
            try:
                self._on_gain()
            except Exception as exc:  # e.g. the previous loop thread has not finished yet: next period
                log.warning("lease %s: cannot start the loop yet (%s)", LEASE, str(exc)[:200])
                return False
            self._leading = True
            log.info("lease %s taken by %s: running the continuous-training loop", LEASE, self.holder)
        elif not held and self._leading:
            self._leading = False
            log.warning("lease %s lost by %s: stopping the continuous-training loop", LEASE, self.holder)
            self._on_lose()
        return held

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.try_once()

    def stop(self) -> None:
        """Stop trying; stop the loop and release the lease if held (before the store closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.period_s + 30.0)
        if self._leading:
            self._leading = False
            self._on_lose()
            try:
                self.store.release_lease(LEASE, self.holder)
            except Exception as exc:
                log.warning("lease %s: cannot release (%s); it expires by itself", LEASE, str(exc)[:200])
