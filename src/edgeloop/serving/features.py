"""Real-time features at serving time: a model's definition, its per-entity state, the enriched request.

A model whose ``manifest.json`` has a ``"features"`` key (a ``FeatureDefinition``) is served in two
signatures.  Clients see the definition's raw inputs (one FP32 tensor per input, shape ``[batch]``,
named after the input); the ONNX graph sees one FP32 input ``[batch, width]``: the raw inputs then
the derived features, in the definition's order.  ``FeatureFront`` sits between them: for each row it
computes the derived features from the state of the request's entity (its ``routing_key`` request
parameter) with the one implementation in ``edgeloop.features``, then pushes the row into that state.

* Entity: the ``routing_key`` parameter (a string).  Without one the row is served with the cold
  defaults from a blank state (nothing is kept) and flagged cold.
* Time: the ``timestamp_ms`` parameter (int64 Unix ms, the event's time; labels name events by it),
  else the node's clock.
* State: one ``FeatureState`` per model and definition digest (``FeatureStates``), bounded by
  ``feature_max_entities``; it survives version swaps that keep the definition, is snapshotted to
  ``snapshot_dir`` (on stop and periodically) and restored when the state is created.
* Hand-over: after a membership change the mesh pulls the entities this node now owns in the background
  (``adopt_pulled``); one this node still does not hold may be fetched once from its previous owner
  through ``fetch_entity`` (set by the node when the mesh is on; bounded in time, else it starts cold).
  When that previous owner is dead (or does not answer), ``rebuild_entity`` (set by the node when it has
  a coordinator) rebuilds the entity from the coordinator's log; that request is flagged ``rebuilt``.
* What the model saw is left for the recorder in ``take_served(request)`` (same thread, right after
  the inference), so the recorded sample carries the full vector and the cold/partial flags.
* Online head (a definition with ``online``): ``adapt`` corrects the model's ``probabilities`` and
  ``label`` outputs of a keyed request by the entity's head (``edgeloop.features.online``), which each
  late label for that entity trains; the response and the recorded sample carry the corrected output
  (what the client was served), the vector stays what the model saw.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from operator import methodcaller
from pathlib import Path
from typing import Callable

import numpy as np

from edgeloop.features import DefinitionError, FeatureDefinition, FeatureError, FeatureState, Plan, StateError
from edgeloop.features import compute as _compute_vector
from edgeloop.features.online import FLOOR as ONLINE_FLOOR
from edgeloop.kernels import features as _k
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.errors import internal, invalid_argument, quote
from edgeloop.serving.signature import ModelSignature, SignatureError, TensorSpec

log = logging.getLogger("edgeloop.serving.features")

ROUTING_KEY = "routing_key"  # the mesh's request parameter (``mesh.routing.ROUTING_KEY``; serving may not import mesh)
TIMESTAMP_MS = "timestamp_ms"
MANIFEST_KEY = "features"
#: request ids remembered per node for labels that name a sample by id (oldest forgotten first)
MAX_REMEMBERED_REQUESTS = 100_000
#: longest routing key kept as an entity (``FeatureState``'s bound, in UTF-8 bytes)
MAX_KEY_BYTES = 256
_LE_F32 = np.dtype("<f4")
_InputTensor = inference_pb2.ModelInferRequest.InferInputTensor
_WIRE = methodcaller("SerializeToString")
_COLD, _PARTIAL = _k.FLAG_COLD, _k.FLAG_PARTIAL


class ServedFeatures:
    """What one request's rows were served with (for the recorder); built on the request path, so lean."""

    __slots__ = ("request", "front", "vectors", "cold", "partial", "entity", "t", "rebuilt")

    def __init__(self, request, front: "FeatureFront", vectors: np.ndarray, cold: bool, partial: bool,
                 entity: str | None, t: float, rebuilt: bool = False) -> None:
        self.request = request  # identity check: the recorder reads only its own request's
        self.front = front
        self.vectors = vectors  # float32 [batch, width]: what the graph was fed
        self.cold = cold
        self.partial = partial
        self.entity = entity
        self.t = t
        self.rebuilt = rebuilt  # the entity's state was rebuilt from the coordinator's log for this request

    @property
    def input_name(self) -> str:
        return self.front.input_name

    @property
    def digest(self) -> str:
        return self.front.digest

    def remember(self, sample_id: str) -> None:
        """Map a sample id generated after the inference to this request's entity (labels by id)."""
        if self.entity is not None:
            self.front.states.remember(sample_id, self.front.model, self.entity, self.t)


