"""Artifacts shared through the database (two coordinators, two local caches, one database): put by one,
read by the other with its sha256 checked, a corrupt row refused and never cached; on both backends."""
from __future__ import annotations

import hashlib
import os

import pytest

from edgeloop.store import ArtifactError, ArtifactStore, PostgresStore, SharedArtifactStore, SqliteStore


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


def shared(store, root, chunk_bytes=1000, max_bytes=1 << 20) -> SharedArtifactStore:
    return SharedArtifactStore(ArtifactStore(root, max_bytes), store, chunk_bytes=chunk_bytes)


def test_put_by_one_read_by_the_other_through_its_checked_cache(two_stores, tmp_path):
    a, b = shared(two_stores[0], tmp_path / "a"), shared(two_stores[1], tmp_path / "b")
    data = os.urandom(4500)
    sha, size = a.put([data[:2000], data[2000:]])
    assert sha == hashlib.sha256(data).hexdigest() and size == 4500
    assert a.put_bytes(data) == (sha, size)  # the same bytes again: one artifact
    assert two_stores[0].artifact_row_size(sha) == 4500
    assert [len(c) for c in two_stores[1].artifact_row_chunks(sha)] == [1000, 1000, 1000, 1000, 500]
    # b has never seen it: its size comes from the database, its bytes from the database into b's cache
    assert not b.local.exists(sha) and b.exists(sha) and b.size(sha) == 4500
    assert b.read(sha, 4000, 1000) == data[4000:] and b.local.exists(sha)
    assert b.path(sha).read_bytes() == data and b.read(sha, 4500, 10) == b""
    with pytest.raises(ArtifactError, match="past the end"):
        b.read(sha, 4501, 1)
    with pytest.raises(ArtifactError, match="not stored"):
        b.read("0" * 64, 0, 1)
    with pytest.raises(ArtifactError, match="64 lowercase hex"):
        b.read("../" + sha[3:], 0, 1)
    assert b.size("1" * 64) is None and not b.exists("1" * 64) and not b.exists("nope")
    a.discard(sha)
    assert two_stores[1].artifact_row_size(sha) is None and not a.exists(sha)


def test_a_corrupt_row_is_refused_and_not_cached(two_stores, tmp_path):
    a, b = shared(two_stores[0], tmp_path / "a"), shared(two_stores[1], tmp_path / "b")
    data = os.urandom(3000)
    sha, _ = a.put_bytes(data)
    with two_stores[0]._transaction() as conn:  # a bit flipped in the database (bad disk, bad restore)
        conn.execute("UPDATE artifact_chunks SET data = ? WHERE sha256 = ? AND chunk = 1",
                     (b"\x00" * 1000, sha))
    with pytest.raises(ArtifactError, match="corrupt"):
        b.read(sha, 0, 10)
    assert not b.local.exists(sha) and list((tmp_path / "b").glob("??/*")) == []
    assert a.read(sha, 0, 3000) == data  # a's own (checked) copy still serves
    with two_stores[0]._transaction() as conn:  # a chunk row gone: refused with what is missing
        conn.execute("DELETE FROM artifact_chunks WHERE sha256 = ? AND chunk = 2", (sha,))
    with pytest.raises(ArtifactError, match="chunk 2 of 3 is missing"):
        b.path(sha)


def test_an_artifact_over_the_limit_reaches_neither_the_cache_nor_the_database(two_stores, tmp_path):
    a = shared(two_stores[0], tmp_path / "a", max_bytes=100)
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        a.put([b"x" * 60, b"y" * 60])
    with two_stores[0]._reading() as db:
        assert db.execute("SELECT count(*) FROM artifact_chunks").fetchone()[0] == 0
