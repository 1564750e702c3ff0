"""The demo's report: ``predictions.csv`` (one line per row), ``summary.json`` and ``report.png``.

Prequential: each row is predicted before its label is used (labels arrive ``label_delay`` rows later), and
accuracy is counted on rows ``eval_start..end`` for all three: the mesh, the static model (the first model,
never retrained) and the no-change baseline (the last label known at the time).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .engine import Progress
from .stream import Stream


def no_change(y: np.ndarray, delay: int) -> np.ndarray:
    out = np.empty_like(y)
    out[:delay] = y[0]
    out[delay:] = y[:-delay] if delay else y
    return out


def retrains(progress: Progress) -> list[dict]:
    """Each published version after the first: the trigger before it, the first row it served, how long
    from its trigger until it answered a request."""
    out = []
    for version, created_ms in progress.published[1:]:
        fired = [t for t in progress.triggers if t[1] <= created_ms]
        kind, at_ms, evidence, _ = fired[-1] if fired else ("?", created_ms, "", "")
        seen = progress.first_seen.get(version)
        out.append({"row": seen[0] if seen else None, "trigger_row": progress.row_at(at_ms / 1000), "trigger": kind, "reason": str(evidence)[:300],
                    "version": int(version), "published_ms": int(created_ms),
                    "seconds_to_serving": round(seen[1] - at_ms / 1000, 3) if seen else None})
    return out


def write(workdir: Path, stream: Stream, progress: Progress, static: np.ndarray, eval_start: int,
          label_delay: int, features: list[dict], wall_s: float, online: dict | None = None) -> dict:
    y = stream.y
    base = no_change(y, label_delay)
    ev = slice(eval_start, stream.rows)
    served = progress.pred >= 0
    acc = {"edgeloop": float((progress.pred[ev] == y[ev]).mean()),
           "static": float((static[ev] == y[ev]).mean()),
           "no_change": float((base[ev] == y[ev]).mean())}
    lat = np.concatenate([np.asarray(v) for v in progress.latency_ms.values()]) if progress.latency_ms else np.zeros(1)
    per_edge = {e: {"requests": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                for e, v in sorted(progress.latency_ms.items())}
    summary = {
        "stream": stream.name, "rows": stream.rows, "key_rule": stream.key_rule, "label_delay": label_delay,
        "prequential_accuracy": acc, "eval_start": eval_start, "features": features,
        # the definition's online head (edges correct the model's output per entity from late labels), or None
        "online_head": online,
        "retrains": retrains(progress), "triggers": [{"kind": k, "at_ms": a, "evidence": str(e)[:300], "outcome": o}
                                                     for k, a, e, o in progress.triggers],
        "samples": {"served": int(served.sum()), "received": int(progress.received),
                    "lost": int(served.sum()) - int(progress.received)},
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "per_edge": per_edge},
        "errors": progress.errors[:20], "wall_s": round(wall_s, 2),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(workdir / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "label", "edgeloop", "static", "no_change", "model_version", "edge"])
        cls = stream.classes
        for i in range(stream.rows):
            w.writerow([i, cls[y[i]], cls[progress.pred[i]] if progress.pred[i] >= 0 else "",
                        cls[static[i]], cls[base[i]], int(progress.version[i]), progress.edge[i]])
    draw(workdir / "report.png", stream, progress, static, base, eval_start, summary)
    return summary


def _rolling(hit: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([[0.0], hit.astype(float)]))
    n = np.arange(1, len(hit) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def draw(path: Path, stream: Stream, progress: Progress, static, base, eval_start: int, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = stream.y
    window = max(50, stream.rows // 60)
    rows = np.arange(stream.rows)
    fig, (ax, lx) = plt.subplots(2, 1, figsize=(10, 6.5), gridspec_kw={"height_ratios": [3, 1.3]})
    acc = summary["prequential_accuracy"]
    for name, pred, colour in (("no change (last label)", base, "tab:orange"),
                               ("static (first model)", static, "tab:grey"),
                               ("edgeloop (mesh + CT loop" + (" + online head)" if summary.get("online_head")
                                                               else ")"), progress.pred, "tab:blue")):
        key = "edgeloop" if name.startswith("edgeloop") else ("static" if name.startswith("static") else "no_change")
        ax.plot(rows, _rolling(pred == y, window), label=f"{name}: {acc[key]:.3f}", color=colour, lw=1.2)
    ax.axvspan(0, eval_start, color="0.92", lw=0)
    for t in summary["triggers"]:
        row = progress.row_at(t["at_ms"] / 1000)
        if row is not None:
            ax.axvline(row, color="tab:red", lw=0.8, ls=":")
            ax.text(row, 0.02, f"{t['kind']} ", rotation=90, fontsize=6, color="tab:red", va="bottom", ha="right",
                    transform=ax.get_xaxis_transform())
    for r in summary["retrains"]:
        if r["row"] is not None:
            ax.axvline(r["row"], color="tab:green", lw=1, ls="--")
            ax.text(r["row"], 0.98, f"v{r['version']} ({r['trigger']}) ", rotation=90, fontsize=7, color="tab:green",
                    va="top", ha="right", transform=ax.get_xaxis_transform())
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy (rolling {window} rows)")
    ax.set_title(f"edgeloop demo: {stream.name}, {stream.rows} rows, labels {summary['label_delay']} row(s) late "
                 f"(prequential accuracy from row {eval_start})", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    names = sorted(progress.latency_ms)
    p = [[np.percentile(progress.latency_ms[e], q) for e in names] for q in (50, 90, 99)]
    xs = np.arange(len(names))
    for j, (q, colour) in enumerate(zip((50, 90, 99), ("tab:blue", "tab:purple", "tab:red"))):
        lx.bar(xs + (j - 1) * 0.25, p[j], 0.25, label=f"p{q}", color=colour)
    lx.set_xticks(xs, [f"{e} ({len(progress.latency_ms[e])} req)" for e in names])
    lx.set_ylabel("serving latency (ms)")
    lx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
