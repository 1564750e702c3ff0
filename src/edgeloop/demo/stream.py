"""The stream the demo replays: a CSV read in file order, its inputs, label and entity (routing key) per row.

Every cell comes from a user's file, so it is checked: numeric feature columns only (a non-numeric one is
refused by name), a label with at most ``MAX_CLASSES`` values, bounded rows and columns.  A stream without an
entity column is split into contiguous blocks of rows, one entity per block (Elec2: one per four weeks, ``weeks-N``,
1,344 rows of 30 minutes; measured against one per week, per day and per 3-hour part of the day in
``benchmarks/ct_stream.py --splits``): every entity's rows stay contiguous in time, so its real-time features (the last
labels, demand history) describe the stream's recent past, while the entities, and so the edges, take turns.
"""
from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ELEC2 = Path(__file__).resolve().parent / "data" / "elec2.csv.gz"
ELEC2_LABEL = "class"
MAX_ROWS = 5_000_000
MAX_COLUMNS = 256
MAX_CLASSES = 64
MAX_KEY_BYTES = 200
BLOCK_ROWS = 4 * 336  # Elec2: four weeks of half-hour rows, one entity each


class StreamError(ValueError):
    """A stream that cannot be replayed; the message names the column or row."""


@dataclass(frozen=True)
class Stream:
    name: str
    columns: tuple[str, ...]  # the model's inputs, in order
    x: np.ndarray  # float32 [rows, len(columns)]
    y: np.ndarray  # int64 class index per row
    classes: tuple[str, ...]  # the label's values, as written in the file (class index -> text)
    keys: tuple[str, ...]  # routing key per row
    key_rule: str  # how rows were split into entities (said in the view and summary)

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])

    def slice(self, start: int, stop: int) -> "Stream":
        return Stream(self.name, self.columns, self.x[start:stop], self.y[start:stop], self.classes,
                      self.keys[start:stop], self.key_rule)


def _cut(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise StreamError(f"{path}: no header line; expected a CSV file with column names")
            rows = []
            for row in reader:
                if len(rows) >= MAX_ROWS:
                    raise StreamError(f"{path}: more than {MAX_ROWS} rows; expected at most that many")
                if row:
                    rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StreamError(f"{path}: cannot be read ({exc}); expected a UTF-8 CSV file") from None
    if len(header) > MAX_COLUMNS:
        raise StreamError(f"{path}: {len(header)} columns; expected at most {MAX_COLUMNS}")
    return [h.strip() for h in header], rows


def load_csv(path: str | Path, label: str, key: str | None = None, features: list[str] | None = None) -> Stream:
    """Read ``path`` (``.csv`` or ``.csv.gz``): ``label`` is the class column, ``key`` the entity column (else
    one stream per block of rows), ``features`` the inputs (default: every other column, ``key`` excluded)."""
    path = Path(path)
    header, rows = _read_rows(path)
    if label not in header:
        raise StreamError(f"--label {_cut(label)}: not a column of {path.name}; expected one of {_cut(header)}")
    if key is not None and key not in header:
        raise StreamError(f"--key {_cut(key)}: not a column of {path.name}; expected one of {_cut(header)}")
    if features is None:
        features = [h for h in header if h not in (label, key)]
    missing = [f for f in features if f not in header]
    if missing or not features:
        raise StreamError(f"--features {_cut(features)}: {_cut(missing) if missing else 'empty'}; expected "
                          f"columns of {path.name} other than the label ({_cut(header)})")
    if len(rows) < 10:
        raise StreamError(f"{path}: {len(rows)} rows; expected at least 10")
    idx = [header.index(f) for f in features]
    x = np.empty((len(rows), len(idx)), np.float32)
    bad: dict[str, object] = {}
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise StreamError(f"{path} row {r + 1}: {len(row)} fields; expected {len(header)} (as the header)")
        for j, c in enumerate(idx):
            try:
                v = float(row[c])
            except ValueError:
                bad.setdefault(features[j], row[c])
                continue
            if not math.isfinite(v):
                bad.setdefault(features[j], row[c])
            x[r, j] = v
    if bad:
        shown = ", ".join(f"{name} (e.g. {_cut(v)})" for name, v in bad.items())
        raise StreamError(f"non-numeric feature column(s): {shown}; expected numbers in every feature column "
                          f"(leave them out with --features)")
    li = header.index(label)
    raw = [row[li].strip() for row in rows]
    values = sorted(set(raw), key=lambda v: (_as_float(v), v))
    if len(values) < 2 or len(values) > MAX_CLASSES:
        raise StreamError(f"--label {label!r}: {len(values)} distinct values; expected 2..{MAX_CLASSES} classes")
    index = {v: i for i, v in enumerate(values)}
    y = np.fromiter((index[v] for v in raw), np.int64, len(raw))
    if key is not None:
        ki = header.index(key)
        keys = tuple(f"{key}={row[ki].strip()[:MAX_KEY_BYTES]}" for row in rows)
        rule = f"one entity per value of column {key!r}"
    else:
        keys, rule = _default_keys(features, x)
    return Stream(path.name, tuple(features), x, y, tuple(values), keys, rule)


def _as_float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.inf


def _default_keys(features: list[str], x: np.ndarray) -> tuple[tuple[str, ...], str]:
    """Contiguous blocks: four weeks of Elec2 (``period`` marks a half-hourly stream), else 1/48 of the rows."""
    n = x.shape[0]
    if "period" in features:
        return (tuple(f"weeks-{i // BLOCK_ROWS}" for i in range(n)),
                f"one entity per four weeks ({BLOCK_ROWS} contiguous rows: weeks-0, weeks-1, ...)")
    block = max(1, n // 48)
    return (tuple(f"block-{i // block}" for i in range(n)),
            f"one entity per block of {block} contiguous rows (block-0, block-1, ...)")


def elec2() -> Stream:
    """The Elec2 stream shipped with the package (data/SOURCE.md)."""
    return load_csv(ELEC2, ELEC2_LABEL)
