"""The edge's ``edgeloop.v1.Feedback`` service: late ground truth, acknowledged once durable in the outbox.

A label names its sample by ``sample_id`` (the request id), or by ``model`` + ``routing_key`` +
``timestamp_ms`` (the latest sample of that model and key served at or before that time; the
coordinator resolves it).  Labels are checked here (sizes, names, a finite value), stamped with
``received_ms`` (later writes win at the coordinator) and uploaded like samples, idempotently.
When a fleet token is configured, calls without it are refused with UNAUTHENTICATED.
"""
from __future__ import annotations

import math
import time

import grpc

from edgeloop.node.outbox import OutboxFull
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.auth import TOKEN_METADATA_KEY, token_matches
from edgeloop.serving.repository import valid_model_name

MAX_LABELS_PER_CALL = 10_000
MAX_ID_CHARS = 256
MAX_KEY_CHARS = 1024


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def check_label(label, where: str) -> str | None:
    """Why ``label`` cannot be stored (a message naming the field, the value and what was expected), or None."""
    if len(label.sample_id) > MAX_ID_CHARS:
        return f"{where}.sample_id has {len(label.sample_id)} characters; expected at most {MAX_ID_CHARS}"
    if label.model and not valid_model_name(label.model):
        return (f"{where}.model {_shown(label.model)} is not a model name; expected letters, digits, '_', '-', '.' "
                f"(1..128 characters)")
    if len(label.routing_key) > MAX_KEY_CHARS:
        return f"{where}.routing_key has {len(label.routing_key)} characters; expected at most {MAX_KEY_CHARS}"
    if not label.sample_id:
        if not (label.model and label.routing_key and label.timestamp_ms):
            return (f"{where}: sample_id is empty and model {_shown(label.model)}, routing_key "
                    f"{_shown(label.routing_key)}, timestamp_ms {label.timestamp_ms} do not name a sample; expected "
                    f"a sample_id (the request id), or model + routing_key + timestamp_ms")
    if not math.isfinite(label.value):
        return f"{where}.value {label.value!r} is not finite; expected a class index or a finite regression target"
    return None


class FeedbackServicer(mesh_pb2_grpc.FeedbackServicer):
    """Stores labels in ``outbox``; ``token`` (or None) is the fleet token callers must carry."""

    def __init__(self, outbox, token: str | None = None, commit_timeout_s: float = 10.0) -> None:
        self.outbox = outbox
        self.token = token
        self.commit_timeout_s = commit_timeout_s
        self.accepted = 0
        self.rejected_unauthenticated = 0
        #: ``on_label(sample_id, model, routing_key, timestamp_ms, value)`` after a label is stored (the
        #: node's real-time feature state takes it from here), or None
        self.on_label = None

    def Label(self, request, context):
        if not token_matches(context.invocation_metadata(), self.token):
            self.rejected_unauthenticated += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"Feedback.Label needs the fleet token in metadata {TOKEN_METADATA_KEY!r} (missing or wrong)")
        labels = request.labels
        if not labels:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "labels is empty; expected 1.. labels")
        if len(labels) > MAX_LABELS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"labels has {len(labels)} entries; expected at most {MAX_LABELS_PER_CALL} per call")
        now_ms = time.time_ns() // 1_000_000
        rows = []
        for i, label in enumerate(labels):
            problem = check_label(label, f"labels[{i}]")
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            stored = mesh_pb2.Label()
            stored.CopyFrom(label)
            stored.received_ms = now_ms
            rows.append((label.model, stored.SerializeToString()))
        try:
            self.outbox.put_labels(rows, self.commit_timeout_s)
        except OutboxFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"labels not stored: {exc}")
        except TimeoutError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"labels not stored: {exc}; expected to be retried")
        self.accepted += len(rows)
        on_label = self.on_label
        if on_label is not None:
            for label in labels:
                on_label(label.sample_id, label.model, label.routing_key, label.timestamp_ms, label.value)
        return mesh_pb2.LabelAck(accepted=len(rows))


__all__ = ["FeedbackServicer", "check_label"]
