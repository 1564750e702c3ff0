"""The ingest writer: queued sample batches commit together; a bad batch fails alone."""
import threading

import pytest

from edgeloop.coordinator.writer import IngestWriter
from edgeloop.store import SampleRow, SqliteStore


def rows(*ids):
    return [SampleRow("m", i, 1, "k", 1000, b"p") for i in ids]


def test_grouped_batches_commit_and_a_bad_one_fails_alone(tmp_path):
    store = SqliteStore(tmp_path / "c.sqlite")
    writer = IngestWriter(store)
    gate = threading.Event()
    try:
        blocker = writer.call(gate.wait, 10)        # hold the writer so the next batches queue up together
        good1 = writer.samples("e1", "b1", rows("a", "b"), 5)
        bad = writer.samples("e1", "b2", rows("c") + [SampleRow("m", "d", 1, "k", 1, object())], 5)
        good2 = writer.samples("e2", "b1", rows("e"), 5)
        dup = writer.samples("e1", "b1", rows("a", "b"), 5)
        gate.set()
        assert blocker.result(10) is True
        assert good1.result(10) == 2 and good2.result(10) == 1 and dup.result(10) is None
        with pytest.raises(Exception):
            bad.result(10)
        assert sorted(i for _, i in store.sample_ids()) == ["a", "b", "e"]
        assert store.ingest_samples("e1", "b2", rows("c"), 6) == 1   # the failed batch's id was not used up
    finally:
        writer.close()
        store.close()
    late = writer.samples("e1", "b9", rows("z"), 7)
    with pytest.raises(RuntimeError, match="closed"):
        late.result(1)


def test_a_streams_group_commits_together_and_its_bad_batch_fails_alone(tmp_path):
    store = SqliteStore(tmp_path / "c.sqlite")
    writer = IngestWriter(store)
    try:
        good, bad, dup = writer.sample_batches([("e1", "g1", rows("a", "b"), 5),
                                                ("e1", "g2", rows("c") + [SampleRow("m", "d", 1, "k", 1, object())], 5),
                                                ("e1", "g1", rows("a", "b"), 5)])
        assert good.result(10) == 2 and dup.result(10) is None
        with pytest.raises(Exception):
            bad.result(10)
        assert sorted(i for _, i in store.sample_ids()) == ["a", "b"]
    finally:
        writer.close()
        store.close()
