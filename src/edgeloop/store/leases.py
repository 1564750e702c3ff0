"""Leases in the database (migration 7), mixed into both stores: several coordinators on one
PostgreSQL database elect the one that runs the continuous-training loop.

A lease is a row (name, holder, expiry).  The holder renews it well before it expires; anyone may
take it once it has expired.  Expiry is measured by the store's clock (PostgreSQL's own clock, so
the coordinators' clocks need not agree).  Write transactions are serialised, so reading the row and
writing it back cannot interleave with another coordinator doing the same.
"""
from __future__ import annotations

import json


class Leases:
    """Acquire, renew, read and release named leases (needs a store's ``_transaction`` and ``_clock_ms``)."""

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take or renew ``name`` for ``holder`` until now + ``ttl_ms``; False while another holds it."""
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms {ttl_ms}: expected a positive number of milliseconds")
        with self._transaction() as conn:
            now = self._clock_ms(conn)
            row = conn.execute("SELECT holder, expires_ms FROM leases WHERE name = ?", (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO leases (name, holder, expires_ms, acquired_ms) VALUES (?, ?, ?, ?)",
                             (name, holder, now + ttl_ms, now))
            elif row[0] == holder:
                conn.execute("UPDATE leases SET expires_ms = ?, renewals = renewals + 1 WHERE name = ?",
                             (now + ttl_ms, name))
                return True
            elif row[1] > now:
                return False
            else:
                conn.execute("UPDATE leases SET holder = ?, expires_ms = ?, acquired_ms = ?, renewals = 0 "
                             "WHERE name = ?", (holder, now + ttl_ms, now, name))
            conn.execute("INSERT INTO events (at_ms, kind, node_id, detail) VALUES (?, ?, ?, ?)",
                         (now, "lease_acquired", "", json.dumps({"lease": name, "holder": holder,
                                                                  "previous": None if row is None else row[0]})))
            return True

    def release_lease(self, name: str, holder: str) -> bool:
        """Give ``name`` up now (a clean shutdown), so another coordinator need not wait for expiry."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount == 1

    def lease(self, name: str) -> tuple[str, int] | None:
        """(holder, expires_ms) of ``name``, expired or not, or None."""
        with self._reading() as db:
            row = db.execute("SELECT holder, expires_ms FROM leases WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], int(row[1]))
