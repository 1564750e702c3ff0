"""The online head: a per-entity correction of the model's output, learned from the entity's late labels.

Why: the CT loop retrains in the cloud and a staged rollout takes seconds to reach the fleet; on a fast
stream (the demo replays Elec2's 30-minute rows hundreds per second) every model is hundreds of rows old
when it serves.  The entity's owner already receives each late label (the feature store's ``label_*``
features need them), so it can also keep the model's output honest between two rollouts: a softmax
regression over the standardised vector the model saw and the model's own log-probabilities, added to
those log-probabilities, one SGD step per label.  With no label yet its weights are zero and the served
output is exactly the model's.

Layout (float64, appended to the entity's feature record, so snapshots and hand-overs carry it): with
``D`` = vector width + classes ``K`` and ``P`` pending slots::

    [n, next, mean (D), m2 (D), W (K x D), b (K), P x (used, t, z (D))]

``n``/``mean``/``m2``: Welford moments of the labelled ``z`` (the standardisation); ``z`` = the vector
then the model's log-probabilities.  A served row waits in a pending slot (a ring of ``P``) for the
label of its event (matched by the event's timestamp); a label whose row left the ring is not learned.
Point in time: the head of a request has learned only from labels that arrived before it.
"""
from __future__ import annotations

import numpy as np

from .definition import OnlineSpec
from .errors import StateError

#: log-probabilities are taken of max(p, FLOOR): a model's hard 0 must not become -inf
FLOOR = 1e-7
_MAX_COUNT = float(2**53)
#: the largest magnitude a head block may hold.  A standardised value is at most 2 * bound / 1e-6 (the
#: standard-deviation floor), so a logit sums at most D (<= 576) terms of bound * 2e6 * bound: 1e150 let
#: a peer's head overflow to inf (and its record to NaN for good); 1e100 keeps that below 1e210
_MAX_MAGNITUDE = 1e100


class OnlineLayout:
    """Offsets of the head block for one definition (``width`` = the model's vector)."""

    def __init__(self, spec: OnlineSpec, width: int) -> None:
        self.spec = spec
        self.width = width
        self.K = len(spec.classes)
        self.D = width + self.K
        self.P = spec.pending
        D, K, P = self.D, self.K, self.P
        self.o_mean = 2
        self.o_m2 = self.o_mean + D
        self.o_w = self.o_m2 + D
        self.o_b = self.o_w + K * D
        self.o_pending = self.o_b + K
        self.slot = 2 + D
        self.length = self.o_pending + P * self.slot
        self.lr = spec.lr
        self.l2 = spec.l2
        self.class_index = {float(c): i for i, c in enumerate(spec.classes)}

    # -- views of one head block ---------------------------------------------------------------------
    def _parts(self, head: np.ndarray):
        D, K = self.D, self.K
        return (head[self.o_mean:self.o_m2], head[self.o_m2:self.o_w],
                head[self.o_w:self.o_b].reshape(K, D), head[self.o_b:self.o_pending],
                head[self.o_pending:].reshape(self.P, self.slot))

    def _scaled(self, head: np.ndarray, z: np.ndarray) -> np.ndarray:
        mean, m2 = head[self.o_mean:self.o_m2], head[self.o_m2:self.o_w]
        sd = np.sqrt(m2 / max(head[0], 1.0))
        sd[sd < 1e-6] = 1.0
        return (z - mean) / sd

    def logits(self, head: np.ndarray, vector: np.ndarray, proba: np.ndarray, t: float) -> np.ndarray:
        """The corrected log-probabilities for one served row; the row waits for its label in a pending slot."""
        logp = np.log(np.maximum(np.asarray(proba, np.float64), FLOOR))
        z = np.concatenate((np.asarray(vector, np.float64), logp))
        _mean, _m2, w, b, pending = self._parts(head)
        out = logp + w @ self._scaled(head, z) + b
        slot = pending[int(head[1])]
        slot[0] = 1.0
        slot[1] = t
        slot[2:] = z
        head[1] = (head[1] + 1) % self.P
        return out

    def learn(self, head: np.ndarray, t: float, label: float) -> bool:
        """One SGD step on the served row of the event at ``t`` with its label; False when none waits for it."""
        k = self.class_index.get(float(label))
        if k is None:
            return False
        mean, m2, w, b, pending = self._parts(head)
        hits = np.flatnonzero((pending[:, 0] == 1.0) & (pending[:, 1] == t))
        if hits.size == 0:
            return False
        slot = pending[hits[0]]
        z = slot[2:].copy()
        slot[:] = 0.0
        n = head[0] + 1.0
        head[0] = n
        delta = z - mean
        mean += delta / n
        m2 += delta * (z - mean)
        zs = self._scaled(head, z)
        f = z[self.width:] + w @ zs + b
        f -= f.max()
        p = np.exp(f)
        p /= p.sum()
        p[k] -= 1.0
        w -= self.lr * (np.outer(p, zs) + self.l2 * w)
        b -= self.lr * p
        return True

    def check(self, head: np.ndarray) -> None:
        """Raise ``StateError`` unless ``head`` is a consistent head block (untrusted: snapshots, peers)."""
        if head.shape[0] != self.length:
            raise StateError("record.online", f"{head.shape[0]} values", f"{self.length} values")
        n, nxt = head[0], head[1]
        if not (0 <= n <= _MAX_COUNT and n == int(n)):
            raise StateError("record.online.n", n, "a whole number >= 0")
        if not (0 <= nxt < self.P and nxt == int(nxt)):
            raise StateError("record.online.next", nxt, f"a whole number in 0..{self.P - 1}")
        if (head[self.o_m2:self.o_w] < 0).any():
            raise StateError("record.online.m2", "negative values", "sums of squares >= 0")
        used = head[self.o_pending:].reshape(self.P, self.slot)[:, 0]
        if not np.isin(used, (0.0, 1.0)).all():
            raise StateError("record.online.pending", used[:8].tolist(), "slot flags 0 or 1")
        # magnitudes no real head reaches: a peer's garbage must not overflow the next request
        if (np.abs(head) > _MAX_MAGNITUDE).any():
            raise StateError("record.online", f"values above {_MAX_MAGNITUDE:g}",
                             "weights and moments of a trained head")
