"""The CT-loop lease as the coordinator uses it, on a real SQLite store: one leader at a time, a clean
stop hands over at once, a leader that cannot renew stops its loop before its lease runs out."""
from __future__ import annotations

import time

from edgeloop.coordinator.leader import LEASE, LeaderLease
from edgeloop.store import SqliteStore


def test_one_leader_at_a_time_clean_handover_and_a_leader_that_cannot_renew_steps_down(tmp_path):
    store = SqliteStore(tmp_path / "c.sqlite")
    calls: list[tuple[str, str]] = []

    def lease(name: str) -> LeaderLease:
        return LeaderLease(store, name, 0.6, lambda: calls.append((name, "gain")),
                           lambda: calls.append((name, "lose")))

    a, b = lease("a"), lease("b")
    try:
        assert a.try_once() and not b.try_once()
        assert a.leading and not b.leading and store.lease(LEASE)[0] == a.holder
        assert a.try_once() and not b.try_once()  # renewals keep it
        a.stop()  # a clean stop: the loop stops and the lease is released
        assert calls == [("a", "gain"), ("a", "lose")] and store.lease(LEASE) is None
        assert b.try_once() and b.leading
        # the database goes away under the leader: it keeps the loop only until its own deadline,
        # which comes before the lease it last renewed expires
        store.close()
        renewed_until = time.monotonic() + 0.6
        assert b.try_once()  # still inside its deadline
        while b.leading and time.monotonic() < renewed_until + 1:
            b.try_once()
            time.sleep(0.02)
        assert not b.leading and time.monotonic() < renewed_until
        assert calls[-2:] == [("b", "gain"), ("b", "lose")]
    finally:
        a.stop()
        b.stop()
        store.close()
