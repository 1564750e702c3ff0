"""Operator calls to a coordinator (``edgeloop status|models|labels --config CLOUD.toml``).

The address, token and TLS material all come from the cloud config, so every fleet command reaches
the coordinator the same way.
"""
from __future__ import annotations

import csv
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgeloop.config.schema import join_host_port
from edgeloop.protocol import auth as fleet_auth
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

from .validate import ID_EXPECTED, ID_RE

PUSH_CHUNK_BYTES = 1 << 20
LABEL_BATCH_ROWS = 5000


def connect_host(host: str) -> str:
    """Where a client reaches a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def open_fleet_channel(config, address: str | None = None):
    """A channel to the coordinator named by a CloudConfig, with its token and TLS."""
    token = fleet_auth.read_token_file(config.auth.token_file) if config.auth.token_file else None
    address = address or join_host_port(connect_host(config.node.host), config.node.grpc_port)
    opts = [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes)]
    return fleet_auth.open_channel(address, config.auth, token, options=opts)


def fleet_status(channel, timeout: float = 10.0) -> dict:
    """The fleet view as plain data (the ``status --json`` shape)."""
    reply = mesh_pb2_grpc.FleetStub(channel).FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=timeout)
    return {
        "nodes": [{
            "node_id": n.node_id, "address": n.address, "last_seen_ms": n.last_seen_ms,
            "models": [{"model": m.model, "version": m.version, "sha256": m.sha256, "state": m.state}
                       for m in n.models],
            "requests": n.requests, "samples_received": n.samples_received, "labels_received": n.labels_received,
            "outbox_pending": n.outbox_pending, "outbox_dropped": n.outbox_dropped,
            "max_psi": None if math.isnan(n.max_psi) else n.max_psi, "connected": n.connected,
        } for n in reply.nodes],
        "models": [{"model": m.model, "samples": m.samples, "labelled": m.labelled, "labels": m.labels,
                    "unjoined_labels": m.unjoined_labels} for m in reply.models],
        "fleet_epoch": reply.fleet_epoch,
        "monitors": [{"model": m.model, "monitor": m.monitor, "subject": m.subject, "slice": m.slice,
                      "value": m.value, "threshold": m.threshold, "alarm": m.alarm} for m in reply.monitors],
    }


def push_model(channel, path: str | Path, model: str, version: int = 0, timeout: float = 600.0,
               features_json: str = ""):
    """Stream a model file to the coordinator (with its feature definition, JSON, when it has one);
    returns the PushModelResponse."""
    path = Path(path)

    def chunks():
        with open(path, "rb") as fh:
            first = True
            while True:
                data = fh.read(PUSH_CHUNK_BYTES)
                if first:
                    yield mesh_pb2.PushModelChunk(model=model, version=version, data=data,
                                                    features_json=features_json)
                    first = False
                elif data:
                    yield mesh_pb2.PushModelChunk(data=data)
                if not data:
                    return

    return mesh_pb2_grpc.FleetStub(channel).PushModel(chunks(), timeout=timeout)


@dataclass
class CsvProblem:
    line: int
    message: str


def read_labels_csv(path: str | Path, max_problems: int = 50) -> tuple[list, list[CsvProblem]]:
    """Label messages from a ``request_id,label[,timestamp]`` CSV, and its bad rows by line number.

    ``timestamp`` (Unix ms) is when the label became known; later ones win over earlier ones.
    """
    labels, problems = [], []
    now = int(time.time() * 1000)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["request_id", "label"] or len(header) > 3 or (
                len(header) == 3 and header[2].strip() != "timestamp"):
            raise ValueError(f"{path}: line 1: got header {header!r}, expected 'request_id,label[,timestamp]'")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append(CsvProblem(line, f"got {len(row)} columns, expected {len(header)}"))
            else:
                rid, value = row[0].strip(), row[1].strip()
                try:
                    number = float(value)
                    if not math.isfinite(number):
                        raise ValueError
                except ValueError:
                    problems.append(CsvProblem(line, f"label {value[:200]!r} is not a finite number"))
                    continue
                stamp = now
                if len(row) == 3 and row[2].strip():
                    try:
                        stamp = int(row[2].strip())
                        if stamp <= 0:
                            raise ValueError
                    except ValueError:
                        problems.append(CsvProblem(line, f"timestamp {row[2][:200]!r} is not Unix milliseconds > 0"))
                        continue
                if not ID_RE.fullmatch(rid):
                    problems.append(CsvProblem(line, f"request_id {rid[:200]!r}: expected {ID_EXPECTED}"))
                    continue
                labels.append((line, mesh_pb2.Label(sample_id=rid, value=number, received_ms=stamp)))
            if len(problems) >= max_problems:
                break
    return labels, problems


def import_labels(channel, labels: list, timeout: float = 300.0, batch_prefix: str | None = None):
    """Send labels in batches (ids unique per import); returns the UploadAck."""
    prefix = batch_prefix or f"import-{uuid.uuid4().hex}"
    batches = [mesh_pb2.LabelBatch(batch_id=f"{prefix}-{i // LABEL_BATCH_ROWS}",
                                   labels=labels[i:i + LABEL_BATCH_ROWS])
               for i in range(0, len(labels), LABEL_BATCH_ROWS)]
    return mesh_pb2_grpc.FleetStub(channel).ImportLabels(iter(batches), timeout=timeout)


CT_METHODS = ("Retrain", "ListTriggers", "ListQuarantine", "ShowModel", "ModelLineage", "PromoteModel",
              "RollBackModel", "FederatedRound")


def ct_call(channel, method: str, model: str = "", version: int = 0, reason: str = "", limit: int = 0,
            timeout: float = 60.0):
    """One continuous-training Fleet call; the reply's ``text`` is for people, ``json`` for scripts."""
    if method not in CT_METHODS:
        raise ValueError(f"method {method!r}: expected one of {CT_METHODS}")
    stub = mesh_pb2_grpc.FleetStub(channel)
    request = mesh_pb2.CtRequest(model=model, version=version, reason=reason, limit=limit)
    return getattr(stub, method)(request, timeout=timeout)
