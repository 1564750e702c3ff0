"""``edgeloop status --mesh``: the mesh as a client sees it (nodes, liveness, models, weights, epochs)."""
from __future__ import annotations

import json
import sys
import time

from . import fleet_view


def _mesh_status(args) -> int:
    from edgeloop.client import MeshClient

    interfaces = [] if args.no_zeroconf else args.interface
    try:
        client = MeshClient(seeds=args.seed, interfaces=interfaces, service_type=args.service_type)
    except ValueError as exc:
        print(f"edgeloop status: {exc}", file=sys.stderr)
        return 2
    try:
        deadline = time.monotonic() + args.wait
        client.wait_ready(nodes=max(1, len(args.seed)), timeout=args.wait)
        client.wait_settled(max(0.0, deadline - time.monotonic()))  # late answers still make the table
        members = client.view()
        epochs = dict(client.liveness.remote_epochs)
        if args.json:
            print(json.dumps({
                "epoch": client.epoch,
                "nodes": [{
                    "id": m.node_id, "address": m.address, "state": m.state, "weight": m.weight, "zone": m.zone,
                    "queue_depth": m.queue_depth, "models": {k: list(v) for k, v in m.models.items()},
                    "node_epoch": epochs.get(m.node_id), "sources": sorted(m.sources),
                } for m in members],
            }, indent=2))
            return 0 if members else 1
        up = sum(1 for m in members if m.alive)
        print(f"mesh view epoch {client.epoch}: {len(members)} nodes, {up} up")
        if not members:
            how = f"seeds {args.seed}" if args.seed else f"zeroconf on {','.join(interfaces) or '-'}"
            print(f"no nodes found via {how} within {args.wait:g}s")
            return 1
        rows = [("NODE", "ADDRESS", "STATE", "WEIGHT", "ZONE", "QUEUE", "EPOCH", "MODELS")]
        for m in members:
            models = " ".join(f"{k}:{','.join(map(str, v))}" for k, v in sorted(m.models.items())) or "-"
            rows.append((m.node_id, m.address, m.state, f"{m.weight:g}", m.zone, str(m.queue_depth),
                         str(epochs.get(m.node_id, "?")), models))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        return 0
    finally:
        client.close()


def register(sub) -> None:
    parser = sub.add_parser("status", help="show a running mesh: nodes, liveness, models, weights, epochs")
    parser.add_argument("--mesh", action="store_true", help="show the mesh membership view (the default)")
    parser.add_argument("--seed", action="append", default=[], metavar="HOST:PORT",
                        help="a node to ask directly (repeatable); zeroconf browsing runs as well")
    parser.add_argument("--interface", action="append", default=None, metavar="ADDR",
                        help="interface address for zeroconf browsing (default 127.0.0.1)")
    parser.add_argument("--no-zeroconf", action="store_true", help="use only --seed addresses")
    parser.add_argument("--service-type", default="_edgeloop._tcp.local.", help="DNS-SD service type")
    parser.add_argument("--wait", type=float, default=1.5, metavar="S",
                        help="the longest to gather the view (it ends sooner once the view is complete and quiet)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    fleet_view.add_arguments(parser)  # --config CLOUD.toml: the fleet view from the coordinator
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    if fleet_view.is_cloud_config(getattr(args, "config", None)):
        return fleet_view.run(args)
    if args.interface is None:
        args.interface = ["127.0.0.1"]
    return _mesh_status(args)
