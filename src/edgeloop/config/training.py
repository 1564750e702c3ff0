"""The coordinator's ``[training]`` table: the continuous-training loop's windows, triggers and gates."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import TableReader

#: an existing dask scheduler's address (host name or IPv4, port)
_SCHEDULER = re.compile(r"^tcp://[A-Za-z0-9.\-]{1,253}:([0-9]{1,5})$")

TRAINING_KEYS = ("enabled", "interval_ms", "monitor_window", "reference_rows", "drift_windows", "volume",
                 "schedule_s", "performance_floor", "performance_margin", "cooldown_s", "train_rows",
                 "holdout_fraction", "min_gain", "max_slice_regression", "min_slice_samples",
                 "compression_tolerance", "latency_ratio", "seed", "trainer", "max_read_rows", "min_clean_rows",
                 "min_change_rows", "train_half_life", "backend", "scheduler", "n_workers", "chunk_rows")


@dataclass(frozen=True)
class TrainingConfig:
    """How the CT loop watches and retrains; the defaults suit a fleet of a few edges."""

    enabled: bool = True
    interval_ms: int = 1000             # the loop thread's step period
    monitor_window: int = 200           # labelled rows per monitoring window
    reference_rows: int = 1000          # rows served after a champion's publication that become its reference
    drift_windows: int = 3              # K consecutive alarming windows fire the drift trigger
    volume: int = 0                     # N new labelled samples fire a run (0: off)
    schedule_s: float = 0.0             # a run at least this often (0: off)
    performance_floor: float = -1.0     # accuracy floor (< 0: off)
    performance_margin: float = 0.05    # X below the champion's reference accuracy
    cooldown_s: float = 60.0            # per trigger kind (manual has none)
    train_rows: int = 2000              # newest labelled rows a run reads (holdout included)
    holdout_fraction: float = 0.25      # newest share of them, never trained on
    train_half_life: float = 0.0        # recency weights: a row this many rows older weighs half (0: off)
    min_gain: float = 0.0               # a challenger must beat the champion by more than this
    max_slice_regression: float = 0.05  # ... and lose no more than this on any edge with enough rows
    min_slice_samples: int = 100
    compression_tolerance: float = 0.01 # metric loss allowed for a compressed candidate
    latency_ratio: float = 3.0          # candidate p99 <= this x champion's (+0.25 ms)
    seed: int = 0
    trainer: str = "logistic"           # "logistic" or "mlp"
    max_read_rows: int = 20_000         # labelled rows read per loop step
    min_clean_rows: int = 100           # a run stops when validation leaves fewer
    min_change_rows: int = 400          # a drift/performance run waits for this many labelled rows after the change
    backend: str = "inprocess"          # "inprocess" or "dask" (the [dask] extra: edgeloop.ct.trainer_dask)
    scheduler: str = "local"            # dask: "tcp://host:port" of a running scheduler, or "local" (a LocalCluster)
    n_workers: int = 2                  # dask "local": worker processes on 127.0.0.1
    chunk_rows: int = 50_000            # dask: rows per chunk (one task's share of the window)


def parse_training(table: dict, source: str) -> TrainingConfig:
    t = TableReader(table, source, "training", TRAINING_KEYS)
    d = TrainingConfig
    trainer = t.string("trainer", d.trainer, expected="'logistic' or 'mlp'")
    if trainer not in ("logistic", "mlp"):
        raise t.error("trainer", trainer, "'logistic' or 'mlp'")
    fraction = t.number("holdout_fraction", d.holdout_fraction, exclusive_minimum=0.0, expected="a number in (0, 0.9]")
    if fraction > 0.9:
        raise t.error("holdout_fraction", fraction, "a number in (0, 0.9]")
    backend = t.string("backend", d.backend, expected="'inprocess' or 'dask'")
    if backend not in ("inprocess", "dask"):
        raise t.error("backend", backend, "'inprocess' or 'dask'")
    expected = "'local' or 'tcp://host:port' (port 1..65535)"
    scheduler = t.string("scheduler", d.scheduler, expected=expected)
    match = _SCHEDULER.match(scheduler)
    if scheduler != "local" and (match is None or not 1 <= int(match.group(1)) <= 65535):
        raise t.error("scheduler", scheduler, expected)
    return TrainingConfig(
        backend=backend,
        scheduler=scheduler,
        n_workers=t.integer("n_workers", d.n_workers, minimum=1, maximum=256),
        chunk_rows=t.integer("chunk_rows", d.chunk_rows, minimum=100, maximum=5_000_000),
        enabled=t.boolean("enabled", d.enabled),
        interval_ms=t.integer("interval_ms", d.interval_ms, minimum=10, maximum=3_600_000),
        monitor_window=t.integer("monitor_window", d.monitor_window, minimum=20, maximum=1_000_000),
        reference_rows=t.integer("reference_rows", d.reference_rows, minimum=40, maximum=10_000_000),
        drift_windows=t.integer("drift_windows", d.drift_windows, minimum=1, maximum=1000),
        volume=t.integer("volume", d.volume, minimum=0, maximum=1 << 40),
        schedule_s=t.number("schedule_s", d.schedule_s, minimum=0.0, expected="seconds >= 0 (0: off)"),
        performance_floor=t.number("performance_floor", d.performance_floor, expected="a number (< 0: off)"),
        performance_margin=t.number("performance_margin", d.performance_margin, minimum=0.0,
                                    expected="a number >= 0"),
        cooldown_s=t.number("cooldown_s", d.cooldown_s, minimum=0.0, expected="seconds >= 0"),
        train_rows=t.integer("train_rows", d.train_rows, minimum=40, maximum=20_000_000),
        holdout_fraction=fraction,
        train_half_life=t.number("train_half_life", d.train_half_life, minimum=0.0,
                                 expected="rows >= 0 (0: equal weights)"),
        min_gain=t.number("min_gain", d.min_gain, minimum=0.0, expected="a number >= 0"),
        max_slice_regression=t.number("max_slice_regression", d.max_slice_regression, minimum=0.0,
                                      expected="a number >= 0"),
        min_slice_samples=t.integer("min_slice_samples", d.min_slice_samples, minimum=1, maximum=1 << 40),
        compression_tolerance=t.number("compression_tolerance", d.compression_tolerance, minimum=0.0,
                                       expected="a number >= 0"),
        latency_ratio=t.number("latency_ratio", d.latency_ratio, exclusive_minimum=0.0, expected="a number > 0"),
        seed=t.integer("seed", d.seed, minimum=0, maximum=2**63 - 1),
        trainer=trainer,
        max_read_rows=t.integer("max_read_rows", d.max_read_rows, minimum=100, maximum=10_000_000),
        min_clean_rows=t.integer("min_clean_rows", d.min_clean_rows, minimum=1, maximum=1 << 40),
        min_change_rows=t.integer("min_change_rows", d.min_change_rows, minimum=40, maximum=1 << 40),
    )
