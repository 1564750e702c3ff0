"""The coordinator's side of delivery: signed manifests at publication, and the rollout driver.

``Rollouts.tick`` advances every running rollout one step from what the store holds (load results,
the edges' last status reports), so a restarted coordinator carries on where it stopped; every
decision is appended to the rollout document with its evidence.
"""
from __future__ import annotations

import logging
import threading
import uuid

from edgeloop.delivery import manifest as mf
from edgeloop.delivery import rollout as ro
from edgeloop.delivery.keys import load_private_key
import numpy as np

from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.codec import numpy_dtype_of

from .guards import now_ms

log = logging.getLogger("edgeloop.coordinator.rollouts")

MANIFEST, ROLLOUT, PIN = "manifest", "rollout", "pin"
TICK_S = 0.2


def _key(model: str, version: int) -> str:
    return f"{model}:{version}"


def _predicted(out) -> float | None:
    """The class a served output tensor predicts: argmax for several values, >= 0.5 for one score."""
    try:
        values = np.frombuffer(out.data, numpy_dtype_of(out.datatype)).astype(np.float64)
    except (ValueError, TypeError):
        return None
    if values.size == 0:
        return None
    return float(np.argmax(values)) if values.size > 1 else float(values[0] >= 0.5)


def _single_input(model: bytes) -> str:
    """The name of the model's one graph input (ValueError otherwise): the champion replays on it."""
    import onnx

    proto = onnx.load_model_from_string(model)
    inits = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"the champion has {len(names)} inputs; replay needs one")
    return names[0]


