"""Checks of every field an edge or operator sends, turned into INVALID_ARGUMENT messages.

A message names the field (with its index path), the value received (cut to 200 characters) and what
was expected.  The sample checks run once per uploaded sample, so they stay flat and cheap: compiled
regexes, a set lookup for datatypes and a cache of tensor signatures already found consistent.
"""
from __future__ import annotations

import math
import re

from edgeloop.protocol.codec import DATATYPES
from edgeloop.protocol.errors import invalid_argument

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_EXPECTED = "a name of 1..128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,255}")
ID_EXPECTED = ("an id of 1..256 characters: letters, digits and . _ : @ / + = -, "
               "starting with a letter or digit")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_KEY_CHARS = 256
MAX_TENSORS = 64
MAX_DIMS = 8
MAX_TIMESTAMP_MS = 1 << 53
MAX_VERSION = (1 << 53)
#: how far ahead of the coordinator's clock a label's received_ms may be (clock skew between machines)
MAX_CLOCK_AHEAD_MS = 24 * 3600 * 1000
MODEL_STATES = ("READY", "LOADING", "UNAVAILABLE", "")
MAX_MODELS = 1024
MAX_FEATURE_STATS = 65536
MAX_BINS = 4096
MAX_ERROR_CHARS = 4096
_ITEMSIZE = {name: d.itemsize for name, d in DATATYPES.items()}


def cut(value: object) -> str:
    """``repr`` of a received value, cut to about 200 characters."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def bad(field: str, value: object, expected: str):
    return invalid_argument(f"{field}: got {cut(value)}, expected {expected}")


def name(field: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise bad(field, value, NAME_EXPECTED)
    return value


def ident(field: str, value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise bad(field, value, ID_EXPECTED)
    return value


def sha256(field: str, value: str, allow_empty: bool = False) -> str:
    if allow_empty and not value:
        return value
    if not SHA256_RE.fullmatch(value):
        raise bad(field, value, "a sha256 as 64 lowercase hex digits")
    return value


def routing_key(field: str, value: str) -> str:
    if len(value) > MAX_KEY_CHARS or not value.isprintable():
        raise bad(field, value, f"a routing key of at most {MAX_KEY_CHARS} printable characters")
    return value


def timestamp(field: str, value: int) -> int:
    if not 0 < value < MAX_TIMESTAMP_MS:
        raise bad(field, value, "a Unix time in milliseconds (> 0)")
    return value


def version(field: str, value: int, minimum: int = 0) -> int:
    if not minimum <= value < MAX_VERSION:
        raise bad(field, value, f"a model version >= {minimum}")
    return value


def count(field: str, items, limit: int) -> None:
    if len(items) > limit:
        raise bad(field, f"{len(items)} items", f"at most {limit} items")


def finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise bad(field, value, "a finite number")
    return value


def text(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise bad(field, value, f"at most {limit} characters")
    return value


class TensorChecker:
    """Checks tensors against their datatype, remembering the tensor headers already found consistent.

    The cache key is a tensor's wire encoding without its data bytes: protobuf writes fields in number
    order and ``data`` is the last one, so the key holds name, datatype, shape and the data's length
    (unknown trailing fields only make the key longer, never ambiguous).  One encode and a slice per
    tensor is several times cheaper than reading the repeated ``shape`` field from Python.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._ok: set[bytes] = set()
        self._limit = limit

    def check_sample(self, sample, at: int) -> None:
        """Check the ``inputs``, ``outputs`` and ``raw_inputs`` of ``samples[at]`` in one call (the per-sample
        hot path: one call, field names formatted only for an error, and the upb containers indexed, not
        iterated: iterating one ends in a raised IndexError)."""
        ok = self._ok
        for field, tensors in (("inputs", sample.inputs), ("outputs", sample.outputs),
                               ("raw_inputs", sample.raw_inputs)):
            n = len(tensors)
            if n > MAX_TENSORS:
                raise bad(f"samples[{at}].{field}", f"{n} tensors", f"at most {MAX_TENSORS} tensors")
            for i in range(n):
                t = tensors[i]
                encoded = t.SerializeToString()
                if encoded[:len(encoded) - len(t.data)] not in ok:
                    self._check_one(f"samples[{at}].{field}[{i}]", t, encoded)

    def _check_one(self, where: str, t, encoded: bytes) -> None:
        if not ID_RE.fullmatch(t.name):
            raise bad(f"{where}.name", t.name, ID_EXPECTED)
        itemsize = _ITEMSIZE.get(t.datatype)
        if itemsize is None:
            raise bad(f"{where}.datatype", t.datatype, f"one of {', '.join(DATATYPES)}")
        shape = tuple(t.shape)
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise bad(f"{where}.shape", list(shape), f"at most {MAX_DIMS} dimensions, each >= 0")
        if itemsize:
            elements = math.prod(shape)
            if elements * itemsize != len(t.data):
                raise bad(f"{where}.data", f"{len(t.data)} bytes",
                          f"{elements * itemsize} bytes ({elements} {t.datatype} elements of shape {list(shape)})")
        if len(self._ok) < self._limit:
            self._ok.add(encoded[:len(encoded) - len(t.data)])
