"""The fleet view of ``edgeloop status --config CLOUD.toml [--json]``: every edge as the coordinator knows it.

Kept apart from ``status.py`` (the mesh view) so the two grow independently; ``status.py`` calls
``add_arguments`` and, when ``--config`` names a cloud config (one with a ``[storage]`` table), ``run``.
"""
from __future__ import annotations

import json
import sys
import time


def add_arguments(parser) -> None:
    """Add ``--config`` unless the mesh view already added it (both views read the same flag)."""
    if not any("--config" in action.option_strings for action in parser._actions):
        parser.add_argument("--config", metavar="FILE",
                            help="a cloud config (with [storage]): show the fleet view from its coordinator")


def is_cloud_config(path: str | None) -> bool:
    """True when ``path`` is a TOML file with a ``[storage]`` table (a cloud config)."""
    if not path:
        return False
    from edgeloop.config.toml_source import read_toml

    try:
        return "storage" in read_toml(path)
    except Exception:  # an unreadable file is reported by whichever view loads it
        return False


def fetch(config_path: str, timeout: float = 10.0) -> dict:
    from edgeloop.config import load_cloud_config
    from edgeloop.coordinator.fleet_client import fleet_status, open_fleet_channel

    config = load_cloud_config(config_path)
    channel = open_fleet_channel(config)
    try:
        return fleet_status(channel, timeout=timeout)
    finally:
        channel.close()


def _age(ms: int, now_ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0.0, (now_ms - ms) / 1000)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render(view: dict) -> str:
    now = int(time.time() * 1000)
    lines = [f"fleet epoch {view['fleet_epoch']}: {len(view['nodes'])} edge(s), "
             f"{sum(n['connected'] for n in view['nodes'])} connected"]
    rows = [("NODE", "CONNECTED", "LAST SEEN", "REQUESTS", "SAMPLES", "LABELS", "PENDING", "DROPPED", "MAX PSI",
             "MODELS")]
    for n in view["nodes"]:
        models = " ".join(f"{m['model']}:{m['version']}" + ("" if m["state"] in ("READY", "") else f"({m['state']})")
                          for m in n["models"]) or "-"
        psi = "-" if n["max_psi"] is None else f"{n['max_psi']:.3f}"
        rows.append((n["node_id"], "yes" if n["connected"] else "no", _age(n["last_seen_ms"], now), str(n["requests"]),
                     str(n["samples_received"]), str(n["labels_received"]), str(n["outbox_pending"]),
                     str(n["outbox_dropped"]), psi, models))
    lines += _table(rows)
    if view["models"]:
        lines.append("")
        rows = [("MODEL", "SAMPLES", "LABELLED", "LABELS", "UNJOINED")]
        rows += [(m["model"] or "(no model yet)", str(m["samples"]), str(m["labelled"]), str(m["labels"]),
                  str(m["unjoined_labels"]))
                 for m in view["models"]]
        lines += _table(rows)
    if view.get("monitors"):
        lines.append("")
        rows = [("MODEL", "MONITOR", "SLICE", "VALUE", "THRESHOLD", "ALARM", "SUBJECT")]
        rows += [(m["model"], m["monitor"], m["slice"], f"{m['value']:.4g}", f"{m['threshold']:.4g}",
                  "yes" if m["alarm"] else "no", m["subject"]) for m in view["monitors"]]
        lines += _table(rows)
    return "\n".join(lines)


def _table(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def run(args) -> int:
    import grpc

    from edgeloop.config import ConfigError
    from edgeloop.protocol.auth import AuthError

    try:
        view = fetch(args.config)
    except (ConfigError, AuthError, OSError) as exc:
        print(f"edgeloop status: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"edgeloop status: coordinator of {args.config}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(view, indent=2) if args.json else render(view))
    return 0
