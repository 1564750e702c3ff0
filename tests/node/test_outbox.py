"""The SQLite outbox: bounds with counted drops, group commit, fixed batches, durable labels, restarts."""
from __future__ import annotations

import sqlite3
import time

import pytest

from edgeloop.node.outbox import COMMIT_WINDOW_S, LABELS, SAMPLES, Outbox, OutboxFull


def payload(n: int, size: int = 100) -> bytes:
    return n.to_bytes(4, "little") + bytes(size - 4)


def encode(data):
    return data


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def make_outbox(tmp_path):
    made = []

    def make(max_rows=1000, max_bytes=1 << 20, queue_size=10000, name="outbox.sqlite"):
        box = Outbox(tmp_path / name, max_rows, max_bytes, queue_size)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


def test_samples_commit_within_the_window_and_in_groups(make_outbox):
    box = make_outbox(max_rows=10_000).start()
    t0 = time.monotonic()
    for i in range(2000):
        assert box.offer("m", (encode, (payload(i),)))
    assert wait_for(lambda: box.snapshot()["committed"] == 2000)
    assert box.pending(SAMPLES) == 2000
    assert box.snapshot()["commits"] < 2000  # grouped: far fewer transactions than samples
    box.offer("m", (encode, (payload(1),)))
    t1 = time.monotonic()
    assert wait_for(lambda: box.snapshot()["committed"] == 2001, timeout=5)
    assert time.monotonic() - t1 < 2.0 + COMMIT_WINDOW_S  # generous: the machine is shared
    assert t1 - t0 < 30


def test_full_outbox_drops_and_counts_by_model_and_reason(make_outbox):
    box = make_outbox(max_rows=10).start()
    for i in range(25):
        box.offer("a" if i % 2 else "b", (encode, (payload(i),)))
    assert wait_for(lambda: box.snapshot()["committed"] + box.dropped_total == 25)
    snap = box.snapshot()
    assert snap["committed"] == 10 and snap["pending_rows"] == 10
    assert sum(n for (model, reason), n in snap["dropped"].items() if reason == "outbox_full") == 15
    assert {model for model, _ in snap["dropped"]} == {"a", "b"}


def test_byte_bound_and_full_queue_drop_without_blocking(make_outbox):
    box = make_outbox(max_bytes=1000, queue_size=5)  # writer not started: the queue fills
    t0 = time.perf_counter()
    results = [box.offer("m", (encode, (payload(i),))) for i in range(50)]
    assert time.perf_counter() - t0 < 1.0  # never blocks
    assert results.count(True) == 5
    assert box.snapshot()["dropped"] == {("m", "queue_full"): 45}
    box.start()
    assert wait_for(lambda: box.snapshot()["queued"] == 0)
    # 5 x 100 bytes fit under 1000; more would not
    for i in range(10):
        assert box.offer("m", (encode, (payload(i),)))
        assert wait_for(lambda: box.snapshot()["queued"] == 0)
    assert wait_for(lambda: box.snapshot()["dropped"].get(("m", "outbox_full"), 0) == 5)
    assert box.snapshot()["pending_bytes"] <= 1000


def test_batches_are_fixed_until_acknowledged_and_survive_a_restart(make_outbox):
    box = make_outbox().start()
    for i in range(25):
        box.offer("m", (encode, (payload(i),)))
    assert wait_for(lambda: box.snapshot()["committed"] == 25)
    first = box.next_batches(SAMPLES, batch_size=10, max_batches=2, max_bytes=1 << 20)
    assert [len(b.payloads) for b in first] == [10, 10]
    box.close()
    again = make_outbox().start()  # same file: a restarted edge
    assert again.instance == box.instance
    resent = again.next_batches(SAMPLES, batch_size=7, max_batches=5, max_bytes=1 << 20)
    assert [b.batch_id for b in resent[:2]] == [b.batch_id for b in first]  # same ids, same rows
    assert resent[0].payloads == first[0].payloads
    assert [len(b.payloads) for b in resent] == [10, 10, 5]
    assert again.ack(resent[:2]) == 20
    assert again.pending(SAMPLES) == 5 and again.snapshot()["pending_rows"] == 5
    rest = again.next_batches(SAMPLES, batch_size=7, max_batches=5, max_bytes=1 << 20)
    assert [b.batch_id for b in rest] == [resent[2].batch_id]


def test_a_new_outbox_file_never_reuses_batch_ids(make_outbox):
    a = make_outbox(name="a.sqlite").start()
    b = make_outbox(name="b.sqlite").start()
    for box in (a, b):
        box.offer("m", (encode, (payload(1),)))
        assert wait_for(lambda: box.snapshot()["committed"] == 1)
    assert a.next_batches(SAMPLES, 10, 1, 1 << 20)[0].batch_id != b.next_batches(SAMPLES, 10, 1, 1 << 20)[0].batch_id


def test_labels_return_only_once_committed_and_are_refused_when_full(make_outbox, tmp_path):
    box = make_outbox(max_rows=3).start()
    box.put_labels([("m", b"label-1"), ("m", b"label-2")])
    # committed: another connection sees them at once
    conn = sqlite3.connect(str(tmp_path / "outbox.sqlite"))
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 2
    conn.close()
    with pytest.raises(OutboxFull):
        box.put_labels([("m", b"x"), ("m", b"y")])
    assert box.pending(LABELS) == 2


def test_meta_is_durable(make_outbox):
    box = make_outbox()
    box.set_meta_many({"a": "1", "b": "2"})
    box.close()
    again = make_outbox()
    assert again.get_meta("a") == "1" and again.get_meta("b") == "2" and again.get_meta("c", "x") == "x"


class _AckRightAfterCommit:
    """The writer's connection, but the uploader's batch + ack runs just after each COMMIT returns: the
    interleaving (uploader scheduled between the writer's commit and its bookkeeping) seen on a busy host."""

    def __init__(self, conn, box, seen):
        self._conn, self._box, self._seen = conn, box, seen

    def execute(self, sql, *args):
        result = self._conn.execute(sql, *args)
        if sql == "COMMIT":
            self._box.ack(self._box.next_batches(SAMPLES, 100, 10, 1 << 20))
            self._seen.append(self._box.snapshot()["pending_rows"])
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_pending_rows_never_go_negative_when_an_ack_overtakes_the_writers_bookkeeping(make_outbox):
    box = make_outbox()
    seen: list[int] = []
    box._conn = _AckRightAfterCommit(box._conn, box, seen)
    box.start()
    for i in range(5):
        assert box.offer("m", (encode, (payload(i),)))
        assert wait_for(lambda: len(seen) > i)
    assert wait_for(lambda: box.snapshot()["committed"] == 5)
    assert min(seen) >= 0, seen  # was -1 per commit: a negative outbox_pending in the StatusReport
    assert box.snapshot()["pending_rows"] == box.pending(SAMPLES) == 0
