"""The ``edgeloop.v1.Coordinator`` and ``edgeloop.v1.Fleet`` servicers: messages in, store calls, messages out.

Every field is checked (``validate``) before anything is stored; an upload stream commits batch by
batch (one transaction each) and acknowledges only after its last batch is committed, so a stream
that breaks is never acknowledged and the edge re-sends: re-sent batches are recognised by id.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections import deque

import grpc

from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.errors import ProtocolError, failed_precondition, invalid_argument, not_found, unavailable
from edgeloop.store import (ArtifactError, FeatureStatRow, LabelRow, SampleRow, StoreError)

from . import validate as v
from .writer import IngestWriter

log = logging.getLogger("edgeloop.coordinator")

LOAD = "load"
#: rows of one upload stream validated and queued ahead of the writer (bounds memory per stream)
UPLOAD_IN_FLIGHT_ROWS = 4000
#: how long an idle directive stream sleeps before checking that its client is still there
STREAM_POLL_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def _guard(method: str):
    """Map ProtocolError (and a closed store) to the right gRPC status; count refusals."""
    def wrap(fn):
        def handler(self, request, context):
            try:
                return fn(self, request, context)
            except ProtocolError as exc:
                self.metrics.rejected.labels(method, exc.code.name).inc()
                context.abort(exc.code, exc.message)
            except StoreError as exc:
                code = grpc.StatusCode.UNAVAILABLE if self.stopping else grpc.StatusCode.FAILED_PRECONDITION
                self.metrics.rejected.labels(method, code.name).inc()
                context.abort(code, str(exc))
            except (sqlite3.Error, OSError, RuntimeError) as exc:  # storage failed: say so, never die
                code = grpc.StatusCode.UNAVAILABLE if self.stopping else grpc.StatusCode.INTERNAL
                if not self.stopping:
                    log.exception("%s failed in storage", method)
                self.metrics.rejected.labels(method, code.name).inc()
                context.abort(code, f"{method}: storage failed ({type(exc).__name__}: {str(exc)[:200]}); "
                                    f"nothing of the failed batch or call was acknowledged")
        handler.__name__ = fn.__name__
        return handler
    return wrap


def _stream_guard(method: str):
    """The same for server-streaming handlers (generators)."""
    def wrap(fn):
        def handler(self, request, context):
            try:
                yield from fn(self, request, context)
            except ProtocolError as exc:
                self.metrics.rejected.labels(method, exc.code.name).inc()
                context.abort(exc.code, exc.message)
        handler.__name__ = fn.__name__
        return handler
    return wrap


def models_of(field: str, models) -> list[list]:
    """ModelVersion messages → ``[[model, version, sha256, state], ...]`` after checking them."""
    v.count(field, models, v.MAX_MODELS)
    out = []
    for i, m in enumerate(models):
        v.name(f"{field}[{i}].model", m.model)
        v.version(f"{field}[{i}].version", m.version)
        v.sha256(f"{field}[{i}].sha256", m.sha256, allow_empty=True)
        if m.state not in v.MODEL_STATES:
            raise v.bad(f"{field}[{i}].state", m.state, "READY, LOADING or UNAVAILABLE")
        out.append([m.model, m.version, m.sha256, m.state])
    return out


def model_messages(models: list) -> list:
    return [mesh_pb2.ModelVersion(model=m[0], version=m[1], sha256=m[2], state=m[3]) for m in models]


class CoordinatorCore:
    """State shared by both servicers: the store, the artifact directory, the directive hub, metrics."""

    def __init__(self, config, store, artifacts, hub, metrics) -> None:
        self.config = config
        self.store = store
        self.artifacts = artifacts
        self.hub = hub
        self.metrics = metrics
        self.stopping = False
        self._tensors = v.TensorChecker()
        #: the one thread that commits uploads: validation (GIL held) overlaps SQLite work (GIL released)
        self.writer = IngestWriter(store)

    # ---------------------------------------------------------------- uploads
    def sample_rows(self, batch) -> list[SampleRow]:
        v.count("samples", batch.samples, self.config.max_batch_rows)
        rows = []
        append = rows.append
        check_tensors = self._tensors.check
        id_ok = v.ID_RE.fullmatch
        name_ok = v.NAME_RE.fullmatch
        models_ok: set[str] = set()
        for i, s in enumerate(batch.samples):
            if not id_ok(s.sample_id):
                raise v.bad(f"samples[{i}].sample_id", s.sample_id, v.ID_EXPECTED)
            model = s.model
            if model not in models_ok:
                if not name_ok(model):
                    raise v.bad(f"samples[{i}].model", model, v.NAME_EXPECTED)
                models_ok.add(model)
            key, ts, version = s.routing_key, s.timestamp_ms, s.model_version
            if key and (len(key) > v.MAX_KEY_CHARS or not key.isprintable()):
                v.routing_key(f"samples[{i}].routing_key", key)
            if not 0 < ts < v.MAX_TIMESTAMP_MS:
                v.timestamp(f"samples[{i}].timestamp_ms", ts)
            if not 0 <= version < v.MAX_VERSION:
                v.version(f"samples[{i}].model_version", version)
            check_tensors(f"samples[{i}].inputs", s.inputs)
            check_tensors(f"samples[{i}].outputs", s.outputs)
            append((model, s.sample_id, version, key, ts, s.SerializeToString()))
        return rows

    def label_rows(self, batch, received: int) -> list[LabelRow]:
        v.count("labels", batch.labels, self.config.max_batch_rows)
        rows = []
        for i, lab in enumerate(batch.labels):
            if lab.sample_id:
                v.ident(f"labels[{i}].sample_id", lab.sample_id)
                if lab.model:
                    v.name(f"labels[{i}].model", lab.model)
            else:
                if not lab.model or not lab.routing_key:
                    raise v.bad(f"labels[{i}]", "no sample_id", "a sample_id, or model + routing_key + timestamp_ms")
                v.name(f"labels[{i}].model", lab.model)
                v.routing_key(f"labels[{i}].routing_key", lab.routing_key)
                v.timestamp(f"labels[{i}].timestamp_ms", lab.timestamp_ms)
            if lab.sample_id and lab.routing_key:
                v.routing_key(f"labels[{i}].routing_key", lab.routing_key)
            if lab.timestamp_ms >= v.MAX_TIMESTAMP_MS:
                v.timestamp(f"labels[{i}].timestamp_ms", lab.timestamp_ms)
            v.finite(f"labels[{i}].value", lab.value)
            if lab.received_ms > received + v.MAX_CLOCK_AHEAD_MS:  # would win every later write forever
                raise v.bad(f"labels[{i}].received_ms", lab.received_ms,
                            f"a Unix time in ms no later than the coordinator's clock + {v.MAX_CLOCK_AHEAD_MS} ms")
            rows.append(LabelRow(lab.sample_id, lab.model, lab.routing_key, lab.timestamp_ms, lab.value,
                                 lab.received_ms or received))
        return rows

    def upload(self, request_iterator, context, kind: str, operator: bool = False):
        """Validate each batch on this thread and commit it on the writer thread, overlapping the two.

        At most ``UPLOAD_IN_FLIGHT_ROWS`` rows of a stream wait for the writer; the ack waits for all.
        When the stream breaks, batches already handed over still commit but are not acknowledged.
        """
        accepted, duplicates, stored = [], [], 0
        in_flight: deque = deque()

        def settle(batch_id, future):
            nonlocal stored
            result = future.result()
            if result is None:
                duplicates.append(batch_id)
                self.metrics.duplicate_batches.labels(kind).inc()
                return
            accepted.append(batch_id)
            rows = result if kind == "samples" else result[0]
            stored += rows
            if kind == "samples":
                self.metrics.samples.inc(rows)
            else:
                self.metrics.labels.labels("operator" if operator else "edge").inc(rows)

        for batch in request_iterator:
            if self.stopping:
                raise unavailable("the coordinator is shutting down; re-send the batches not acknowledged")
            if operator:
                if batch.node_id:
                    raise v.bad("node_id", batch.node_id, "'' (imported labels belong to no edge)")
            else:
                v.name("node_id", batch.node_id)
            v.ident("batch_id", batch.batch_id)
            received = now_ms()
            if kind == "samples":
                rows = self.sample_rows(batch)
                future = self.writer.samples(batch.node_id, batch.batch_id, rows, received)
            else:
                rows = self.label_rows(batch, received)
                future = self.writer.call(self.store.ingest_labels, batch.node_id, batch.batch_id, rows, received)
            in_flight.append((batch.batch_id, future, len(rows)))
            waiting = sum(n for _, _, n in in_flight)
            while len(in_flight) > 1 and waiting > UPLOAD_IN_FLIGHT_ROWS:
                batch_id, future, n = in_flight.popleft()
                settle(batch_id, future)
                waiting -= n
        while in_flight:
            batch_id, future, _ = in_flight.popleft()
            settle(batch_id, future)
        if not context.is_active():
            raise unavailable("the upload stream was cancelled before its end")
        return mesh_pb2.UploadAck(accepted_batch_ids=accepted, duplicate_batch_ids=duplicates, rows_stored=stored)

    # ---------------------------------------------------------------- directives
    def load_payload(self, published) -> bytes:
        manifest = json.dumps({"model": published.model, "version": published.version, "sha256": published.sha256,
                               "size": published.size, "created_ms": published.created_ms}, sort_keys=True)
        return mesh_pb2.LoadModel(model=published.model, version=published.version, artifact_sha256=published.sha256,
                                  size=published.size, manifest_json=manifest.encode()).SerializeToString()

    def directive_message(self, record):
        d = mesh_pb2.Directive(sequence=record.sequence)
        if record.kind == LOAD:
            d.load.ParseFromString(record.payload)
        elif record.kind == "unload":
            d.unload.ParseFromString(record.payload)
        elif record.kind == "rollback":
            d.rollback.ParseFromString(record.payload)
        else:
            d.report.SetInParent()
        return d


class CoordinatorServicer(mesh_pb2_grpc.CoordinatorServicer):
    """What edges call."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core
        self.metrics = core.metrics

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @_guard("Join")
    def Join(self, request, context):
        node = request.node
        v.name("node.node_id", node.node_id)
        if node.mesh_name:
            v.name("node.mesh_name", node.mesh_name)
        v.text("node.host", node.host, 253)
        if node.host and not node.host.replace(".", "").replace(":", "").replace("-", "").isalnum():
            raise v.bad("node.host", node.host, "a host name or IP address")
        if node.grpc_port > 65535 or node.metrics_port > 65535:
            raise v.bad("node.grpc_port", node.grpc_port, "a port 0..65535")
        if not (math.isfinite(node.weight) and node.weight >= 0):
            raise v.bad("node.weight", node.weight, "a finite weight >= 0")
        v.text("node.zone", node.zone, 128)
        v.text("node.protocol_version", node.protocol_version, 64)
        models = models_of("models", request.models)
        address = f"{node.host}:{node.grpc_port}" if node.host and node.grpc_port else ""
        identity = {"host": node.host, "grpc_port": node.grpc_port, "metrics_port": node.metrics_port,
                    "weight": node.weight, "zone": node.zone, "protocol_version": node.protocol_version,
                    "mesh_name": node.mesh_name}
        store = self.core.store
        stamp = now_ms()
        store.join_node(node.node_id, address, identity, models, stamp)
        serving = {(m[0], m[1]) for m in models if m[3] in ("READY", "")}
        desired = store.published_models(latest_only=True)
        added = 0
        for p in desired:  # an edge that joins later is directed to load the current models
            if (p.model, p.version) in serving or store.has_directive(node.node_id, LOAD, p.model, p.version):
                continue
            store.add_directive(node.node_id, LOAD, self.core.load_payload(p), stamp, p.model, p.version)
            added += 1
        if added:
            self.core.hub.notify()
        log.info("node %s joined from %s (%d model(s); %d load directive(s) added)", node.node_id, address or "-",
                 len(models), added)
        return mesh_pb2.JoinResponse(
            fleet_epoch=store.fleet_epoch(), heartbeat_interval_ms=self.core.config.heartbeat_interval_ms,
            desired=[mesh_pb2.ModelVersion(model=p.model, version=p.version, sha256=p.sha256, state="READY")
                     for p in desired])

    @_stream_guard("Directives")
    def Directives(self, request, context):
        node_id = v.name("node_id", request.node_id)
        core = self.core
        if not core.store.node_known(node_id):
            raise failed_precondition(f"node_id: got {v.cut(node_id)}, expected a node that has joined (call Join first)")
        after = request.after_sequence
        issued = core.store.directive_sequence(node_id)
        if after > issued:
            log.warning("node %s resumes after directive %d, but only %d were issued to it", node_id, after, issued)
        limit = max(1, core.config.grpc_workers // 2)  # each stream holds a handler thread: keep half for calls
        if not core.hub.connect(node_id, limit):
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"node_id {node_id!r}: {limit} directive streams are open, the most this coordinator "
                                f"holds (fleet.grpc_workers / 2); retry later")
        core.store.touch_node(node_id, now_ms())
        self.metrics.connected.set(len(core.hub.connected()))
        try:
            while context.is_active() and not core.stopping:
                seen = core.hub.generation
                records = core.store.directives_after(node_id, after)
                for record in records:
                    yield core.directive_message(record)
                    after = record.sequence
                    self.metrics.directives.labels("sent").inc()
                if not records:
                    core.hub.wait(seen, STREAM_POLL_S)
        except StoreError:
            pass  # closed during shutdown: the stream ends, the edge reconnects to the next coordinator
        finally:
            core.hub.disconnect(node_id)
            self.metrics.connected.set(len(core.hub.connected()))

    @_guard("ReportDirective")
    def ReportDirective(self, request, context):
        v.name("node_id", request.node_id)
        if request.sequence < 1:
            raise v.bad("sequence", request.sequence, "a directive sequence number >= 1")
        v.text("error", request.error, v.MAX_ERROR_CHARS)
        if not self.core.store.directive_result(request.node_id, request.sequence, request.ok, request.error, now_ms()):
            raise not_found(f"sequence: got {request.sequence}, expected a directive issued to node "
                            f"{request.node_id!r} (last issued: {self.core.store.directive_sequence(request.node_id)})")
        self.metrics.directives.labels("applied" if request.ok else "failed").inc()
        if not request.ok:
            log.warning("node %s failed directive %d: %s", request.node_id, request.sequence, request.error[:200])
        return mesh_pb2.DirectiveResultAck()

    @_guard("UploadSamples")
    def UploadSamples(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "samples")

    @_guard("UploadLabels")
    def UploadLabels(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "labels")

    @_stream_guard("FetchArtifact")
    def FetchArtifact(self, request, context):
        core = self.core
        sha = v.sha256("sha256", request.sha256)
        limit = core.config.fetch_chunk_bytes
        if request.chunk_size > limit:
            raise v.bad("chunk_size", request.chunk_size, f"0 (server default) or at most {limit} bytes")
        chunk = request.chunk_size or limit
        total = core.artifacts.size(sha)
        if total is None:
            raise not_found(f"sha256: got {sha!r}, expected an artifact this coordinator stores")
        offset = request.offset
        if offset > total:
            raise v.bad("offset", offset, f"an offset within the artifact (0..{total})")
        while True:
            try:
                data = core.artifacts.read(sha, offset, chunk)
            except ArtifactError as exc:
                raise not_found(str(exc)) from None
            yield mesh_pb2.ArtifactChunk(sha256=sha, offset=offset, total_size=total, data=data)
            self.metrics.artifact_bytes.inc(len(data))
            offset += len(data)
            if offset >= total or not data or not context.is_active():
                return

    @_guard("ReportStatus")
    def ReportStatus(self, request, context):
        node_id = v.name("node_id", request.node_id)
        models = models_of("models", request.models)
        v.count("feature_stats", request.feature_stats, v.MAX_FEATURE_STATS)
        stats = []
        psis = []
        for i, f in enumerate(request.feature_stats):
            where = f"feature_stats[{i}]"
            v.name(f"{where}.model", f.model)
            v.ident(f"{where}.tensor", f.tensor)
            v.version(f"{where}.model_version", f.model_version)
            if len(f.bin_edges) > v.MAX_BINS + 1:
                raise v.bad(f"{where}.bin_edges", f"{len(f.bin_edges)} edges", f"at most {v.MAX_BINS + 1} edges")
            edges = tuple(f.bin_edges)
            if any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
                raise v.bad(f"{where}.bin_edges", list(edges[:8]), "finite, strictly increasing bin edges")
            if len(f.counts) != max(len(edges) - 1, 0):
                raise v.bad(f"{where}.counts", f"{len(f.counts)} counts", f"len(bin_edges) - 1 = {len(edges) - 1} counts")
            for field, value in (("mean", f.mean), ("m2", f.m2)):
                v.finite(f"{where}.{field}", value)
            if f.m2 < 0:
                raise v.bad(f"{where}.m2", f.m2, "a sum of squared deviations >= 0")
            if math.isfinite(f.psi):
                psis.append(f.psi)
            stats.append(FeatureStatRow(f.model, f.model_version, f.tensor, f.is_output, f.feature, edges,
                                        tuple(f.counts), f.n, f.mean, f.m2, f.nan_count, f.psi))
        v.count("serving", request.serving, v.MAX_MODELS)
        serving = []
        for i, s in enumerate(request.serving):
            v.name(f"serving[{i}].model", s.model)
            v.version(f"serving[{i}].version", s.version)
            for field in ("latency_p50_ms", "latency_p99_ms"):
                value = getattr(s, field)
                if not math.isfinite(value) or value < 0:
                    raise v.bad(f"serving[{i}].{field}", value, "a finite latency >= 0 ms")
            serving.append({"model": s.model, "version": s.version, "requests": s.requests, "failures": s.failures,
                            "latency_p50_ms": s.latency_p50_ms, "latency_p99_ms": s.latency_p99_ms,
                            "samples_recorded": s.samples_recorded, "samples_dropped": s.samples_dropped,
                            "labels_recorded": s.labels_recorded})
        summary = {"epoch": request.epoch, "queue_depth": request.queue_depth,
                   "outbox_pending": request.outbox_pending, "outbox_dropped": request.outbox_dropped,
                   "requests": sum(s["requests"] for s in serving), "max_psi": max(psis) if psis else None,
                   "serving": serving, "last_directive_applied": request.last_directive_applied,
                   "timestamp_ms": request.timestamp_ms}
        self.core.store.record_status(node_id, summary, models, stats, now_ms())
        return mesh_pb2.StatusAck(fleet_epoch=self.core.store.fleet_epoch())


