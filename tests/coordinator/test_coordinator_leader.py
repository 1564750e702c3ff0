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


def test_a_stale_leaders_guarded_write_is_refused_counted_and_it_steps_down(tmp_path):
    from edgeloop.store import FencedError

    store = SqliteStore(tmp_path / "c.sqlite")
    calls: list[tuple[str, str]] = []
    refused: list[str] = []
    a = LeaderLease(store, "a", 0.6, lambda: calls.append(("a", "gain")), lambda: calls.append(("a", "lose")),
                    on_refused=lambda: refused.append("a"))
    b = LeaderLease(store, "b", 0.6, lambda: calls.append(("b", "gain")), lambda: calls.append(("b", "lose")))
    publish = a.guard(store.publish_model)
    try:
        assert a.try_once() and a.epoch == 1
        assert publish("m", 1, "a" * 64, 10, 1, "load")[0].version == 1
        # a stops renewing (frozen) and b takes the expired lease: a still believes it leads
        deadline = time.monotonic() + 10
        while not b.try_once() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.leading and b.epoch == 2 and a.leading
        try:
            publish("m", 2, "b" * 64, 10, 2, "load")
        except FencedError as exc:
            assert "epoch 1 of 'a/" in str(exc) and "is stale (epoch 2 held by 'b/" in str(exc)
        else:
            raise AssertionError("the stale leader's publish went through")
        assert [p.version for p in store.published_models()] == [1]
        assert a.refused == 1 and refused == ["a"]
        assert [e[3]["epoch"] for e in store.events("fenced_write_refused")] == [1]
        deadline = time.monotonic() + 10
        while ("a", "lose") not in calls and time.monotonic() < deadline:  # it steps down at once, not at renewal
            time.sleep(0.02)
        assert not a.leading and calls == [("a", "gain"), ("b", "gain"), ("a", "lose")]
    finally:
        a.stop()
        b.stop()
        store.close()
