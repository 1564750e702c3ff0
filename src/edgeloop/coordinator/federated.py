"""Federated rounds on the coordinator: send the global weights, collect updates, aggregate, gate, publish.

A round has two phases, each a ``FederatedRound`` directive to every joined edge and an answer
(``SubmitUpdate``) from each: TRAIN (edges send ``theta_local - theta_global`` and their row count)
and EVALUATE (edges count the holdout rows, their own newest labelled rows, that the candidate and
the champion get right).  Updates are clipped and aggregated with the configured strategy
(``edgeloop.federated.aggregate``); the gate is the CT loop's (min_gain overall, no edge slice
regressing by more than max_slice_regression when it has min_slice_samples rows), on the summed
counts.  A blessed candidate goes through the CT loop's infra validation and compression step (its
serving variants scored on the edges' holdouts in the same EVALUATE phase: ``federated_compression``),
is registered with lineage and published through ``core.publish``, the one path every model takes to
the fleet (staged rollout included).  The coordinator never sees a raw row.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from edgeloop import __version__
from edgeloop.ct.compression import CompressionPolicy
from edgeloop.ct.infra import InfraPolicy, ServingSignature, SessionSettings, validate_infra
from edgeloop.ct.onnx_export import DenseModel, ModelFormatError, from_onnx, to_onnx
from edgeloop.federated.aggregate import aggregate
from edgeloop.federated.weights import WeightsError, from_bytes, pack, theta_size, to_bytes, unpack
from edgeloop.protocol import mesh_pb2

from . import validate as v
from .federated_compression import build_variants, choose, probe_rows, variant_counts
from .federated_triggers import FederatedTriggers
from .guards import now_ms

log = logging.getLogger("edgeloop.coordinator.federated")

KIND = "federated"
TRAIN, EVALUATE = mesh_pb2.FederatedRound.TRAIN, mesh_pb2.FederatedRound.EVALUATE
MAX_OPEN_ROUNDS = 64
MAX_VARIANTS = 8  # serving variants of one candidate (the edge's bound too)


class RoundError(Exception):
    """A round that cannot start or finish; the message says why."""


class _Round:
    def __init__(self, round_id: str, model: str, nodes: list[str], n_theta: int) -> None:
        self.round_id, self.model, self.nodes, self.n_theta = round_id, model, set(nodes), n_theta
        self.phase = TRAIN
        self.answers: dict[int, dict[str, mesh_pb2.WeightUpdate]] = {TRAIN: {}, EVALUATE: {}}
        self.changed = threading.Condition()


class FederatedRounds:
    """Runs the rounds of the models configured ``mode = "federated"``; ``submit`` takes edge answers."""

    def __init__(self, core, config) -> None:
        self.core = core
        self.config = config  # TrainingConfig
        self.models = frozenset(config.federated_models)
        self._rounds: dict[str, _Round] = {}
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # one round at a time
        #: bytes of the edges' answers received (updates and counts), for the benchmark and status
        self.bytes_received = 0
        #: the CT triggers (the CT loop's policy) start rounds; its thread runs where the CT loop runs
        self.triggers = FederatedTriggers(self, core.store, config, lambda: core.ct.trigger_policy())

    # ---------------------------------------------------------------- edges' answers
    def submit(self, update) -> mesh_pb2.WeightUpdateAck:
        v.name("node_id", update.node_id)
        v.name("model", update.model)
        v.ident("round_id", update.round_id)
        with self._lock:
            rnd = self._rounds.get(update.round_id)
        if rnd is None or rnd.model != update.model:
            return mesh_pb2.WeightUpdateAck(accepted=False, reason=f"round_id {v.cut(update.round_id)} of model "
                                            f"{v.cut(update.model)} is not open; expected a round in progress")
        if update.node_id not in rnd.nodes:
            return mesh_pb2.WeightUpdateAck(accepted=False, reason=f"node_id {v.cut(update.node_id)} was not asked "
                                            f"in round {rnd.round_id}")
        if update.phase not in (TRAIN, EVALUATE):
            raise v.bad("phase", update.phase, "TRAIN (0) or EVALUATE (1)")
        if update.phase == TRAIN:
            try:
                from_bytes("delta", update.delta, rnd.n_theta)
            except WeightsError as exc:
                raise v.bad("delta", f"{len(update.delta)} bytes", str(exc)) from None
        elif len(update.variant_correct) > MAX_VARIANTS:
            raise v.bad("variant_correct", f"{len(update.variant_correct)} counts", f"at most {MAX_VARIANTS}")
        elif update.candidate_correct > update.holdout_rows or update.champion_correct > update.holdout_rows:
            raise v.bad("candidate_correct", update.candidate_correct,
                        f"counts no larger than holdout_rows ({update.holdout_rows})")
        with rnd.changed:
            answers = rnd.answers[update.phase]
            if update.node_id not in answers:  # a re-send (the directive re-delivered) changes nothing
                answers[update.node_id] = update
                self.bytes_received += update.ByteSize()
            rnd.changed.notify_all()
        return mesh_pb2.WeightUpdateAck(accepted=True)

    # ---------------------------------------------------------------- a round
    def _champion(self, model: str) -> tuple[DenseModel, bytes, int]:
        mine = [p for p in self.core.store.published_models() if p.model == model]
        if not mine:
            raise RoundError(f"model {model!r} has no published version; a round starts from the global model")
        latest = max(mine, key=lambda p: p.version)
        data = self.core.artifacts.read(latest.sha256, 0, latest.size)
        try:
            dense = from_onnx(data)
        except ModelFormatError as exc:
            raise RoundError(f"model {model!r} version {latest.version}: {exc}") from None
        if dense.kind != "logistic" or len(dense.layers) != 1:
            raise RoundError(f"model {model!r} version {latest.version} is a {dense.kind!r} model; federated rounds "
                             f"train the built-in logistic model")
        return dense, data, latest.version

    def _phase(self, rnd: _Round, msg: mesh_pb2.FederatedRound, timeout_s: float) -> dict:
        stamp = now_ms()
        msg.phase = rnd.phase
        payload = msg.SerializeToString()
        for node in sorted(rnd.nodes):
            self.core.store.add_directive(node, KIND, payload, stamp, rnd.model, 0)
        self.core.hub.notify()
        deadline = time.monotonic() + timeout_s
        with rnd.changed:
            while len(rnd.answers[rnd.phase]) < len(rnd.nodes):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                rnd.changed.wait(min(left, 0.5))
            return dict(rnd.answers[rnd.phase])

    def _message(self, model: str, round_id: str, champion: DenseModel, theta: np.ndarray) -> mesh_pb2.FederatedRound:
        c = self.config
        d, k = int(champion.layers[0][0].shape[0]), int(champion.layers[0][0].shape[1])
        return mesh_pb2.FederatedRound(model=model, round_id=round_id, n_features=d, n_classes=k,
                                       mean=to_bytes(champion.mean), inv_std=to_bytes(champion.inv_std),
                                       classes=[float(x) for x in champion.classes], theta=to_bytes(theta),
                                       epochs=c.federated_epochs, lr=c.federated_lr, mu=c.federated_mu,
                                       batch_size=32, seed=c.seed, holdout_fraction=c.holdout_fraction,
                                       max_rows=c.train_rows)

    def probe(self, model: str) -> tuple[int, int, int]:
        """(champion version, holdout rows, rows it got right) over the edges' newest labelled rows.

        An EVALUATE phase alone (candidate = champion): the performance monitor of a federated model,
        whose labelled rows the coordinator never sees.  Waits up to ``federated_timeout_s``.
        """
        if model not in self.models:
            raise RoundError(f"model {model!r} is not federated; expected one of {sorted(self.models)}")
        with self._run_lock:
            champion, _data, version = self._champion(model)
            (w, b), = champion.layers
            theta = pack(w, b)
            round_id = f"{model}-probe-{now_ms()}-{os.urandom(3).hex()}"
            rnd = _Round(round_id, model, self.core.store.node_ids(), theta_size(int(w.shape[0]), int(w.shape[1])))
            rnd.phase = EVALUATE
            with self._lock:
                if len(self._rounds) >= MAX_OPEN_ROUNDS:
                    self._rounds.pop(next(iter(self._rounds)))
                self._rounds[round_id] = rnd
            try:
                msg = self._message(model, round_id, champion, theta)
                msg.champion_theta = msg.theta
                got = self._phase(rnd, msg, self.config.federated_timeout_s)
            finally:
                with self._lock:
                    self._rounds.pop(round_id, None)
        return version, sum(int(u.holdout_rows) for u in got.values()), sum(int(u.champion_correct)
                                                                            for u in got.values())

    def run_round(self, model: str, reason: str = "manual", strategy: str | None = None) -> dict:
        """One round for ``model``: train, aggregate, evaluate on the edges, and publish when blessed."""
        if model not in self.models:
            raise RoundError(f"model {model!r} is not federated; expected one of {sorted(self.models)} "
                             f"([training.models.NAME] mode = \"federated\")")
        with self._run_lock:
            return self._run(model, reason, strategy or self.config.federated_strategy)

    def _run(self, model: str, reason: str, strategy: str) -> dict:
        c = self.config
        store = self.core.store
        champion, champion_bytes, champion_version = self._champion(model)
        nodes = store.node_ids()
        if len(nodes) < c.federated_min_edges:
            raise RoundError(f"{len(nodes)} edge(s) joined; a round needs >= {c.federated_min_edges}")
        (w, b), = champion.layers
        d, k = int(w.shape[0]), int(w.shape[1])
        theta = pack(w, b)
        round_id = f"{model}-{now_ms()}-{os.urandom(3).hex()}"
        rnd = _Round(round_id, model, nodes, theta_size(d, k))
        with self._lock:
            if len(self._rounds) >= MAX_OPEN_ROUNDS:
                self._rounds.pop(next(iter(self._rounds)))
            self._rounds[round_id] = rnd
        ms = now_ms()
        run_id = store.add_execution(model, 0, "run", "running", {
            "trigger": "federated", "evidence": reason, "code_version": __version__, "round_id": round_id,
            "strategy": strategy, "champion_version": champion_version, "edges": nodes}, ms)
        msg = self._message(model, round_id, champion, theta)

        def end(state: str, text: str, version: int = 0, **extra) -> dict:
            store.finish_execution(run_id, state, {"outcome": text, "version": version, **extra})
            with self._lock:
                self._rounds.pop(round_id, None)
            log.info("federated: model %s round %s %s: %s", model, round_id, state, text[:300])
            return {"run_id": run_id, "round_id": round_id, "state": state, "reason": text, "version": version,
                    **extra}

        # 1. local training on every edge; aggregation
        got = self._phase(rnd, msg, c.federated_timeout_s)
        with_rows = {n: u for n, u in got.items() if u.train_rows > 0}
        if len(with_rows) < c.federated_min_edges:
            return end("stopped", f"{len(with_rows)} of {len(nodes)} edge(s) sent an update with rows; "
                                  f"needed >= {c.federated_min_edges}", answered=sorted(got))
        order = sorted(with_rows)
        deltas = [from_bytes("delta", with_rows[n].delta, rnd.n_theta) for n in order]
        counts = [with_rows[n].train_rows for n in order]
        agg = aggregate(strategy, deltas, counts, c.federated_clip_norm, c.federated_trim)
        cand_theta = theta + agg
        store.add_execution(model, run_id, "training", "done", {
            "federated": True, "strategy": strategy, "clip_norm": c.federated_clip_norm, "trim": c.federated_trim,
            "epochs": c.federated_epochs, "lr": c.federated_lr, "mu": c.federated_mu,
            "rows_per_edge": {n: int(with_rows[n].train_rows) for n in order},
            "update_norms": {n: float(np.linalg.norm(x)) for n, x in zip(order, deltas)},
            "aggregate_norm": float(np.linalg.norm(agg))}, ms)

        # 2. the candidate (and its serving variants) against the champion on each edge's own holdout
        cw, cb = unpack(cand_theta, d, k)
        candidate = DenseModel("logistic", champion.mean, champion.inv_std,
                               ((cw.astype(np.float32), cb.astype(np.float32)),), champion.classes)
        data = to_onnx(candidate, {"edgeloop.federated_round": round_id})
        policy = CompressionPolicy(metric_tolerance=c.compression_tolerance, seed=c.seed)
        built = build_variants(data, policy)
        rnd.phase = EVALUATE
        msg.theta = to_bytes(cand_theta)
        msg.champion_theta = to_bytes(theta)
        msg.variants.extend(b[1] for b in built if b[1] is not None)
        evals = self._phase(rnd, msg, c.federated_timeout_s)
        ev = gate(evals, c.min_gain, c.max_slice_regression, c.min_slice_samples)
        chall = store.add_artifact(model, "model", {"role": "challenger", "federated": True, "round_id": round_id},
                                   ms, 0, _sha(data))
        eval_art = self._record_evaluation(model, run_id, ev, ms, chall)
        if not ev["blessed"]:
            return end("refused", f"evaluation {ev['reason']}", evaluation=ev)

        # 3. infra validation and compression, as the CT loop does (the serving signature, the champion's latency)
        settings = SessionSettings()
        signature = ServingSignature.of_model(champion_bytes, settings)
        infra_policy = InfraPolicy(max_latency_ratio=c.latency_ratio, runs=200, max_seconds=2.0)
        probe = probe_rows(champion.mean, champion.inv_std, seed=c.seed)
        infra = validate_infra(data, probe, signature, settings, champion_bytes, infra_policy)
        store.add_execution(model, run_id, "infra_validation", "passed" if infra.passed else "failed",
                            {**infra.to_dict(), "rows": "probe rows from the champion's standardisation"}, ms,
                            inputs=[chall])
        if not infra.passed:
            return end("refused", "infra validation: " + "; ".join(infra.reasons), evaluation=ev)
        correct, n_rows = variant_counts(evals, sum(b[1] is not None for b in built))
        comp = choose(built, correct, n_rows, probe, policy, settings, champion_bytes, infra_policy, signature)
        comp_art = store.add_artifact(model, "compressed", comp.to_dict(), ms, 0, _sha(comp.model) if comp.model
                                      else "")
        store.add_execution(model, run_id, "compression", "done" if comp.model else "failed",
                            {"chosen": comp.chosen, "reason": comp.reason, "scored_on": "the edges' holdouts"}, ms,
                            inputs=[chall], outputs=[comp_art])
        if comp.model is None:
            return end("refused", f"compression: {comp.reason}", evaluation=ev)

        # 4. register and publish (the same path as every model)
        sha, size = self.core.artifacts.put_bytes(comp.model)
        published, records = self.core.publish(model, 0, sha, size, f"federated round {round_id}: {ev['reason']}"[:500])
        served = store.add_artifact(model, "model", {"role": "champion", "run_id": run_id, "variant": comp.chosen,
                                                     "trigger": "federated"}, ms, published.version, sha)
        store.add_execution(model, run_id, "publication", "done", {
            "version": published.version, "directed_edges": [getattr(r, "node_id", r) for r in records]}, ms,
            inputs=[comp_art, eval_art], outputs=[served])
        store.set_alias(model, "challenger", published.version, ms)
        store.set_alias(model, "champion", published.version, ms)
        return end("published", f"version {published.version} ({comp.chosen}, {size} bytes): {ev['reason']}",
                   published.version, evaluation=ev, compression=comp.to_dict())

    def _record_evaluation(self, model: str, run_id: int, ev: dict, ms: int, challenger: int) -> int:
        store = self.core.store
        art = store.add_artifact(model, "evaluation", ev, ms)
        store.add_evaluation(model, run_id, ev["blessed"], ev["reason"], "accuracy", ev["challenger"],
                             ev["champion"], ev, ms)
        store.add_execution(model, run_id, "evaluation", "blessed" if ev["blessed"] else "refused",
                            {"reason": ev["reason"], "federated": True}, ms, inputs=[challenger], outputs=[art])
        return art


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def gate(evals: dict, min_gain: float, max_slice_regression: float, min_slice_samples: int) -> dict:
    """Bless or refuse from per-edge holdout counts: overall gain > min_gain; no edge slice regressed too far."""
    n = sum(int(u.holdout_rows) for u in evals.values())
    if n == 0:
        return {"blessed": False, "reason": "refused: no edge reported holdout rows", "challenger": 0.0,
                "champion": None, "n_holdout": 0, "slices": []}
    chall = sum(int(u.candidate_correct) for u in evals.values()) / n
    champ = sum(int(u.champion_correct) for u in evals.values()) / n
    slices = []
    for node, u in sorted(evals.items()):
        if not u.holdout_rows:
            continue
        a, b = u.candidate_correct / u.holdout_rows, u.champion_correct / u.holdout_rows
        considered = u.holdout_rows >= min_slice_samples
        slices.append({"slice": "edge", "value": node, "n": int(u.holdout_rows), "challenger": a, "champion": b,
                       "gain": a - b, "considered": considered,
                       "regressed": considered and (b - a) > max_slice_regression})
    gain = chall - champ
    head = f"accuracy {chall:.4f} vs champion {champ:.4f} ({gain:+.4f}) on {n} holdout rows over {len(slices)} edges"
    worst = [s for s in slices if s["regressed"]]
    if gain <= 0 or gain < min_gain:
        reason = f"refused: {head}; needed a gain > 0 and >= {min_gain:g}"
    elif worst:
        s = min(worst, key=lambda s: s["gain"])
        reason = f"refused: {head}, but edge {s['value']} lost {-s['gain']:.4f} (> {max_slice_regression:g})"
    else:
        reason = f"blessed: {head}; no edge regressed by more than {max_slice_regression:g}"
    return {"blessed": reason.startswith("blessed"), "reason": reason, "challenger": chall, "champion": champ,
            "n_holdout": n, "slices": slices}


__all__ = ["FederatedRounds", "RoundError", "gate"]