class _PerThread(threading.local):
    """What a handler thread hands from one step of a request to the next.

    Class defaults, so that reading a slot never set on this thread finds None instead of raising
    (and catching) AttributeError: that costs microseconds per request, every request, on the recorder's path.
    """

    wire: tuple | None = None  # (request, the bytes it was parsed from), see ``parsed_from``
    served: tuple | None = None  # ``ServedFeatures``' arguments, see ``take_served``


_local = _PerThread()


def take_served(request) -> ServedFeatures | None:
    """The features served for ``request`` on this thread (once), or None for a model without features.

    ``enrich`` leaves a plain tuple (the cheapest handoff on the request path); it becomes a
    ``ServedFeatures`` only here, for a recorder that asks.
    """
    served = _local.served
    if served is None or served[0] is not request:
        return None
    _local.served = None
    return ServedFeatures(*served)


def parsed_from(request, wire: bytes) -> None:
    """The servicer parsed ``request`` from ``wire`` (this thread): ``enrich`` reads a one-row request
    from those bytes instead of serializing the message again.  Call ``parsed_from(None, b"")`` once the
    request is answered, so no thread keeps a request alive.  Valid while the message is unchanged but
    for parameters the read skips (the mesh's forwarded flag: the only change before inference).
    """
    _local.wire = (request, wire)


def parse_manifest_definition(manifest: dict | None) -> FeatureDefinition | None:
    """The manifest's feature definition (None without one); ``DefinitionError`` names the bad field."""
    if not manifest or MANIFEST_KEY not in manifest:
        return None
    doc = manifest[MANIFEST_KEY]
    if isinstance(doc, list) and not doc:
        return None  # manifests signed before delivery wrote "features" only for a definition carried []
    if not isinstance(doc, dict):
        raise DefinitionError("features", type(doc).__name__, "a JSON object: the model's feature definition")
    return FeatureDefinition.from_dict(doc)


def raw_signature(definition: FeatureDefinition, onnx_signature: ModelSignature, max_batch_size: int) -> ModelSignature:
    """The signature clients see: one FP32 ``[batch]`` tensor per raw input, the model's outputs.

    Raises ``SignatureError`` unless the graph takes exactly one FP32 input ``[batch, width]``.
    """
    inputs = onnx_signature.inputs
    width = definition.width
    if len(inputs) != 1:
        raise SignatureError(f"manifest features: the model has {len(inputs)} inputs "
                             f"({', '.join(s.name for s in inputs)}); expected one FP32 input [batch, {width}] "
                             f"(raw inputs then derived features)")
    spec = inputs[0]
    if spec.datatype != "FP32" or spec.rank != 2 or spec.shape[1] not in (width, -1):
        raise SignatureError(f"manifest features: input {spec.name!r} is {spec.datatype}{list(spec.shape)}; expected "
                             f"FP32 [batch, {width}] ({len(definition.inputs)} raw inputs + "
                             f"{len(definition.features)} derived features)")
    if spec.shape[0] not in (-1,) and max_batch_size > 0:
        raise SignatureError(f"manifest features: input {spec.name!r} has a fixed first dimension "
                             f"{spec.shape[0]}; expected a dynamic batch dimension with max_batch_size > 0")
    raw = [TensorSpec(name, "FP32", (-1,), "input", ("batch",)) for name in definition.inputs]
    return ModelSignature(raw, list(onnx_signature.outputs), max_batch_size)


