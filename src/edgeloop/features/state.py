"""Per-entity feature state on the edge: bounded, thread-safe, snapshotted, exportable.

The node that owns an entity (the mesh's placement) keeps its recent history here.  Memory is
bounded twice: each entity is one fixed-size record (ring buffers sized by the definition's
longest windows, at most ``MAX_K``), and at most ``max_entities`` records are kept.  Entities
are spread over ``stripes`` shards by CRC-32 of the key; each shard has its own lock and its
own LRU of ``max_entities // stripes`` records, so requests of different entities run in
parallel and eviction (least recently used within a shard) never waits for another shard.

State leaves the process in two forms, both without pickle: a snapshot file (``.npz`` read
with ``allow_pickle=False``) beside the outbox, and one entity's bytes for the hand-over to a
new owner through the Peer service; both are checked like untrusted input when read back.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.kernels import features as _k

from .compute import Plan, Served, _row_error, label_args, request_time
from .definition import FeatureDefinition
from .errors import FeatureError, StateError

MAX_ENTITY_BYTES = 256
SNAPSHOT_FORMAT = "edgeloop.features.snapshot/1"
EXPORT_MAGIC = b"ELFS"
EXPORT_VERSION = 1
_KERNEL_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))  # rows the kernel reads as they are
_EXPORT_HEAD = struct.Struct("<4sB32sHI")  # magic, version, definition digest, key length, record length


@dataclass(frozen=True)
class FeatureStats:
    """Counters since start (entities is the current count)."""

    entities: int
    max_entities: int
    evictions: int
    served: int
    cold: int
    partial: int
    rows: int
    labels: int
    labels_dropped: int
    imported: int
    exported: int
    online_served: int = 0  # rows whose output the online head corrected
    online_learned: int = 0  # labels the head learned from
    online_unmatched: int = 0  # labels whose served row was no longer waiting (or of an unknown class)


class _Stripe:
    __slots__ = ("lock", "records", "cap", "evictions", "served", "cold", "partial", "rows", "labels",
                 "labels_dropped", "imported", "exported", "online_served", "online_learned", "online_unmatched")

    def __init__(self, cap: int) -> None:
        self.lock = threading.Lock()
        self.records: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cap = cap
        self.evictions = self.served = self.cold = self.partial = self.rows = 0
        self.labels = self.labels_dropped = self.imported = self.exported = 0
        self.online_served = self.online_learned = self.online_unmatched = 0

    def admit(self, entity: str, rec: np.ndarray) -> None:
        """Insert (or replace) as most recent; evict the least recently used beyond the cap."""
        self.records[entity] = rec
        self.records.move_to_end(entity)
        while len(self.records) > self.cap:
            self.records.popitem(last=False)
            self.evictions += 1


class FeatureState:
    """The entity states of one model's feature definition on one node."""

    def __init__(self, definition: FeatureDefinition, *, max_entities: int = 100_000, stripes: int = 16) -> None:
        for name, value in (("max_entities", max_entities), ("stripes", stripes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.plan = Plan(definition)
        self.definition = definition
        n = min(stripes, max_entities)
        self.max_entities = (max_entities // n) * n  # the bound actually enforced (a multiple of the stripes)
        self._stripes = [_Stripe(max_entities // n) for _ in range(n)]
        self._plain = self.plan.online is None  # the record is the kernel's (no online head after it)
        self._klen = self.plan.kernel_len

    # -- lookup ----------------------------------------------------------------------------------------
    def _stripe(self, entity) -> _Stripe:
        if type(entity) is not str:
            raise FeatureError("request", "entity", entity, "the routing key as a string")
        try:
            key = entity.encode("utf-8")
        except UnicodeEncodeError:
            raise FeatureError("request", "entity", entity, "valid UTF-8 text") from None
        if not 0 < len(key) <= MAX_ENTITY_BYTES:
            raise FeatureError("request", "entity", entity, f"1..{MAX_ENTITY_BYTES} bytes of UTF-8")
        return self._stripes[zlib.crc32(key) % len(self._stripes)]

    def __len__(self) -> int:
        return sum(len(s.records) for s in self._stripes)

    def keys(self) -> list[str]:
        """The entities held now (a copy, stripe by stripe)."""
        out: list[str] = []
        for s in self._stripes:
            with s.lock:
                out.extend(s.records)
        return out

    def __contains__(self, entity) -> bool:
        stripe = self._stripe(entity)
        with stripe.lock:
            return entity in stripe.records

    # -- the request path ---------------------------------------------------------------------------------
    def serve(self, entity: str, row, t: float) -> Served:
        """The vector for this request, then the row enters the entity's history (atomically per entity)."""
        return self._run(entity, row, t, _k.serve, True)

    def compute(self, entity: str, row, t: float) -> Served:
        """The vector for this request without changing state (pair with ``update_with_row``)."""
        return self._run(entity, row, t, _k.compute, False)

    def _run(self, entity, row, t, kernel, keep: bool) -> Served:
        stripe = self._stripe(entity)
        plan = self.plan
        if type(row) is not np.ndarray or row.dtype not in _KERNEL_DTYPES:
            row = _k.as_row(row, plan.n_inputs)
        t = request_time(t)
        out = np.empty(plan.width, dtype=np.float32)
        with stripe.lock:
            rec = stripe.records.get(entity)
            new = rec is None
            if new:
                rec = plan.new_record() if keep else plan.blank
            elif keep:
                stripe.records.move_to_end(entity)
            try:
                flags = kernel(plan.kpart(rec), plan.codes, plan.defaults, row, t, out)
            except ValueError as exc:
                raise _row_error(plan, row, t, exc) from None
            if keep:
                stripe.rows += 1
                if new:
                    stripe.admit(entity, rec)
            stripe.served += 1
            if flags & _k.FLAG_COLD:
                stripe.cold += 1
            if flags & _k.FLAG_PARTIAL:
                stripe.partial += 1
        return Served(out, bool(flags & _k.FLAG_COLD), bool(flags & _k.FLAG_PARTIAL))

    def serve_into(self, entity: str, key: bytes, t: float, out: np.ndarray, only_held: bool = False) -> int:
        """``serve`` on a node's request path, with nothing allocated: the row is ``out``'s first n_in values.

        ``out`` is float32, C-contiguous, ``width`` values (``[1, width]`` for the graph); the derived
        features are written after the row.  ``key`` is ``entity`` in UTF-8 (both read from the request,
        so not encoded again here).  Returns the flags (``FLAG_COLD`` | ``FLAG_PARTIAL``), or -1 with
        nothing done when ``only_held`` and the entity is not held (the caller may adopt it first).
        """
        if type(key) is not bytes or not 0 < len(key) <= MAX_ENTITY_BYTES or type(entity) is not str:
            raise FeatureError("request", "entity", entity, f"1..{MAX_ENTITY_BYTES} bytes of UTF-8")
        stripes = self._stripes
        stripe = stripes[zlib.crc32(key) % len(stripes)]
        with stripe.lock:
            records = stripe.records
            rec = records.get(entity)
            new = rec is None
            if new:
                if only_held:
                    return -1
                rec = self.plan.new_record()
            else:
                records.move_to_end(entity)
            try:
                flags = self.plan.kernel.serve_out(rec if self._plain else rec[: self._klen], t, out)
            except ValueError as exc:
                raise _row_error(self.plan, out.reshape(-1)[: self.plan.n_inputs], t, exc) from None
            stripe.rows += 1
            stripe.served += 1
            if new:
                stripe.admit(entity, rec)
            if flags:
                if flags & _k.FLAG_COLD:
                    stripe.cold += 1
                if flags & _k.FLAG_PARTIAL:
                    stripe.partial += 1
        return flags

    def update_with_row(self, entity: str, row, t: float) -> None:
        """The served row enters the entity's history (after ``compute``)."""
        stripe = self._stripe(entity)
        plan = self.plan
        if type(row) is not np.ndarray or row.dtype not in _KERNEL_DTYPES:
            row = _k.as_row(row, plan.n_inputs)
        t = request_time(t)
        with stripe.lock:
            rec = stripe.records.get(entity)
            new = rec is None
            if new:
                rec = plan.new_record()
            try:
                _k.push_row(plan.kpart(rec), plan.codes, row, t)
            except ValueError as exc:
                raise _row_error(plan, row, t, exc) from None
            stripe.rows += 1
            if new:
                stripe.admit(entity, rec)
            else:
                stripe.records.move_to_end(entity)

    def update_with_label(self, entity: str, label: float, timestamp: float) -> bool:
        """A late label for the entity's event at ``timestamp``; True when kept (see ``compute.update_with_label``)."""
        stripe = self._stripe(entity)
        label, timestamp = label_args(label, timestamp)
        plan = self.plan
        with stripe.lock:
            rec = stripe.records.get(entity)
            new = rec is None
            if new:
                rec = plan.new_record()
            kept = _k.push_label(plan.kpart(rec), plan.codes, timestamp, label) != _k.LABEL_DROPPED
            stripe.labels += 1
            if not kept:
                stripe.labels_dropped += 1
            if plan.online is not None:
                if plan.online.learn(plan.head(rec), timestamp, label):
                    stripe.online_learned += 1
                else:
                    stripe.online_unmatched += 1
            if new:
                stripe.admit(entity, rec)
            else:
                stripe.records.move_to_end(entity)
        return kept

    def online_logits(self, entity: str, t: float, vectors: np.ndarray, proba: np.ndarray) -> np.ndarray | None:
        """The online head's corrected log-probabilities ``[rows, K]`` for rows served to ``entity`` at ``t``.

        ``vectors`` are what the model saw, ``proba`` its probabilities; each row then waits for its
        label.  None when the entity is not held (nothing learned: the model's output stands).
        """
        layout = self.plan.online
        stripe = self._stripe(entity)
        out = np.empty((vectors.shape[0], layout.K), dtype=np.float64)
        with stripe.lock:
            rec = stripe.records.get(entity)
            if rec is None:
                return None
            head = rec[self._klen:]
            for i in range(vectors.shape[0]):
                out[i] = layout.logits(head, vectors[i], proba[i], t)
            stripe.online_served += vectors.shape[0]
        return out

    # -- counters ---------------------------------------------------------------------------------------
    def stats(self) -> FeatureStats:
        totals = dict.fromkeys(("evictions", "served", "cold", "partial", "rows", "labels", "labels_dropped",
                                "imported", "exported", "online_served", "online_learned", "online_unmatched"), 0)
        entities = 0
        for s in self._stripes:
            with s.lock:
                entities += len(s.records)
                for name in totals:
                    totals[name] += getattr(s, name)
        return FeatureStats(entities=entities, max_entities=self.max_entities, **totals)

    # -- one entity's state rebuilt from a logged history (its previous owner is dead) ------------------------
    def rebuild_entity(self, entity: str, rows, times, labels=()) -> bool:
        """Adopt ``entity``'s state rebuilt from its logged history; False when it is held here already.

        ``rows`` (n, inputs) and ``times`` (n,) are its served rows in served order; ``labels`` are
        ``(label, timestamp)`` pairs in arrival order.  The rows and labels go through the same
        ``update_with_row``/``update_with_label`` kernels as on the request path, so a complete history
        gives the vectors a node that never lost the entity would serve (the label buffer keeps the
        newest labels by timestamp whatever their interleaving with the rows).
        """
        stripe = self._stripe(entity)
        plan = self.plan
        rows = np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, plan.n_inputs)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if times.shape[0] != rows.shape[0]:
            raise FeatureError("history", "times", f"{times.shape[0]} times", f"{rows.shape[0]}: one per row")
        rec = plan.new_record()
        for row, t in zip(rows, times):
            try:
                _k.push_row(plan.kpart(rec), plan.codes, row, float(t))
            except ValueError as exc:
                raise _row_error(plan, row, float(t), exc) from None
        for label, timestamp in labels:
            label, timestamp = label_args(label, timestamp)
            _k.push_label(plan.kpart(rec), plan.codes, timestamp, label)
        plan.check_record(rec)
        with stripe.lock:
            if entity in stripe.records:
                return False  # a request (or a hand-over) got here first: its history continues from there
            stripe.admit(entity, rec)
            stripe.rows += rows.shape[0]
            stripe.labels += len(labels)
        return True

    # -- one entity's state as bytes (hand-over to a new owner) ----------------------------------------------
    @property
    def export_size(self) -> int:
        """The largest export this definition produces; ``import_entity`` refuses anything longer."""
        return _EXPORT_HEAD.size + MAX_ENTITY_BYTES + 8 * self.plan.record_len

    def export_entity(self, entity: str, *, remove: bool = False) -> bytes | None:
        """The entity's state as bytes (None when unknown); ``remove`` drops it here (ownership moved)."""
        stripe = self._stripe(entity)
        with stripe.lock:
            rec = stripe.records.pop(entity, None) if remove else stripe.records.get(entity)
            if rec is None:
                return None
            payload = rec.astype("<f8", copy=True).tobytes()
            stripe.exported += 1
        key = entity.encode("utf-8")
        head = _EXPORT_HEAD.pack(EXPORT_MAGIC, EXPORT_VERSION, bytes.fromhex(self.plan.digest), len(key),
                                 self.plan.record_len)
        return head + key + payload

    def import_entity(self, entity: str, data: bytes) -> None:
        """Adopt an entity's state exported by a peer (untrusted: size, header, key and record are checked)."""
        stripe = self._stripe(entity)
        rec = self.decode_export(entity, data)
        with stripe.lock:
            stripe.admit(entity, rec)
            stripe.imported += 1

    def decode_export(self, entity: str, data: bytes) -> np.ndarray:
        """Check exported bytes for ``entity`` and return the record; raises ``StateError`` naming the field."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StateError("data", type(data).__name__, "bytes")
        data = bytes(data)
        if len(data) > self.export_size:
            raise StateError("data", f"{len(data)} bytes", f"at most {self.export_size} bytes for this definition")
        if len(data) < _EXPORT_HEAD.size:
            raise StateError("data", f"{len(data)} bytes", f"at least the {_EXPORT_HEAD.size}-byte header")
        magic, version, digest, key_len, rec_len = _EXPORT_HEAD.unpack_from(data)
        if magic != EXPORT_MAGIC:
            raise StateError("magic", magic, f"{EXPORT_MAGIC!r}")
        if version != EXPORT_VERSION:
            raise StateError("version", version, f"{EXPORT_VERSION}")
        if digest.hex() != self.plan.digest:
            raise StateError("definition_digest", digest.hex(), f"{self.plan.digest} (this node's definition)")
        if rec_len != self.plan.record_len:
            raise StateError("record_length", rec_len, f"{self.plan.record_len}")
        expected_len = _EXPORT_HEAD.size + key_len + 8 * rec_len
        if len(data) != expected_len:
            raise StateError("data", f"{len(data)} bytes", f"exactly {expected_len} bytes for its header")
        key = data[_EXPORT_HEAD.size: _EXPORT_HEAD.size + key_len]
        if key != entity.encode("utf-8"):
            raise StateError("entity", key, f"{entity!r} (the entity being imported)")
        rec = np.frombuffer(data, dtype="<f8", offset=_EXPORT_HEAD.size + key_len).astype(np.float64)
        self.plan.check_record(rec)
        return rec

    # -- snapshot file ------------------------------------------------------------------------------------
    def snapshot(self, path: str | os.PathLike) -> int:
        """Write every entity's state to ``path`` atomically (temp file + rename); returns the count."""
        keys: list[bytes] = []
        recs: list[np.ndarray] = []
        for s in self._stripes:
            with s.lock:
                for entity, rec in s.records.items():  # least recently used first
                    keys.append(entity.encode("utf-8"))
                    recs.append(rec.copy())
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(k) for k in keys], dtype=np.int64)
        records = np.stack(recs) if recs else np.zeros((0, self.plan.record_len), dtype=np.float64)
        meta = {"format": SNAPSHOT_FORMAT, "definition_digest": self.plan.digest,
                "record_length": self.plan.record_len, "entities": len(keys)}
        path = Path(path)
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 keys=np.frombuffer(b"".join(keys), dtype=np.uint8), offsets=offsets, records=records)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(keys)

    def restore(self, path: str | os.PathLike) -> int:
        """Replace this state with a snapshot's (checked like untrusted input); returns entities kept."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in ("meta", "keys", "offsets", "records")}
        except KeyError as exc:
            raise StateError("snapshot", str(path), f"an .npz with meta, keys, offsets, records ({exc})") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise StateError("snapshot", str(path), f"a readable .npz without pickled objects ({exc})") from None
        try:
            meta = json.loads(arrays["meta"].astype(np.uint8).tobytes())
        except (ValueError, UnicodeDecodeError):
            raise StateError("snapshot.meta", "unreadable", "JSON") from None
        if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
            raise StateError("snapshot.meta.format", meta.get("format") if isinstance(meta, dict) else meta,
                             SNAPSHOT_FORMAT)
        if meta.get("definition_digest") != self.plan.digest:
            raise StateError("snapshot.meta.definition_digest", meta.get("definition_digest"),
                             f"{self.plan.digest} (this definition)")
        keys, offsets, records = arrays["keys"], arrays["offsets"], arrays["records"]
        n = offsets.shape[0] - 1 if offsets.ndim == 1 else -1
        if (keys.dtype != np.uint8 or keys.ndim != 1 or offsets.dtype != np.int64 or n < 0
                or records.dtype != np.float64 or records.shape != (n, self.plan.record_len)):
            raise StateError("snapshot.arrays", f"keys {keys.dtype}{keys.shape}, offsets {offsets.dtype}"
                             f"{offsets.shape}, records {records.dtype}{records.shape}",
                             f"uint8 keys, int64 offsets (n+1), float64 records (n, {self.plan.record_len})")
        lengths = np.diff(offsets)
        if offsets[0] != 0 or offsets[-1] != keys.shape[0] or (lengths < 1).any() or (lengths > MAX_ENTITY_BYTES).any():
            raise StateError("snapshot.offsets", offsets[:8].tolist(), f"key offsets from 0 to {keys.shape[0]}, "
                             f"1..{MAX_ENTITY_BYTES} bytes per key")
        blob = keys.tobytes()
        adopted: list[tuple[str, np.ndarray]] = []
        for i in range(n):
            try:
                entity = blob[offsets[i]: offsets[i + 1]].decode("utf-8")
            except UnicodeDecodeError:
                raise StateError(f"snapshot.keys[{i}]", blob[offsets[i]: offsets[i + 1]], "UTF-8") from None
            rec = np.array(records[i], dtype=np.float64)
            try:
                self.plan.check_record(rec)
            except StateError as exc:
                raise StateError(f"snapshot.records[{i}] ({entity!r}): {exc.field}", exc.value, exc.expected) from None
            adopted.append((entity, rec))
        for s in self._stripes:
            with s.lock:
                s.records.clear()
        for entity, rec in adopted:
            stripe = self._stripe(entity)
            with stripe.lock:
                stripe.admit(entity, rec)
        return len(self)
