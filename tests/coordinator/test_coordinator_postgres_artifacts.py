"""Two coordinators on one PostgreSQL database, each with its own artifact directory: a model pushed to
one is fetched from the other by an edge that joined only the other, and verified against its manifest."""
from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from coordkit import Running, cloud_config, join, onnx_bytes

from edgeloop.protocol import mesh_pb2

pytest.importorskip("psycopg", reason="PostgreSQL tests: psycopg is not installed")


@pytest.fixture
def two_coordinators(tmp_path, postgres_url):
    running = []
    try:
        for name in ("a", "b"):
            running.append(Running(cloud_config(tmp_path, database=postgres_url, artifact_dir=f"art-{name}")))
        yield running
    finally:
        for r in running:
            r.stop()


def first_directive(coord, node: str):
    call = coord.Directives(mesh_pb2.DirectivesRequest(node_id=node, after_sequence=0), timeout=15)
    try:
        return next(iter(call))
    finally:
        call.cancel()


def test_a_model_pushed_to_one_coordinator_is_fetched_from_the_other(two_coordinators, tmp_path):
    a, b = two_coordinators
    join(b.coord, "edge-b")  # the edge knows only coordinator B
    data = onnx_bytes(payload=5000)
    sha = hashlib.sha256(data).hexdigest()
    msgs = [mesh_pb2.PushModelChunk(model="m", version=0, data=data[:3000]), mesh_pb2.PushModelChunk(data=data[3000:])]
    pushed = a.fleet.PushModel(iter(msgs), timeout=15)
    assert pushed.sha256 == sha and pushed.edges_directed == 1
    assert (tmp_path / "art-a" / sha[:2] / sha).is_file() and not (tmp_path / "art-b" / sha[:2] / sha).exists()

    # the edge's directive stream on B carries the load A's rollout wrote, with A's manifest
    load = first_directive(b.coord, "edge-b").load
    manifest = json.loads(load.manifest_json)
    assert (load.model, load.version, load.artifact_sha256, load.size) == ("m", 1, sha, len(data))
    assert manifest["sha256"] == sha and manifest["size"] == len(data)
    # and fetches the bytes from B in chunks, resuming at an offset as an edge does; B reads the database
    got = b""
    for start in (0, 2048):
        stream = b.coord.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256=sha, offset=len(got), chunk_size=1024,
                                                                     max_chunks=2 if start == 0 else 0), timeout=15)
        for chunk in stream:
            assert chunk.offset == len(got) and chunk.total_size == len(data)
            got += chunk.data
    assert len(got) == manifest["size"] and hashlib.sha256(got).hexdigest() == manifest["sha256"]
    assert (tmp_path / "art-b" / sha[:2] / sha).read_bytes() == data  # now cached by B, checked on the way in
    with pytest.raises(grpc.RpcError) as err:
        next(iter(b.coord.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256="0" * 64), timeout=15)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
