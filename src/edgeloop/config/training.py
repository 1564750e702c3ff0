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
                 "min_change_rows", "train_half_life", "models", "federated_strategy", "federated_clip_norm",
                 "federated_trim", "federated_epochs", "federated_lr", "federated_mu", "federated_min_edges",
                 "federated_timeout_s", "trainer_options", "window", "train_days",
                 "slice_features", "backend", "scheduler", "n_workers", "chunk_rows", "retry_after_rollback_s",
                 "hard_example_weight", "min_holdout_rows", "validation_fraction")
MODES = ("central", "federated")
FEDERATED_STRATEGIES = ("fedavg", "median", "trimmed_mean")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
TRAINER_EXPECTED = "'logistic', 'mlp' or 'sklearn:<EstimatorName>' (e.g. 'sklearn:HistGradientBoostingClassifier')"
#: scalar types a trainer option may take (they go to a scikit-learn constructor)
OPTION_TYPES = (bool, int, float, str)


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
    retry_after_rollback_s: float = 60.0  # after a rollout ends rolled back, automatic triggers wait this long
    hard_example_weight: float = 1.0    # training weight of samples marked hard (escalated); 1.0: like any other
    train_rows: int = 2000              # newest labelled rows a run reads (holdout included)
    holdout_fraction: float = 0.25      # newest share of them, never trained on
    min_holdout_rows: int = 100         # ... but at least this many rows (a gate judged on 40 rows blesses noise)
    validation_fraction: float = 0.2    # newest share of the rest: the trainer's validation, not fitted on
    train_half_life: float = 0.0        # recency weights: a row this many rows older weighs half (0: off)
    min_gain: float = 0.0               # a challenger must beat the champion by more than this
    max_slice_regression: float = 0.05  # ... and lose no more than this on any edge with enough rows
    min_slice_samples: int = 100
    compression_tolerance: float = 0.01 # metric loss allowed for a compressed candidate
    latency_ratio: float = 3.0          # candidate p99 <= this x champion's (+0.25 ms)
    seed: int = 0
    trainer: str = "logistic"           # "logistic", "mlp" or "sklearn:<EstimatorName>"
    trainer_options: tuple = ()         # (name, value) pairs for a sklearn estimator's constructor
    window: str = "samples"             # "samples" (newest train_rows), "days" (train_days) or "all" (max_read_rows)
    train_days: float = 0.0             # the days window's length (required > 0 when window = "days")
    slice_features: tuple[str, ...] = ()  # model input columns ("input:3") whose values are evaluation slices
    max_read_rows: int = 20_000         # labelled rows read per loop step
    min_clean_rows: int = 100           # a run stops when validation leaves fewer
    min_change_rows: int = 400          # a drift/performance run waits for this many labelled rows after the change
    # federated mode ([training.models.NAME] mode = "federated"): raw features stay on the edges
    federated_models: tuple[str, ...] = ()
    federated_strategy: str = "median"  # "fedavg", "median" or "trimmed_mean"
    federated_clip_norm: float = 5.0    # each edge's update is clipped to this L2 norm (0: off)
    federated_trim: float = 0.25        # trimmed_mean: share dropped at each end
    federated_epochs: int = 3           # local epochs per round
    federated_lr: float = 0.1
    federated_mu: float = 0.0           # FedProx proximal weight (0: off)
    federated_min_edges: int = 1        # a round needs updates from at least this many edges
    federated_timeout_s: float = 30.0   # how long a round phase waits for the edges
    source: str = ""                    # the file this table came from (for errors raised after parsing)
    backend: str = "inprocess"          # "inprocess" or "dask" (the [dask] extra: edgeloop.ct.trainer_dask)
    scheduler: str = "local"            # dask: "tcp://host:port" of a running scheduler, or "local" (a LocalCluster)
    n_workers: int = 2                  # dask "local": worker processes on 127.0.0.1
    chunk_rows: int = 50_000            # dask: rows per chunk (one task's share of the window)


