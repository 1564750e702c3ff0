"""The continuous-training loop: watch each model's labelled traffic, decide, retrain, prove, publish.

Per model, each ``step(now)``: read the labels that arrived since the last step (joined to their
samples) as NumPy windows; the first ``reference_rows`` rows served by a new champion become its
reference profile (drift thresholds calibrated on it) and its reference accuracy; every later window
of ``monitor_window`` rows is checked per edge and fleet-wide (KS/Wasserstein per feature, PCA
reconstruction, accuracy with its interval, ADWIN on the 0/1 error stream) and fed to the triggers.
A firing runs validate -> train (warm start from the champion) -> evaluate on the newest holdout ->
infra-validate -> compress -> register -> publish (through the coordinator's one publication entry
point).  Every step is an execution in the lineage tables and every decision a sentence.

The loop knows the coordinator only through what it is given (store, artifacts, a ``publish``
callable, a payload decoder), so tests drive it step by step with an injected clock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from edgeloop import __version__
from edgeloop.features import FeatureDefinition

from .compression import CompressionPolicy, compress
from .detectors import Adwin
from .drift import FLEET, ReferenceProfile, build_reference, pca_drift, prediction_reference, window_drift
from .evaluation import EvaluationPolicy, evaluate, predict, time_split
from .infra import InfraPolicy, ServingSignature, SessionSettings, validate_infra
from .performance import classification_metrics, judge
from .trainers import LogisticRegressionTrainer, MLPTrainer, TrainingError, TrainingWindow, apply_window
from .triggers import DEFAULT_COOLDOWN_S, TriggerEngine, TriggerPolicy
from .validation import Batch, ValidationPolicy, signature_from_onnx, validate_batches
from .backfill import training_window
from .window import LabelledWindow, concat, decode_rows
from .window_chunks import fit_window

log = logging.getLogger("edgeloop.ct")

#: an edge's share of a window is monitored on its own when it has at least this many rows
MIN_SLICE_ROWS = 50
#: rows per validation batch (one edge's consecutive rows)
BATCH_ROWS = 100
#: the key of ``reference_stats`` in a manifest under which the loop keeps the model's training reference:
#: ``{"profile": <ReferenceProfile as JSON object>, "accuracy": <holdout accuracy>}``.  Edges read
#: only ``reference_stats`` entries named like their tensors, and ':' is in no tensor name the loop serves.
MANIFEST_PROFILE_KEY = "ct:profile"
#: a larger profile stays out of the manifest (manifests are capped at 1 MiB on both sides); the new
#: champion's reference is then built from served rows, as for a pushed model
MAX_MANIFEST_PROFILE_BYTES = 512 << 10
#: rolled-back versions remembered per model (older ones are long superseded)
MAX_ROLLED_BACK = 1000
#: trigger kinds that run on the newest window (not on the rows after a change)
REGULAR_KINDS = ("manual", "volume", "schedule")
#: a rollout that ended in these states, with its edges sent back (the driver's ``rolled_back`` flag)
ROLLED_BACK_STATES = ("rolled_back", "aborted")


class UnsupportedModel(ValueError):
    """A champion the loop cannot watch (e.g. not one float input [batch, features])."""


@dataclass
class ModelState:
    """What the loop holds for one model; the persistent part round-trips through ``ct_state``."""

    model: str
    champion_version: int = 0
    champion_sha: str = ""
    cursor: int = 0  # label rowid read up to (persisted once the reference is built)
    reference_json: str = ""
    champion_score: float | None = None
    trigger_state: dict | None = None
    rolled_back: list = field(default_factory=list)  # versions whose rollout ended rolled back: never champions
    hold_until: float = 0.0  # after a rollback, automatic triggers wait until then (``retry_after_rollback_s``)
    prior: dict | None = None  # the previous champion's version, sha and reference (restored when the fleet returns)
    # in memory only
    champion: bytes = b""
    features: dict | None = None  # the champion's feature definition (manifest): every version it begets carries it
    input_name: str = ""
    n_features: int = 0
    profile: ReferenceProfile | None = None
    prediction_profile: ReferenceProfile | None = None  # the champion's outputs on its reference rows
    engine: TriggerEngine | None = None
    adwin: Adwin | None = None
    buffer: list = field(default_factory=list)  # reference rows while bootstrapping / rows awaiting a window
    mem_cursor: int = 0
    change_from: int | None = None  # label id of the first row of the window where the current alarms began
    pending: object = None  # a firing waiting for enough rows after the change
    pending_trigger: int = 0  # its recorded trigger row
    latest: dict = field(default_factory=dict)  # (monitor, subject, slice) -> (value, threshold, alarm)

    def to_state(self) -> dict:
        return {"champion_version": self.champion_version, "champion_sha": self.champion_sha, "cursor": self.cursor,
                "reference": self.reference_json, "champion_score": self.champion_score,
                "triggers": self.engine.to_state() if self.engine else self.trigger_state,
                "rolled_back": sorted(self.rolled_back)[-MAX_ROLLED_BACK:], "hold_until": self.hold_until,
                "prior": self.prior}


@dataclass(frozen=True)
class RunOutcome:
    """What one run ended with: ``published`` (with the version), ``refused`` or ``stopped``, and why."""

    run_id: int
    state: str
    reason: str
    version: int = 0


class CTLoop:
    """The loop for every model the coordinator has published.

    ``publish(model, version, sha256, size, reason, **manifest_fields)`` is ``CoordinatorCore.publish``;
    ``decode(payload, input_name)`` turns a stored sample into one feature row; ``clock()`` gives seconds;
    ``manifest(model, version)`` (optional) gives a published version's manifest dict or None: when it
    carries the loop's reference (``MANIFEST_PROFILE_KEY``) the champion is monitored against it at once.
    ``rollouts()`` (optional) gives the rollout documents; with it the champion is what the fleet serves:
    the newest published version whose rollout did not end rolled back.  The rollout driver reports each
    finished rollout through ``rollout_ended(doc)``; a restarted loop reads the documents once instead.
    """

    def __init__(self, store, artifacts, publish, decode, config, clock=time.time,
                 settings: SessionSettings = SessionSettings(), on_results=None, manifest=None,
                 rollouts=None) -> None:
        check_trainer(config)
        self.manifest = manifest
        self.rollouts = rollouts
        self._ended: deque = deque(maxlen=10_000)  # finished rollouts reported by the driver, not yet handled
        self.store = store
        self.artifacts = artifacts
        self.publish = publish
        self.decode = decode
        self.config = config
        self.clock = clock
        self.settings = settings
        self.on_results = on_results
        self.models: dict[str, ModelState] = {}
        #: model -> (version, why) of champions the loop cannot watch (said once, not every step)
        self.unsupported: dict[str, tuple[int, str]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dask = None  # a DaskBackend when [training] backend = "dask"
        self.runs = 0

    # ------------------------------------------------------------------ thread
    def start(self) -> "CTLoop":
        """Start the loop thread (again after ``stop``: a coordinator that regains the lease restarts it)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the continuous-training loop is already running")
        self._stop.clear()
        with self._lock:  # as a fresh process would: state comes back from ct_state (another
            self.models.clear()  # coordinator may have run the loop since this one last did)
        self._thread = threading.Thread(target=self._run, name="edgeloop-ct-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._dask is not None:  # the LocalCluster this loop started, if any
            self._dask.close()

    def _trainer(self):
        """The configured trainer: built-in in this process, or data-parallel on Dask (``[training] backend``)."""
        c = self.config
        if c.backend != "dask":
            return _trainer(c)
        from .trainer_dask import backend_for, trainer_for

        if self._dask is None:
            self._dask = backend_for(c)  # started on the first run, stopped with the loop
        return trainer_for(c, self._dask)

    def _dask_window(self, st: ModelState):
        """A WorkerWindow when the Dask workers can read this model's window from the store; else None.

        The in-process path stays for a champion without a reference profile yet (it is built from the
        window's rows) and for one with a feature definition (its window may need a backfill, done here)."""
        c = self.config
        where = getattr(self.store, "worker_database", None)
        database = where() if where is not None else None
        if c.backend != "dask" or database is None or st.profile is None or st.features is not None:
            return None
        from .trainer_dask import DEFAULT_CHUNK_ROWS
        from .window_chunks import WorkerWindow

        self._trainer()  # starts the backend
        return WorkerWindow(self._dask.client(), database, st.model, st.input_name, int(st.n_features), self.decode,
                            int(getattr(c, "chunk_rows", DEFAULT_CHUNK_ROWS)))

    def _run(self) -> None:
        period = self.config.interval_ms / 1000.0
        while not self._stop.wait(period):
            try:
                self.step()
            except Exception:  # the loop never dies on one bad step; the next one retries
                if self._stop.is_set():
                    return
                log.exception("continuous-training step failed")

    # ------------------------------------------------------------------ policies
    def trigger_policy(self) -> TriggerPolicy:
        c = self.config
        cool = {k: (0.0 if k == "manual" else float(c.cooldown_s)) for k in DEFAULT_COOLDOWN_S}
        return TriggerPolicy(interval_s=c.schedule_s or None, volume=c.volume or None, drift_windows=c.drift_windows,
                             performance_metric="accuracy",
                             performance_floor=c.performance_floor if c.performance_floor >= 0 else None,
                             performance_margin=c.performance_margin, min_labelled=min(200, c.monitor_window),
                             cooldown_s=cool, max_concurrent=1)

    # ------------------------------------------------------------------ manual trigger
    def request_retrain(self, model: str, reason: str) -> None:
        """``edgeloop retrain MODEL --reason TEXT``: fires on the next step (manual has no cooldown)."""
        with self._lock:
            st = self._sync(model)
            if st is None:
                raise KeyError(f"model {model!r} has no published version to retrain")
            st.engine.request_manual(reason)

    # ------------------------------------------------------------------ step
    def step(self, now: float | None = None) -> list[RunOutcome]:
        """One pass over every published model; returns the runs it made."""
        now = self.clock() if now is None else now
        out = []
        with self._lock:
            self._handle_ended(now)
            for published in self.store.published_models(latest_only=True):
                if self._stop.is_set():
                    break
                if published.model in self.config.federated_models:  # trained in rounds on the edges
                    continue
                if self.unsupported.get(published.model, (0,))[0] == published.version:
                    continue
                try:
                    run = self._step_model(published.model, now)
                except UnsupportedModel as exc:
                    self.unsupported[published.model] = (published.version, str(exc))
                    log.warning("ct: model %s is not watched: %s", published.model, str(exc)[:300])
                    continue
                except (TrainingError, ValueError) as exc:
                    log.warning("ct: model %s: %s", published.model, str(exc)[:300])
                    continue
                if run is not None:
                    out.append(run)
        return out

    def _sync(self, model: str) -> ModelState | None:
        """The model's state, with the champion following what the fleet serves: the newest published
        version whose rollout did not end rolled back."""
        latest = [p for p in self.store.published_models() if p.model == model]
        if not latest:
            return None
        st = self._state(model)
        served = [p for p in latest if p.version not in st.rolled_back] or latest
        newest = max(served, key=lambda p: p.version)
        if st.champion_version != newest.version or not st.champion:
            changed = st.champion_version != newest.version
            self._adopt(st, newest, changed)
        return st

    def _state(self, model: str) -> ModelState:
        """The model's state: in memory, else from ``ct_state`` (plus rollbacks missed while stopped)."""
        st = self.models.get(model)
        if st is not None:
            return st
        st = ModelState(model)
        saved = self.store.ct_state(model)
        if saved:
            st.champion_version, st.champion_sha = saved["champion_version"], saved["champion_sha"]
            st.cursor, st.reference_json = saved["cursor"], saved["reference"]
            st.champion_score, st.trigger_state = saved["champion_score"], saved["triggers"]
            st.rolled_back = [int(v) for v in saved.get("rolled_back") or []]
            st.hold_until, st.prior = float(saved.get("hold_until") or 0.0), saved.get("prior")
        self.models[model] = st
        if self.rollouts is not None:  # rollouts that ended while this loop was not running
            now = self.clock()
            for doc in self.rollouts():
                if doc.get("model") == model:
                    self._mark_rolled_back(st, doc, now)
        return st

    # ------------------------------------------------------------------ rollouts that end rolled back
    def rollout_ended(self, doc: dict) -> None:
        """The rollout driver's hook for a finished rollout (its thread): handled on the loop's next step."""
        self._ended.append(doc)

    def _handle_ended(self, now: float) -> None:
        while self._ended:
            doc = self._ended.popleft()
            model = doc.get("model")
            if not isinstance(model, str) or not any(p.model == model for p in self.store.published_models()):
                continue
            if self._mark_rolled_back(self._state(model), doc, now):
                self._sync(model)  # the champion returns to the version the fleet serves

    def _mark_rolled_back(self, st: ModelState, doc: dict, now: float) -> bool:
        """Record a version whose rollout ended with its edges sent back; True when it is news."""
        version = int(doc.get("version") or 0)
        if doc.get("state") not in ROLLED_BACK_STATES or not doc.get("rolled_back", doc.get("state") == "rolled_back") \
                or not version or version in st.rolled_back:
            return False
        st.rolled_back = (st.rolled_back + [version])[-MAX_ROLLED_BACK:]
        retry = float(self.config.retry_after_rollback_s)
        st.hold_until = max(st.hold_until, now + retry)
        ms = int(now * 1000)
        model = st.model
        arts = [a for a in self.store.artifacts(model, "model", version) if a["sha256"] == doc.get("sha256")]
        run_id = int((arts[0]["properties"].get("run_id") or 0) if arts else 0)
        detail = {"version": version, "rollout_id": doc.get("rollout_id"), "state": doc.get("state"),
                  "reason": str(doc.get("reason", ""))[:500], "served_again": doc.get("previous"),
                  "retry_after_s": retry}
        self.store.add_execution(model, run_id, "rollout", "rolled_back", detail, ms)
        self.store.set_alias(model, "rolled_back", version, ms)
        self.store.add_event("ct_rolled_back", "", {"model": model, **detail}, ms)
        log.warning("ct: model %s version %d was rolled back (%s); it is never a champion again; automatic "
                    "triggers wait %.0f s", model, version, detail["reason"][:200], retry)
        self._save(st, now)
        return True

    def _adopt(self, st: ModelState, published, changed: bool) -> None:
        st.champion = self.artifacts.read(published.sha256, 0, published.size)
        specs = [s for s in signature_from_onnx(_onnx_model(st.champion)) if len(s.shape) == 2]
        if len(specs) != 1 or not specs[0].dtype.startswith("float") or specs[0].shape[1] < 1:
            raise UnsupportedModel(f"model {st.model!r} version {published.version}: the loop needs one float input "
                             f"[batch, features]; the model has {[(s.name, s.dtype, s.shape) for s in specs]}")
        st.input_name, st.n_features = specs[0].name, int(specs[0].shape[1])
        st.features = self._features_of(st.model, published.version)
        if st.features is not None and len(st.features["inputs"]) + len(st.features["features"]) != st.n_features:
            raise UnsupportedModel(f"model {st.model!r} version {published.version}: its feature definition has "
                                   f"{len(st.features['inputs']) + len(st.features['features'])} values; the "
                                   f"model's input {st.input_name!r} has {st.n_features}")
        policy = self.trigger_policy()
        now = self.clock()
        if changed:
            returning = st.prior if st.prior and st.prior.get("version") == published.version \
                and st.prior.get("sha") == published.sha256 else None
            if st.champion_version and st.reference_json:  # kept: the fleet may come back to it
                st.prior = {"version": st.champion_version, "sha": st.champion_sha, "reference": st.reference_json,
                            "score": st.champion_score}
            st.champion_version, st.champion_sha = published.version, published.sha256
            st.reference_json, st.profile, st.champion_score, st.trigger_state = "", None, None, None
            st.prediction_profile, st.pending, st.change_from, st.latest = None, None, None, {}
            st.pending_trigger = 0
            st.buffer = []
            st.engine = TriggerEngine(st.model, policy, now)
            if not self.store.artifacts(st.model, "model", published.version):
                aid = self.store.add_artifact(st.model, "model", {"source": "published outside the loop (push)"},
                                              int(now * 1000), published.version, published.sha256)
                self.store.add_execution(st.model, 0, "publication", "done",
                                         {"reason": "push: the first champion of this name, or a manual push"},
                                         int(now * 1000), outputs=[aid])
            self.store.set_alias(st.model, "champion", published.version, int(now * 1000))
            if returning is not None and self._restore_reference(st, returning, now):
                return
            if self._reference_from_manifest(st, published.version, now):
                return
            log.info("ct: model %s champion is version %d; its reference is the next %d labelled rows it serves",
                     st.model, published.version, self.config.reference_rows)
        else:
            st.profile = ReferenceProfile.from_json(st.reference_json) if st.reference_json else None
            st.engine = (TriggerEngine.from_state(policy, st.trigger_state) if st.trigger_state
                         else TriggerEngine(st.model, policy, now))
        st.adwin = Adwin()
        st.mem_cursor = st.cursor
        self._save(st, now)

    def _restore_reference(self, st: ModelState, prior: dict, now: float) -> bool:
        """Back to an earlier champion (its successor was rolled back): its own reference and accuracy."""
        try:
            profile = ReferenceProfile.from_json(prior["reference"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ct: model %s: the reference kept for version %s is unusable (%s); it is rebuilt",
                        st.model, prior.get("version"), str(exc)[:200])
            return False
        st.profile, st.reference_json = profile, prior["reference"]
        st.champion_score = prior.get("score")
        st.adwin = Adwin()
        st.mem_cursor = st.cursor
        self._save(st, now)
        self.store.add_event("ct_reference", "", {"model": st.model, "version": st.champion_version,
                                                  "source": "restored", "accuracy": st.champion_score},
                             int(now * 1000))
        log.info("ct: model %s champion is version %d again, with its reference", st.model, st.champion_version)
        return True

    def _features_of(self, model: str, version: int) -> dict | None:
        """The feature definition in a published version's manifest (normalised), or None without one."""
        doc = self.manifest(model, version) if self.manifest is not None else None
        raw = (doc or {}).get("features")
        if raw is None or raw == []:  # [] : a manifest signed before definitions travelled
            return None
        return FeatureDefinition.from_dict(raw).to_dict()  # DefinitionError (a ValueError) names the field

    def _reference_from_manifest(self, st: ModelState, version: int, now: float) -> bool:
        """Take the champion's reference (and reference accuracy) from its manifest, when it carries one."""
        doc = self.manifest(st.model, version) if self.manifest is not None else None
        entry = ((doc or {}).get("reference_stats") or {}).get(MANIFEST_PROFILE_KEY) \
            if isinstance((doc or {}).get("reference_stats"), dict) else None
        if not isinstance(entry, dict):
            return False
        import json

        try:
            profile = ReferenceProfile.from_json(json.dumps(entry.get("profile"), allow_nan=False))
            if len(profile.features) != st.n_features:
                raise ValueError(f"{len(profile.features)} features; the model has {st.n_features}")
            accuracy = entry.get("accuracy")
            if isinstance(accuracy, bool) or not (isinstance(accuracy, (int, float)) and 0.0 <= accuracy <= 1.0):
                raise ValueError(f"accuracy {str(accuracy)[:80]!r}; expected a number in [0, 1]")
        except (TypeError, ValueError) as exc:
            log.warning("ct: model %s version %d: manifest reference_stats[%r] ignored (%s); the reference is "
                        "built from served rows", st.model, version, MANIFEST_PROFILE_KEY, str(exc)[:200])
            return False
        st.profile, st.reference_json = profile, profile.to_json()
        st.champion_score = float(accuracy)
        st.adwin = Adwin()
        st.mem_cursor = st.cursor
        self._save(st, now)
        self.store.add_event("ct_reference", "", {"model": st.model, "version": version, "source": "manifest",
                                                  "accuracy": st.champion_score}, int(now * 1000))
        log.info("ct: model %s champion is version %d; its reference comes from its manifest", st.model, version)
        return True

    def _save(self, st: ModelState, now: float) -> None:
        self.store.set_ct_state(st.model, st.to_state(), int(now * 1000))

    def _step_model(self, model: str, now: float) -> RunOutcome | None:
        st = self._sync(model)
        if st is None:
            return None
        rows = self.store.labelled_since(model, st.mem_cursor, self.config.max_read_rows)
        if rows:
            st.mem_cursor = rows[-1][0]
            win = decode_rows(rows, self.decode, st.input_name, st.n_features)
            if win.skipped:
                log.warning("ct: model %s: %d labelled rows skipped: %s", model, win.skipped,
                            "; ".join(win.skip_reasons))
            if st.profile is None:
                self._bootstrap(st, win, now)
            else:
                st.buffer.append(win)
                self._monitor(st, now)
        if now < st.hold_until and not st.engine.manual_pending:
            if rows:  # after a rollback: monitoring goes on, automatic runs wait for the cool-down
                self._save(st, now)
            return None
        if st.pending is not None:
            outcome = self._run_when_ready(st, st.pending, now)
            if outcome is not None or st.pending is None:
                return outcome
            return self._run_due_instead(st, now)
        decision = st.engine.evaluate(now, 0)
        for hold in decision.held:
            log.info("ct: model %s trigger held: %s", model, hold.reason[:300])
        if decision.firing is None:
            if rows:
                self._save(st, now)
            return None
        return self._run_when_ready(st, decision.firing, now)

    def _run_due_instead(self, st: ModelState, now: float) -> RunOutcome | None:
        """While a drift/performance run waits for rows after the change, a due volume, schedule or manual
        trigger still runs (on the newest window): a pending change must not starve the regular retrains."""
        firing = st.engine.evaluate(now, 0, kinds=REGULAR_KINDS).firing
        if firing is None:
            return None
        waiting, waiting_kind = st.pending_trigger, st.pending.kind
        st.pending, st.pending_trigger = None, 0
        if waiting:
            self.store.set_trigger_outcome(waiting, 0, f"superseded: a {firing.kind} run on the newest rows came due "
                                                       f"while this one waited for rows after the change")
        st.change_from = None
        log.info("ct: model %s: a %s trigger came due while a %s run waited for rows after the change; it runs "
                 "on the newest rows", st.model, firing.kind, waiting_kind)
        return self.run(st, firing, now)

    def _change_rows(self) -> int:
        """Rows after a change that a drift/performance run waits for: ``min_change_rows``, and enough that
        the holdout (``holdout_fraction``, at least ``min_holdout_rows``) leaves as many to train on."""
        c = self.config
        return max(c.min_change_rows, 2 * c.min_holdout_rows)

    def _run_when_ready(self, st: ModelState, firing, now: float) -> RunOutcome | None:
        """Drift and performance runs train on the rows after the change only: wait until there are enough."""
        need = self._change_rows()
        if firing.kind in ("drift", "performance") and st.change_from is not None:
            have = self.store.labelled_count_since(st.model, st.change_from - 1)
            if have < need:
                if st.pending is None:
                    st.pending = firing
                    st.pending_trigger = self.store.add_trigger(
                        st.model, firing.kind, firing.kinds, int(firing.at * 1000), firing.evidence)
                    self.store.set_trigger_outcome(st.pending_trigger, 0, f"waiting for {need} labelled rows "
                                                                          f"after the change (have {have})")
                    log.info("ct: model %s %s trigger fired; waiting for %d labelled rows after the change "
                             "(have %d)", st.model, firing.kind, need, have)
                    self._save(st, now)
                return None
        st.pending = None
        return self.run(st, firing, now)

    # ------------------------------------------------------------------ monitoring
    def _bootstrap(self, st: ModelState, win: LabelledWindow, now: float) -> None:
        """Collect rows the champion served until there are ``reference_rows``; then profile them."""
        mine = win.take(win.versions == st.champion_version)
        st.buffer.append(mine)
        have = sum(len(w) for w in st.buffer)
        if have < self.config.reference_rows:
            return
        ref = concat(st.buffer, st.n_features)
        cut = self.config.reference_rows
        head, rest = ref.take(np.arange(cut)), ref.take(np.arange(cut, len(ref)))
        names = [f"{st.input_name}:{i}" for i in range(st.n_features)]
        st.profile = build_reference(head.X, names, window=self.config.monitor_window, seed=self.config.seed)
        st.reference_json = st.profile.to_json()
        p = predict(st.champion, head.X, self.settings, "champion")
        st.champion_score = float(p.score("accuracy", head.y))
        st.prediction_profile = _prediction_profile(p, self.config)
        st.buffer = [rest]
        st.cursor = int(head.label_ids[-1])  # after a restart the rows past the reference are monitored again
        self._save(st, now)
        self.store.add_event("ct_reference", "", {"model": st.model, "version": st.champion_version, "rows": cut,
                                                  "accuracy": st.champion_score}, int(now * 1000))
        log.info("ct: model %s version %d reference built from %d served rows (accuracy %.4f)", st.model,
                 st.champion_version, cut, st.champion_score)
        self._monitor(st, now)

    def _monitor(self, st: ModelState, now: float) -> None:
        w = self.config.monitor_window
        pending = concat(st.buffer, st.n_features)
        while len(pending) >= w:
            window, pending = pending.take(np.arange(w)), pending.take(np.arange(w, len(pending)))
            self._monitor_window(st, window)
            st.cursor = int(window.label_ids[-1])
        st.buffer = [pending]

    def _monitor_window(self, st: ModelState, window: LabelledWindow) -> None:
        results = list(window_drift(st.profile, window.X, FLEET))
        pca = pca_drift(st.profile, window.X, FLEET)
        if pca is not None:
            results.append(pca)
        for edge, n in sorted(window.rows_per_edge().items()):
            if n >= MIN_SLICE_ROWS:
                part = window.take(window.edges == edge)
                results.extend(window_drift(st.profile, part.X, _slice(edge)))
        pred = predict(st.champion, window.X, self.settings, "champion")
        if st.prediction_profile is None and st.profile is not None and pred.proba is not None:
            # after a restart: the reference rows' outputs are rebuilt from the stored reference sample
            st.prediction_profile = _prediction_profile(
                predict(st.champion, _reference_rows(st.profile), self.settings, "champion"), self.config)
        if st.prediction_profile is not None and pred.proba is not None:
            results.extend(window_drift(st.prediction_profile, pred.proba, FLEET))
        alarmed = any(r.alarm for r in results)
        if pred.proba is not None and pred.classes is not None and np.isin(window.y, pred.classes).all():
            idx = np.searchsorted(pred.classes, window.y)
            accuracy = classification_metrics(idx, pred.proba)["accuracy"]
            st.engine.observe_performance(accuracy, st.champion_score)
            p = st.engine.policy
            verdict = judge(accuracy, floor=p.performance_floor, champion_score=st.champion_score,
                            margin=p.performance_margin, min_rows=p.min_labelled)
            alarmed |= verdict.alarm
            st.latest[("accuracy", "performance", FLEET)] = (accuracy.value, verdict.threshold, verdict.alarm)
        errors = (np.asarray(pred.label).astype(np.float64) != window.y).astype(np.float64)
        detections = st.adwin.update_many(errors)
        if detections:
            st.engine.observe_detection(detections[-1])
            alarmed = True
            # ADWIN drops the part of its window before the change: what is left is the new regime
            cut = max(0, len(window) - min(st.adwin.width, len(window)))
            st.change_from = int(window.label_ids[cut])
        if alarmed and st.change_from is None:
            st.change_from = int(window.label_ids.min())
        elif not alarmed and st.pending is None:
            st.change_from = None  # the alarms stopped before anything fired
        st.engine.observe_window(results)
        st.engine.add_labelled(len(window))
        for r in results:
            st.latest[(r.monitor, r.subject, r.slice_key)] = (r.value, r.threshold, r.alarm)
        if self.on_results is not None:
            self.on_results(st.model, results, st.latest)

    # ------------------------------------------------------------------ a run
    def run(self, st: ModelState, firing, now: float) -> RunOutcome:
        """Validate, train, evaluate, infra-validate, compress, register and publish; each step recorded."""
        c = self.config
        ms = int(now * 1000)
        model = st.model
        self.runs += 1
        run_id = self.store.add_execution(model, 0, "run", "running", {
            "trigger": firing.kind, "kinds": list(firing.kinds), "evidence": firing.evidence,
            "code_version": __version__, "seed": c.seed, "trainer": c.trainer,
            "champion_version": st.champion_version}, ms)
        trigger_id, st.pending_trigger = st.pending_trigger, 0
        if not trigger_id:
            trigger_id = self.store.add_trigger(model, firing.kind, firing.kinds, ms, firing.evidence, run_id)
        log.info("ct: model %s run %d fired by %s", model, run_id, firing.evidence[:300])
        champion_art = self.store.artifacts(model, "model", st.champion_version)
        champion_ids = [champion_art[0]["id"]] if champion_art else []

        def end(state: str, reason: str, version: int = 0) -> RunOutcome:
            self.store.finish_execution(run_id, state, {"outcome": reason, "version": version})
            self.store.set_trigger_outcome(trigger_id, run_id, f"{state}: {reason}"[:2000])
            self._save(st, now)
            log.info("ct: model %s run %d %s: %s", model, run_id, state, reason[:300])
            return RunOutcome(run_id, state, reason, version)

        try:
            return self._run_steps(st, firing, now, run_id, champion_ids, end)
        except Exception as exc:  # a step that breaks ends the run, recorded; the champion keeps serving
            log.exception("ct: model %s run %d failed", model, run_id)
            return end("failed", f"{type(exc).__name__}: {str(exc)[:300]}")

    def _run_steps(self, st: ModelState, firing, now: float, run_id: int, champion_ids: list, end) -> RunOutcome:
        c = self.config
        ms = int(now * 1000)
        model = st.model

        # 1. the window and its validation
        after_change = firing.kind in ("drift", "performance") and st.change_from is not None
        limit = c.train_rows if c.window == "samples" else c.max_read_rows
        dask = self._dask_window(st)  # the Dask workers read, decode and validate the window (None: here)
        read = self.store.labelled_latest_meta if dask is not None else self.store.labelled_latest
        rows = read(model, limit, st.change_from - 1 if after_change else 0)
        if after_change and _n_rows(rows) < max(self._change_rows(), limit // 2):
            # too few after the change to fit on (half a window): the newest window, whose newest rows (the
            # holdout, where challenger and champion are compared) are the ones after the change
            rows = read(model, limit, 0)
            after_change = False
        if dask is not None:
            data = served = dask.window(rows)
        else:
            data = decode_rows(rows, self.decode, st.input_name, st.n_features)
            served = data
            data = training_window(self.store, self.manifest, getattr(self, "decode_logged", None), model,
                                   st.champion_version, rows, data, ms)  # a feature never served: backfilled
        #: workers (Dask) read the served vectors from the store; a backfilled window exists only here
        window_store = self.store if data is served else None
        scope = (f"the newest {_n_rows(rows)} labelled rows after the change (from label {st.change_from})"
                 if after_change else f"the newest {_n_rows(rows)} labelled rows")
        st.change_from = None
        if len(data) < 2 * c.min_clean_rows:
            return end("stopped", f"only {len(data)} labelled rows; a run needs >= {2 * c.min_clean_rows}")
        batches, index = _batches(data, st.input_name)
        profile = st.profile or build_reference(data.X, [f"{st.input_name}:{i}" for i in range(st.n_features)],
                                                window=max(10, min(c.monitor_window, len(data) // 2)),
                                                seed=c.seed)
        classes = predict(st.champion, data.X[:1] if dask is None else np.zeros((1, st.n_features), np.float32),
                          self.settings, "champion").classes
        label_domain = tuple(float(x) for x in classes) if classes is not None else None
        vr = (validate_batches if dask is None else partial(dask.validate, data=data, index=index))(
            batches, signature_from_onnx(_onnx_model(st.champion)), profile,
            ValidationPolicy(feature_input=st.input_name, label_domain=label_domain, min_clean_rows=c.min_clean_rows))
        if vr.quarantined:
            self.store.add_quarantine(model, run_id, [(q.batch_id, q.edge, q.rows, q.checks, q.reasons)
                                                      for q in vr.quarantined], ms)
        clean_ids = {b.batch_id for b in vr.clean}
        keep = np.concatenate([index[b.batch_id] for b in batches if b.batch_id in clean_ids]) if clean_ids \
            else np.zeros(0, np.int64)
        clean = data.take(np.sort(keep))
        window_art = self.store.add_artifact(model, "data_window", {
            "label_ids": [int(data.label_ids.min()), int(data.label_ids.max())],
            "rows": len(data), "rows_clean": len(clean), "rows_per_edge": data.rows_per_edge(),
            "clean_rows_per_edge": clean.rows_per_edge(),
            "quarantined": [{"batch_id": q.batch_id, "edge": q.edge, "rows": q.rows, "checks": list(q.checks)}
                            for q in vr.quarantined],
            "notes": [n.text for n in vr.notes][:20], "summary": vr.summary, "scope": scope}, ms)
        self.store.add_execution(model, run_id, "validation", "done" if vr.enough else "failed",
                                 {"summary": vr.summary}, ms, outputs=[window_art])
        if not vr.enough:
            return end("stopped", f"validation: {vr.summary}")

        # 2. training, warm-started from the champion, on everything older than the holdout
        dataset = clean.dataset([f"{st.input_name}:{i}" for i in range(st.n_features)] if dask is None else (),
                                hard_weight=c.hard_example_weight)  # (Dask: a placeholder X; rows by label id)
        try:
            window = _training_window(c)
            dataset = apply_window(dataset, window)
            train_all, holdout = time_split(dataset, holdout_rows(len(dataset), c))
            fit_train, fit_val = time_split(train_all, c.validation_fraction)
            if c.train_half_life:
                fit_train = apply_window(fit_train, TrainingWindow("all", None, c.train_half_life))
        except TrainingError as exc:
            return end("stopped", f"split: {exc}")
        if dask is not None:  # only the rows evaluated here (and the trainer's validation rows) come here
            holdout, fit_val = dask.materialise(holdout), dask.materialise(fit_val)
            train_all = fit_val  # the manifest's reference profile: from the newest training rows
        trainer = self._trainer()
        result = fit_window(trainer, fit_train, fit_val, store=window_store, decode=self.decode, model=model,
                            input_name=st.input_name, n_features=st.n_features, warm_start=st.champion, seed=c.seed)
        challenger = result.model
        chall_art = self.store.add_artifact(model, "model", {"role": "challenger", "report": result.report.to_dict()},
                                            ms, 0, _sha(challenger))
        self.store.add_execution(model, run_id, "training", "done", {
            "trainer": c.trainer, "seed": c.seed, "code_version": __version__, "rows": len(fit_train),
            "half_life_rows": c.train_half_life or None,
            "hard_examples": {"rows": clean.hard_rows, "weight": c.hard_example_weight},
            "window": {"kind": window.kind, "size": window.size, "rows": len(dataset)},
            "trainer_options": dict(c.trainer_options),
            "validation_rows": len(fit_val), "warm_start": result.report.warm_start_note,
            "validation": result.report.validation, "features": _features_note(st.features)}, ms,
            inputs=[window_art, *champion_ids], outputs=[chall_art])

        # 3. challenger vs champion on the newest holdout, per edge
        ev = evaluate(challenger, st.champion, holdout,
                      EvaluationPolicy(metric="accuracy", min_gain=c.min_gain,
                                       max_slice_regression=c.max_slice_regression,
                                       min_slice_samples=c.min_slice_samples,
                                       slice_by=("edge", *c.slice_features)), self.settings)
        eval_art = self.store.add_artifact(model, "evaluation", ev.to_dict(), ms)
        self.store.add_evaluation(model, run_id, ev.blessed, ev.reason, ev.metric, ev.challenger, ev.champion,
                                  ev.to_dict(), ms)
        self.store.add_execution(model, run_id, "evaluation", "blessed" if ev.blessed else "refused",
                                 {"reason": ev.reason}, ms, inputs=[chall_art, *champion_ids], outputs=[eval_art])
        if not ev.blessed:
            return end("refused", f"evaluation {ev.reason}")

        # 4. infra validation and compression (both against the serving signature and the champion's latency)
        signature = ServingSignature.of_model(st.champion, self.settings)
        infra_policy = InfraPolicy(max_latency_ratio=c.latency_ratio, runs=200, max_seconds=2.0)
        infra = validate_infra(challenger, holdout.X, signature, self.settings, st.champion, infra_policy)
        self.store.add_execution(model, run_id, "infra_validation", "passed" if infra.passed else "failed",
                                 infra.to_dict(), ms, inputs=[chall_art])
        if not infra.passed:
            return end("refused", "infra validation: " + "; ".join(infra.reasons))
        comp = compress(challenger, holdout, CompressionPolicy(metric_tolerance=c.compression_tolerance, seed=c.seed),
                        self.settings, st.champion, infra_policy, signature)
        comp_art = self.store.add_artifact(model, "compressed", comp.to_dict(), ms, 0,
                                           _sha(comp.model) if comp.model else "")
        self.store.add_execution(model, run_id, "compression", "done" if comp.model else "failed",
                                 {"chosen": comp.chosen, "reason": comp.reason}, ms, inputs=[chall_art],
                                 outputs=[comp_art])
        if comp.model is None:
            return end("refused", f"compression: {comp.reason}")

        # 5. register and publish (all edges at once; the delivery layer decides how)
        sha, size = self.artifacts.put_bytes(comp.model)
        version = max([p.version for p in self.store.published_models() if p.model == model] or [0]) + 1
        reason = f"ct run {run_id} ({firing.kind}): {ev.reason}"[:500]
        fields, reference_note = self._manifest_reference(st, train_all, ev)
        if st.features is not None:  # the champion's definition travels with every version it begets
            fields["features"] = st.features
        published, records = self.publish(model, version, sha, size, reason, **fields)
        version = published.version
        served = self.store.add_artifact(model, "model", {"role": "champion", "run_id": run_id,
                                                          "variant": comp.chosen, "trigger": firing.kind,
                                                          "features": _features_note(st.features)},
                                         ms, version, sha)
        directed = [getattr(r, "node_id", r) for r in records]  # node ids since staged rollouts (delivery)
        self.store.add_execution(model, run_id, "publication", "done",
                                 {"version": version, "directed_edges": directed,
                                  "reference": reference_note}, ms,
                                 inputs=[comp_art, eval_art], outputs=[served])
        self.store.set_alias(model, "challenger", version, ms)
        self.store.set_alias(model, "champion", version, ms)
        outcome = end("published", f"version {version} ({comp.chosen}, {size} bytes): {ev.reason}", version)
        self._sync(model)  # the new champion: its reference is built from the rows it serves
        return outcome

    def _manifest_reference(self, st: ModelState, train, ev) -> tuple[dict, str]:
        """``reference_stats`` for the challenger's manifest: its training rows' profile and holdout accuracy."""
        import json

        c = self.config
        try:
            profile = build_reference(train.X, [f"{st.input_name}:{i}" for i in range(st.n_features)],
                                      window=c.monitor_window, seed=c.seed)
        except ValueError as exc:
            return {}, f"no reference in the manifest: {str(exc)[:200]}"
        if ev.metric != "accuracy":
            return {}, f"no reference in the manifest: the evaluation metric is {ev.metric!r}, not accuracy"
        accuracy = float(ev.challenger)
        text = profile.to_json()
        if len(text) > MAX_MANIFEST_PROFILE_BYTES:
            return {}, (f"no reference in the manifest: the profile has {len(text)} bytes; at most "
                        f"{MAX_MANIFEST_PROFILE_BYTES} travel in a manifest")
        entry = {"profile": json.loads(text), "accuracy": accuracy}
        return ({"reference_stats": {MANIFEST_PROFILE_KEY: entry}},
                f"manifest reference_stats[{MANIFEST_PROFILE_KEY!r}] from {len(train)} training rows")

    # ------------------------------------------------------------------ promote / roll back
    def republish(self, model: str, version: int, action: str, reason: str = ""):
        """Publish the bytes of ``model`` ``version`` again as the newest version (versions only increase).

        ``action`` is "promote" or "rollback"; it goes through the same ``publish`` as every model, and
        the new version becomes the champion (its reference is rebuilt from what it serves).
        """
        with self._lock:
            source = [p for p in self.store.published_models() if p.model == model and p.version == version]
            if not source:
                raise KeyError(f"model {model!r} has no published version {version}")
            src = source[0]
            ms = int(self.clock() * 1000)
            text = f"{action} of version {version}" + (f": {reason}" if reason else "")
            run_id = self.store.add_execution(model, 0, "run", "running", {
                "trigger": action, "evidence": text, "code_version": __version__, "source_version": version}, ms)
            features = self._features_of(model, version)
            published, records = self.publish(model, 0, src.sha256, src.size, text[:500],
                                              **({"features": features} if features is not None else {}))
            art = self.store.add_artifact(model, "model", {"role": "champion", "run_id": run_id, "action": action,
                                                           "source_version": version,
                                                           "features": _features_note(features)},
                                          ms, published.version, src.sha256)
            self.store.add_execution(model, run_id, "publication", "done",
                                     {"version": published.version, "directed_edges": [getattr(r, "node_id", r) for r in records]},
                                     ms, outputs=[art])
            self.store.finish_execution(run_id, "published", {"outcome": text, "version": published.version})
            self.store.set_alias(model, "champion", published.version, ms)
            self._sync(model)
            return published

    def rollback(self, model: str, version: int = 0, reason: str = ""):
        """Back to ``version``, or (0) to the newest earlier version whose bytes differ from the champion's.

        The version rolled back from is marked rolled back (as a rollout the gates rolled back is), so it
        is never the base of a later run and automatic triggers wait ``retry_after_rollback_s``.
        """
        with self._lock:
            mine = sorted((p for p in self.store.published_models() if p.model == model), key=lambda p: p.version)
            if not mine:
                raise KeyError(f"model {model!r} has no published version")
            if version == 0:
                older = [p for p in mine[:-1] if p.sha256 != mine[-1].sha256]
                if not older:
                    raise KeyError(f"model {model!r} has no earlier version to roll back to")
                version = older[-1].version
            newest = mine[-1]
            published = self.republish(model, version, "rollback", reason)
            if newest.version != version and newest.sha256 != published.sha256:
                self._mark_rolled_back(self._state(model), {
                    "model": model, "version": newest.version, "sha256": newest.sha256, "state": "rolled_back",
                    "rolled_back": True, "previous": published.version, "rollout_id": "",
                    "reason": f"operator rollback to the bytes of version {version}"
                              + (f": {reason}" if reason else "")},
                    self.clock())
            return published

    # ------------------------------------------------------------------ views
    def latest(self) -> dict[str, dict]:
        """Per model: the latest monitor values ``{(monitor, subject, slice): (value, threshold, alarm)}``."""
        with self._lock:
            return {m: dict(st.latest) for m, st in self.models.items()}


def check_trainer(config) -> None:
    """A ``sklearn:<Name>`` trainer that cannot be built is a config error naming the file and key."""
    if not config.trainer.startswith("sklearn:"):
        return
    from edgeloop.config.errors import ConfigError

    from .trainer_sklearn import estimator_by_name  # lazily: scikit-learn is an extra

    try:
        estimator_by_name(config.trainer[len("sklearn:"):], dict(config.trainer_options))
    except ValueError as exc:
        raise ConfigError.for_value(config.source or "<training config>", "training.trainer", config.trainer,
                                    f"a scikit-learn estimator with an skl2onnx converter: {str(exc)[:300]}") from None


def _trainer(config):
    """The ``[training] trainer``: the built-in logistic regression or MLP, or ``sklearn:<EstimatorName>``."""
    if config.trainer.startswith("sklearn:"):
        from .trainer_sklearn import SklearnTrainer, estimator_by_name  # lazily: scikit-learn is an extra

        try:
            estimator = estimator_by_name(config.trainer[len("sklearn:"):], dict(config.trainer_options))
        except ValueError as exc:
            raise TrainingError(f"trainer {config.trainer!r}: {exc}") from None
        return SklearnTrainer(estimator)
    return LogisticRegressionTrainer() if config.trainer == "logistic" else MLPTrainer()


def holdout_rows(n: int, config) -> int:
    """The holdout's size for ``n`` rows: ``holdout_fraction`` of them, at least ``min_holdout_rows``, and
    never more than half (the challenger needs rows to train on)."""
    k = max(int(round(config.holdout_fraction * n)), int(config.min_holdout_rows))
    return max(1, min(k, n // 2))


def _n_rows(rows) -> int:
    """Rows read for a window: a list of rows, or (Dask) ``labelled_latest_meta``'s columns."""
    return len(rows["label_id"]) if isinstance(rows, dict) else len(rows)


def _training_window(config) -> TrainingWindow:
    """The ``[training] window`` (recency weights are applied to the fitting rows separately)."""
    if config.window == "days":
        return TrainingWindow("days", float(config.train_days))
    if config.window == "samples":
        return TrainingWindow("samples", int(config.train_rows))
    return TrainingWindow("all")


def _prediction_profile(pred, config) -> ReferenceProfile | None:
    """Prediction drift: a profile of the champion's class probabilities on its reference rows."""
    if pred.proba is None or pred.proba.shape[1] > 64:
        return None
    proba = np.asarray(pred.proba, np.float64)
    if len(proba) < 2 * config.monitor_window:
        return None
    labels = [f"{c:g}" if isinstance(c, (float, np.floating)) else str(c) for c in
              (pred.classes if pred.classes is not None else range(proba.shape[1]))]
    return prediction_reference(proba, labels, window=config.monitor_window, seed=config.seed)


def _features_note(features: dict | None) -> dict | None:
    """The feature definition as lineage records it: its digest (identity) and the definition itself."""
    if features is None:
        return None
    definition = FeatureDefinition.from_dict(features)
    return {"digest": definition.digest, "entity": definition.entity, "width": definition.width,
            "definition": definition.to_dict()}


def _reference_rows(profile: ReferenceProfile) -> np.ndarray:
    return np.stack([np.asarray(f.sample, np.float32) for f in profile.features], axis=1)


def _slice(edge: str) -> str:
    import re

    s = re.sub(r"[^A-Za-z0-9_.:\-]", "_", edge)[:128]
    return s if s and s[0].isalnum() else "e" + s[:127]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _onnx_model(data: bytes):
    import onnx

    return onnx.load_from_string(data)


def _batches(data: LabelledWindow, input_name: str) -> tuple[list[Batch], dict[str, np.ndarray]]:
    """One edge's consecutive rows (in time order) in batches of ``BATCH_ROWS``, as validation sees uploads."""
    order = np.argsort(data.timestamps_ms, kind="stable")
    batches, index = [], {}
    for edge in sorted(set(data.edges.tolist())):
        rows = order[data.edges[order] == edge]
        for start in range(0, len(rows), BATCH_ROWS):
            part = rows[start:start + BATCH_ROWS]
            bid = f"{_slice(edge)}.{int(data.label_ids[part].min())}-{int(data.label_ids[part].max())}"
            batches.append(Batch(bid, _slice(edge), {input_name: data.X[part]}, data.y[part],
                                 tuple(data.sample_ids[i] for i in part)))
            index[bid] = part
    return batches, index
