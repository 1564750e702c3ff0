"""Uploader pieces: the batch wire encoding (parsed by protobuf itself) and the jittered backoff."""
from __future__ import annotations

import random

from edgeloop.node.outbox import Batch
from edgeloop.node.uploader import Backoff, encode_batch
from edgeloop.protocol import mesh_pb2


def test_encoded_batch_is_the_protobuf_message_with_the_stored_rows():
    samples = [mesh_pb2.Sample(sample_id=f"id-{i}", model="m", inputs=[mesh_pb2.TensorData(data=bytes(i * 37))])
               for i in range(600)]  # row sizes cross the 1-, 2- and 3-byte length prefixes
    batch = Batch("inst-s1-600", "samples", 1, 600, tuple(s.SerializeToString() for s in samples))
    parsed = mesh_pb2.SampleBatch.FromString(encode_batch(batch, "edge-a"))
    assert parsed.batch_id == "inst-s1-600" and parsed.node_id == "edge-a"
    assert list(parsed.samples) == samples
    labels = [mesh_pb2.Label(sample_id="x", value=2.5, received_ms=7)]
    lb = Batch("inst-l1-1", "labels", 1, 1, tuple(x.SerializeToString() for x in labels))
    assert list(mesh_pb2.LabelBatch.FromString(encode_batch(lb, "e")).labels) == labels


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(0.1, 2.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    caps = [min(2.0, 0.1 * 2 ** i) for i in range(8)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_a_backlog_of_more_batches_than_the_streams_in_flight_hold_drains_exactly_once(tmp_path, closing):
    """Overlapping streams: every batch is sent, acknowledged in order and deleted once; nothing twice."""
    from edgeloop.node.outbox import SAMPLES, Outbox
    from edgeloop.node.uploader import MAX_BATCHES_PER_STREAM, STREAMS_IN_FLIGHT, Uploader
    from edgeloop.protocol.auth import open_channel
    from nodekit import start_cloud, stored_sample_ids, wait_for

    cloud = start_cloud(tmp_path)
    closing(cloud)
    box = Outbox(tmp_path / "outbox.sqlite", 1000, 1 << 20, 1000).start()
    closing(box)
    batch_size = 3
    n = 2 * MAX_BATCHES_PER_STREAM * STREAMS_IN_FLIGHT * batch_size + 1  # the last batch one row short
    tensor = mesh_pb2.TensorData(name="INPUT0", datatype="FP32", shape=[1, 2], data=bytes(8))
    for i in range(n):
        box.offer("mlp", (bytes, (mesh_pb2.Sample(sample_id=f"s-{i}", model="mlp", timestamp_ms=1 + i,
                                                  inputs=[tensor]).SerializeToString(),)))
    assert wait_for(lambda: box.snapshot()["committed"] == n, timeout=10)
    channel = open_channel(cloud.address, None, None)
    closing(channel)
    uploader = Uploader(box, channel, "edge-a", batch_size=batch_size, backoff_max_s=1.0)
    assert uploader.upload_once(SAMPLES) == n
    assert box.pending(SAMPLES) == 0 and box.snapshot()["pending_rows"] == 0
    assert box.next_batches(SAMPLES, batch_size, 100, 1 << 20) == []  # no batch left fixed
    assert sorted(stored_sample_ids(cloud.store.path)) == sorted(f"s-{i}" for i in range(n))
    assert uploader.upload_once(SAMPLES) == 0

