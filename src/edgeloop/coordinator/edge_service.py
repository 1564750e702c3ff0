"""``edgeloop.v1.Coordinator``: what edges call (join, directives and their results, uploads, artifacts, status)."""
from __future__ import annotations

import logging
import math

import grpc

from edgeloop.config.network import HOST_EXPECTATION, is_host
from edgeloop.config.schema import join_host_port
from edgeloop.delivery import rollout as ro
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.errors import ProtocolError, failed_precondition, not_found, unavailable
from edgeloop.store import ArtifactError, FeatureStatRow, StoreError

from . import validate as v
from .core import LOAD, CoordinatorCore, models_of
from .guards import guard, now_ms, stream_guard
from .rollouts import PIN

log = logging.getLogger("edgeloop.coordinator")

#: how long an idle directive stream sleeps before checking that its client is still there
STREAM_POLL_S = 1.0


def desired_versions(store, rollouts: list[dict], node_id: str, zone: str) -> list:
    """Per model, the published version ``node_id`` should serve now (what ``JoinResponse.desired`` lists).

    A pin (of the edge, else of its zone) names the version.  Otherwise the newest published version that
    is meant for this edge: one with no rollout or a finished one, or one whose running (or paused) rollout
    has directed this edge; a version whose rollout has not reached the edge yet, or was rolled back or
    aborted, is passed over for the one before it.
    """
    own: dict[str, int] = {}
    zoned: dict[str, int] = {}
    for doc in store.docs(PIN):
        if doc.get("target") == node_id:
            own[doc.get("model")] = doc.get("version")
        elif zone and doc.get("target") == f"zone:{zone}":
            zoned[doc.get("model")] = doc.get("version")
    pinned = {**zoned, **own}  # the edge's own pin wins over its zone's
    by_version: dict[tuple[str, int], list[dict]] = {}
    for doc in rollouts:
        by_version.setdefault((doc.get("model"), doc.get("version")), []).append(doc)
    published: dict[str, list] = {}
    for p in store.published_models():
        published.setdefault(p.model, []).append(p)
    out = []
    for model in sorted(published):
        versions = sorted(published[model], key=lambda p: p.version, reverse=True)
        if model in pinned:
            out.extend(p for p in versions if p.version == pinned[model])
            continue
        for p in versions:
            docs = by_version.get((model, p.version), [])
            if not docs or any(d.get("state") == ro.DONE for d in docs) or any(
                    d.get("state") in (ro.RUNNING, ro.PAUSED)
                    and d.get("edges", {}).get(node_id) in ("directed", "applied") for d in docs):
                out.append(p)
                break
    return out


