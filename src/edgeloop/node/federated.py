"""Federated mode on the edge: a federated model's rows stay here, and rounds are trained here.

``LocalExamples`` (``local_examples``) keeps, per federated model, the rows this node served
(bounded, in SQLite beside the outbox) and joins the late labels to them, so the labelled window
never leaves the edge and outlives a restart.
``FederatedEdge`` carries out a ``FederatedRound`` directive: in a TRAIN round it trains the
global weights on the older part of its labelled rows and sends ``theta_local - theta_global``
with its row count; in an EVALUATE round it counts the holdout rows (its newest labelled rows,
never trained on) that the candidate, the champion and each serving variant of the candidate
(the compression step's ONNX models, run as this edge would serve them) get right.  Both answers go back over
``SubmitUpdate``, a call the edge opens.  The math is ``edgeloop.federated`` (shared with the cloud).
"""
from __future__ import annotations

import json
import logging

import numpy as np

from edgeloop.federated.local import LocalPlan, correct_count, local_update
from edgeloop.federated.weights import WeightsError, check_shape, from_bytes, theta_size, to_bytes
from edgeloop.protocol import mesh_pb2

from .local_examples import LocalExamples

log = logging.getLogger("edgeloop.node.federated")

FEDERATED_KEY = "federated.models"  # outbox meta: the federated models the coordinator named (kept over restarts)
MAX_EPOCHS = 100
MAX_VARIANTS = 8  # serving variants of a candidate scored in one EVALUATE round
LABEL_OUTPUT = "label"  # the built-in models' class-value output
CALL_TIMEOUT_S = 30.0


class RoundFailed(Exception):
    """A round this edge cannot carry out; the message (field, value, expectation) is reported."""


def _vector(field: str, data: bytes, n: int) -> np.ndarray:
    try:
        return from_bytes(field, data, n)
    except WeightsError as exc:
        raise RoundFailed(str(exc)) from None


def score_variants(msg, x: np.ndarray, y: np.ndarray) -> list[int]:
    """Holdout rows each serving variant of the candidate (ONNX, as the edges would serve it) gets right.

    A variant that does not load or run here scores 0 (logged): it cannot be chosen for this fleet.
    """
    from edgeloop.config import ModelConfig
    from edgeloop.serving.session import create_session

    if len(msg.variants) > MAX_VARIANTS:
        raise RoundFailed(f"variants: {len(msg.variants)}; expected at most {MAX_VARIANTS}")
    out = []
    for i, data in enumerate(msg.variants):
        if not len(y):
            out.append(0)
            continue
        try:
            session = create_session(bytes(data), ModelConfig(name=msg.model), f"variant {i} of round {msg.round_id}")
            label = session.run([LABEL_OUTPUT], {session.get_inputs()[0].name: np.asarray(x, np.float32)})[0]
            out.append(int((np.asarray(label, np.float64).reshape(-1) == y).sum()))
        except Exception as exc:  # onnxruntime raises its own types; the variant is simply not usable here
            log.warning("federated round %s: variant %d cannot be scored: %s", msg.round_id[:80], i, str(exc)[:200])
            out.append(0)
    return out


