"""When to retrain: schedule, volume, drift, performance and manual triggers, as pure decision logic.

The engine holds only counters and timestamps; the clock is passed in (``now``, seconds) and so is
the number of runs in progress, so the coordinator can replay and test every decision.  Each kind
has its own cooldown; all share the limit on concurrent runs.  A decision fires at most one run:
its kind is the most urgent one that is ready (manual, performance, drift, volume, schedule), and
its evidence lists every reason that was ready, in words a person can act on.  A trigger held back
by a cooldown or the concurrency limit is reported with why, and fires later if still ready.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .detectors import Detection
from .drift import MonitorResult
from .performance import Metric, judge

__all__ = ["TriggerPolicy", "TriggerFiring", "TriggerHold", "TriggerDecision", "TriggerEngine", "KINDS"]

KINDS = ("manual", "performance", "drift", "volume", "schedule")  # most urgent first
DEFAULT_COOLDOWN_S = {"manual": 0.0, "performance": 900.0, "drift": 1800.0, "volume": 600.0, "schedule": 0.0}
MAX_REASON = 500
MAX_STREAK_KEYS = 100_000


def _cut(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dur(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


@dataclass(frozen=True)
class TriggerPolicy:
    """A model's trigger settings; None switches a kind off."""

    interval_s: float | None = None  # schedule: a run at least this often
    volume: int | None = None  # N new labelled samples since the last run
    drift_windows: int | None = 3  # K consecutive windows with the same monitor above threshold
    drift_monitors: tuple[str, ...] | None = None  # which monitors count (None: all)
    performance_metric: str = "accuracy"
    performance_floor: float | None = None  # absolute floor (ceiling for lower-is-better metrics)
    performance_margin: float | None = None  # X below the champion's validation score
    min_labelled: int = 200  # a performance window smaller than this is not judged
    cooldown_s: dict = field(default_factory=lambda: dict(DEFAULT_COOLDOWN_S))
    max_concurrent: int = 1

    def __post_init__(self):
        def bad(name, value, expected):
            raise ValueError(f"trigger policy {name} must be {expected}, got {_cut(value)}")

        if self.interval_s is not None and not (isinstance(self.interval_s, (int, float)) and self.interval_s > 0
                                                and math.isfinite(self.interval_s)):
            bad("interval_s", self.interval_s, "a finite number of seconds > 0 or None")
        for name in ("volume", "drift_windows", "min_labelled", "max_concurrent"):
            v = getattr(self, name)
            if (v is not None or name in ("min_labelled", "max_concurrent")) and (
                    isinstance(v, bool) or not isinstance(v, int) or v < 1):
                bad(name, v, "an int >= 1" + ("" if name in ("min_labelled", "max_concurrent") else " or None"))
        for name in ("performance_floor", "performance_margin"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                bad(name, v, "a finite number or None")
        if self.performance_margin is not None and self.performance_margin < 0:
            bad("performance_margin", self.performance_margin, "a number >= 0")
        if not isinstance(self.cooldown_s, dict) or any(k not in KINDS for k in self.cooldown_s):
            bad("cooldown_s", self.cooldown_s, f"a mapping from {KINDS} to seconds")
        for k, v in self.cooldown_s.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v >= 0 and math.isfinite(v)):
                bad(f"cooldown_s[{k!r}]", v, "a finite number of seconds >= 0")

    def cooldown(self, kind: str) -> float:
        return float(self.cooldown_s.get(kind, DEFAULT_COOLDOWN_S[kind]))


@dataclass(frozen=True)
class TriggerFiring:
    """A decision to start a training run, with the evidence for it."""

    model: str
    kind: str  # the most urgent ready kind
    kinds: tuple[str, ...]  # every kind that was ready (their counters reset together)
    at: float
    evidence: str


@dataclass(frozen=True)
class TriggerHold:
    """A trigger that was ready but held back, and why."""

    kind: str
    at: float
    reason: str


@dataclass(frozen=True)
class TriggerDecision:
    firing: TriggerFiring | None
    held: tuple[TriggerHold, ...]