class FeatureStates:
    """Every feature state of one node: per (model, definition digest), with snapshots and labels."""

    def __init__(self, snapshot_dir: Path | str | None = None) -> None:
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], FeatureState] = {}
        self._requests: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._requests_lock = threading.Lock()
        #: ``fetch_entity(model, digest, key) -> bytes | None``: the previous owner's state (hand-over)
        self.fetch_entity: Callable[[str, str, str], bytes | None] | None = None
        #: ``rebuild_entity(model, state, key) -> bool``: the state rebuilt from the coordinator's log
        #: (when the previous owner is dead or does not answer); True when any history was found
        self.rebuild_entity: Callable[[str, FeatureState, str], bool] | None = None
        self._counts = threading.Lock()
        self.no_key = 0  # rows served without a routing key (cold defaults)
        #: lazy hand-over results (imported, missing, failed, refused) and eager ones (pulled: adopted
        #: after an epoch change; late: arrived after the entity had started here, dropped) and rebuilds from
        #: the coordinator's log (rebuilt; rebuild_empty: no history logged; rebuild_failed: no answer)
        self.handover = {"imported": 0, "missing": 0, "failed": 0, "refused": 0, "pulled": 0, "late": 0,
                         "rebuilt": 0, "rebuild_empty": 0, "rebuild_failed": 0}
        self.labels_applied = 0
        self.labels_unmatched = 0

    # -- states --------------------------------------------------------------------------------------
    def state_for(self, model: str, definition: FeatureDefinition, max_entities: int) -> FeatureState:
        """The state of ``model`` under ``definition`` (created, and restored from its snapshot, once)."""
        key = (model, definition.digest)
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                return state
            state = FeatureState(definition, max_entities=max_entities)
            path = self._snapshot_path(model, definition.digest)
            if path is not None and path.exists():
                try:
                    n = state.restore(path)
                    log.info("model %s: restored feature state of %d entities from %s", model, n, path)
                except StateError as exc:  # a bad snapshot must not stop serving: start cold, say why
                    log.error("model %s: feature snapshot %s not restored, starting cold: %s", model, path, exc)
            self._states[key] = state
            return state

    def find(self, model: str, digest: str) -> FeatureState | None:
        with self._lock:
            return self._states.get((model, digest))

    def of_model(self, model: str) -> list[FeatureState]:
        with self._lock:
            return [s for (m, _d), s in self._states.items() if m == model]

    def items(self) -> list[tuple[str, str, FeatureState]]:
        with self._lock:
            return [(m, d, s) for (m, d), s in self._states.items()]

    # -- snapshots -----------------------------------------------------------------------------------
    def _snapshot_path(self, model: str, digest: str) -> Path | None:
        if self.snapshot_dir is None:
            return None
        return self.snapshot_dir / f"{model}-{digest[:16]}.npz"

    def snapshot_all(self) -> int:
        """Write every state to its snapshot file (atomic per file); returns the entities written."""
        if self.snapshot_dir is None:
            return 0
        total = 0
        for model, digest, state in self.items():
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            total += state.snapshot(self._snapshot_path(model, digest))
        return total

    # -- labels --------------------------------------------------------------------------------------
    def remember(self, request_id: str, model: str, entity: str, t: float) -> None:
        if not request_id:
            return
        with self._requests_lock:
            self._requests[request_id] = (model, entity, t)
            self._requests.move_to_end(request_id)
            while len(self._requests) > MAX_REMEMBERED_REQUESTS:
                self._requests.popitem(last=False)

    def apply_label(self, sample_id: str, model: str, routing_key: str, timestamp_ms: int, value: float) -> bool:
        """A late label into the labelled entity's state (by request id, else by key + timestamp)."""
        target = None
        if sample_id:
            with self._requests_lock:
                target = self._requests.get(sample_id)
        if target is None and model and routing_key and timestamp_ms:
            target = (model, routing_key, timestamp_ms / 1000.0)
        states = self.of_model(target[0]) if target is not None else []
        if not states:
            self.labels_unmatched += 1
            return False
        _model, entity, t = target
        try:
            for state in states:
                state.update_with_label(entity, value, t)
        except FeatureError as exc:
            log.warning("label for %s not applied to the feature state: %s", quote(entity), exc)
            self.labels_unmatched += 1
            return False
        self.labels_applied += 1
        return True

    def count(self, what: str, n: int = 1) -> None:
        """Add to a counter (``no_key`` or a hand-over result) under the lock: handler threads race."""
        with self._counts:
            if what == "no_key":
                self.no_key += n
            else:
                self.handover[what] += n

    # -- hand-over ---------------------------------------------------------------------------------
    def adopt_from_previous_owner(self, model: str, state: FeatureState, entity: str) -> bool:
        """Ask the previous owner for ``entity``'s state (the hook is bounded in time); import it if sent.

        When the previous owner is dead or does not answer, rebuild it from the coordinator's log instead
        (``rebuild_entity``); returns True when the state was rebuilt so.
        """
        fetch = self.fetch_entity
        if fetch is None:
            return False
        try:
            data = fetch(model, state.plan.digest, entity)
        except Exception as exc:  # the previous owner is gone or slow: rebuild from the log, else start cold
            self.count("failed")
            log.debug("hand-over of %s (model %s) failed: %s", quote(entity), model, exc)
            return self.rebuild_from_log(model, state, entity)
        if data is None:
            self.count("missing")
            return False
        try:
            state.import_entity(entity, data)
        except StateError as exc:
            self.count("refused")
            log.warning("hand-over of %s (model %s) refused: %s", quote(entity), model, exc)
            return False
        self.count("imported")
        return False

    def rebuild_from_log(self, model: str, state: FeatureState, entity: str) -> bool:
        """``entity``'s state from the coordinator's log (the hook is bounded in time); True when rebuilt."""
        rebuild = self.rebuild_entity
        if rebuild is None:
            return False  # no coordinator: the entity starts cold (documented defaults, flagged)
        try:
            found = rebuild(model, state, entity)
        except Exception as exc:  # the coordinator is unreachable or slow, or its history is refused
            self.count("rebuild_failed")
            log.warning("rebuild of %s (model %s) from the coordinator failed: %s", quote(entity), model, exc)
            return False
        self.count("rebuilt" if found else "rebuild_empty")
        return bool(found)

    def adopt_pulled(self, model: str, digest: str, entity: str, data: bytes) -> None:
        """An entity pulled eagerly from a peer after an epoch change (kept unless it already started here)."""
        state = self.find(model, digest)
        if state is None:
            self.count("refused")
            return
        try:
            if entity in state:
                self.count("late")  # a request got here first; its history continues from there
                return
            state.import_entity(entity, data)
        except (StateError, FeatureError) as exc:
            self.count("refused")
            log.warning("eager hand-over of %s (model %s) refused: %s", quote(entity), model, exc)
            return
        self.count("pulled")

    def held(self) -> list[tuple[str, str]]:
        """``(model, digest)`` of every state this node keeps (what eager hand-over pulls for)."""
        with self._lock:
            return list(self._states)

    def keys(self, model: str, digest: str) -> list[str]:
        state = self.find(model, digest)
        return state.keys() if state is not None else []

    def export(self, model: str, digest: str, keys, remove: bool) -> list[tuple[str, bytes]]:
        """``(key, bytes)`` for each of ``keys`` held under ``model``/``digest`` (the Peer service's answer)."""
        state = self.find(model, digest)
        if state is None:
            return []
        out = []
        for key in keys:
            try:
                data = state.export_entity(key, remove=remove)
            except FeatureError:
                continue
            if data is not None:
                out.append((key, data))
        return out


