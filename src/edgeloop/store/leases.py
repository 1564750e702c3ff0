"""Leases in the database (migrations 7 and 9), mixed into both stores: several coordinators on one
PostgreSQL database elect the one that runs the continuous-training loop, and fence the writes it makes.

A lease is a row (name, holder, expiry, epoch).  The holder renews it well before it expires; anyone may
take it once it has expired.  Expiry is measured by the store's clock (PostgreSQL's own clock, so
the coordinators' clocks need not agree).  Write transactions are serialised, so reading the row and
writing it back cannot interleave with another coordinator doing the same.

The epoch is a fencing token: it grows by one on every change of holder (a released lease keeps its row
and epoch, so it never goes back).  A thread that writes as leader does so inside ``fenced(name, holder,
epoch)``; every write transaction of that thread first checks, in the same transaction, that the row still
names that holder and epoch, and raises ``FencedError`` (rolling everything back) when it does not.  So a
leader that was paused past its lease (SIGSTOP, a long GC, a frozen VM) and then wakes cannot publish or
overwrite state written by the coordinator that took over.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager

from .errors import FencedError


class Leases:
    """Acquire, renew, read and release named leases (needs a store's ``_transaction`` and ``_clock_ms``)."""

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> int:
        """Take or renew ``name`` for ``holder`` until now + ``ttl_ms``: its epoch, or 0 while another holds it.

        The epoch stays the same across renewals and grows by one each time the holder changes.
        """
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms {ttl_ms}: expected a positive number of milliseconds")
        if not holder:
            raise ValueError("holder '': expected a non-empty holder name")
        with self._transaction() as conn:
            now = self._clock_ms(conn)
            row = conn.execute("SELECT holder, expires_ms, epoch FROM leases WHERE name = ?", (name,)).fetchone()
            if row is None:
                epoch = 1
                conn.execute("INSERT INTO leases (name, holder, expires_ms, acquired_ms, epoch) VALUES (?, ?, ?, ?, ?)",
                             (name, holder, now + ttl_ms, now, epoch))
            elif row[0] == holder:
                conn.execute("UPDATE leases SET expires_ms = ?, renewals = renewals + 1 WHERE name = ?",
                             (now + ttl_ms, name))
                return int(row[2])
            elif row[1] > now:
                return 0
            else:
                epoch = int(row[2]) + 1
                conn.execute("UPDATE leases SET holder = ?, expires_ms = ?, acquired_ms = ?, renewals = 0, epoch = ? "
                             "WHERE name = ?", (holder, now + ttl_ms, now, epoch, name))
            previous = row[0] if row is not None and row[0] else None
            conn.execute("INSERT INTO events (at_ms, kind, node_id, detail) VALUES (?, ?, ?, ?)",
                         (now, "lease_acquired", "", json.dumps({"lease": name, "holder": holder,
                                                                  "previous": previous, "epoch": epoch})))
            return epoch

    def release_lease(self, name: str, holder: str) -> bool:
        """Give ``name`` up now (a clean shutdown), so another coordinator need not wait for expiry.

        The row stays (holder '', expired) so the next holder's epoch is still one above this one's.
        """
        with self._transaction() as conn:
            return conn.execute("UPDATE leases SET holder = '', expires_ms = 0 WHERE name = ? AND holder = ?",
                                (name, holder)).rowcount == 1

    def lease(self, name: str) -> tuple[str, int] | None:
        """(holder, expires_ms) of ``name``, expired or not, or None (never taken, or released)."""
        row = self.lease_row(name)
        return None if row is None or not row[0] else (row[0], row[1])

    def lease_row(self, name: str) -> tuple[str, int, int] | None:
        """(holder, expires_ms, epoch) of ``name`` as stored ('' holder: released), or None."""
        with self._reading() as db:
            row = db.execute("SELECT holder, expires_ms, epoch FROM leases WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], int(row[1]), int(row[2]))

    # ------------------------------------------------------------------ fencing
    def _fence_local(self) -> threading.local:
        local = self.__dict__.get("_fence_state")
        if local is None:
            local = self.__dict__.setdefault("_fence_state", threading.local())
        return local

    @contextmanager
    def fenced(self, name: str, holder: str, epoch: int):
        """Every write transaction this thread starts inside the block checks the lease first."""
        local = self._fence_local()
        outer = getattr(local, "token", None)
        local.token = (name, holder, int(epoch))
        try:
            yield
        finally:
            local.token = outer

    def _check_fence(self, conn) -> None:
        """Called at the start of every write transaction (after its lock): refuse a write of a stale leader."""
        token = getattr(self._fence_local(), "token", None)
        if token is None:
            return
        name, holder, epoch = token
        row = conn.execute("SELECT holder, epoch FROM leases WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] != holder or int(row[1]) != epoch:
            now = "no holder" if row is None or not row[0] else f"epoch {row[1]} held by {str(row[0])[:100]!r}"
            if epoch == 0:
                raise FencedError(f"lease {name!r}: {holder[:100]!r} does not hold it ({now}); the write was refused "
                                  f"(the lease holder makes it)")
            raise FencedError(f"lease {name!r}: epoch {epoch} of {holder[:100]!r} is stale ({now}); "
                              f"the write was refused")
