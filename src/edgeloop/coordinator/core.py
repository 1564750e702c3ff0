"""State both servicers share, and the upload path: validate each batch, hand it to the writer, ack at the end.

Every field is checked (``validate``) before anything is stored.  Each batch is committed whole (alone,
or in one transaction with batches queued beside it) and the ack is sent only after every batch of the
stream is committed, so a stream that breaks is never acknowledged and the edge re-sends: re-sent
batches are recognised by id.
"""
from __future__ import annotations

import json
import logging
from collections import deque

from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.errors import unavailable
from edgeloop.store import LabelRow, SampleRow

from . import validate as v
from .guards import now_ms
from .writer import IngestWriter

log = logging.getLogger("edgeloop.coordinator")

LOAD = "load"
#: sample rows of one stream handed to the writer together (one transaction: the index pages are
#: written once per group, not once per batch; the ack waits for the whole stream anyway)
UPLOAD_GROUP_ROWS = 5000
#: rows of one upload stream validated and queued ahead of the writer (bounds memory per stream)
UPLOAD_IN_FLIGHT_ROWS = 2 * UPLOAD_GROUP_ROWS


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
        #: models whose raw rows stay on the edges: a sample of one is validated, acknowledged, never stored
        self._federated = frozenset(config.training.federated_models)
        self.federated_samples_dropped = 0
        #: the one thread that commits uploads: validation (GIL held) overlaps SQLite work (GIL released)
        self.writer = IngestWriter(store)
        from .rollouts import Rollouts

        self.rollouts = Rollouts(self)

    # ---------------------------------------------------------------- uploads
    def sample_rows(self, batch) -> list[SampleRow]:
        v.count("samples", batch.samples, self.config.max_batch_rows)
        rows = []
        append = rows.append
        check_tensors = self._tensors.check_sample
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
            check_tensors(s, i)  # inputs, outputs and raw_inputs (a featured model: what the client sent)
            if s.feature_digest:
                v.sha256(f"samples[{i}].feature_digest", s.feature_digest)
            if model in self._federated:  # e.g. recorded by an edge before it first joined
                self.federated_samples_dropped += 1
                continue
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

        Sample batches go to the writer in groups of about ``UPLOAD_GROUP_ROWS`` rows (one transaction);
        at most ``UPLOAD_IN_FLIGHT_ROWS`` rows of a stream wait for the writer; the ack waits for all.
        When the stream breaks, batches validated before the break still commit but are not acknowledged.
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

        grouped: list = []  # validated sample batches not yet handed to the writer
        grouped_rows = 0

        def hand_over() -> None:
            nonlocal grouped, grouped_rows
            futures = self.writer.sample_batches(grouped)
            in_flight.extend((b[1], f, len(b[2])) for b, f in zip(grouped, futures))
            grouped, grouped_rows = [], 0

        try:
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
                    grouped.append((batch.node_id, batch.batch_id, rows, received))
                    grouped_rows += len(rows)
                    if grouped_rows < UPLOAD_GROUP_ROWS:
                        continue
                    hand_over()
                else:
                    rows = self.label_rows(batch, received)
                    future = self.writer.call(self.store.ingest_labels, batch.node_id, batch.batch_id, rows,
                                              received)
                    in_flight.append((batch.batch_id, future, len(rows)))
                waiting = sum(n for _, _, n in in_flight)
                while len(in_flight) > 1 and waiting > UPLOAD_IN_FLIGHT_ROWS:
                    batch_id, future, n = in_flight.popleft()
                    settle(batch_id, future)
                    waiting -= n
        except BaseException:  # batches validated before the failure still commit (unacknowledged)
            if grouped:
                hand_over()
            for _, future, _ in in_flight:
                future.exception()
            raise
        if grouped:
            hand_over()
        while in_flight:
            batch_id, future, _ = in_flight.popleft()
            settle(batch_id, future)
        if not context.is_active():
            raise unavailable("the upload stream was cancelled before its end")
        return mesh_pb2.UploadAck(accepted_batch_ids=accepted, duplicate_batch_ids=duplicates, rows_stored=stored)

    # ---------------------------------------------------------------- publication
    def publish(self, model: str, version: int, sha256: str, size: int, reason: str = "push", *,
                canary: int = 0, bake_s: float = 0.0, **manifest_fields):
        """Register an artifact already in the store as ``model`` ``version`` (0: next), write its signed
        manifest and start a staged rollout (the canary edges are directed now, the rest wave by wave).

        The one way a model reaches the fleet: ``edgeloop models push`` and the CT loop both come here,
        so the delivery rules (signed manifests, staged rollouts) apply to every model in one place.
        ``manifest_fields``: extra manifest fields (inputs, outputs, features, reference_stats, self_test,
        tolerance, lineage_id).  Returns ``(PublishedModel, directive records of the first wave)``; raises
        ``StoreError`` when that version is taken.
        """
        published, _ = self.store.publish_model(model, version, sha256, size, now_ms(), LOAD)
        if self.rollouts.manifest(model, published.version) is not None and any(
                r["model"] == model and r["version"] == published.version for r in self.rollouts.rollouts()):
            return published, []  # the same bytes again: idempotent
        self.rollouts.make_manifest(published, **manifest_fields)
        doc = self.rollouts.start_rollout(published, reason, canary, bake_s)
        first = doc["waves"][0] if doc["waves"] else []
        log.info("model %s version %d published (%s, %d bytes, %s); rollout %s: canary %s", model,
                 published.version, sha256[:12], size, reason, doc["rollout_id"], first)
        return published, first

    # ---------------------------------------------------------------- directives
    def load_payload(self, published, node_id: str = "", rollout_id: str = "") -> bytes:
        """The LoadModel directive: the stored (signed) manifest, and as hints the edges of ``node_id``'s zone
        that already hold the artifact (peers serve it, so the coordinator sends it once per zone)."""
        doc = self.rollouts.manifest(published.model, published.version)
        if doc is None:  # published before delivery existed: an unsigned manifest
            doc = {"model": published.model, "version": published.version, "sha256": published.sha256,
                   "size": published.size, "created_ms": published.created_ms}
        manifest = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return mesh_pb2.LoadModel(model=published.model, version=published.version, artifact_sha256=published.sha256,
                                  size=published.size, manifest_json=manifest.encode(), rollout_id=rollout_id,
                                  peer_addresses=self.holders(published, node_id)).SerializeToString()

    def holders(self, published, node_id: str) -> list[str]:
        """Addresses of edges in ``node_id``'s zone that applied the load of ``published`` (crossing zones is
        what the coordinator's copy is for)."""
        results = self.store.load_results(published.model, published.version)
        nodes = {n.node_id: n for n in self.store.nodes()}
        zone = nodes[node_id].identity.get("zone", "") if node_id in nodes else ""
        held = [n for nid, n in sorted(nodes.items()) if results.get(nid) == "applied" and nid != node_id
                and n.address and n.identity.get("zone", "") == zone]
        return [n.address for n in held[:8]]

    def directive_message(self, record):
        d = mesh_pb2.Directive(sequence=record.sequence)
        if record.kind == LOAD:
            d.load.ParseFromString(record.payload)
        elif record.kind == "unload":
            d.unload.ParseFromString(record.payload)
        elif record.kind == "rollback":
            d.rollback.ParseFromString(record.payload)
        elif record.kind == "federated":
            d.federated.ParseFromString(record.payload)
        else:
            d.report.SetInParent()
        return d
