"""Signed manifests: what an edge checks before a model's bytes are trusted.

A manifest is a JSON object (model, version, size, sha256, chunk size and per-chunk sha256, input and
output signature, features, reference statistics and self-test cases, lineage id, created and expires
times) plus ``signature``: Ed25519 over the *canonical* JSON of every other field (sorted keys, no
spaces, UTF-8), so any change to any field breaks it.  A rollback statement is a manifest-like
document of ``kind`` ``"rollback"`` signed the same way.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidSignature

from .keys import key_id

FORMAT = 1
DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000
MAX_MANIFEST_BYTES = 1 << 20
MAX_CHUNKS = 1 << 16
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

#: why a manifest is refused (the Prometheus label and the start of the reported error)
UNSIGNED, BAD_SIGNATURE, EXPIRED, DOWNGRADE, MALFORMED, MISMATCH = (
    "unsigned", "bad_signature", "expired", "downgrade", "malformed", "mismatch")


class ManifestError(Exception):
    """A manifest the edge must refuse; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def cut(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def chunk_hashes(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[str]:
    view = memoryview(data)
    return [hashlib.sha256(view[i:i + chunk_bytes]).hexdigest() for i in range(0, len(data), chunk_bytes)]


def chunk_hashes_of_file(path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[str, int, list[str]]:
    """(sha256, size, per-chunk sha256) of a file, read once."""
    whole, chunks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return whole.hexdigest(), size, chunks


def build(model: str, version: int, sha256: str, size: int, chunks: Sequence[str], created_ms: int, *,
          chunk_bytes: int = DEFAULT_CHUNK_BYTES, ttl_ms: int = DEFAULT_TTL_MS, inputs: Iterable = (),
          outputs: Iterable = (), features: Iterable = (), reference_stats: dict | None = None,
          self_test: Iterable = (), tolerance: float = 1e-4, lineage_id: str = "") -> dict:
    """An unsigned manifest.  ``self_test``: ``[{"inputs": {name: {"datatype","shape","data"}}, "outputs":
    {...}}]`` — reference cases the loaded model must reproduce within ``tolerance``."""
    doc = {"format": FORMAT, "kind": "model", "model": model, "version": int(version), "size": int(size),
           "sha256": sha256, "chunk_bytes": int(chunk_bytes), "chunks": list(chunks), "features": list(features),
           "reference_stats": dict(reference_stats or {}), "self_test": list(self_test),
           "tolerance": float(tolerance), "lineage_id": lineage_id, "created_ms": int(created_ms),
           "expires_ms": int(created_ms) + int(ttl_ms)}
    # the serving side checks a declared signature against the model (Triton-style name/datatype/shape):
    # declared only when known, since an empty list would declare "no inputs"
    if inputs:
        doc["inputs"] = list(inputs)
    if outputs:
        doc["outputs"] = list(outputs)
    return doc


def rollback_statement(model: str, to_version: int, rollout_id: str, created_ms: int,
                       ttl_ms: int = DEFAULT_TTL_MS) -> dict:
    return {"format": FORMAT, "kind": "rollback", "model": model, "version": int(to_version),
            "rollout_id": rollout_id, "created_ms": int(created_ms), "expires_ms": int(created_ms) + int(ttl_ms)}


def canonical(doc: dict) -> bytes:
    """The signed bytes: every field but ``signature``, sorted keys, no spaces."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sign(doc: dict, private_key) -> dict:
    signed = dict(doc)
    signed["signature"] = {"alg": "ed25519", "key_id": key_id(private_key.public_key()),
                           "value": base64.b64encode(private_key.sign(canonical(doc))).decode()}
    return signed


def encode(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse(raw: bytes) -> dict:
    """JSON bytes → a manifest dict whose fields have the right types and bounds (not yet verified)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(MALFORMED, f"{len(raw)} bytes; expected at most {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(MALFORMED, f"not JSON ({exc}); expected a JSON object") from None
    if not isinstance(doc, dict):
        raise ManifestError(MALFORMED, f"got {cut(doc)}; expected a JSON object")
    kind = doc.get("kind", "model")
    model = doc.get("model")
    if not isinstance(model, str) or not _NAME.match(model):
        raise ManifestError(MALFORMED, f"model: got {cut(model)}; expected a model name")
    for key in ("version", "created_ms", "expires_ms"):
        if not isinstance(doc.get(key), int) or isinstance(doc.get(key), bool) or doc[key] < 0:
            raise ManifestError(MALFORMED, f"{key}: got {cut(doc.get(key))}; expected an integer >= 0")
    if kind == "model":
        sha, size, cb, chunks = doc.get("sha256"), doc.get("size"), doc.get("chunk_bytes"), doc.get("chunks")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ManifestError(MALFORMED, f"sha256: got {cut(sha)}; expected 64 lowercase hex digits")
        if not isinstance(size, int) or size < 1:
            raise ManifestError(MALFORMED, f"size: got {cut(size)}; expected a byte count >= 1")
        if not isinstance(cb, int) or not 1024 <= cb <= 1 << 26:
            raise ManifestError(MALFORMED, f"chunk_bytes: got {cut(cb)}; expected 1024..{1 << 26}")
        expected = -(-size // cb)
        if not isinstance(chunks, list) or len(chunks) != expected or expected > MAX_CHUNKS \
                or not all(isinstance(c, str) and _SHA.match(c) for c in chunks):
            raise ManifestError(MALFORMED, f"chunks: got {cut(chunks)}; expected {expected} sha256 hex digests "
                                           f"(size / chunk_bytes, at most {MAX_CHUNKS})")
    elif kind != "rollback":
        raise ManifestError(MALFORMED, f"kind: got {cut(kind)}; expected 'model' or 'rollback'")
    return doc


def verify(doc: dict, trusted_keys: Sequence, now_ms: int) -> str:
    """Check the signature against any trusted key, then expiry; returns the signing key's id."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        raise ManifestError(UNSIGNED, f"manifest of {doc.get('model')!r} version {doc.get('version')} has no "
                                      f"signature; expected an Ed25519 signature by a trusted key")
    try:
        value = base64.b64decode(sig["value"], validate=True)
    except ValueError:
        raise ManifestError(BAD_SIGNATURE, f"signature.value: got {cut(sig['value'])}; expected base64") from None
    body = canonical(doc)
    for key in trusted_keys:
        try:
            key.verify(value, body)
        except InvalidSignature:
            continue
        if doc["expires_ms"] <= now_ms:
            raise ManifestError(EXPIRED, f"manifest of {doc['model']!r} version {doc['version']} expired at "
                                         f"{doc['expires_ms']} ms (now {now_ms}); expected an unexpired manifest")
        return key_id(key)
    raise ManifestError(BAD_SIGNATURE, f"manifest of {doc.get('model')!r} version {doc.get('version')}: the "
                                       f"signature (key {cut(sig.get('key_id'))}) matches none of the "
                                       f"{len(trusted_keys)} trusted key(s)")
