"""The edge's updater: admits a delivered model (signature, expiry, no downgrade), fetches it in verified
chunks from peers then the coordinator, self-tests it in a private session, and only then swaps it in.

The highest version accepted per model is persisted in the outbox (``delivery.accepted.<model>``), so a
replayed or downgraded directive is refused after a restart too.  Refusals are logged, counted
(``edgeloop_delivery_refused_total{reason}``) and reported to the coordinator as the directive's error.
"""
from __future__ import annotations

import base64
import json
import logging
import time

import numpy as np
from prometheus_client import Counter

from edgeloop.config.network import split_address
from edgeloop.delivery import activation, transfer
from edgeloop.delivery import manifest as mf
from edgeloop.delivery.keys import load_public_key
from edgeloop.protocol import mesh_pb2_grpc
from edgeloop.serving.repository import MANIFEST_FILE, MODEL_FILE
from edgeloop.serving.session import create_session

log = logging.getLogger("edgeloop.node.updater")

ACCEPTED_KEY = "delivery.accepted."  # + model
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8,
           "BOOL": np.bool_}


def policy_of(config) -> activation.Policy:
    keys = tuple(load_public_key(p) for p in config.delivery.trusted_keys)
    return activation.Policy(trusted_keys=keys, require_signed=config.delivery.require_signed)


def tensor_of(spec: dict) -> np.ndarray:
    """``{"datatype", "shape", "data"}`` (data: a flat list, or base64 raw little-endian bytes) → array."""
    dtype = _DTYPES.get(spec.get("datatype"))
    if dtype is None:
        raise ValueError(f"datatype {str(spec.get('datatype'))[:40]!r}; expected one of {sorted(_DTYPES)}")
    data = spec.get("data")
    array = (np.frombuffer(base64.b64decode(data), dtype=dtype) if isinstance(data, str)
             else np.asarray(data, dtype=dtype))
    return array.reshape([int(d) for d in spec.get("shape", [])])


def spec_of(array: np.ndarray) -> dict:
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    return {"datatype": names[array.dtype], "shape": list(array.shape), "data": array.ravel().tolist()}


class Updater:
    """Admission, transfer and activation for one edge; the link calls ``load`` for each LoadModel."""

    def __init__(self, node, outbox, downloads, coordinator_stub, registry=None) -> None:
        self.node = node
        self.outbox = outbox
        self.downloads = downloads
        self.coordinator = coordinator_stub
        self.policy = policy_of(node.config)
        self.refused = Counter("edgeloop_delivery_refused", "Delivered models or rollbacks refused, by reason",
                               ["reason"], registry=registry if registry is not None else node.metrics.registry)
        self.last_transfer: transfer.TransferStats | None = None
        self._own_pool = None

    def accepted(self, model: str) -> int:
        text = self.outbox.get_meta(ACCEPTED_KEY + model, "0") or "0"
        return int(text) if text.isdigit() else 0

    def refuse(self, exc: mf.ManifestError, what: str) -> None:
        self.refused.labels(exc.reason).inc()
        log.warning("%s refused: %s", what, exc)

    def admit(self, load, sha: str) -> dict | None:
        try:
            return activation.admit(bytes(load.manifest_json), self.policy, time.time_ns() // 1_000_000,
                                    self.accepted(load.model), model=load.model, version=load.version, sha256=sha,
                                    size=load.size)
        except mf.ManifestError as exc:
            self.refuse(exc, f"model {load.model!r} version {load.version}")
            raise

    def admit_rollback(self, rollback) -> None:
        if not rollback.signed_json and not self.policy.require_signed:
            return
        try:
            held = rollback.to_version in self.node.models.repository.versions(rollback.model)
            activation.admit(bytes(rollback.signed_json), self.policy, time.time_ns() // 1_000_000,
                             self.accepted(rollback.model), model=rollback.model, version=rollback.to_version,
                             rollback_to_held=held)
        except mf.ManifestError as exc:
            self.refuse(exc, f"rollback of {rollback.model!r} to version {rollback.to_version}")
            raise

    def sources(self, load) -> list[transfer.Source]:
        pool = self.node.mesh.pool if self.node.mesh is not None else self._pool()
        own = self.node.address
        near = []
        for a in load.peer_addresses[:64]:  # hints from the coordinator: each one becomes a pooled channel
            if len(a) <= 300 and split_address(a) is not None and a != own and a not in near:
                near.append(a)
            elif a != own:
                log.warning("peer address %r from the coordinator ignored; expected host:port", a[:200])
        near = near[:8]
        far: list[str] = []
        if self.node.mesh is not None:  # members whose view says they serve this version
            zone = self.node.config.node.zone
            for m in self.node.mesh.membership.members():
                address = f"{m.host}:{m.grpc_port}"
                if load.version in m.models.get(load.model, []) and address != own and address not in near:
                    (near if m.zone == zone else far).append(address)
        # same-zone peers, then the coordinator, then peers across zones (a fallback, never the first choice)
        def peer(a):
            return transfer.Source(a, mesh_pb2_grpc.PeerStub(pool.get(a).channel), "peer")

        return ([peer(a) for a in near[:8]] + [transfer.Source("coordinator", self.coordinator, "coordinator")]
                + [peer(a) for a in far[:4]])

    def _pool(self):
        if self._own_pool is None:
            from edgeloop.mesh.channels import ChannelPool

            self._own_pool = ChannelPool(self.node._token)
        return self._own_pool

    def fetch(self, doc: dict, load) -> bytes:
        part = self.downloads / f"{doc['sha256']}.part"
        stats = transfer.fetch(doc, part, self.sources(load))
        self.last_transfer = stats
        log.info("artifact %s: %d chunk(s) received from %s (resumed at chunk %d, %d bad)", doc["sha256"][:12],
                 stats.chunks_received, stats.chunks_by_source, stats.resumed_at_chunk, stats.bad_chunks)
        return transfer.finish(part, doc)

    def self_test(self, doc: dict, data: bytes, model: str) -> None:
        cases = doc.get("self_test") or []
        if not cases:
            return
        session = create_session(data, self.node.config.serving.model(model), f"model {model!r} self-test")
        tolerance = float(doc.get("tolerance", 1e-4))
        names = [o.name for o in session.get_outputs()]
        for i, case in enumerate(cases[:16]):
            feeds = {name: tensor_of(spec) for name, spec in case["inputs"].items()}
            got = dict(zip(names, session.run(None, feeds)))
            for name, spec in case["outputs"].items():
                want = tensor_of(spec)
                if name not in got or got[name].shape != want.shape or not np.allclose(
                        got[name].astype(np.float64), want.astype(np.float64), atol=tolerance, rtol=tolerance):
                    raise activation.ActivationError("self_test", f"case {i}: output {name!r} differs from the "
                                                                  f"manifest's reference (tolerance {tolerance})")

    def activate(self, load, doc: dict, data: bytes, config: str | None) -> None:
        models = self.node.models
        files = {f"{load.version}/{MODEL_FILE}": data,
                 f"{load.version}/{MANIFEST_FILE}": json.dumps(doc, sort_keys=True).encode()}
        session = {}

        def warm_up():
            session["ok"] = True  # the self-test session runs the model; a model with no cases is warmed by load

        activation.activate({"self_test": lambda: self.self_test(doc, data, load.model), "warm_up": warm_up,
                             "swap": lambda: models.load(load.model, files, config)})
        self.outbox.set_meta(ACCEPTED_KEY + load.model, str(max(load.version, self.accepted(load.model))))

    def close(self) -> None:
        if self._own_pool is not None:
            self._own_pool.close()