class FederatedEdge:
    """Answers the coordinator's federated rounds for one node (``node_id``) over ``channel``."""

    def __init__(self, node_id: str, examples: LocalExamples, channel, outbox=None) -> None:
        from edgeloop.protocol import mesh_pb2_grpc

        self.node_id = node_id
        self.examples = examples
        self.stub = mesh_pb2_grpc.CoordinatorStub(channel)
        self.outbox = outbox
        self.rounds = 0
        if outbox is not None:
            try:
                examples.set_models(json.loads(outbox.get_meta(FEDERATED_KEY, "[]") or "[]"))
            except ValueError:
                pass

    def set_models(self, names) -> None:
        """The coordinator's list of federated models (from Join); kept in the outbox for a restart."""
        names = sorted(set(names))
        self.examples.set_models(names)
        if self.outbox is not None:
            self.outbox.set_meta(FEDERATED_KEY, json.dumps(names))

    def answer(self, msg) -> mesh_pb2.WeightUpdate:
        """The WeightUpdate for one FederatedRound (raises RoundFailed on a malformed round)."""
        d, c = int(msg.n_features), int(msg.n_classes)
        try:
            check_shape(d, c)
        except WeightsError as exc:
            raise RoundFailed(str(exc)) from None
        if len(msg.classes) != c:
            raise RoundFailed(f"classes: {len(msg.classes)} values; expected n_classes = {c}")
        if not 0.0 < msg.holdout_fraction < 1.0:
            raise RoundFailed(f"holdout_fraction: {msg.holdout_fraction!r}; expected a fraction in (0, 1)")
        mean = _vector("mean", msg.mean, d)
        inv_std = _vector("inv_std", msg.inv_std, d)
        theta = _vector("theta", msg.theta, theta_size(d, c))
        x, y = self.examples.labelled(msg.model, int(msg.max_rows))
        if len(y) and x.shape[1] != d:
            raise RoundFailed(f"n_features: {d}; this edge's rows of model {msg.model!r} have {x.shape[1]}")
        classes = np.asarray(msg.classes, np.float64)
        known = np.isin(y, classes)
        x, y = x[known], y[known]
        lookup = {float(v): i for i, v in enumerate(classes)}
        idx = np.array([lookup[float(v)] for v in y], np.int64)
        n_hold = int(round(len(y) * msg.holdout_fraction))
        split = len(y) - n_hold
        reply = mesh_pb2.WeightUpdate(node_id=self.node_id, model=msg.model, round_id=msg.round_id,
                                      phase=msg.phase, train_rows=split, holdout_rows=n_hold)
        if msg.phase == mesh_pb2.FederatedRound.EVALUATE:
            champion = _vector("champion_theta", msg.champion_theta, theta_size(d, c))
            hx, hi = x[split:], idx[split:]
            reply.candidate_correct = correct_count(theta, hx, hi, mean, inv_std, c)
            reply.champion_correct = correct_count(champion, hx, hi, mean, inv_std, c)
            reply.variant_correct.extend(score_variants(msg, hx, classes[hi]))
            return reply
        if not 1 <= msg.epochs <= MAX_EPOCHS:
            raise RoundFailed(f"epochs: {msg.epochs}; expected 1..{MAX_EPOCHS}")
        if not (0.0 < msg.lr <= 10.0) or not (0.0 <= msg.mu <= 1e6):
            raise RoundFailed(f"lr {msg.lr!r} / mu {msg.mu!r}; expected 0 < lr <= 10 and 0 <= mu <= 1e6")
        plan = LocalPlan(epochs=int(msg.epochs), lr=float(msg.lr), batch_size=int(msg.batch_size or 32),
                         mu=float(msg.mu), seed=int(msg.seed))
        delta = local_update(theta, x[:split], idx[:split], mean, inv_std, c, plan)
        reply.delta = to_bytes(delta)
        return reply

    def run_round(self, msg) -> None:
        """Carry out one round and send the answer (grpc.RpcError propagates: the directive is retried)."""
        reply = self.answer(msg)
        ack = self.stub.SubmitUpdate(reply, timeout=CALL_TIMEOUT_S)
        self.rounds += 1
        log.info("federated round %s (%s) of model %s: %d train rows, %d holdout rows; %s", msg.round_id,
                 mesh_pb2.FederatedRound.Phase.Name(msg.phase), msg.model, reply.train_rows, reply.holdout_rows,
                 "accepted" if ack.accepted else f"refused: {ack.reason}")
        if not ack.accepted:
            raise RoundFailed(f"the coordinator refused the update: {ack.reason[:300]}")


__all__ = ["FederatedEdge", "LocalExamples", "RoundFailed"]
