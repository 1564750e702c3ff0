"""Streams outbox batches to the coordinator; a batch leaves the outbox only after the coordinator's ack.

One thread per node.  Each round sends the outbox's batches (those fixed earlier first, so a re-send
carries the same id and rows) in ``UploadSamples`` / ``UploadLabels`` client streams, a few open at
once, and takes their acks in order; the coordinator acks a stream only once every batch of it is
committed, and accepted and duplicate ids are then deleted from the outbox (one range delete each).  Any failure (coordinator down, restarting, token
refused) leaves the outbox as it was and waits an exponentially growing, jittered delay; serving
never waits on any of this.  Batches are serialized straight from the stored message bytes (a
repeated field is the concatenation of its elements), so a backlog drains without re-parsing.
"""
from __future__ import annotations

import logging
import random
import threading
from collections import deque

import grpc

from edgeloop.node.outbox import LABELS, SAMPLES, Batch
from edgeloop.protocol import mesh_pb2

log = logging.getLogger("edgeloop.node.uploader")

#: Per stream: batches and bytes (kept well under gRPC's default 4 MiB message limit per batch).
MAX_BATCHES_PER_STREAM = 2
#: Streams open at once while a backlog drains.  The coordinator acknowledges a stream only once all
#: of it is committed, and its writer interleaves the streams it holds, so two streams tend to end
#: together and leave it idle while the next is read and sent; with three, one is always queued.
STREAMS_IN_FLIGHT = 3
MAX_BYTES_PER_STREAM = 32 << 20
MAX_BATCH_BYTES = 3 << 20
UPLOAD_TIMEOUT_S = 60.0
BACKOFF_BASE_S = 0.05
#: With no backlog (a round sent less than a batch), the next round waits this long: small uploads
#: are merged, and the uploader does not wake on every commit of a busy edge.
LINGER_S = 0.25

_METHODS = {SAMPLES: "/edgeloop.v1.Coordinator/UploadSamples", LABELS: "/edgeloop.v1.Coordinator/UploadLabels"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_ROW_TAG = _varint(3 << 3 | 2)
_LENGTHS = [_varint(n) for n in range(1 << 14)]  # the length prefix of every row under 16 KiB, made once


def encode_batch(batch: Batch, node_id: str) -> bytes:
    """The wire bytes of a SampleBatch / LabelBatch: batch_id (1), node_id (2), rows (3), rows as stored."""
    parts = [_field(1, batch.batch_id.encode()), _field(2, node_id.encode())]
    append, tag, lengths, small = parts.append, _ROW_TAG, _LENGTHS, len(_LENGTHS)
    for p in batch.payloads:
        n = len(p)
        append(tag)
        append(lengths[n] if n < small else _varint(n))
        append(p)
    return b"".join(parts)


class Backoff:
    """Exponential delays with full jitter in [d/2, d], d doubling from ``base_s`` up to ``max_s``."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        d = min(self.max_s, self.base_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return d * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class Uploader:
    """Drains ``outbox`` to the coordinator over ``channel`` (a channel from ``protocol.auth.open_channel``)."""

    def __init__(self, outbox, channel, node_id: str, batch_size: int, backoff_max_s: float) -> None:
        self.outbox = outbox
        self.node_id = node_id
        self.batch_size = int(batch_size)
        self.backoff = Backoff(BACKOFF_BASE_S, backoff_max_s)
        self._calls = {kind: channel.stream_unary(method, request_serializer=lambda b: b,
                                                  response_deserializer=mesh_pb2.UploadAck.FromString)
                       for kind, method in _METHODS.items()}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uploaded = {SAMPLES: 0, LABELS: 0}  # rows acknowledged since start
        self.failures = 0
        self.last_error = ""

    def start(self) -> "Uploader":
        self._thread = threading.Thread(target=self._run, name="edgeloop-uploader", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.upload_once(LABELS) + self.upload_once(SAMPLES)
            except grpc.RpcError as exc:
                self._failed(f"{exc.code().name}: {(exc.details() or '')[:200]}")
                continue
            except Exception as exc:  # never let the thread die: the outbox keeps holding
                log.exception("uploader: unexpected error")
                self._failed(f"{type(exc).__name__}: {exc}")
                continue
            if self.backoff.failures:
                log.info("uploader: coordinator reachable again; uploading the backlog")
            self.backoff.reset()
            if sent < self.batch_size:
                self._wake.wait(LINGER_S)
                self._wake.clear()

    def _failed(self, reason: str) -> None:
        self.failures += 1
        delay = self.backoff.next_delay()
        if reason != self.last_error or self.backoff.failures == 1:
            log.warning("uploader: upload failed (%s); outbox holds %d rows; retrying in %.2f s", reason,
                        self.outbox.pending_rows, delay)
        self.last_error = reason
        self._stop.wait(delay)

    def upload_once(self, kind: str) -> int:
        """Send every pending batch of ``kind``; returns the rows acknowledged (0 when nothing was pending).

        Up to ``STREAMS_IN_FLIGHT`` streams overlap: the next one is read and encoded while the
        coordinator commits the earlier ones, and acks are taken in the order the streams were sent,
        so a backlog drains at the coordinator's pace, not at the sum of both sides.
        """
        call = self._calls[kind]
        inflight: deque = deque()  # (future, batches), oldest first
        rows = 0
        try:
            while True:
                skip = {b.batch_id for _, sent in inflight for b in sent}
                batches = self.outbox.next_batches(kind, self.batch_size, MAX_BATCHES_PER_STREAM,
                                                   MAX_BYTES_PER_STREAM, MAX_BATCH_BYTES, skip)
                if batches:
                    frames = [encode_batch(b, self.node_id) for b in batches]
                    inflight.append((call.future(iter(frames), timeout=UPLOAD_TIMEOUT_S), batches))
                if not inflight:
                    break
                if not batches or len(inflight) >= STREAMS_IN_FLIGHT:
                    rows += self._finish(kind, *inflight.popleft())
                if self._stop.is_set() or rows >= (1 << 62):
                    break
        finally:
            failed = False  # after a failure or a stop the streams left are given up (their batches stay)
            while inflight:
                future, sent = inflight.popleft()
                if failed:
                    future.cancel()
                    continue
                try:
                    rows += self._finish(kind, future, sent)
                except Exception:
                    failed = True
                    future.cancel()
        return rows

    def _finish(self, kind: str, future, batches) -> int:
        ack = future.result()
        done = set(ack.accepted_batch_ids) | set(ack.duplicate_batch_ids)
        acked = [b for b in batches if b.batch_id in done]
        rows = self.outbox.ack(acked)
        self.uploaded[kind] += rows
        if len(acked) != len(batches):
            raise RuntimeError(f"the coordinator acknowledged {len(acked)} of {len(batches)} {kind} batches")
        return rows


__all__ = ["Backoff", "Uploader", "encode_batch"]
