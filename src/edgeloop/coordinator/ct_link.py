"""What the CT loop needs from the coordinator: stored samples decoded into rows, and its gauges.

``ct`` does not import ``protocol``; the coordinator does, so it hands the loop a decoder.
"""
from __future__ import annotations

import math

import numpy as np
from prometheus_client import Gauge

from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.codec import numpy_dtype_of

#: the largest stored input the loop decodes (one row of up to 4096 float64 features is 32 KiB)
MAX_INPUT_BYTES = 1 << 20


def decode_sample(payload: bytes, input_name: str) -> np.ndarray:
    """The tensor ``input_name`` of a stored Sample as a float array; ValueError naming what is wrong."""
    return _input(_parse(payload), input_name)


def decode_marked(payload: bytes, input_name: str) -> tuple[np.ndarray, bool]:
    """``decode_sample`` plus the sample's hard-example mark (the CT loop's decoder: hard rows may weigh more).

    For a model with features ``inputs`` holds the full vector the model saw (``raw_inputs`` what the
    client sent): the loop reads ``inputs``, so it trains on what was served.
    """
    sample = _parse(payload)
    return _input(sample, input_name), bool(sample.hard_example)


def _parse(payload: bytes):
    try:
        return mesh_pb2.Sample.FromString(payload)
    except Exception as exc:  # protobuf's DecodeError (not imported here: the coordinator's row lists no protobuf)
        raise ValueError(f"payload does not parse as a Sample: {str(exc)[:200]}") from None


def _input(sample, input_name: str) -> np.ndarray:
    for t in sample.inputs:
        if t.name != input_name:
            continue
        if len(t.data) > MAX_INPUT_BYTES:
            raise ValueError(f"input {input_name!r} has {len(t.data)} bytes; expected at most {MAX_INPUT_BYTES}")
        try:
            dtype = numpy_dtype_of(t.datatype)
        except Exception:
            raise ValueError(f"input {input_name!r} datatype {t.datatype[:40]!r}; "
                             f"expected a numeric datatype") from None
        if dtype.kind not in "fiu":
            raise ValueError(f"input {input_name!r} datatype {t.datatype[:40]!r}; expected a numeric datatype")
        shape = tuple(int(d) for d in t.shape)
        count = math.prod(shape) if shape else 1
        if any(d < 0 for d in shape) or count * dtype.itemsize != len(t.data):
            raise ValueError(f"input {input_name!r} shape {list(shape)[:8]} does not match its {len(t.data)} bytes "
                             f"of {t.datatype}")
        return np.frombuffer(t.data, dtype=dtype).reshape(shape)
    raise ValueError(f"no input {input_name!r}; the sample has {[t.name[:40] for t in sample.inputs][:8]}")


class CtGauges:
    """The loop's latest monitor values as Prometheus gauges (fleet slice and the worst edge per monitor)."""

    def __init__(self, registry) -> None:
        self.value = Gauge("edgeloop_ct_monitor_value", "Latest value of a CT monitor",
                           ["model", "monitor", "slice"], registry=registry)
        self.threshold = Gauge("edgeloop_ct_monitor_threshold", "Threshold of a CT monitor",
                               ["model", "monitor", "slice"], registry=registry)
        self.alarm = Gauge("edgeloop_ct_monitor_alarm", "1 while a CT monitor is above its threshold",
                           ["model", "monitor", "slice"], registry=registry)

    def update(self, model: str, results, latest) -> None:
        worst: dict[tuple[str, str], tuple] = {}
        for (monitor, _subject, slice_key), (value, threshold, alarm) in latest.items():
            ratio = value / threshold if threshold and threshold > 0 else 0.0
            key = (monitor, slice_key)
            if key not in worst or ratio > worst[key][0]:
                worst[key] = (ratio, value, threshold, alarm)
        for (monitor, slice_key), (_r, value, threshold, alarm) in worst.items():
            labels = (model[:128], monitor, slice_key[:128])
            self.value.labels(*labels).set(value)
            self.threshold.labels(*labels).set(threshold)
            self.alarm.labels(*labels).set(1.0 if alarm else 0.0)
