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