class Rollouts:
    """Manifests, rollouts and pins over the store; ``start()`` runs the driver thread."""

    def __init__(self, core) -> None:
        self.core = core
        self.store = core.store
        self.config = core.config.delivery
        self.signing_key = load_private_key(self.config.signing_key) if self.config.signing_key else None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: whether this coordinator drives rollouts now (several on one database: the lease holder only)
        self.driving = lambda: True
        #: called with the document of each rollout that finishes (the CT loop learns rollbacks here)
        self.on_finish: list = []
        #: rollout id -> the champion replayed on the new version's labelled requests (the paired gate)
        self._replays: dict[str, dict] = {}

    # ------------------------------------------------------------------ manifests
    def make_manifest(self, published, **extra) -> dict:
        path = self.core.artifacts.path(published.sha256)
        sha, size, chunks = mf.chunk_hashes_of_file(path, self.core.config.fetch_chunk_bytes)
        doc = mf.build(published.model, published.version, sha, size, chunks, now_ms(),
                       chunk_bytes=self.core.config.fetch_chunk_bytes,
                       ttl_ms=int(self.config.manifest_ttl_s * 1000), **extra)
        if self.signing_key is not None:
            doc = mf.sign(doc, self.signing_key)
        self.store.put_doc(MANIFEST, _key(published.model, published.version), doc, now_ms())
        return doc

    def manifest(self, model: str, version: int) -> dict | None:
        return self.store.get_doc(MANIFEST, _key(model, version))

    def rollback_statement(self, model: str, to_version: int, rollout_id: str) -> bytes:
        doc = mf.rollback_statement(model, to_version, rollout_id, now_ms(), int(self.config.manifest_ttl_s * 1000))
        return mf.encode(mf.sign(doc, self.signing_key) if self.signing_key is not None else doc)

    # ------------------------------------------------------------------ starting and controlling
    def plan(self, canary: int = 0, bake_s: float = 0.0) -> ro.Plan:
        c = self.config
        return ro.Plan(canary=canary or c.canary, factor=c.wave_factor,
                       bake_ms=int((bake_s if bake_s > 0 else c.bake_s) * 1000), min_requests=c.min_requests,
                       min_success=c.min_success, max_p99_ratio=c.max_p99_ratio, max_psi=c.max_psi,
                       max_accuracy_drop=c.max_accuracy_drop, min_labelled=c.min_labelled,
                       accuracy_alpha=c.accuracy_alpha, accuracy_wait_ms=int(c.accuracy_wait_s * 1000))

    def start_rollout(self, published, reason: str, canary: int = 0, bake_s: float = 0.0) -> dict:
        with self._lock:
            for doc in self.store.docs(ROLLOUT):  # a newer rollout of the model supersedes a running one
                if doc["model"] == published.model and doc["state"] in (ro.RUNNING, ro.PAUSED):
                    self._finish(doc, ro.ABORTED, f"superseded by version {published.version}", rollback=False)
            nodes = self.store.nodes()
            weights = {n.node_id: float(n.identity.get("weight") or 1.0) for n in nodes}
            zones = self._zones()
            pins = {d["target"]: d["version"] for d in self.store.docs(PIN) if d["model"] == published.model}
            # what each edge served before: its rollback target (a version it holds and that was not rolled
            # back), and the champion: what the fleet serves (the newest version whose rollout completed)
            refused = self.rolled_back_versions(published.model)
            held = {n.node_id: max([m[1] for m in n.models if m[0] == published.model and m[1] < published.version
                                    and m[1] not in refused], default=0) for n in nodes}
            previous = self.fleet_version(published.model, published.version) or max(held.values(), default=0)
            rollout_id = f"{published.model}-{published.version}-{uuid.uuid4().hex[:8]}"
            doc = ro.new_rollout(rollout_id, published.model, published.version, published.sha256, previous,
                                 weights, zones, pins, self.plan(canary, bake_s), now_ms(), reason)
            doc["previous_by_edge"] = held
            self._next_wave(doc)
            self._save(doc)
            return doc

    def rolled_back_versions(self, model: str) -> set[int]:
        """Versions of ``model`` whose rollout ended with its edges sent back to the previous version."""
        return {int(d["version"]) for d in self.store.docs(ROLLOUT) if d["model"] == model
                and d.get("rolled_back", d["state"] == ro.ROLLED_BACK)}

    def fleet_version(self, model: str, below: int) -> int:
        """The version the fleet serves before ``below``: the newest one whose rollout completed, else (no
        rollout completed yet) the newest one not rolled back; 0 when there is none."""
        docs = [d for d in self.store.docs(ROLLOUT) if d["model"] == model and d["version"] < below]
        done = [int(d["version"]) for d in docs if d["state"] == ro.DONE]
        if done:
            return max(done)
        refused = {int(d["version"]) for d in docs if d.get("rolled_back", d["state"] == ro.ROLLED_BACK)}
        older = [p.version for p in self.store.published_models() if p.model == model and p.version < below
                 and p.version not in refused]
        return max(older, default=0)

    def _zones(self) -> dict[str, str]:
        return {n.node_id: n.identity.get("zone", "") for n in self.store.nodes()}

    def control(self, action: str, rollout_id: str) -> dict:
        with self._lock:
            doc = self.store.get_doc(ROLLOUT, rollout_id)
            if doc is None:
                raise KeyError(rollout_id)
            if action == "pause" and doc["state"] == ro.RUNNING:
                doc["state"] = ro.PAUSED
                ro.decide(doc, now_ms(), "paused", {"by": "operator"})
            elif action == "resume" and doc["state"] == ro.PAUSED:
                doc["state"] = ro.RUNNING
                ro.decide(doc, now_ms(), "resumed", {"by": "operator"})
            elif action == "abort" and doc["state"] in (ro.RUNNING, ro.PAUSED):
                self._finish(doc, ro.ABORTED, "aborted by the operator", rollback=True)
                return doc
            self._save(doc)
            return doc

    def pin(self, target: str, model: str, version: int) -> None:
        self.store.put_doc(PIN, f"{model}|{target}", {"target": target, "model": model, "version": version},
                           now_ms())

    def unpin(self, target: str, model: str) -> None:
        self.store.delete_doc(PIN, f"{model}|{target}")

    def rollouts(self) -> list[dict]:
        return self.store.docs(ROLLOUT)

    def blocked(self, model: str, version: int) -> bool:
        """True while a rollout of ``model`` ``version`` is not done (joiners are not sent it)."""
        return any(d["model"] == model and d["version"] == version and d["state"] != ro.DONE
                   for d in self.store.docs(ROLLOUT))

    # ------------------------------------------------------------------ the driver
    def start(self) -> "Rollouts":
        self._thread = threading.Thread(target=self._run, name="edgeloop-rollouts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                if self.driving():
                    self.tick()
            except Exception:
                if self.core.stopping:
                    return
                log.exception("rollout driver: tick failed")

    def tick(self) -> None:
        with self._lock:
            for doc in self.store.docs(ROLLOUT):
                if doc["state"] == ro.RUNNING:
                    self._step(doc)

    def _step(self, doc: dict) -> None:
        now = now_ms()
        plan = ro.Plan(**doc["plan"])
        results = self.store.load_results(doc["model"], doc["version"])
        reached = [n for w in doc["waves"][:doc["wave"] + 1] for n in w]
        changed = False
        for n in reached:
            if doc["edges"].get(n) == "queued":
                continue
            state = results.get(n)
            new = "applied" if state == "applied" else ("failed" if state and state.startswith("failed") else
                                                        "directed")
            if doc["edges"].get(n) != new:
                doc["edges"][n] = new
                changed = True
        failed = {n: results[n] for n in reached if doc["edges"][n] == "failed"}
        if failed:
            return self._finish(doc, ro.ROLLED_BACK, f"activation failed on {sorted(failed)}", rollback=True,
                                evidence={"failed": failed})
        verdict, evidence = self._gates(doc, plan, [n for n in reached if doc["edges"][n] == "applied"], now)
        if verdict is False:
            return self._finish(doc, ro.ROLLED_BACK, "gate failed: " + "; ".join(evidence["failed"]), rollback=True,
                                evidence=evidence)
        changed = self._release_queued(doc) or changed
        connected = self.core.hub.connected()
        waiting = [n for n in doc["waves"][doc["wave"]]
                   if doc["edges"][n] == "queued" or (doc["edges"][n] == "directed" and n in connected)]
        canary_waits = doc["wave"] == 0 and not any(doc["edges"][n] == "applied" for n in doc["waves"][0])
        if not waiting and not canary_waits:  # offline edges never block a wave (they catch up), but the
            if not doc["baked_since_ms"]:     # canary must have at least one edge that took the version
                doc["baked_since_ms"] = now
                changed = True
            elif now - doc["baked_since_ms"] < plan.bake_ms:
                pass
            elif evidence.get("waiting"):  # baked, but the accuracy gate waits for labels (bounded in time)
                if doc.get("waiting_wave") != doc["wave"]:
                    doc["waiting_wave"] = doc["wave"]
                    ro.decide(doc, now, "waiting", {"wave": doc["wave"], "accuracy": evidence["accuracy"]})
                    changed = True
            else:
                ro.decide(doc, now, "wave_passed", {"wave": doc["wave"], "gates": evidence,
                                                    "offline": [n for n in doc["waves"][doc["wave"]]
                                                                if doc["edges"][n] == "directed"]})
                if doc["wave"] + 1 >= len(doc["waves"]):
                    doc["state"], doc["reason"] = ro.DONE, "every wave passed its gates"
                    ro.decide(doc, now, "done", {})
                else:
                    self._next_wave(doc)
                changed = True
        if changed:
            self._save(doc)

    def _gates(self, doc: dict, plan: ro.Plan, applied: list[str], now: int):
        new, champion, psis = [], [], []
        for n in self.store.nodes():
            for s in n.last_status.get("serving", []):
                if s.get("model") != doc["model"]:
                    continue
                if s.get("version") == doc["version"] and n.node_id in applied:
                    new.append(s)
                elif s.get("version") == doc["previous"]:
                    champion.append(s)
            if n.node_id in applied and n.last_status.get("max_psi") is not None:
                psis.append(float(n.last_status["max_psi"]))
        if not doc["previous"]:  # a first version: no champion to be less accurate than
            return ro.check_gates(plan, new, champion, psis, None)
        correct, labelled, first = self.accuracy_counts(doc["model"], doc["version"], doc["created_ms"])
        # the champion over the same span: its requests from the new version's first labelled one on
        champion_counts = self.accuracy_counts(doc["model"], doc["previous"], doc["created_ms"], first)[:2]
        paired = self.paired_counts(doc) if labelled else None
        accuracy = ro.accuracy_gate(plan, (correct, labelled), champion_counts, now - doc["wave_started_ms"],
                                    paired)
        return ro.check_gates(plan, new, champion, psis, accuracy)

    def accuracy_counts(self, model: str, version: int, since_ms: int, from_event_ms: int = 0) -> tuple[int, int, int]:
        """(correct, labelled, first event ms) of ``version``'s labelled samples received since ``since_ms``
        whose event time is at least ``from_event_ms``; correct: the prediction matches the label (argmax of
        the first output for several classes, >= 0.5 for one score)."""
        if not version:
            return 0, 0, 0
        hits = total = 0
        first = 0
        for payload, label in self.store.labelled_payloads(model, version, since_ms):
            sample = mesh_pb2.Sample.FromString(payload)
            if not sample.outputs or sample.timestamp_ms < from_event_ms:
                continue
            predicted = _predicted(sample.outputs[0])
            if predicted is None:
                continue
            hits += predicted == label
            total += 1
            first = sample.timestamp_ms if not first else min(first, sample.timestamp_ms)
        return int(hits), total, first

    def paired_counts(self, doc: dict) -> tuple[int, int, int] | None:
        """The champion replayed on the new version's labelled requests (the vectors that version saw):
        (pairs, champion right where new wrong, new right where champion wrong); None when it cannot run."""
        from edgeloop.ct.evaluation import predict

        from .ct_link import decode_sample

        key = doc["rollout_id"]
        replay = self._replays.get(key)
        if replay is None:
            champion = next((p for p in self.store.published_models() if p.model == doc["model"]
                             and p.version == doc["previous"]), None)
            if champion is None:
                return None
            try:
                data = self.core.artifacts.read(champion.sha256, 0, champion.size)
                input_name = _single_input(data)
            except Exception as exc:  # noqa: BLE001 - a champion the coordinator cannot replay: no pairs
                log.info("rollout %s: the champion is not replayed (%s)", key, str(exc)[:200])
                input_name, data = None, b""
            replay = self._replays[key] = {"model": data, "input": input_name, "seen": {}}
            while len(self._replays) > 16:  # rollouts run one at a time per model: keep the newest few
                self._replays.pop(next(iter(self._replays)))
        if replay["input"] is None:
            return None
        seen: dict = replay["seen"]
        todo, rows = [], []
        for payload, label in self.store.labelled_payloads(doc["model"], doc["version"], doc["created_ms"]):
            sample = mesh_pb2.Sample.FromString(payload)
            if sample.sample_id in seen or not sample.outputs:
                continue
            new_right = _predicted(sample.outputs[0])
            if new_right is None:
                continue
            try:
                x = np.asarray(decode_sample(payload, replay["input"]), np.float32).reshape(1, -1)
            except ValueError:
                continue
            todo.append((sample.sample_id, new_right == label, label))
            rows.append(x)
        if rows:
            try:
                labels = predict(replay["model"], np.concatenate(rows), what="champion").label
            except Exception as exc:  # noqa: BLE001 - shape or output the champion does not take: no pairs
                log.info("rollout %s: the champion is not replayed (%s)", key, str(exc)[:200])
                replay["input"] = None
                return None
            for (sid, new_right, label), champ in zip(todo, labels):
                seen[sid] = (bool(new_right), float(champ) == label)
        pairs = list(seen.values())
        return (len(pairs), sum(1 for n, c in pairs if c and not n), sum(1 for n, c in pairs if n and not c))

    def _next_wave(self, doc: dict) -> None:
        doc["wave"] += 1
        doc["wave_started_ms"], doc["baked_since_ms"] = now_ms(), 0
        wave = doc["waves"][doc["wave"]] if doc["wave"] < len(doc["waves"]) else []
        ro.decide(doc, now_ms(), "wave_started", {"wave": doc["wave"], "edges": wave})
        published = next((p for p in self.store.published_models() if p.model == doc["model"]
                          and p.version == doc["version"]), None)
        zones = self._zones()
        seeding: set[str] = set()
        held = self._zones_holding(doc, zones)
        for n in wave:
            zone = zones.get(n, "")
            if zone not in held and zone in seeding:
                doc["edges"][n] = "queued"  # waits for its zone's first edge, then fetches from that peer
                continue
            seeding.add(zone)
            self._direct(doc, published, n)
        if not wave:
            doc["state"], doc["reason"] = ro.DONE, "no edges to update"
        self.core.hub.notify()

    def _direct(self, doc: dict, published, node_id: str) -> None:
        doc["edges"][node_id] = "directed"
        payload = self.core.load_payload(published, node_id, rollout_id=doc["rollout_id"])
        self.store.add_directive(node_id, "load", payload, now_ms(), doc["model"], doc["version"])

    def _zones_holding(self, doc: dict, zones: dict) -> set[str]:
        return {zones.get(n, "") for n, st in doc["edges"].items() if st == "applied"}

    def _release_queued(self, doc: dict) -> bool:
        """Direct queued edges once their zone holds the version (or its seed is offline)."""
        queued = [n for n in doc["waves"][doc["wave"]] if doc["edges"].get(n) == "queued"]
        if not queued:
            return False
        zones = self._zones()
        held = self._zones_holding(doc, zones)
        connected = self.core.hub.connected()
        seeds = {zones.get(n, "") for n in doc["waves"][doc["wave"]]
                 if doc["edges"][n] == "directed" and n in connected}
        published = next(p for p in self.store.published_models() if p.model == doc["model"]
                         and p.version == doc["version"])
        released = False
        for n in queued:
            zone = zones.get(n, "")
            if zone in held or zone not in seeds:
                self._direct(doc, published, n)
                released = True
        if released:
            self.core.hub.notify()
        return released

    def _finish(self, doc: dict, state: str, reason: str, rollback: bool, evidence: dict | None = None) -> None:
        now = now_ms()
        doc["state"], doc["reason"] = state, reason
        rolled = []
        if rollback:
            for n, st in doc["edges"].items():
                if st == "queued":
                    doc["edges"][n] = "skipped"
                elif st in ("directed", "applied", "failed"):
                    to = doc.get("previous_by_edge", {}).get(n) or doc["previous"]
                    if to:
                        payload = mesh_pb2.RollbackModel(
                            model=doc["model"], to_version=to, rollout_id=doc["rollout_id"],
                            signed_json=self.rollback_statement(doc["model"], to, doc["rollout_id"]))
                        self.store.add_directive(n, "rollback", payload.SerializeToString(), now, doc["model"], to)
                    doc["edges"][n] = "rolled_back"
                    rolled.append(n)
            self.core.hub.notify()
        doc["rolled_back"] = rollback  # the edges were sent back to the previous version
        ro.decide(doc, now, state, {"reason": reason, "rolled_back": rolled, **(evidence or {})})
        log.warning("rollout %s: %s (%s); rolled back: %s", doc["rollout_id"], state, reason, rolled or "none")
        self._save(doc)
        for listener in self.on_finish:
            try:
                listener(dict(doc))
            except Exception:  # a listener never stops the driver
                log.exception("rollout %s: a finish listener failed", doc["rollout_id"])

    def _save(self, doc: dict) -> None:
        self.store.put_doc(ROLLOUT, doc["rollout_id"], doc, now_ms())
