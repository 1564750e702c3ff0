"""One ``edgeloop perf`` run: connect, build inputs, sweep the concurrency levels, report."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from edgeloop.perf import report
from edgeloop.perf.errors import PerfError
from edgeloop.perf.inputs import build_requests, input_specs
from edgeloop.perf.load import LevelPlan, run_level
from edgeloop.perf.stats import LevelStats
from edgeloop.perf.target import connect

DEFAULT_DURATION_S = 5.0  # per level, when only --requests is given this is the cap
DEFAULT_DURATION_CAP_S = 60.0  # per level, when --requests is given without --duration
DEFAULT_REQUEST_CAP = 1_000_000  # per level, when only --duration is given


@dataclass
class PerfConfig:
    url: str
    model: str
    model_version: str = ""
    concurrency: list[int] = field(default_factory=lambda: [1])
    requests: int | None = None
    duration_s: float | None = None
    batch_size: int = 1
    warmup: int = 10
    seed: int = 0
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    json_path: str | None = None
    csv_path: str | None = None

    def bounds(self) -> tuple[int, float]:
        """(request count, seconds) per level: both always finite."""
        if self.requests is None and self.duration_s is None:
            return DEFAULT_REQUEST_CAP, DEFAULT_DURATION_S
        if self.requests is None:
            return DEFAULT_REQUEST_CAP, float(self.duration_s)
        if self.duration_s is None:
            return int(self.requests), DEFAULT_DURATION_CAP_S
        return int(self.requests), float(self.duration_s)


def validate(cfg: PerfConfig) -> None:
    if not cfg.concurrency or any(c < 1 for c in cfg.concurrency):
        raise PerfError(f"--concurrency must list integers >= 1, got {cfg.concurrency}")
    if cfg.requests is not None and cfg.requests < 1:
        raise PerfError(f"--requests must be >= 1, got {cfg.requests}")
    if cfg.duration_s is not None and not cfg.duration_s > 0:
        raise PerfError(f"--duration must be > 0 seconds, got {cfg.duration_s}")
    if cfg.batch_size < 1:
        raise PerfError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.warmup < 0:
        raise PerfError(f"--warmup must be >= 0, got {cfg.warmup}")


@dataclass
class PerfResult:
    levels: list[LevelStats]
    error_samples: dict[int, list[str]]

    @property
    def total_errors(self) -> int:
        return sum(s.errors for s in self.levels)


def run(cfg: PerfConfig, out: TextIO | None = None, err: TextIO | None = None) -> PerfResult:
    """Run the sweep; the table goes to ``out`` (stdout), progress and level lines to ``err`` (stderr)."""
    out = out or sys.stdout  # resolved per call: sys.stdout/stderr may be replaced after import
    err = err or sys.stderr
    validate(cfg)
    max_requests, max_duration = cfg.bounds()
    target = connect(cfg.url, cfg.model, cfg.model_version, cfg.connect_timeout_s)
    try:
        specs = input_specs(target.metadata, cfg.batch_size)
        from edgeloop.protocol import inference_pb2

        pool = build_requests(inference_pb2, cfg.model, cfg.model_version, specs, cfg.seed)
        shapes = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in specs)
        err.write(f"edgeloop perf: {cfg.model} at {cfg.url}; inputs {shapes}; "
                  f"per level <= {max_requests} requests and <= {max_duration:g} s\n")
        progress = report.Progress(err)
        levels, samples = [], {}
        for concurrency in cfg.concurrency:
            plan = LevelPlan(concurrency, max_requests, max_duration, cfg.warmup, cfg.timeout_s, cfg.batch_size)
            outcome = run_level(
                target.channel, pool, plan,
                progress=lambda done, errors, elapsed, c=concurrency: progress.update(c, done, errors, elapsed),
            )
            progress.level_done(outcome.stats)
            for sample in outcome.error_samples:
                err.write(f"  error: {sample}\n")
            levels.append(outcome.stats)
            samples[concurrency] = outcome.error_samples
    finally:
        target.close()
    report.print_table(levels, out)
    header = {
        "url": cfg.url,
        "model": cfg.model,
        "model_version": cfg.model_version,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "warmup": cfg.warmup,
        "max_requests_per_level": max_requests,
        "max_duration_s_per_level": max_duration,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs],
    }
    if cfg.json_path:
        report.write_json(cfg.json_path, header, levels, samples)
    if cfg.csv_path:
        report.write_csv(cfg.csv_path, levels)
    return PerfResult(levels, samples)
