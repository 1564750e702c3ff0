"""Chunked transfer against a real coordinator and a real Peer service on 127.0.0.1: resume after a kill,
a corrupted chunk fetched again alone, peers before the coordinator, coordinator egress counted."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent import futures
from dataclasses import replace

import grpc
import pytest

from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.delivery import manifest as mf
from edgeloop.delivery import transfer
from edgeloop.mesh.peer_service import PeerServicer, node_identity
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

CHUNK = 4096


@pytest.fixture
def cloud(tmp_path):
    config = parse_cloud_config({"storage": {"database": "c/db.sqlite", "fetch_chunk_bytes": CHUNK}},
                                base_dir=tmp_path)
    coordinator = Coordinator(replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))).start()
    yield coordinator
    coordinator.stop(1)


def artifact(cloud, n_chunks=40):
    data = os.urandom(CHUNK * n_chunks - 100)
    sha, size = cloud.artifacts.put(iter([data]))
    doc = mf.build("m", 1, sha, size, mf.chunk_hashes(data, CHUNK), 0, chunk_bytes=CHUNK)
    return data, doc


def egress(cloud) -> float:
    return cloud.metrics.artifact_bytes._value.get()


def peer_server(path_by_sha):
    server = grpc.server(futures.ThreadPoolExecutor(4))
    servicer = PeerServicer(lambda: node_identity("p", "127.0.0.1", 0, 0, 1.0, "z"), dict, lambda: 0, lambda: 0)
    servicer.artifacts = path_by_sha.get
    mesh_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_a_clean_fetch_verifies_every_chunk_and_counts_coordinator_egress(cloud, tmp_path):
    data, doc = artifact(cloud)
    with grpc.insecure_channel(cloud.address) as channel:
        src = transfer.Source("coordinator", mesh_pb2_grpc.CoordinatorStub(channel), "coordinator")
        stats = transfer.fetch(doc, tmp_path / "a.part", [src])
        assert transfer.finish(tmp_path / "a.part", doc) == data
    assert stats.chunks_received == len(doc["chunks"]) and stats.bad_chunks == 0
    assert egress(cloud) == len(data)
    assert not (tmp_path / "a.part").exists() and not (tmp_path / "a.part.verified").exists()


def test_a_flipped_byte_in_one_chunk_from_a_peer_refetches_only_that_chunk(cloud, tmp_path):
    data, doc = artifact(cloud)
    bad = bytearray(data)
    bad[CHUNK * 7 + 13] ^= 0x01
    (tmp_path / "peer.bin").write_bytes(bytes(bad))
    server, port = peer_server({doc["sha256"]: tmp_path / "peer.bin"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as pc, grpc.insecure_channel(cloud.address) as cc:
            sources = [transfer.Source("peer", mesh_pb2_grpc.PeerStub(pc)),
                       transfer.Source("coordinator", mesh_pb2_grpc.CoordinatorStub(cc), "coordinator")]
            stats = transfer.fetch(doc, tmp_path / "b.part", sources)
            assert transfer.finish(tmp_path / "b.part", doc) == data
    finally:
        server.stop(0)
    n = len(doc["chunks"])
    assert stats.bad_chunks == 1 and stats.chunks_received == n + 1
    assert stats.chunks_by_source == {"peer": n, "coordinator": 1}
    assert egress(cloud) == CHUNK  # the coordinator sent the one chunk again, nothing else


def test_a_chunk_that_stays_bad_fails_the_transfer_with_the_reason(tmp_path):
    data = os.urandom(CHUNK * 4)
    doc = mf.build("m", 1, hashlib.sha256(data).hexdigest(), len(data), mf.chunk_hashes(data, CHUNK), 0,
                   chunk_bytes=CHUNK)
    bad = bytearray(data)
    bad[CHUNK + 1] ^= 0xFF
    (tmp_path / "peer.bin").write_bytes(bytes(bad))
    server, port = peer_server({doc["sha256"]: tmp_path / "peer.bin"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as pc:
            with pytest.raises(transfer.TransferError, match="failed their sha256 check"):
                transfer.fetch(doc, tmp_path / "c.part", [transfer.Source("peer", mesh_pb2_grpc.PeerStub(pc))],
                               max_bad_chunks=2)
    finally:
        server.stop(0)


CHILD = textwrap.dedent("""
    import json, sys, time
    import grpc
    from edgeloop.delivery import transfer
    from edgeloop.protocol import mesh_pb2_grpc

    doc = json.load(open(sys.argv[2]))

    class Slow(transfer.Source):  # a slow receiver, so the kill lands mid-transfer
        def open(self, *a, **kw):
            for i, msg in enumerate(super().open(*a, **kw), start=1):
                with open(sys.argv[3] + ".received", "w") as fh:  # chunks that reached this process
                    fh.write(str(i))
                time.sleep(0.05)
                yield msg

    channel = grpc.insecure_channel(sys.argv[1])
    transfer.fetch(doc, sys.argv[3], [Slow("coordinator", mesh_pb2_grpc.CoordinatorStub(channel), "coordinator")])
""")


def test_kill_mid_transfer_then_resume_fetches_at_most_one_chunk_again(cloud, tmp_path):
    import json

    data, doc = artifact(cloud)
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    part = tmp_path / "k.part"
    child = subprocess.Popen([sys.executable, "-c", CHILD, cloud.address, str(tmp_path / "doc.json"), str(part)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = part.with_name("k.part.verified")
            if state.exists() and state.read_text().endswith(tuple(str(i) for i in range(10))) \
                    and int(state.read_text().split(":")[1]) >= 5:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    received_before = int((tmp_path / "k.part.received").read_text())
    verified = int(part.with_name("k.part.verified").read_text().split(":")[1])
    assert 5 <= verified < len(doc["chunks"])
    with grpc.insecure_channel(cloud.address) as channel:
        src = transfer.Source("coordinator", mesh_pb2_grpc.CoordinatorStub(channel), "coordinator")
        stats = transfer.fetch(doc, part, [src])
        assert transfer.finish(part, doc) == data
    n = len(doc["chunks"])
    # the resumed fetch starts at the last verified chunk: at most the chunk in flight is fetched again
    assert stats.resumed_at_chunk == verified and stats.chunks_received == n - verified
    resent = received_before + stats.chunks_received - n
    assert 0 <= resent <= 1


def test_a_resume_hashes_the_written_chunks_again_and_refetches_from_the_first_bad_one(cloud, tmp_path):
    # the resume point counts chunks written (each is hashed while the next is received), so a resume
    # must not trust it: a written chunk that is wrong on disk is fetched again, with everything after it
    data, doc = artifact(cloud)
    n = len(doc["chunks"])
    part = tmp_path / "r.part"
    written = 12
    on_disk = bytearray(data[:written * CHUNK])
    on_disk[9 * CHUNK + 7] ^= 0x01  # chunk 9 is corrupt on disk; chunks 0..8 are good
    part.write_bytes(bytes(on_disk))
    part.with_name("r.part.verified").write_text(f"{doc['sha256']}:{written:012d}")
    with grpc.insecure_channel(cloud.address) as channel:
        src = transfer.Source("coordinator", mesh_pb2_grpc.CoordinatorStub(channel), "coordinator")
        stats = transfer.fetch(doc, part, [src])
        assert transfer.finish(part, doc) == data
    assert stats.resumed_at_chunk == 9 and stats.chunks_received == n - 9 and stats.bad_chunks == 0
