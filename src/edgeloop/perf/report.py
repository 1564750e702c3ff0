"""Showing results: a live line on a terminal, one line per level otherwise, JSON and CSV files."""
from __future__ import annotations

import csv
import json
import math
from typing import TextIO

from edgeloop.perf.stats import LevelStats

CSV_FIELDS = [
    "concurrency", "count", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms", "min_ms", "mean_ms",
    "requests_per_s", "infer_per_s", "duration_s", "batch_size", "stopped_by",
]


class Progress:
    """Progress on stderr: rewritten in place on a TTY, silent otherwise (the level line suffices)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())

    def update(self, concurrency: int, done: int, errors: int, elapsed_s: float) -> None:
        if not self.live:
            return
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        self.stream.write(
            f"\r  concurrency {concurrency:>4}: {done:>8} done, {errors} errors, {elapsed_s:6.1f} s, ~{rate:9.1f} req/s  "
        )
        self.stream.flush()

    def level_done(self, stats: LevelStats) -> None:
        if self.live:
            self.stream.write("\r" + " " * 79 + "\r")
        self.stream.write(f"concurrency {stats.concurrency}: {format_level(stats)}\n")
        self.stream.flush()


def _ms(value: float) -> str:
    return "    n/a" if math.isnan(value) else f"{value:7.3f}"


def format_level(s: LevelStats) -> str:
    return (
        f"count {s.count}, errors {s.errors}, p50 {_ms(s.p50_ms).strip()} ms, p90 {_ms(s.p90_ms).strip()} ms, "
        f"p99 {_ms(s.p99_ms).strip()} ms, max {_ms(s.max_ms).strip()} ms, {s.infer_per_s:.1f} infer/s"
    )


def print_table(levels: list[LevelStats], out: TextIO) -> None:
    out.write(
        f"{'concurrency':>11} {'count':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'infer/s':>10}\n"
    )
    for s in levels:
        out.write(
            f"{s.concurrency:>11} {s.count:>8} {s.errors:>6} {_ms(s.p50_ms):>8} {_ms(s.p90_ms):>8} "
            f"{_ms(s.p99_ms):>8} {_ms(s.max_ms):>8} {s.infer_per_s:>10.1f}\n"
        )
    out.flush()


def _json_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str, header: dict, levels: list[LevelStats], error_samples: dict[int, list[str]]) -> None:
    doc = dict(header)
    doc["levels"] = [
        {**{k: _json_safe(v) for k, v in s.as_dict().items()}, "error_samples": error_samples.get(s.concurrency, [])}
        for s in levels
    ]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


def write_csv(path: str, levels: list[LevelStats]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for s in levels:
            row = s.as_dict()
            writer.writerow({k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k]) for k in CSV_FIELDS})
