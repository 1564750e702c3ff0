"""Recording what a node served: the servicer's ``on_served`` hook, sampling, and the Sample message.

On the request thread only the cheap part runs: the request id (the client's, or one generated here
and returned in the response's ``id``), the sampling decision and one non-blocking queue put.
The Sample message (tensors as raw little-endian bytes) is built by the outbox writer thread.
Sampling is deterministic: a request is recorded when the stable 64-bit hash (XXH64, never
Python's ``hash()``) of its id falls below ``sample_rate`` of the hash range, so every process
makes the same choice for the same id.
"""
from __future__ import annotations

import itertools
import os
import time

import numpy as np

from edgeloop.kernels.placement import stable_hash
from edgeloop.mesh.router import ROUTING_KEY
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.codec import decode_input, to_raw
from edgeloop.serving.escalation import HARD_EXAMPLE
from edgeloop.serving.features import take_served

_HASH_RANGE = 1 << 64


def sampled(request_id: str, rate: float) -> bool:
    """Whether the request ``request_id`` is recorded at ``rate`` (same answer in every process)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return stable_hash(request_id) < int(rate * _HASH_RANGE)


def _tensor_data(tensor, raw: bytes | None) -> mesh_pb2.TensorData:
    if raw is None:  # typed contents: the same bytes the raw form would carry
        raw = to_raw(decode_input(tensor), tensor.datatype)
    return mesh_pb2.TensorData(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape, data=raw)


def build_sample(request, response, model: str, version: int, sample_id: str, timestamp_ms: int,
                 features=None) -> mesh_pb2.Sample:
    """The Sample of one answered request (inputs from the request, outputs from the response).

    A request that joint inference escalated (``edgeloop_hard_example`` in the response) is marked
    ``hard_example``, so the CT loop can prefer it for labelling and training.

    With ``features`` (``serving.features.ServedFeatures``) ``inputs`` is the full vector the model saw
    and the request's tensors go to ``raw_inputs``, with the cold/partial/rebuilt flags, the definition digest
    and the time the features were computed for (what a rebuild or a backfill replays).
    """
    raw_in = request.raw_input_contents
    raw_out = response.raw_output_contents
    routing_key = ""
    if ROUTING_KEY in request.parameters:
        routing_key = request.parameters[ROUTING_KEY].string_param
    sent = [_tensor_data(t, raw_in[i] if i < len(raw_in) else None) for i, t in enumerate(request.inputs)]
    outputs = [_tensor_data(t, raw_out[i] if i < len(raw_out) else None) for i, t in enumerate(response.outputs)]
    params = response.parameters
    hard = HARD_EXAMPLE in params and params[HARD_EXAMPLE].bool_param
    if features is None:
        return mesh_pb2.Sample(sample_id=sample_id, model=model, model_version=version, routing_key=routing_key,
                               timestamp_ms=timestamp_ms, inputs=sent, outputs=outputs, hard_example=hard)
    vectors = features.vectors
    seen = mesh_pb2.TensorData(name=features.input_name, datatype="FP32", shape=vectors.shape,
                               data=to_raw(vectors, "FP32"))
    return mesh_pb2.Sample(sample_id=sample_id, model=model, model_version=version, routing_key=routing_key,
                           timestamp_ms=timestamp_ms, inputs=[seen], outputs=outputs, raw_inputs=sent,
                           features_cold=features.cold, features_partial=features.partial,
                           feature_digest=features.digest, hard_example=hard,
                           features_rebuilt=features.rebuilt, feature_time=features.t)


def _model_rows(request, features) -> np.ndarray:
    """The rows the model saw, float32 (n, d): the feature vectors, else the request's first input."""
    if features is not None:
        x = np.asarray(features.vectors, np.float32)
    else:
        raw = request.raw_input_contents
        x = np.asarray(decode_input(request.inputs[0], raw[0] if raw else None), np.float32)
    return x.reshape(x.shape[0] if x.ndim > 1 else 1, -1)


class Recorder:
    """The servicer's ``on_served`` hook: samples what this node ran into ``outbox`` (and ``stats``)."""

    def __init__(self, node_id: str, rate_of, outbox=None, stats=None) -> None:
        self.node_id = node_id
        self._rate_of = rate_of  # model -> sample_rate (EdgeConfig.sample_rate)
        self._rates: dict[str, float] = {}
        self.outbox = outbox
        self.stats = stats
        self._prefix = f"{node_id}-{os.urandom(4).hex()}-"
        self._ids = itertools.count(1)
        self.recorded = 0  # samples handed to the outbox queue (approximate under threads: stats only)
        #: ``node.federated.LocalExamples``: rows of federated models go there instead of the outbox
        self.local = None

    def rate(self, model: str) -> float:
        rate = self._rates.get(model)
        if rate is None:
            rate = self._rates[model] = float(self._rate_of(model))
        return rate

    def __call__(self, request, response, model: str, version: int) -> None:
        outbox = self.outbox
        features = take_served(request)  # what a model with features saw (None otherwise)
        if outbox is None:
            return
        rate = self.rate(model)
        if rate <= 0.0 and self.stats is None:
            return
        sample_id = request.id
        if not sample_id:
            sample_id = response.id = f"{self._prefix}{next(self._ids)}"
            if features is not None:
                features.remember(sample_id)  # labels may name this sample by the generated id
        record = sampled(sample_id, rate)
        if not record and self.stats is None:
            return
        outbox.offer(model, (self._encode, (request, response, model, version, sample_id, time.time_ns() // 1_000_000,
                                            record, features)), count_drop=record)

    def _encode(self, request, response, model, version, sample_id, timestamp_ms, record, features=None):
        """Runs on the writer thread: statistics, then the serialized Sample (None when not recorded)."""
        if self.stats is not None:
            self.stats.observe(request, response, model, version)
        if not record:
            return None
        local = self.local
        if local is not None and model in local.models:  # federated: the rows stay on this edge
            key = request.parameters[ROUTING_KEY].string_param if ROUTING_KEY in request.parameters else ""
            local.add_rows(model, sample_id, _model_rows(request, features), key, timestamp_ms)
            return None
        self.recorded += 1
        return build_sample(request, response, model, version, sample_id, timestamp_ms,
                            features).SerializeToString()


__all__ = ["Recorder", "build_sample", "sampled"]
