"""The edge's federated examples: durable over a restart, bounded, and joined to labels by the coordinator's rule."""
from __future__ import annotations

import numpy as np

from edgeloop.node.local_examples import LocalExamples


def _open(path, **bounds) -> LocalExamples:
    ex = LocalExamples(path, **bounds)
    ex.set_models(["m"])
    return ex


def test_rows_and_labels_survive_a_restart_and_bounds_drop_the_oldest(tmp_path):
    path = tmp_path / "outbox-e.federated.sqlite"
    ex = _open(path, max_pending=3, max_labelled=4)
    for i in range(5):
        ex.add_rows("m", f"s{i}", np.full((1, 2), float(i)), f"k{i}", 1000 + i)
    assert ex.dropped == 2 and ex.counts() == {"m": (3, 0)}  # s0, s1 dropped: 3 unlabelled at most
    assert not ex.add_label("s0", "m", 1.0)  # its row is gone
    assert ex.add_label("s2", "m", 0.0) and ex.add_label("s3", "m", 1.0)
    ex.close()
    assert not ex.add_label("s4", "m", 1.0)  # a file that cannot be written does not fail the Label call

    again = _open(path, max_pending=3, max_labelled=4)  # the edge restarted
    assert again.dropped == 2 and again.counts() == {"m": (1, 2)}
    x, y = again.labelled("m")
    np.testing.assert_array_equal(x, [[2.0, 2.0], [3.0, 3.0]])
    assert list(y) == [0.0, 1.0]
    # past the labelled bound the earliest-labelled rows go first
    again.add_rows("m", "s5", np.full((3, 2), 5.0), "k5", 1005)  # one request of 3 rows
    assert again.add_label("s5", "m", 1.0) and again.add_label("s4", "m", 0.0)
    x, y = again.labelled("m")
    assert len(y) == 4 and list(x[:, 0]) == [5.0, 5.0, 5.0, 4.0] and again.dropped == 4
    assert again.labelled("m", max_rows=2)[0].tolist() == [[5.0, 5.0], [4.0, 4.0]]
    again.close()


def test_the_byte_bound_drops_the_oldest_rows(tmp_path):
    ex = _open(tmp_path / "f.sqlite", max_bytes=3 * 4 * 8)  # three rows of 8 float32
    for i in range(5):
        ex.add_rows("m", f"s{i}", np.full((1, 8), float(i)))
    assert ex.dropped == 2 and ex.counts()["m"] == (3, 0)
    ex.close()


def test_labels_by_routing_key_and_time_join_like_the_coordinator():
    ex = _open(None)
    ex.add_rows("m", "a1", np.array([[1.0, 0.0]]), "house-7", 1_000)
    ex.add_rows("m", "a2", np.array([[2.0, 0.0]]), "house-7", 2_000)
    ex.add_rows("m", "b1", np.array([[3.0, 0.0]]), "house-9", 1_500)
    ex.add_rows("other", "o1", np.array([[9.0, 0.0]]), "house-7", 1_900)
    # the latest row of that model and key served at or before the label's time
    assert ex.add_label("", "m", 1.0, "house-7", 1_999)
    assert ex.labelled("m")[0].tolist() == [[1.0, 0.0]]
    assert ex.add_label("", "m", 0.0, "house-7", 5_000)  # -> a2
    assert ex.labelled("m")[0][:, 0].tolist() == [1.0, 2.0]
    # a later label of the same row overwrites (the latest wins, as on the coordinator)
    assert ex.add_label("", "m", 1.0, "house-7", 2_500)
    assert ex.labelled("m")[1].tolist() == [1.0, 1.0]
    # earlier than every row of the key: nothing to join yet; a model that is not federated: ignored
    assert not ex.add_label("", "m", 1.0, "house-9", 1_000)
    assert not ex.add_label("", "central", 1.0, "house-9", 9_000)
    assert not ex.add_label("", "", 1.0, "house-9", 9_000)  # a keyed label must name its model
    assert ex.waiting_labels() == (1, 0)
    # ... and it joins when a row of that key served at or before its time is recorded
    ex.add_rows("m", "b0", np.array([[4.0, 0.0]]), "house-9", 900)
    assert ex.waiting_labels()[0] == 0
    assert ex.labelled("m")[0][:, 0].tolist() == [1.0, 2.0, 4.0]
    assert ex.counts() == {"m": (1, 3), "other": (1, 0)}  # b1 (house-9 at 1500) is still unlabelled


def test_a_label_that_arrives_before_its_row_waits_for_it():
    ex = _open(None, max_waiting_labels=2)
    assert not ex.add_label("s1", "m", 1.0)  # the outbox writer has not recorded s1 yet
    assert not ex.add_label("s2", "", 0.0)
    assert not ex.add_label("s3", "m", 1.0)  # past the bound: the oldest waiting label (s1) goes
    assert ex.waiting_labels() == (2, 1)
    for sid in ("s1", "s2", "s3"):
        ex.add_rows("m", sid, np.array([[float(sid[1])]]))
    x, y = ex.labelled("m")
    assert x[:, 0].tolist() == [2.0, 3.0] and y.tolist() == [0.0, 1.0]
    assert ex.counts()["m"] == (1, 2) and ex.waiting_labels() == (0, 1)
    # an edge with no federated model keeps no label at all
    none = LocalExamples()
    assert not none.add_label("s1", "m", 1.0) and none.waiting_labels() == (0, 0)