class FeatureFront:
    """The enrichment of one model version: raw request -> full vectors for the graph, state updated."""

    def __init__(self, model: str, definition: FeatureDefinition, onnx_signature: ModelSignature,
                 max_batch_size: int, state: FeatureState, states: FeatureStates) -> None:
        self.model = model
        self.definition = definition
        self.digest = definition.digest
        self.signature = raw_signature(definition, onnx_signature, max_batch_size)
        self.input_name = onnx_signature.inputs[0].name
        self.state = state
        self.states = states
        self.plan: Plan = state.plan
        self._width = definition.width
        self._inputs = definition.inputs
        self._remember = states.remember
        self._batching = self.signature.max_batch_size > 0
        self._max_rows = self.signature.max_batch_size if self._batching else 1 << 20
        self._wire_1 = self._wire(1)
        #: what a one-row request's input tensors are on the wire ({name, "FP32", [1]}, definition order):
        #: such a request is read in one native call (``_k.read_one_row``); empty turns that path off
        self._fast_tensors = tuple(self._wire_1)
        self.online = definition.online
        if self.online is not None:
            self._p_index, self._l_index, self._label_values = _online_outputs(definition, onnx_signature)

    def adapt(self, request, outputs: list) -> list:
        """The outputs (every output, signature order) corrected by the entity's online head.

        Unchanged for a request without a routing key or for an entity not held here (nothing learned yet).
        """
        served = _local.served
        if served is None or served[0] is not request or served[5] is None:
            return outputs
        proba = np.asarray(outputs[self._p_index])
        if proba.ndim != 2 or proba.shape[1] != len(self.online.classes):
            # the model, not the client, is at fault: a server-side status
            raise internal(f"model {quote(self.model)}: output {quote(self.online.probabilities)} has "
                           f"shape {list(proba.shape)}; expected [batch, {len(self.online.classes)}] for "
                           f"the online head's classes")
        logits = self.state.online_logits(served[5], served[6], served[2], proba)
        if logits is None:
            return outputs
        # a row the head does not correct (nothing learned yet: logits == the model's log-probabilities)
        # keeps the model's own output bit for bit; renormalising its softmax in float64 moves it by an ulp
        kept = (logits == np.log(np.maximum(proba.astype(np.float64), ONLINE_FLOOR))).all(axis=1)
        if kept.all():
            return outputs
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p = p.astype(np.float32)
        p[kept] = proba[kept]
        label = np.asarray(outputs[self._l_index])
        corrected = self._label_values[np.argmax(logits, axis=1)].astype(label.dtype).reshape(label.shape)
        corrected[kept] = label[kept]
        out = list(outputs)
        out[self._p_index] = p
        out[self._l_index] = corrected
        return out

    def _wire(self, n: int) -> list[bytes]:
        """The serialized tensor headers of an ``n``-row request's raw inputs, in the definition's order."""
        return [_InputTensor(name=name, datatype="FP32", shape=[n]).SerializeToString() for name in self._inputs]

    def _rows(self, request) -> tuple[np.ndarray, int]:
        """The request's rows ``[n, inputs]`` (float32) and batch size (any request ``enrich`` did not read whole).

        Fast path: every raw input as FP32 ``[n]`` raw contents in the definition's order (what
        ``feature_request`` and most clients send) is one join of the bytes, after comparing each
        tensor's wire form with the expected one; anything else goes through the signature's full
        checks (typed contents, any order, and every error message).
        """
        inputs = request.inputs
        raws = request.raw_input_contents
        k = len(self._inputs)
        if len(inputs) == k and len(raws) == k:
            n = len(raws[0]) >> 2
            # each tensor's wire form equals that of {name, "FP32", [n]} and nothing else (no typed contents,
            # no parameters): one C call per tensor checks what six field reads would
            if 0 < n <= self._max_rows and list(map(_WIRE, inputs)) == (self._wire_1 if n == 1 else self._wire(n)):
                joined = b"".join(raws)
                if len(joined) == 4 * k * n:
                    flat = np.frombuffer(joined, _LE_F32)
                    return (flat.reshape(1, k) if n == 1 else np.ascontiguousarray(flat.reshape(k, n).T)), n
        feeds, batch = self.signature.decode(request)
        rows = np.empty((feeds[self._inputs[0]].shape[0], k), dtype=np.float32)
        for j, name in enumerate(self._inputs):
            rows[:, j] = feeds[name]
        return rows, batch

    def enrich(self, request) -> tuple[dict[str, np.ndarray], int]:
        """Decode the raw inputs, serve each row from its entity's state; ``(feeds, batch)`` for the graph.

        A one-row request of raw FP32 inputs (what clients send) is read from its wire form in one
        native call, straight into the vector the graph is fed (``[1, width]``, allocated once); the
        entity's state computes the derived features after the raw row and takes the row, under its
        stripe's lock, in one more.  Every other request takes ``_enrich_rows`` (any form, every check).
        """
        out = np.empty((1, self._width), dtype=np.float32)
        wire = _local.wire
        wire = wire[1] if wire is not None and wire[0] is request else request.SerializeToString()
        read = _k.read_one_row(wire, self._fast_tensors, out)
        if read is None:
            return self._enrich_rows(request)
        entity, key, ms = read
        t = ms / 1000.0 if ms >= 0 else time.time()
        rebuilt = False
        try:
            if entity is None:
                self.states.count("no_key", 1)
                plan = self.plan
                served = _compute_vector(plan, plan.blank, out[0, : plan.n_inputs].copy(), t)
                out = served.vector.reshape(1, self._width)
                cold, partial = True, served.partial
            else:
                state = self.state
                fetch = self.states.fetch_entity is not None
                flags = state.serve_into(entity, key, t, out, fetch)
                if flags < 0:  # not held here: ask the previous owner first (mesh on)
                    rebuilt = self.states.adopt_from_previous_owner(self.model, state, entity)
                    flags = state.serve_into(entity, key, t, out)
                cold, partial = (flags & _COLD) != 0, (flags & _PARTIAL) != 0
                if request.id:
                    self._remember(request.id, self.model, entity, t)
        except FeatureError as exc:
            raise invalid_argument(f"model {quote(self.model)}: {exc}") from None
        _local.served = (request, self, out, cold, partial, entity, t, rebuilt)  # ServedFeatures' arguments
        return {self.input_name: out}, 1

    def _enrich_rows(self, request) -> tuple[dict[str, np.ndarray], int]:
        """``enrich`` of any request: batches, typed contents, any input order, and every error message."""
        rows, batch = self._rows(request)
        rows_n = rows.shape[0]
        if rows_n < 1:
            raise invalid_argument(f"input {quote(self._inputs[0])}: 0 rows; expected at least one row")
        entity, t = self._entity_and_time(request.parameters)
        cold = partial = rebuilt = False
        try:
            if entity is None:
                self.states.count("no_key", rows_n)
                plan = self.plan
                out = np.empty((rows_n, self._width), dtype=np.float32)
                for i in range(rows_n):
                    served = _compute_vector(plan, plan.blank, rows[i], t)
                    out[i] = served.vector
                    partial |= served.partial
                cold = True
            else:
                state = self.state
                if self.states.fetch_entity is not None and entity not in state:
                    rebuilt = self.states.adopt_from_previous_owner(self.model, state, entity)
                if rows_n == 1:
                    served = state.serve(entity, rows[0], t)
                    out = served.vector.reshape(1, self._width)
                    cold, partial = served.cold, served.partial
                else:
                    out = np.empty((rows_n, self._width), dtype=np.float32)
                    for i in range(rows_n):
                        served = state.serve(entity, rows[i], t)
                        out[i] = served.vector
                        cold |= served.cold
                        partial |= served.partial
        except FeatureError as exc:
            raise invalid_argument(f"model {quote(self.model)}: {exc}") from None
        if entity is not None and request.id:
            self._remember(request.id, self.model, entity, t)
        _local.served = (request, self, out, cold, partial, entity, t, rebuilt)  # ServedFeatures' arguments
        return {self.input_name: out}, batch if self._batching else 1

    @staticmethod
    def _entity_and_time(params) -> tuple[str | None, float]:
        entity = None
        if ROUTING_KEY in params:
            value = params[ROUTING_KEY]
            if value.WhichOneof("parameter_choice") != "string_param":
                raise invalid_argument(f"parameters['{ROUTING_KEY}'] holds {value.WhichOneof('parameter_choice')}; "
                                       f"expected string_param (the entity's routing key)")
            entity = value.string_param or None
            if entity is not None and len(entity.encode("utf-8")) > MAX_KEY_BYTES:
                raise invalid_argument(f"parameters['{ROUTING_KEY}'] {quote(entity)} is "
                                       f"{len(entity.encode('utf-8'))} bytes; expected 1..{MAX_KEY_BYTES} bytes of "
                                       f"UTF-8 for a model with features")
        if TIMESTAMP_MS in params:
            value = params[TIMESTAMP_MS]
            kind = value.WhichOneof("parameter_choice")
            if kind == "int64_param":
                ms = value.int64_param
            elif kind == "uint64_param":
                ms = value.uint64_param
            else:
                raise invalid_argument(f"parameters['{TIMESTAMP_MS}'] holds {kind}; expected int64_param (Unix ms "
                                       f"of the event)")
            if not 0 <= ms < 2**53:
                raise invalid_argument(f"parameters['{TIMESTAMP_MS}'] is {ms}; expected 0..2^53 Unix milliseconds")
            return entity, ms / 1000.0
        return entity, time.time()


