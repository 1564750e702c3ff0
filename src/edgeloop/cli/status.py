"""``edgeloop status --mesh``: the mesh as a client sees it (nodes, liveness, models, weights, epochs).

Each node is shown in one of the states people act on differently: ``ready`` (up, serving models),
``not-ready`` (up, no model ready yet: a live member waiting for models), ``draining`` (answers
health NOT_SERVING), ``down`` (no health answer), ``unknown`` (not asked yet).  Only nodes of one
mesh (``--mesh-name``, or ``mesh.name`` of ``--config``, else ``default``) are shown.
"""
from __future__ import annotations

import json
import sys
import time

from . import fleet_view

DEFAULT_WAIT_S = 5.0
#: zeroconf browsing listens at least this long: a responder multicasts a record at most once a second
#: (RFC 6762 section 6), so a query right after another client's is answered only at the browser's
#: next query, about a second later.  Returning on the first answer made a back-to-back run miss nodes.
ZEROCONF_MIN_S = 2.0
QUIET_S = 0.5


def _settings(args):
    """(mesh name, service type, interfaces, fleet token) from the flags, ``--config`` filling what they leave out."""
    from edgeloop.config import load_edge_config
    from edgeloop.config.mesh import MESH_NAME_EXPECTATION, is_mesh_name

    from edgeloop.protocol.auth import read_token_file

    name, service_type, interfaces, token = "default", "_edgeloop._tcp.local.", ["127.0.0.1"], None
    if args.config:
        config = load_edge_config(args.config)
        mesh = config.mesh
        name, service_type, interfaces = mesh.name, mesh.service_type, list(mesh.zeroconf_interfaces)
        if config.auth.token_file is not None:
            token = read_token_file(config.auth.token_file)
    if args.mesh_name is not None:
        if not is_mesh_name(args.mesh_name):
            raise ValueError(f"--mesh-name: got {args.mesh_name[:200]!r}, expected {MESH_NAME_EXPECTATION}")
        name = args.mesh_name
    if args.service_type is not None:
        service_type = args.service_type
    if args.interface is not None:
        interfaces = args.interface
    return name, service_type, ([] if args.no_zeroconf else interfaces), token


def gather(client, wait_s: float, seeds: int, zeroconf: bool) -> None:
    """Wait (at most ``wait_s``) until the view is settled: browsing had its window, the seeds
    answered, every member's state is known and nothing changed for ``QUIET_S``."""
    start = time.monotonic()
    deadline = start + wait_s
    if seeds:  # polled: a seed that never answers simply holds the view until the deadline
        while client.liveness.seeds_pending() and time.monotonic() < deadline:
            time.sleep(0.02)
    if zeroconf:
        time.sleep(max(0.0, min(deadline, start + ZEROCONF_MIN_S) - time.monotonic()))
    client.wait_settled(max(0.0, deadline - time.monotonic()), quiet_s=QUIET_S)


def _mesh_status(args) -> int:
    from edgeloop.client import MeshClient
    from edgeloop.config import ConfigError

    try:
        name, service_type, interfaces, token = _settings(args)
        client = MeshClient(seeds=args.seed, interfaces=interfaces, service_type=service_type, mesh_name=name,
                            token=token)
    except (ConfigError, ValueError) as exc:  # AuthError is a ValueError
        print(f"edgeloop status: {exc}", file=sys.stderr)
        return 2
    try:
        gather(client, args.wait, len(args.seed), bool(interfaces))
        members = client.view()
        epochs = dict(client.liveness.remote_epochs)
        if args.json:
            print(json.dumps({
                "mesh": name,
                "epoch": client.epoch,
                "nodes": [{
                    "id": m.node_id, "address": m.address, "state": m.state, "ready": m.ready,
                    "condition": m.condition, "weight": m.weight, "zone": m.zone, "queue_depth": m.queue_depth,
                    "models": {k: list(v) for k, v in m.models.items()},
                    "node_epoch": epochs.get(m.node_id), "sources": sorted(m.sources),
                } for m in members],
            }, indent=2))
            return 0 if members else 1
        counts = {c: sum(1 for m in members if m.condition == c)
                  for c in ("ready", "not-ready", "draining", "down", "unknown")}
        summary = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
        print(f"mesh {name!r} view epoch {client.epoch}: {len(members)} nodes" + (f" ({summary})" if summary else ""))
        if not members:
            how = f"seeds {args.seed}" if args.seed else ""
            if interfaces:
                how += (" and " if how else "") + f"zeroconf on {','.join(interfaces)}"
            print(f"no nodes of mesh {name!r} found via {how} within {args.wait:g}s")
            return 1
        rows = [("NODE", "ADDRESS", "STATE", "WEIGHT", "ZONE", "QUEUE", "EPOCH", "MODELS")]
        for m in members:
            models = " ".join(f"{k}:{','.join(map(str, v))}" for k, v in sorted(m.models.items())) or "-"
            rows.append((m.node_id, m.address, m.condition, f"{m.weight:g}", m.zone, str(m.queue_depth),
                         str(epochs.get(m.node_id, "?")), models))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        return 0
    finally:
        client.close()


def register(sub) -> None:
    parser = sub.add_parser(
        "status", help="show a running mesh: nodes, liveness, models, weights, epochs",
        description=f"Show one mesh's membership view. STATE is ready (up, serving models), not-ready (up, "
                    f"no model ready yet), draining, down (no health answer) or unknown. With zeroconf it "
                    f"listens at least {ZEROCONF_MIN_S:g} s (mDNS answers a repeated query only once a second), "
                    f"then until every node's state is known and the view was quiet for {QUIET_S:g} s; "
                    f"never longer than --wait ({DEFAULT_WAIT_S:g} s by default).")
    parser.add_argument("--mesh", action="store_true", help="show the mesh membership view (the default)")
    parser.add_argument("--config", metavar="FILE", help="a cloud config ([storage] table): the fleet view from the "
                                                         "coordinator; an edge config: take mesh.name, "
                                                         "mesh.service_type and mesh.zeroconf_interfaces from it")
    parser.add_argument("--mesh-name", metavar="NAME", help="the mesh to show (default: mesh.name of --config, "
                                                            "else 'default'); nodes of other meshes are not shown")
    parser.add_argument("--seed", action="append", default=[], metavar="HOST:PORT",
                        help="a node to ask directly (repeatable); zeroconf browsing runs as well")
    parser.add_argument("--interface", action="append", default=None, metavar="ADDR",
                        help="interface address for zeroconf browsing (default 127.0.0.1)")
    parser.add_argument("--no-zeroconf", action="store_true", help="use only --seed addresses")
    parser.add_argument("--service-type", default=None, help="DNS-SD service type (default _edgeloop._tcp.local.)")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="S",
                        help=f"the longest to gather the view (default {DEFAULT_WAIT_S:g}); it ends sooner once "
                             f"the view is settled: zeroconf listened {ZEROCONF_MIN_S:g} s, the seeds answered, "
                             f"every state is known and nothing changed for {QUIET_S:g} s")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    fleet_view.add_arguments(parser)  # --config CLOUD.toml: the fleet view from the coordinator
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    """The fleet view when --config names a cloud config, else the mesh view."""
    if fleet_view.is_cloud_config(args.config):
        return fleet_view.run(args)
    return _mesh_status(args)
