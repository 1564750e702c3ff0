"""Decision log: every placement decision as a JSON line, replayable anywhere.

Lines are of three kinds:
``{"type":"snapshot","digest":D,"snapshot":{...}}`` written the first time a snapshot is used,
``{"type":"decision","key":K,"model":M,"version":V,"digest":D,"node":N}`` (``served_by`` and
``reason`` added when routing had to pick a fallback), and
``{"type":"batch","keys":[...],"model":M,"version":V,"digest":D,"nodes":[...]}`` for capped batches.
Bytes keys are written as ``key_hex``.  ``replay`` recomputes each decision from its snapshot.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edgeloop.mesh.placement import Placement, Snapshot


def _key_fields(key: str | bytes) -> dict:
    return {"key_hex": key.hex()} if isinstance(key, bytes) else {"key": key}


def _key_from(record: dict) -> str | bytes:
    if "key_hex" in record:
        return bytes.fromhex(record["key_hex"])
    return record["key"]


class DecisionLog:
    """Appends decisions (and each new snapshot once) to a JSON-lines file; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._written: set[str] = set()

    def _write(self, placement: Placement, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
        with self._lock:
            if placement.digest not in self._written:
                snap = {"type": "snapshot", "digest": placement.digest, "snapshot": placement.snapshot.to_json()}
                self._fh.write(json.dumps(snap, sort_keys=True, separators=(",", ":")) + "\n")
                self._written.add(placement.digest)
            self._fh.write(line + "\n")
            self._fh.flush()

    def decision(
        self,
        placement: Placement,
        key: str | bytes,
        model: str,
        version: int | None,
        node: str,
        served_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Log that ``placement`` put ``key`` on ``node`` (and who served it, if someone else)."""
        record = {"type": "decision", "model": model, "version": version, "digest": placement.digest, "node": node}
        record.update(_key_fields(key))
        if served_by is not None and served_by != node:
            record["served_by"] = served_by
            record["reason"] = reason
        self._write(placement, record)

    def batch(self, placement: Placement, keys: Sequence[str | bytes], model: str, version: int | None,
              nodes: Sequence[str]) -> None:
        """Log a capped batch assignment (only replayable as a whole: the cap depends on order)."""
        if any(isinstance(k, bytes) for k in keys):
            raise TypeError("keys: batch logs take str keys only")
        record = {"type": "batch", "keys": list(keys), "model": model, "version": version,
                  "digest": placement.digest, "nodes": list(nodes)}
        self._write(placement, record)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


@dataclass
class ReplayReport:
    """What replaying a log found."""

    snapshots: int = 0
    decisions: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def replay(path: str | Path) -> ReplayReport:
    """Recompute every decision in the log at ``path``; list each one that differs.

    A snapshot whose content does not hash to its recorded digest, a decision naming an
    unknown digest, or a line that is not valid JSON also count as mismatches.
    """
    report = ReplayReport()
    placements: dict[str, Placement] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
                kind = record["type"]
                if kind == "snapshot":
                    snap = Snapshot.from_json(record["snapshot"])
                    report.snapshots += 1
                    if snap.digest != record["digest"]:
                        report.mismatches.append(
                            f"{where}: snapshot digest: recorded {record['digest']}, content hashes to {snap.digest}")
                        continue
                    placements[snap.digest] = Placement(snap)
                    continue
                placement = placements.get(record["digest"])
                if placement is None:
                    report.mismatches.append(f"{where}: digest {record['digest']!r}: no valid snapshot logged before it")
                    continue
                if kind == "decision":
                    report.decisions += 1
                    key = _key_from(record)
                    got = placement.owner(key, record["model"], record.get("version"))
                    if got != record["node"]:
                        report.mismatches.append(
                            f"{where}: key {key!r} model {record['model']!r}: logged node {record['node']!r}, "
                            f"recomputed {got!r}")
                elif kind == "batch":
                    report.decisions += len(record["keys"])
                    got = placement.assign(record["keys"], record["model"], record.get("version"))
                    for key, logged, now in zip(record["keys"], record["nodes"], got):
                        if logged != now:
                            report.mismatches.append(
                                f"{where}: batch key {key!r}: logged node {logged!r}, recomputed {now!r}")
                    if len(got) != len(record["nodes"]):
                        report.mismatches.append(f"{where}: batch has {len(record['keys'])} keys but "
                                                 f"{len(record['nodes'])} nodes")
                else:
                    report.mismatches.append(f"{where}: type: got {kind!r}, expected snapshot, decision or batch")
            except (ValueError, KeyError, TypeError, LookupError) as exc:
                report.mismatches.append(f"{where}: unreadable record: {exc}")
    return report
