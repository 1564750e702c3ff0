"""Federated rounds started by the CT triggers: drift of the edges' statistics, accuracy, volume, schedule, manual.

The CT loop watches a model through its labelled rows on the coordinator; a federated model has
none (its rows stay on the edges), so here its triggers are fed from what the edges do send: the
feature histograms of their status reports and the labels.  Per edge and input feature of the
champion, the first ``reference_rows`` rows the edge summarised are the reference; every further
``monitor_window`` rows form a window, scored by PSI against the reference (the CT loop's fixed PSI
threshold).  Every ``monitor_window`` new labels, the champion's accuracy is measured on the edges'
newest labelled rows (``FederatedRounds.probe``: an EVALUATE phase, counts only) for the performance
trigger.  The CT loop's own ``TriggerEngine`` and policy decide (``drift_windows`` alarming
windows, accuracy below the floor or the margin, ``volume`` new labels, ``schedule_s``, manual;
cooldowns); a firing is recorded in the store's trigger table as the loop records its own, and it
runs a round whose outcome is written on it.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from edgeloop.ct.drift import FIXED_THRESHOLDS, MonitorResult
from edgeloop.ct.performance import Metric, wilson_interval
from edgeloop.ct.triggers import TriggerEngine
from edgeloop.kernels.stats import psi
from edgeloop.store.sqlite import BUCKET_MS  # statistics buckets: a champion's reads start one before it

log = logging.getLogger("edgeloop.coordinator.federated")

MAX_KEYS = 100_000  # (edge, tensor, feature) references kept per model
#: the edges' histograms are read at most this often (each read merges every stored bucket of the
#: champion's life, per edge), however short the step period
DRIFT_EVERY_S = 15.0


class _Watch:
    """One federated model's trigger state: its champion version, the engine and per-edge references."""

    def __init__(self, model: str, version: int, engine: TriggerEngine, labels: int) -> None:
        self.model, self.version, self.engine, self.labels = model, version, engine, labels
        self.refs: dict[tuple, tuple[tuple, np.ndarray]] = {}  # key -> (bin edges, reference counts)
        self.last: dict[tuple, np.ndarray] = {}  # key -> cumulative counts at the last window's end
        self.probed_at = labels  # labels stored when the champion's accuracy was last measured on the edges
        self.read_at = -float("inf")  # when the edges' histograms were last read
        self.since_ms = int(time.time() * 1000) - BUCKET_MS  # statistics of this champion are newer
        self.champion_score: float | None = None  # its accuracy at the first measurement of this version