class FleetServicer(mesh_pb2_grpc.FleetServicer):
    """What the operator's CLI calls."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core
        self.metrics = core.metrics

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @_guard("FleetStatus")
    def FleetStatus(self, request, context):
        store = self.core.store
        connected = self.core.hub.connected()
        nodes = []
        for n in store.nodes():
            status = n.last_status
            max_psi = status.get("max_psi")
            nodes.append(mesh_pb2.NodeFleetStatus(
                node_id=n.node_id, address=n.address, last_seen_ms=n.last_seen_ms, models=model_messages(n.models),
                requests=int(status.get("requests", 0)), samples_received=n.samples_received,
                labels_received=n.labels_received, outbox_pending=int(status.get("outbox_pending", 0)),
                outbox_dropped=int(status.get("outbox_dropped", 0)),
                max_psi=math.nan if max_psi is None else float(max_psi), connected=n.node_id in connected))
        models = [mesh_pb2.ModelFleetStatus(model=c.model, samples=c.samples, labelled=c.labelled, labels=c.labels,
                                            unjoined_labels=c.unjoined_labels) for c in store.model_counts()]
        return mesh_pb2.FleetStatusResponse(fleet_epoch=store.fleet_epoch(), nodes=nodes, models=models)

    @_guard("PushModel")
    def PushModel(self, request_iterator, context):
        core = self.core
        first = next(request_iterator, None)
        if first is None:
            raise invalid_argument("stream: got no messages, expected a first PushModelChunk naming the model")
        model = v.name("model", first.model)
        version = v.version("version", first.version)

        def chunks():
            yield first.data
            for i, chunk in enumerate(request_iterator, start=1):
                if chunk.model not in ("", model):
                    raise v.bad(f"chunk[{i}].model", chunk.model, f"'' or {model!r} (the model is named once)")
                if chunk.version not in (0, version):
                    raise v.bad(f"chunk[{i}].version", chunk.version, f"0 or {version}")
                yield chunk.data

        try:
            sha, size = core.artifacts.put(chunks())
        except ArtifactError as exc:
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"data: {exc}") from None
        if size == 0:
            raise invalid_argument("data: got 0 bytes, expected the model file's bytes")
        if not context.is_active():
            raise unavailable("the push stream was cancelled before its end")
        try:
            published, records = core.store.publish_model(model, version, sha, size, now_ms(), LOAD,
                                                          core.load_payload)
        except StoreError as exc:
            if core.stopping:
                raise
            raise ProtocolError(grpc.StatusCode.ALREADY_EXISTS, f"version: {exc}") from None
        core.hub.notify()
        log.info("model %s version %d published (%s, %d bytes); %d edge(s) directed", model, published.version,
                 sha[:12], size, len(records))
        return mesh_pb2.PushModelResponse(model=model, version=published.version, sha256=sha, size=size,
                                          edges_directed=len(records))

    @_guard("ImportLabels")
    def ImportLabels(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "labels", operator=True)