class PeriodicSnapshots:
    """Snapshot every state each ``interval_s`` (a daemon thread) and once more on ``stop``."""

    def __init__(self, states: FeatureStates, interval_s: float) -> None:
        self.states = states
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgeloop-feature-snapshots")

    def start(self) -> "PeriodicSnapshots":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._snapshot()

    def _snapshot(self) -> None:
        try:
            self.states.snapshot_all()
        except OSError as exc:  # a full disk must not stop serving; the next try may succeed
            log.error("feature state snapshot to %s failed: %s", self.states.snapshot_dir, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._snapshot()


class FeatureCollector:
    """Prometheus families of the real-time feature state, built at scrape time."""

    def __init__(self, states: FeatureStates) -> None:
        self.states = states

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        served = CounterMetricFamily("edgeloop_feature_rows", "Rows served with real-time features, by the "
                                     "state they found (cold: no history; partial: short windows)",
                                     labels=("model", "state"))
        entities = GaugeMetricFamily("edgeloop_feature_entities", "Entities held in memory", labels=("model",))
        evictions = CounterMetricFamily("edgeloop_feature_evictions", "Entities evicted (least recently used) at "
                                        "feature_max_entities", labels=("model",))
        labels = CounterMetricFamily("edgeloop_feature_labels", "Late labels folded into entity state",
                                     labels=("model",))
        online = CounterMetricFamily("edgeloop_feature_online", "The online head: rows whose output it corrected, "
                                     "labels it learned from, and labels whose row no longer waited (unmatched)",
                                     labels=("model", "event"))
        for model, _digest, state in sorted(self.states.items(), key=lambda x: x[:2]):
            st = state.stats()
            if state.plan.online is not None:
                online.add_metric([model, "corrected"], st.online_served)
                online.add_metric([model, "learned"], st.online_learned)
                online.add_metric([model, "unmatched"], st.online_unmatched)
            served.add_metric([model, "all"], st.served)
            served.add_metric([model, "cold"], st.cold)
            served.add_metric([model, "partial"], st.partial)
            entities.add_metric([model], st.entities)
            evictions.add_metric([model], st.evictions)
            labels.add_metric([model], st.labels)
        yield served
        yield entities
        yield evictions
        yield labels
        yield online
        yield CounterMetricFamily("edgeloop_feature_rows_without_key", "Rows of models with features served "
                                  "without a routing key (cold defaults, nothing kept)", value=self.states.no_key)
        handover = CounterMetricFamily("edgeloop_feature_handover", "Entity-state hand-overs asked of a previous "
                                       "owner, and rebuilds from the coordinator's log, by result",
                                       labels=("result",))
        for result, n in sorted(self.states.handover.items()):
            handover.add_metric([result], n)
        yield handover


_LABEL_TYPES = ("INT64", "INT32", "FP32", "FP64")


def _online_outputs(definition: FeatureDefinition, onnx_signature: ModelSignature) -> tuple[int, int, np.ndarray]:
    """Where the online head reads and writes: the probabilities and label outputs (``SignatureError`` else)."""
    spec = definition.online
    names = [o.name for o in onnx_signature.outputs]
    found = {}
    for field, name in (("probabilities", spec.probabilities), ("label", spec.label)):
        if name not in names:
            raise SignatureError(f"manifest.json {MANIFEST_KEY}.online.{field}: output {name!r} is not one of the "
                                 f"model's outputs ({', '.join(names)[:200]})")
        found[field] = names.index(name)
    p = onnx_signature.outputs[found["probabilities"]]
    k = len(spec.classes)
    if p.datatype != "FP32" or p.rank != 2 or p.shape[1] not in (k, -1):
        raise SignatureError(f"manifest.json {MANIFEST_KEY}.online.probabilities: output {p.name!r} is "
                             f"{p.datatype}{list(p.shape)}; expected FP32 [batch, {k}] (one column per class)")
    label = onnx_signature.outputs[found["label"]]
    if label.datatype not in _LABEL_TYPES or label.rank != 1:
        raise SignatureError(f"manifest.json {MANIFEST_KEY}.online.label: output {label.name!r} is "
                             f"{label.datatype}{list(label.shape)}; expected [batch] of {', '.join(_LABEL_TYPES)}")
    return found["probabilities"], found["label"], np.asarray(spec.classes, dtype=np.float64)


def build_front(model: str, manifest: dict | None, onnx_signature: ModelSignature, config,
                states: FeatureStates | None) -> FeatureFront | None:
    """The version's ``FeatureFront`` when its manifest declares features (None otherwise).

    Raises ``SignatureError`` naming the manifest field for a bad definition, a graph that does not
    take the full vector, or a definition whose windows exceed ``feature_max_history``.
    """
    try:
        definition = parse_manifest_definition(manifest)
    except DefinitionError as exc:
        raise SignatureError(f"manifest.json {MANIFEST_KEY}: {exc}") from None
    if definition is None:
        return None
    max_history = getattr(config, "feature_max_history", None)
    longest = max((s.k or 0 for s in definition.features), default=0)
    if max_history is not None and longest > max_history:
        raise SignatureError(f"manifest.json {MANIFEST_KEY}: a window of k={longest}; expected k <= "
                             f"feature_max_history ({max_history}) of this model's serving config")
    if states is None:
        states = FeatureStates()
    max_entities = getattr(config, "feature_max_entities", 100_000)
    state = states.state_for(model, definition, max_entities)
    return FeatureFront(model, definition, onnx_signature, config.max_batch_size, state, states)


__all__ = ["FeatureCollector", "FeatureFront", "PeriodicSnapshots", "FeatureStates", "MANIFEST_KEY", "ServedFeatures", "TIMESTAMP_MS", "build_front",
           "parse_manifest_definition", "parsed_from", "raw_signature", "take_served"]
