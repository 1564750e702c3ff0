"""Change detectors for the 0/1 error stream of labelled predictions: ADWIN and Page–Hinkley.

Histogram monitors compare windows against a reference; these watch one stream and say *when*
it changed, so a rise in the error rate is caught within a few hundred labels even when no
input feature moved (concept drift).  Both are written here (no ``river`` dependency), take
single values or whole arrays, and report the sample index of each detection.

Defaults are set so that, on a Bernoulli error stream, a jump from 10% to 30% is detected within
~150 samples while 10,000 stationary samples give no alarm (tests/ct/test_detectors.py checks
both over several seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Detection", "Adwin", "PageHinkley"]


@dataclass(frozen=True)
class Detection:
    """One detected change: where in the stream, and why, in words."""

    detector: str
    index: int  # 0-based position in the stream of the sample that triggered it
    value: float  # the statistic that crossed its threshold
    threshold: float
    mean_before: float
    mean_after: float
    evidence: str


def _as_stream(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.argmax(~np.isfinite(arr)))
        raise ValueError(f"values must be finite, got {arr[bad]!r} at index {bad}")
    return arr


def _positive(name: str, value, integer: bool = False):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, bool) or not ok or not value > 0 or not math.isfinite(value):
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}")
    return value


class Adwin:
    """ADWIN (Bifet & Gavaldà 2007): an adaptive window that drops its older part when the two
    parts' means differ by more than a Hoeffding/Bernstein bound at confidence ``delta``.

    The window is kept as an array (bounded by ``max_window``) rather than ADWIN's exponential
    histogram, so a check tests every cut at multiples of ``clock`` samples in one vectorised
    pass.  The cut bound is MOA's/river's: eps = sqrt(2 m v dd) + 2/3 dd m with
    m = 1/(n0 - min_len + 1) + 1/(n1 - min_len + 1), v the window's variance and
    dd = ln(2 ln(n) / delta).  The window shrinks on any change; a detection is reported only
    when the newer part's mean is the larger one if ``direction="up"`` (an error rate rising),
    in either direction for "both".
    """

    name = "ADWIN"

    def __init__(self, delta: float = 0.002, clock: int = 16, min_len: int = 5, max_window: int = 20_000,
                 direction: str = "up"):
        self.delta = float(_positive("delta", delta))
        if not self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.clock = int(_positive("clock", clock, integer=True))
        self.min_len = int(_positive("min_len", min_len, integer=True))
        self.max_window = int(_positive("max_window", max_window, integer=True))
        if self.max_window < 4 * self.min_len:
            raise ValueError(f"max_window must be >= 4 * min_len ({4 * self.min_len}), got {max_window!r}")
        if direction not in ("up", "both"):
            raise ValueError(f"direction must be 'up' or 'both', got {direction!r}")
        self.direction = direction
        self._buf = np.empty(self.max_window, dtype=np.float64)
        self._cs = np.empty(self.max_window, dtype=np.float64)  # prefix sums of _buf
        self._cs2 = np.empty(self.max_window, dtype=np.float64)  # prefix sums of squares
        self._n = 0
        self._seen = 0
        self._since_check = 0
        self.detections: list[Detection] = []

    @property
    def width(self) -> int:
        """Samples in the current window."""
        return self._n

    @property
    def mean(self) -> float:
        return float(self._buf[: self._n].mean()) if self._n else float("nan")

    def update(self, value) -> Detection | None:
        """Add one sample; return a Detection if this sample completed a change."""
        found = self.update_many([value])
        return found[0] if found else None

    def update_many(self, values) -> list[Detection]:
        """Add samples in order; return the detections they caused (usually none)."""
        arr = _as_stream(values)
        out: list[Detection] = []
        pos = 0
        while pos < arr.size:
            take = min(arr.size - pos, self.clock - self._since_check)
            self._append(arr[pos: pos + take])
            pos += take
            self._seen += take
            self._since_check += take
            if self._since_check >= self.clock:
                self._since_check = 0
                det = self._check()
                if det is not None:
                    out.append(det)
                    self.detections.append(det)
        return out

    def _append(self, chunk: np.ndarray) -> None:
        overflow = self._n + chunk.size - self.max_window
        if overflow > 0:  # bounded memory: forget the oldest samples
            self._drop(overflow)
        lo, hi = self._n, self._n + chunk.size
        self._buf[lo:hi] = chunk
        base, base2 = (self._cs[lo - 1], self._cs2[lo - 1]) if lo else (0.0, 0.0)
        np.cumsum(chunk, out=self._cs[lo:hi])
        self._cs[lo:hi] += base
        np.cumsum(chunk * chunk, out=self._cs2[lo:hi])
        self._cs2[lo:hi] += base2
        self._n = hi

    def _drop(self, k: int) -> None:
        """Forget the oldest k samples (prefix sums re-based, so no rounding builds up)."""
        n = self._n
        self._buf[: n - k] = self._buf[k:n]
        self._n = n - k
        np.cumsum(self._buf[: self._n], out=self._cs[: self._n])
        np.cumsum(self._buf[: self._n] ** 2, out=self._cs2[: self._n])

    def _check(self) -> Detection | None:
        """Shrink the window while some cut splits it into parts with different means."""
        first = None
        while self._n >= 2 * self.min_len + self.clock:
            n = self._n
            cs = self._cs[:n]
            # cut after n0 samples: candidate n0 at multiples of clock counted from the newest end
            n1 = np.arange(self.clock, n - self.min_len + 1, self.clock)
            n1 = n1[n1 >= self.min_len]
            if n1.size == 0:
                break
            n0 = n - n1
            total = cs[-1]
            mu = total / n
            s0 = cs[n0 - 1]
            mu0 = s0 / n0
            mu1 = (total - s0) / n1
            var = max(float(self._cs2[n - 1] / n - mu * mu), 0.0)
            dd = math.log(2.0 * math.log(n) / self.delta)
            m = 1.0 / (n0 - self.min_len + 1) + 1.0 / (n1 - self.min_len + 1)
            eps = np.sqrt(2.0 * m * var * dd) + (2.0 / 3.0) * dd * m
            diff = np.abs(mu1 - mu0)
            over = np.nonzero(diff > eps)[0]
            if over.size == 0:
                break
            j = int(over[np.argmax(diff[over] - eps[over])])  # the clearest cut
            cut = int(n0[j])
            rising = mu1[j] > mu0[j]
            if first is None and (rising or self.direction == "both"):
                index = self._seen - 1
                first = Detection(
                    self.name, index, float(diff[j]), float(eps[j]), float(mu0[j]), float(mu1[j]),
                    f"ADWIN: mean {mu0[j]:.1%} over {cut} samples -> {mu1[j]:.1%} over the last "
                    f"{int(n1[j])} (difference {diff[j]:.3f} > bound {eps[j]:.3f} at delta {self.delta:g}); "
                    f"detected at sample {index}",
                )
            # a fall is forgotten silently when only rises are reported: the window still adapts
            self._drop(cut)
        return first


class PageHinkley:
    """Page–Hinkley test for a rise in a stream's mean, on standardised increments.

    m_t = sum_i ((x_i - mean_i) / sd_i - delta) and M_t = min m_t; alarm when m_t - M_t > lam.
    The increments are in units of the stream's running standard deviation, so ``delta`` (the
    drift allowed per sample) and ``lam`` mean the same for a 5% and a 40% error rate.  The
    test restarts from the next sample after an alarm; none is raised before ``min_samples``.
    The standard deviation is floored at ``sd_floor`` (that of a 0/1 stream near 7%): with rarer
    errors one error would otherwise count as a jump of many deviations, and false alarms follow.
    """

    name = "Page-Hinkley"

    def __init__(self, delta: float = 0.25, lam: float = 30.0, min_samples: int = 30, sd_floor: float = 0.25):
        self.delta = float(_positive("delta", delta))
        self.sd_floor = float(_positive("sd_floor", sd_floor))
        self.lam = float(_positive("lam", lam))
        self.min_samples = int(_positive("min_samples", min_samples, integer=True))
        self.detections: list[Detection] = []
        self._seen = 0
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._m = 0.0
        self._min = 0.0

    def update(self, value) -> Detection | None:
        found = self.update_many([value])
        return found[0] if found else None

    def update_many(self, values) -> list[Detection]:
        """Add samples in order (vectorised between alarms); return the detections."""
        arr = _as_stream(values)
        out: list[Detection] = []
        pos = 0
        while pos < arr.size:
            x = arr[pos:]
            k = np.arange(self._count + 1, self._count + x.size + 1, dtype=np.float64)
            csum = self._sum + np.cumsum(x)
            csq = self._sumsq + np.cumsum(x * x)
            mean = csum / k
            var = np.maximum(csq / k - mean * mean, 0.0)
            sd = np.maximum(np.sqrt(var), self.sd_floor)
            inc = (x - mean) / sd - self.delta
            m = self._m + np.cumsum(inc)
            mn = np.minimum(np.minimum.accumulate(m), self._min)
            stat = m - mn
            stat[k <= self.min_samples] = 0.0
            hit = np.nonzero(stat > self.lam)[0]
            if hit.size == 0:
                self._count += x.size
                self._sum, self._sumsq = float(csum[-1]), float(csq[-1])
                self._m, self._min = float(m[-1]), float(mn[-1])
                self._seen += x.size
                break
            i = int(hit[0])
            self._seen += i + 1
            index = self._seen - 1
            det = Detection(
                self.name, index, float(stat[i]), self.lam, float(mean[i]), float(x[max(0, i - 49): i + 1].mean()),
                f"Page-Hinkley: cumulative rise {stat[i]:.1f} > {self.lam:g} (in standard deviations, "
                f"allowance {self.delta:g}/sample); running mean {mean[i]:.1%}, last "
                f"{min(i + 1, 50)} samples {x[max(0, i - 49): i + 1].mean():.1%}; detected at sample {index}",
            )
            out.append(det)
            self.detections.append(det)
            self._reset()
            pos += i + 1
        return out