def parse_training(table: dict, source: str) -> TrainingConfig:
    t = TableReader(table, source, "training", TRAINING_KEYS)
    d = TrainingConfig
    trainer = t.string("trainer", d.trainer, expected=TRAINER_EXPECTED)
    options = t.subtable("trainer_options")
    for name, value in options.items():
        if not isinstance(value, OPTION_TYPES):
            raise t.error(f"trainer_options.{name}", value, "a boolean, number or string")
    if trainer.startswith("sklearn:"):
        # only the form here (config imports nothing); the CT loop checks that the estimator exists and
        # takes these options when the coordinator builds it, with this file and key in its error
        name = trainer[len("sklearn:"):]
        if not (0 < len(name) <= 64 and name.isascii() and name.isidentifier()):
            raise t.error("trainer", trainer, TRAINER_EXPECTED)
    elif trainer not in ("logistic", "mlp"):
        raise t.error("trainer", trainer, TRAINER_EXPECTED)
    elif options:
        raise t.error("trainer_options", options, "no options (they are for a 'sklearn:' trainer)")
    window = t.string("window", d.window, expected="'samples', 'days' or 'all'")
    if window not in ("samples", "days", "all"):
        raise t.error("window", window, "'samples', 'days' or 'all'")
    days = t.number("train_days", d.train_days, minimum=0.0, expected="days > 0")
    if window == "days" and not days > 0:
        raise t.error("train_days", days, "days > 0 (window = 'days' needs it)")
    slice_features = t.array("slice_features", [], expected="an array of model input columns, e.g. [\"input:3\"]")
    if len(slice_features) > 32:
        raise t.error("slice_features", slice_features, "at most 32 names")
    for name in slice_features:
        if not (isinstance(name, str) and 0 < len(name) <= 128 and name.isprintable()):
            raise t.error("slice_features", name, "names of model input columns (strings of 1..128 printable "
                                                  "characters)")
    fraction = t.number("holdout_fraction", d.holdout_fraction, exclusive_minimum=0.0, expected="a number in (0, 0.9]")
    if fraction > 0.9:
        raise t.error("holdout_fraction", fraction, "a number in (0, 0.9]")
    validation = t.number("validation_fraction", d.validation_fraction, exclusive_minimum=0.0,
                          expected="a number in (0, 0.5]")
    if validation > 0.5:
        raise t.error("validation_fraction", validation, "a number in (0, 0.5]")
    federated = []
    for name, table in t.subtable("models").items():
        if not _MODEL_NAME.match(name) or not isinstance(table, dict):
            raise t.error(f"models.{name[:100]}", table, "a table [training.models.NAME] with NAME a model name")
        m = TableReader(table, source, f"training.models.{name}", ("mode",))
        mode = m.string("mode", "central", expected="'central' or 'federated'")
        if mode not in MODES:
            raise m.error("mode", mode, "'central' or 'federated'")
        if mode == "federated":
            federated.append(name)
    strategy = t.string("federated_strategy", d.federated_strategy, expected="'fedavg', 'median' or 'trimmed_mean'")
    if strategy not in FEDERATED_STRATEGIES:
        raise t.error("federated_strategy", strategy, "'fedavg', 'median' or 'trimmed_mean'")
    trim = t.number("federated_trim", d.federated_trim, minimum=0.0, expected="a fraction in [0, 0.5)")
    if trim >= 0.5:
        raise t.error("federated_trim", trim, "a fraction in [0, 0.5)")
    backend = t.string("backend", d.backend, expected="'inprocess' or 'dask'")
    if backend not in ("inprocess", "dask"):
        raise t.error("backend", backend, "'inprocess' or 'dask'")
    expected = "'local' or 'tcp://host:port' (port 1..65535)"
    scheduler = t.string("scheduler", d.scheduler, expected=expected)
    match = _SCHEDULER.match(scheduler)
    if scheduler != "local" and (match is None or not 1 <= int(match.group(1)) <= 65535):
        raise t.error("scheduler", scheduler, expected)
    return TrainingConfig(
        federated_models=tuple(sorted(federated)),
        federated_strategy=strategy,
        federated_clip_norm=t.number("federated_clip_norm", d.federated_clip_norm, minimum=0.0,
                                     expected="an L2 norm >= 0 (0: no clipping)"),
        federated_trim=trim,
        federated_epochs=t.integer("federated_epochs", d.federated_epochs, minimum=1, maximum=1000),
        federated_lr=t.number("federated_lr", d.federated_lr, exclusive_minimum=0.0, expected="a number > 0"),
        federated_mu=t.number("federated_mu", d.federated_mu, minimum=0.0, expected="a number >= 0 (0: off)"),
        federated_min_edges=t.integer("federated_min_edges", d.federated_min_edges, minimum=1, maximum=100_000),
        federated_timeout_s=t.number("federated_timeout_s", d.federated_timeout_s, exclusive_minimum=0.0,
                                     expected="seconds > 0"),
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
        retry_after_rollback_s=t.number("retry_after_rollback_s", d.retry_after_rollback_s, minimum=0.0,
                                        expected="seconds >= 0"),
        hard_example_weight=t.number("hard_example_weight", d.hard_example_weight, minimum=0.0,
                                     expected="a weight >= 0 (1.0: like any other sample)"),
        train_rows=t.integer("train_rows", d.train_rows, minimum=40, maximum=20_000_000),
        holdout_fraction=fraction,
        validation_fraction=validation,
        min_holdout_rows=t.integer("min_holdout_rows", d.min_holdout_rows, minimum=1, maximum=1 << 40),
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
        trainer_options=tuple(sorted(options.items())),
        source=source,
        window=window,
        train_days=days,
        slice_features=tuple(slice_features),
        max_read_rows=t.integer("max_read_rows", d.max_read_rows, minimum=100, maximum=10_000_000),
        min_clean_rows=t.integer("min_clean_rows", d.min_clean_rows, minimum=1, maximum=1 << 40),
        min_change_rows=t.integer("min_change_rows", d.min_change_rows, minimum=40, maximum=1 << 40),
    )
