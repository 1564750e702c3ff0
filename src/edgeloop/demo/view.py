"""The live terminal view (``rich``): replay progress, per-edge load and model, accuracy, the CT loop."""
from __future__ import annotations

import time

import numpy as np

from .engine import ROLLING, Progress
from .stream import Stream


def render(stream: Stream, progress: Progress, started: float):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    with progress.lock:
        done, errors, labels = progress.done, len(progress.errors), progress.labels_sent
        lat = {e: list(v[-2000:]) for e, v in progress.latency_ms.items()}
        counts = {e: len(v) for e, v in progress.latency_ms.items()}
        versions = dict(progress.edge_version)
        triggers, published, received = list(progress.triggers), list(progress.published), progress.received
        doc = dict(progress.rollout)
        served = np.flatnonzero(progress.pred >= 0)[-ROLLING:]
        hits = progress.pred[served] == stream.y[served]
    elapsed = max(1e-6, time.monotonic() - started)
    head = Text(f"{stream.name}: {done}/{stream.rows} rows replayed, {labels} labels sent, {received} samples at the "
                f"cloud, {errors} errors, {done / elapsed:.0f} rows/s; entities: {stream.key_rule}")
    table = Table("edge", "requests", "req/s", "p50 ms", "p99 ms", "model version", box=None)
    for e in sorted(lat):
        v = lat[e]
        table.add_row(e, str(counts[e]), f"{counts[e] / elapsed:.0f}", f"{np.percentile(v, 50):.2f}",
                      f"{np.percentile(v, 99):.2f}", f"v{versions.get(e, '?')}")
    acc = f"{hits.mean():.3f}" if len(hits) else "-"
    latest = published[-1][0] if published else None
    on_latest = sum(1 for v in versions.values() if v == latest)
    rollout = f"v{latest} published; {on_latest}/{len(versions) or 3} edges serving it" if latest else "nothing published"
    if doc:
        waves = doc.get("waves") or []
        edges = ", ".join(f"{e} {s}" for e, s in sorted((doc.get("edges") or {}).items()))
        rollout += (f"; staged rollout of v{doc.get('version')}: {doc.get('state')}, wave "
                    f"{int(doc.get('wave', -1)) + 1}/{len(waves)} ({edges})")
    last = (f"{triggers[-1][0]} ({triggers[-1][3] or 'running'}): {str(triggers[-1][2])[:160]}" if triggers
            else "none yet")
    loop = Text(f"rolling accuracy (last {ROLLING} rows): {acc}\nlast trigger: {last}\nrollout: {rollout}")
    filled = int(50 * done / max(1, stream.rows))
    bar = Text(f"[{'#' * filled}{'.' * (50 - filled)}] {100 * done / max(1, stream.rows):5.1f}%")
    return Group(head, bar, table, loop)