class TriggerEngine:
    """The trigger state of one model: streaks, counters and last firing times."""

    def __init__(self, model: str, policy: TriggerPolicy, start: float):
        self.model = model
        self.policy = policy
        self._last_fired: dict[str, float] = {}
        self._last_run = float(start)  # the schedule counts from here
        self._labelled = 0
        self._streaks: dict[tuple[str, str, str], int] = {}
        self._latest: dict[tuple[str, str, str], MonitorResult] = {}
        self._perf: tuple[Metric, float | None] | None = None
        self._change: Detection | None = None
        self._manual: list[str] = []

    # ----------------------------------------------------------------------------- inputs

    def add_labelled(self, n: int) -> None:
        """Count newly labelled samples (for the volume trigger)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0 (new labelled samples), got {_cut(n)}")
        self._labelled += n

    def observe_window(self, results: list[MonitorResult]) -> None:
        """One monitoring window's results: a monitor's streak grows while it alarms, else resets.

        Call once per window with every result of that window (all slices); a monitor absent from
        a window (e.g. an edge that sent nothing) keeps its streak.
        """
        wanted = self.policy.drift_monitors
        for r in results:
            if not isinstance(r, MonitorResult):
                raise TypeError(f"results must be MonitorResult, got {type(r).__name__}")
            if wanted is not None and r.monitor not in wanted:
                continue
            key = (r.monitor, r.subject, r.slice_key)
            if key not in self._streaks and len(self._streaks) >= MAX_STREAK_KEYS:
                continue
            self._streaks[key] = self._streaks.get(key, 0) + 1 if r.alarm else 0
            self._latest[key] = r

    def observe_performance(self, metric: Metric, champion_score: float | None = None) -> None:
        """The latest labelled window's metric and the champion's validation score (if known)."""
        if not isinstance(metric, Metric):
            raise TypeError(f"metric must be a Metric, got {type(metric).__name__}")
        if metric.name != self.policy.performance_metric:
            raise ValueError(f"metric must be {self.policy.performance_metric!r} (the policy's), got {metric.name!r}")
        self._perf = (metric, champion_score)

    def observe_detection(self, detection: Detection) -> None:
        """A change found by ADWIN or Page–Hinkley on the error stream: a performance trigger."""
        if not isinstance(detection, Detection):
            raise TypeError(f"detection must be a Detection, got {type(detection).__name__}")
        self._change = detection

    @property
    def manual_pending(self) -> bool:
        """A person asked for a run that has not fired yet."""
        return bool(self._manual)

    def request_manual(self, reason: str) -> None:
        """A person asked for a run (``edgeloop retrain MODEL --reason TEXT``)."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"reason must be non-empty text, got {_cut(reason)}")
        text = " ".join(reason.split())
        self._manual.append(text[:MAX_REASON])

    # ---------------------------------------------------------------------------- decision

    def _ready(self, now: float) -> dict[str, str]:
        p = self.policy
        ready: dict[str, str] = {}
        if self._manual:
            ready["manual"] = "manual: " + "; ".join(f"requested: {r}" for r in self._manual)
        perf = []
        if self._perf is not None:
            text = self._performance_reason(*self._perf)
            if text:
                perf.append(text)
        if self._change is not None:
            perf.append(f"performance: the error stream changed: {self._change.evidence}")
        if perf:
            ready["performance"] = "; ".join(perf)
        if p.drift_windows is not None:
            text = self._drift_reason(p.drift_windows)
            if text:
                ready["drift"] = text
        if p.volume is not None and self._labelled >= p.volume:
            ready["volume"] = f"volume: {self._labelled} new labelled samples >= {p.volume} since the last run"
        if p.interval_s is not None and now - self._last_run >= p.interval_s:
            ready["schedule"] = (f"schedule: {_dur(now - self._last_run)} since the last run >= "
                                 f"interval {_dur(p.interval_s)}")
        return ready

    def _performance_reason(self, m: Metric, champion: float | None) -> str | None:
        p = self.policy
        r = judge(m, floor=p.performance_floor, champion_score=champion, margin=p.performance_margin,
                  min_rows=p.min_labelled)
        return f"performance: {r.evidence}" if r.alarm else None

    def _drift_reason(self, k: int) -> str | None:
        hot = [key for key, s in self._streaks.items() if s >= k]
        if not hot:
            return None
        hot.sort(key=lambda key: -(self._latest[key].value / self._latest[key].threshold
                                   if self._latest[key].threshold > 0 else math.inf))
        r = self._latest[hot[0]]
        head, _, tail = r.evidence.partition("); ")
        text = f"drift: {head}) for {self._streaks[hot[0]]} windows" + (f"; {tail}" if tail else "")
        if len(hot) > 1:
            others = ", ".join(f"{m} of '{s}' ({sl})" for m, s, sl in hot[1:4])
            more = f" and {len(hot) - 4} more" if len(hot) > 4 else ""
            text += f"; also above threshold for {k}+ windows: {others}{more}"
        return text

    def evaluate(self, now: float, running: int = 0, kinds: tuple[str, ...] = KINDS) -> TriggerDecision:
        """Decide at time ``now`` with ``running`` runs of this model in progress; only ``kinds`` may fire
        (the others keep their state: e.g. the regular kinds while a change run waits for rows)."""
        if not set(kinds) <= set(KINDS):
            raise ValueError(f"kinds must be among {KINDS}, got {_cut(kinds)}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time in seconds, got {now!r}")
        if isinstance(running, bool) or not isinstance(running, int) or running < 0:
            raise ValueError(f"running must be an int >= 0, got {_cut(running)}")
        ready = {k: v for k, v in self._ready(now).items() if k in kinds}
        held: list[TriggerHold] = []
        go: list[str] = []
        for kind in KINDS:
            if kind not in ready:
                continue
            last = self._last_fired.get(kind)
            cool = self.policy.cooldown(kind)
            if last is not None and now - last < cool:
                held.append(TriggerHold(kind, now, f"{ready[kind]} — held: cooldown, last {kind} run "
                                                   f"{_dur(now - last)} ago < {_dur(cool)}"))
                continue
            go.append(kind)
        if go and running >= self.policy.max_concurrent:
            held.extend(TriggerHold(kind, now, f"{ready[kind]} — held: {running} run(s) in progress, "
                                               f"limit {self.policy.max_concurrent}") for kind in go)
            go = []
        if not go:
            return TriggerDecision(None, tuple(held))
        firing = TriggerFiring(self.model, go[0], tuple(go), float(now), "; ".join(ready[k] for k in go))
        self._fired(go, now)
        return TriggerDecision(firing, tuple(held))

    def _fired(self, kinds: list[str], now: float) -> None:
        for kind in kinds:
            self._last_fired[kind] = now
        self._last_run = now
        if "manual" in kinds:
            self._manual.clear()
        self._labelled = 0  # any run trains on the new labels
        if "drift" in kinds:
            self._streaks.clear()
        if "performance" in kinds:
            self._perf = None
            self._change = None

    # ------------------------------------------------------------------------ persistence

    def to_state(self) -> dict:
        """Plain JSON-able state, so a restarted coordinator resumes streaks, counters and cooldowns."""
        return {
            "model": self.model,
            "last_fired": dict(self._last_fired),
            "last_run": self._last_run,
            "labelled": self._labelled,
            "streaks": [[*key, count] for key, count in sorted(self._streaks.items())],
            "latest": [asdict(r) for _, r in sorted(self._latest.items())],
            "manual": list(self._manual),
        }

    @classmethod
    def from_state(cls, policy: TriggerPolicy, state: dict) -> "TriggerEngine":
        """Rebuild from ``to_state()`` output (read back from the store: checked, bounded)."""
        def bad(key, value, expected):
            raise ValueError(f"trigger state {key} must be {expected}, got {_cut(value)}")

        if not isinstance(state, dict):
            bad("<document>", state, "a mapping")
        model = state.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= 128:
            bad("model", model, "a model name of 1..128 characters")
        last_run = state.get("last_run")
        if isinstance(last_run, bool) or not isinstance(last_run, (int, float)) or not math.isfinite(last_run):
            bad("last_run", last_run, "a finite time in seconds")
        engine = cls(model, policy, float(last_run))
        fired = state.get("last_fired", {})
        if not isinstance(fired, dict) or any(k not in KINDS or isinstance(v, bool) or not isinstance(v, (int, float))
                                              for k, v in fired.items()):
            bad("last_fired", fired, f"a mapping from {KINDS} to times")
        engine._last_fired = {k: float(v) for k, v in fired.items()}
        labelled = state.get("labelled", 0)
        if isinstance(labelled, bool) or not isinstance(labelled, int) or labelled < 0:
            bad("labelled", labelled, "an int >= 0")
        engine._labelled = labelled
        streaks = state.get("streaks", [])
        if not isinstance(streaks, list) or len(streaks) > MAX_STREAK_KEYS:
            bad("streaks", streaks, f"a list of at most {MAX_STREAK_KEYS} [monitor, subject, slice, count]")
        for item in streaks:
            if (not isinstance(item, list) or len(item) != 4 or not all(isinstance(v, str) for v in item[:3])
                    or isinstance(item[3], bool) or not isinstance(item[3], int) or item[3] < 0):
                bad("streaks[]", item, "[monitor, subject, slice, count >= 0]")
            engine._streaks[tuple(item[:3])] = item[3]
        latest = state.get("latest", [])
        if not isinstance(latest, list) or len(latest) > MAX_STREAK_KEYS:
            bad("latest", latest, "a list of monitor results")
        for doc in latest:
            try:
                r = MonitorResult(**doc)
            except TypeError:
                bad("latest[]", doc, "a monitor result's fields")
            engine._latest[(r.monitor, r.subject, r.slice_key)] = r
        if any(key not in engine._latest for key in engine._streaks):
            bad("latest", latest, "one result for every streak")
        manual = state.get("manual", [])
        if not isinstance(manual, list) or not all(isinstance(m, str) and 0 < len(m) <= MAX_REASON for m in manual):
            bad("manual", manual, f"a list of reasons of 1..{MAX_REASON} characters")
        engine._manual = list(manual)
        return engine
