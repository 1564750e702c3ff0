"""``edgeloop.v1.Fleet``: what the operator's CLI calls (fleet status, model pushes, label imports)."""
from __future__ import annotations

import json
import logging
import math

import grpc

from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.errors import ProtocolError, invalid_argument, not_found, unavailable
from edgeloop.store import ArtifactError, StoreError

from . import validate as v
from .core import CoordinatorCore, model_messages
from .ct_service import CtFleetMethods
from .definitions import definition_of_push
from .guards import guard
from .model_check import onnx_problem

log = logging.getLogger("edgeloop.coordinator")


class FleetServicer(CtFleetMethods, mesh_pb2_grpc.FleetServicer):
    """What the operator's CLI calls."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core
        self.metrics = core.metrics

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @guard("FleetStatus")
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
        return mesh_pb2.FleetStatusResponse(fleet_epoch=store.fleet_epoch(), nodes=nodes, models=models,
                                            monitors=self._monitors())

    @guard("PushModel")
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
                if chunk.features_json:
                    raise v.bad(f"chunk[{i}].features_json", chunk.features_json, "'' (the first message carries it)")
                yield chunk.data

        try:
            sha, size = core.artifacts.put(chunks())
        except ArtifactError as exc:
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"data: {exc}") from None
        if size == 0:
            raise invalid_argument("data: got 0 bytes, expected the model file's bytes")
        problem = onnx_problem(core.artifacts.path(sha))
        if problem is not None:
            if not core.store.artifact_published(sha):
                core.artifacts.discard(sha)
            raise invalid_argument(f"data: {size} bytes with sha256 {sha}: {problem}")
        try:
            features = definition_of_push(first.features_json, core.artifacts.path(sha))
        except ProtocolError:
            if not core.store.artifact_published(sha):
                core.artifacts.discard(sha)
            raise
        if not context.is_active():
            raise unavailable("the push stream was cancelled before its end")
        extra = {} if features is None else {"features": features}
        try:
            published, records = core.publish(model, version, sha, size, reason="edgeloop models push", **extra)
        except StoreError as exc:
            if core.stopping:
                raise
            raise ProtocolError(grpc.StatusCode.ALREADY_EXISTS, f"version: {exc}") from None
        return mesh_pb2.PushModelResponse(model=model, version=published.version, sha256=sha, size=size,
                                          edges_directed=len(records))

    @guard("Rollout")
    def Rollout(self, request, context):
        """start | status | pause | resume | abort | pin | unpin (``edgeloop rollout ...``)."""
        rollouts = self.core.rollouts
        action = request.action
        if action == "status":
            docs = rollouts.rollouts()
            if request.rollout_id:
                docs = [d for d in docs if d["rollout_id"] == request.rollout_id]
            return mesh_pb2.RolloutReply(json=json.dumps({"rollouts": docs}).encode())
        if action == "start":
            model = v.name("model", request.model)
            v.version("version", request.version)
            published = next((p for p in self.core.store.published_models() if p.model == model
                              and p.version == request.version), None)
            if published is None:
                raise not_found(f"model: got {model!r} version {request.version}, expected a published version "
                                f"(push it first with `edgeloop models push`)")
            if request.canary > 100_000:
                raise v.bad("canary", request.canary, "0 (the configured default) .. 100000 edges")
            if not (math.isfinite(request.bake_s) and 0 <= request.bake_s <= 7 * 86400):
                raise v.bad("bake_s", request.bake_s, "0 (the configured default) .. 604800 seconds")
            doc = rollouts.start_rollout(published, "edgeloop rollout start", request.canary, request.bake_s)
            return mesh_pb2.RolloutReply(json=json.dumps(doc).encode())
        if action in ("pause", "resume", "abort"):
            v.text("rollout_id", request.rollout_id, 200)
            try:
                doc = rollouts.control(action, request.rollout_id)
            except KeyError:
                raise not_found(f"rollout_id: got {v.cut(request.rollout_id)}, expected a rollout id from "
                                f"`edgeloop rollout status`") from None
            return mesh_pb2.RolloutReply(json=json.dumps(doc).encode())
        if action in ("pin", "unpin"):
            model = v.name("model", request.model)
            target = request.target
            name = target[5:] if target.startswith("zone:") else target
            v.text("target", name, 128)
            if not name:
                raise v.bad("target", target, "an edge id or zone:NAME")
            if action == "pin":
                v.version("version", request.version)
                rollouts.pin(target, model, request.version)
            else:
                rollouts.unpin(target, model)
            return mesh_pb2.RolloutReply(json=json.dumps({"pinned" if action == "pin" else "unpinned": target,
                                                          "model": model}).encode())
        raise v.bad("action", action, "start, status, pause, resume, abort, pin or unpin")

    @guard("ImportLabels")
    def ImportLabels(self, request_iterator, context):
        return self.core.upload(request_iterator, context, "labels", operator=True)

    # ---------------------------------------------------------------- continuous training (ct_service)
    @guard("Retrain")
    def Retrain(self, request, context):
        return self._retrain(request)

    @guard("ListTriggers")
    def ListTriggers(self, request, context):
        return self._triggers(request)

    @guard("ListQuarantine")
    def ListQuarantine(self, request, context):
        return self._quarantine(request)

    @guard("ShowModel")
    def ShowModel(self, request, context):
        return self._show(request)

    @guard("ModelLineage")
    def ModelLineage(self, request, context):
        return self._lineage(request)

    @guard("PromoteModel")
    def PromoteModel(self, request, context):
        return self._republish(request, "promote")

    @guard("RollBackModel")
    def RollBackModel(self, request, context):
        return self._republish(request, "rollback")

    @guard("FederatedRound")
    def FederatedRound(self, request, context):
        return self._federated_round(request)
