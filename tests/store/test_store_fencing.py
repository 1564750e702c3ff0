"""Lease epochs as fencing tokens, on both backends: the epoch grows on every change of holder (a release
keeps it), and a write made under a stale epoch is refused in its own transaction and leaves nothing."""
from __future__ import annotations

import threading
import time

import pytest

from edgeloop.store import FencedError, PostgresStore, SampleRow, SqliteStore, StoreError


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request, tmp_path):
    """Two stores on one database, as two coordinators would open it."""
    if request.param == "sqlite":
        stores = [SqliteStore(tmp_path / "c.sqlite"), SqliteStore(tmp_path / "c.sqlite")]
    else:
        pytest.importorskip("psycopg", reason="PostgreSQL tests: psycopg is not installed")
        url = request.getfixturevalue("postgres_url")
        stores = [PostgresStore(url), PostgresStore(url)]
    yield stores
    for s in stores:
        s.close()


def test_the_epoch_grows_on_every_change_of_holder_and_never_goes_back(two_stores):
    a, b = two_stores
    assert a.lease_row("ct-loop") is None
    assert a.acquire_lease("ct-loop", "one", 60_000) == 1
    assert a.acquire_lease("ct-loop", "one", 60_000) == 1  # a renewal keeps it
    assert b.acquire_lease("ct-loop", "two", 60_000) == 0
    assert a.acquire_lease("ct-loop", "one", 1) == 1  # its last renewal: it expires in 1 ms
    time.sleep(0.05)
    assert b.acquire_lease("ct-loop", "two", 60_000) == 2  # taken after expiry
    assert b.release_lease("ct-loop", "two") and a.lease("ct-loop") is None
    assert a.lease_row("ct-loop")[0::2] == ("", 2)  # released: no holder, the epoch kept
    assert a.acquire_lease("ct-loop", "one", 300) == 3
    assert [e[3]["epoch"] for e in a.events("lease_acquired")] == [1, 2, 3]
    with pytest.raises(ValueError, match="non-empty holder"):
        a.acquire_lease("ct-loop", "", 300)


def test_a_write_under_a_stale_epoch_is_refused_and_leaves_nothing(two_stores):
    a, b = two_stores
    epoch = a.acquire_lease("ct-loop", "one", 1)  # expires at once: the fence checks the epoch, not the clock
    with a.fenced("ct-loop", "one", epoch):
        a.publish_model("m", 1, "a" * 64, 10, 1000, "load")
        a.set_ct_state("m", {"by": "one"}, 1000)
    time.sleep(0.05)  # "one" froze past its lease; "two" takes over
    assert b.acquire_lease("ct-loop", "two", 60_000) == epoch + 1
    with a.fenced("ct-loop", "one", epoch):
        for write in (lambda: a.publish_model("m", 2, "b" * 64, 10, 2000, "load"),
                      lambda: a.set_ct_state("m", {"by": "stale one"}, 2000),
                      lambda: a.put_doc("rollout", "r2", {"version": 2}, 2000),
                      lambda: a.set_alias("m", "champion", 2, 2000)):
            with pytest.raises(FencedError, match=f"epoch {epoch} of 'one' is stale \\(epoch {epoch + 1} held by "
                                                  f"'two'\\)"):
                write()
        # another thread of the same process is not fenced by this one's block (ingest goes on)
        done = []
        worker = threading.Thread(target=lambda: done.append(
            a.ingest_samples("e1", "b1", [SampleRow("m", "s1", 1, "k", 1000, b"p")], 1000)))
        worker.start()
        worker.join(10)
        assert done == [1]
    assert [p.version for p in b.published_models()] == [1]
    assert b.ct_state("m") == {"by": "one"} and b.get_doc("rollout", "r2") is None and b.aliases("m") == {}
    assert isinstance(FencedError("x"), StoreError)  # the coordinator answers FAILED_PRECONDITION
    with b.fenced("ct-loop", "two", epoch + 1):  # the holder's writes go through
        b.publish_model("m", 2, "b" * 64, 10, 2000, "load")
    with pytest.raises(FencedError, match="'one' does not hold it"):
        with a.fenced("ct-loop", "one", 0):  # a follower asked to write as leader
            a.add_event("x", "", {}, 1)
    a.add_event("x", "", {}, 1)  # outside the block: not fenced
    assert [p.version for p in a.published_models()] == [1, 2]