class CoordinatorServicer(mesh_pb2_grpc.CoordinatorServicer):
    """What edges call."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core
        self.metrics = core.metrics
        #: sent in every JoinResponse: an edge that sees another id resets its directive cursor
        self.database_id = core.store.database_id()

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @guard("Join")
    def Join(self, request, context):
        node = request.node
        v.name("node.node_id", node.node_id)
        if node.mesh_name:
            v.name("node.mesh_name", node.mesh_name)
        v.text("node.host", node.host, 253)
        if node.host and not is_host(node.host):
            raise v.bad("node.host", node.host, HOST_EXPECTATION)
        if node.grpc_port > 65535 or node.metrics_port > 65535:
            raise v.bad("node.grpc_port", node.grpc_port, "a port 0..65535")
        if not (math.isfinite(node.weight) and node.weight >= 0):
            raise v.bad("node.weight", node.weight, "a finite weight >= 0")
        v.text("node.zone", node.zone, 128)
        v.text("node.protocol_version", node.protocol_version, 64)
        models = models_of("models", request.models)
        address = join_host_port(node.host, node.grpc_port) if node.host and node.grpc_port else ""
        identity = {"host": node.host, "grpc_port": node.grpc_port, "metrics_port": node.metrics_port,
                    "weight": node.weight, "zone": node.zone, "protocol_version": node.protocol_version,
                    "mesh_name": node.mesh_name}
        store = self.core.store
        stamp = now_ms()
        store.join_node(node.node_id, address, identity, models, stamp)
        serving = {(m[0], m[1]) for m in models if m[3] in ("READY", "")}
        newest_served: dict[str, int] = {}
        for model, version in serving:
            newest_served[model] = max(version, newest_served.get(model, 0))
        desired = desired_versions(store, self.core.rollouts.rollouts(), node.node_id, node.zone)
        added = 0
        for p in desired:  # an edge that joins later is directed to load what it should serve now
            if newest_served.get(p.model, 0) >= p.version \
                    or store.has_directive(node.node_id, LOAD, p.model, p.version) \
                    or self.core.rollouts.blocked(p.model, p.version):
                continue  # a version still rolling out reaches an edge only through its rollout; an edge
                # serving a newer version than it should is brought back by a rollback directive, not a load
            store.add_directive(node.node_id, LOAD, self.core.load_payload(p, node.node_id), stamp, p.model,
                                p.version)
            added += 1
        if added:
            self.core.hub.notify()
        log.info("node %s joined from %s (%d model(s); %d load directive(s) added)", node.node_id, address or "-",
                 len(models), added)
        return mesh_pb2.JoinResponse(
            fleet_epoch=store.fleet_epoch(), heartbeat_interval_ms=self.core.config.heartbeat_interval_ms,
            federated_models=sorted(self.core.config.training.federated_models), database_id=self.database_id,
            desired=[mesh_pb2.ModelVersion(model=p.model, version=p.version, sha256=p.sha256, state="READY")
                     for p in desired])

    @stream_guard("Directives")
    def Directives(self, request, context):
        node_id = v.name("node_id", request.node_id)
        core = self.core
        if not core.store.node_known(node_id):
            raise failed_precondition(f"node_id: got {v.cut(node_id)}, expected a node that has joined "
                                      f"(call Join first)")
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
                    message = core.directive_message(record)
                    after = record.sequence
                    if not self._sendable(node_id, record, message):
                        continue
                    yield message
                    self.metrics.directives.labels("sent").inc()
                if not records:
                    core.hub.wait(seen, STREAM_POLL_S)
        except StoreError:
            pass  # closed during shutdown: ends below like any stream the coordinator stops
        finally:
            core.hub.disconnect(node_id)
            self.metrics.connected.set(len(core.hub.connected()))
        if core.stopping:
            raise unavailable(f"the coordinator is shutting down; reconnect and resume after sequence {after}")

    def _sendable(self, node_id: str, record, message) -> bool:
        """False (and the directive recorded as failed) when ``message`` is larger than one gRPC message may
        be: sending it would end the stream with RESOURCE_EXHAUSTED at every reconnect, and the directives
        after it would never reach the edge."""
        size, limit = message.ByteSize(), self.core.config.max_message_bytes
        if size <= limit:
            return True
        if record.result is None:  # recorded once; a later stream passes over it quietly
            reason = (f"directive {record.sequence} ({record.kind}) is {size} bytes; expected at most "
                      f"storage.max_message_bytes = {limit}: not sent")
            log.error("node %s: %s", node_id, reason)
            self.core.store.directive_result(node_id, record.sequence, False, reason, now_ms())
            self.metrics.directives.labels("failed").inc()
        return False

    @guard("ReportDirective")
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

    @guard("UploadSamples")
    def UploadSamples(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "samples")

    @guard("UploadLabels")
    def UploadLabels(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "labels")

    @guard("SubmitUpdate")
    def SubmitUpdate(self, request, context):
        rounds = getattr(self.core, "federated", None)
        if rounds is None:
            raise failed_precondition("SubmitUpdate: this coordinator runs no federated rounds")
        return rounds.submit(request)

    @stream_guard("FetchArtifact")
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
        sent = 0
        while True:
            try:
                data = core.artifacts.read(sha, offset, chunk)
            except ArtifactError as exc:
                raise not_found(str(exc)) from None
            self.metrics.artifact_bytes.inc(len(data))  # counted when handed to the stream (egress)
            yield mesh_pb2.ArtifactChunk(sha256=sha, offset=offset, total_size=total, data=data)
            offset += len(data)
            sent += 1
            if offset >= total or not data or not context.is_active() or sent == request.max_chunks:
                return

    @guard("ReportStatus")
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
                raise v.bad(f"{where}.counts", f"{len(f.counts)} counts",
                            f"len(bin_edges) - 1 = {len(edges) - 1} counts")
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