class FederatedTriggers:
    """Watches every federated model and runs ``rounds.run_round`` when its triggers fire."""

    def __init__(self, rounds, store, config, policy, clock=time.time) -> None:
        self.rounds, self.store, self.config = rounds, store, config
        self.policy = policy  # () -> TriggerPolicy: the CT loop's, so both kinds of model follow one policy
        self.clock = clock
        self.watches: dict[str, _Watch] = {}
        self._manual: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ thread
    def start(self) -> "FederatedTriggers":
        if not self.rounds.models or (self._thread is not None and self._thread.is_alive()):
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgeloop-federated-triggers", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_ms / 1000.0):
            try:
                self.step()
            except Exception:  # never dies on one bad step; the next one retries
                log.exception("federated trigger step failed")

    def request(self, model: str, reason: str) -> None:
        """A manual trigger for ``model`` (decided, recorded and run at the next step)."""
        with self._lock:
            self._manual.setdefault(model, []).append(reason)

    # ------------------------------------------------------------------ decisions
    def step(self, now: float | None = None) -> list[dict]:
        """One pass over the federated models; returns the outcomes of the rounds it started."""
        now = self.clock() if now is None else now
        published = {p.model: p.version for p in self.store.published_models(latest_only=True)}
        labels = {m.model: m.labels for m in self.store.model_counts()}
        out = []
        for model in sorted(self.rounds.models):
            if model not in published:
                continue
            with self._lock:
                watch = self.watches.get(model)
                if watch is None:
                    watch = self.watches[model] = _Watch(model, published[model],
                                                         TriggerEngine(model, self.policy(), now),
                                                         labels.get(model, 0))
                for reason in self._manual.pop(model, []):
                    watch.engine.request_manual(reason)
            outcome = self._step_model(watch, published[model], labels.get(model, 0), now)
            if outcome is not None:
                out.append(outcome)
        return out

    def _step_model(self, watch: _Watch, version: int, labels: int, now: float) -> dict | None:
        if version != watch.version:  # a new champion: its statistics and accuracy start a new reference
            watch.version, watch.refs, watch.last, watch.champion_score = version, {}, {}, None
            watch.since_ms = int(time.time() * 1000) - BUCKET_MS
        if labels > watch.labels:
            watch.engine.add_labelled(labels - watch.labels)
        watch.labels = labels
        if now - watch.read_at >= DRIFT_EVERY_S:
            watch.read_at = now
            results = self._windows(watch)
            if results:
                watch.engine.observe_window(results)
        if labels - watch.probed_at >= self.config.monitor_window:
            watch.probed_at = labels
            self._performance(watch)
        decision = watch.engine.evaluate(now, 0)
        for hold in decision.held:
            log.info("federated: model %s trigger held: %s", watch.model, hold.reason[:300])
        firing = decision.firing
        if firing is None:
            return None
        trigger_id = self.store.add_trigger(watch.model, firing.kind, firing.kinds, int(now * 1000), firing.evidence)
        log.info("federated: model %s trigger %s fired: %s", watch.model, firing.kind, firing.evidence[:300])
        try:
            outcome = self.rounds.run_round(watch.model, f"{firing.kind}: {firing.evidence}"[:2000])
        except Exception as exc:  # e.g. too few edges joined: recorded on the trigger; the next firing retries
            self.store.set_trigger_outcome(trigger_id, 0, f"stopped: {type(exc).__name__}: {str(exc)[:500]}")
            return {"trigger_id": trigger_id, "kind": firing.kind, "state": "stopped", "reason": str(exc)[:500]}
        self.store.set_trigger_outcome(trigger_id, outcome["run_id"], f"{outcome['state']}: {outcome['reason']}"[:2000])
        return {"trigger_id": trigger_id, "kind": firing.kind, **outcome}

    def _performance(self, watch: _Watch) -> None:
        """The champion's accuracy on the edges' newest labelled rows (an EVALUATE-only round) to the engine.

        The first measurement of a version is its reference (``performance_margin`` below it alarms);
        ``performance_floor`` applies from the first one on.
        """
        try:
            version, n, right = self.rounds.probe(watch.model)
        except Exception as exc:  # e.g. no edge answered: no performance window this time
            log.warning("federated: model %s accuracy probe failed: %s", watch.model, str(exc)[:300])
            return
        if n == 0 or version != watch.version:
            return
        low, high = wilson_interval(right, n)
        metric = Metric("accuracy", right / n, low, high, n, True)
        watch.engine.observe_performance(metric, watch.champion_score)
        log.info("federated: model %s version %d: %s on the edges' newest labelled rows", watch.model, version,
                 metric.describe())
        if watch.champion_score is None:
            watch.champion_score = metric.value

    def _windows(self, watch: _Watch) -> list[MonitorResult]:
        """PSI of each edge's newest window of ``monitor_window`` rows per feature against its reference."""
        c = self.config
        threshold = FIXED_THRESHOLDS["psi"]
        results = []
        for node in self.store.node_ids():
            for row in self.store.feature_stats(watch.model, node, since_ms=watch.since_ms):
                if row.model_version != watch.version or row.is_output or not row.counts:
                    continue
                key = (node, row.tensor, row.feature)
                counts = np.asarray(row.counts, np.float64)
                ref = watch.refs.get(key)
                if ref is None or ref[0] != row.bin_edges or len(ref[1]) != len(counts):
                    if counts.sum() >= c.reference_rows and len(watch.refs) < MAX_KEYS:
                        watch.refs[key], watch.last[key] = (row.bin_edges, counts), counts
                    continue
                window = counts - watch.last[key]
                if window.sum() < c.monitor_window:
                    continue
                watch.last[key] = counts
                value = float(psi(ref[1], window))
                if not np.isfinite(value):
                    continue
                subject = f"{row.tensor}:{row.feature}"
                results.append(MonitorResult(
                    "psi", subject, node, value, threshold, "fixed", value > threshold, int(window.sum()),
                    f"PSI {value:.3f} {'>' if value > threshold else '<='} {threshold:g} on {subject} at edge "
                    f"{node} ({int(window.sum())} rows vs the {int(ref[1].sum())} reference rows the edge "
                    f"summarised for version {watch.version}); the edges' histograms, no raw rows"))
        return results


__all__ = ["FederatedTriggers"]
