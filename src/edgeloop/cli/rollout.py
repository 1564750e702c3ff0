"""``edgeloop rollout start|status|pause|resume|abort|pin|unpin``: staged rollouts through the coordinator."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    parser = sub.add_parser("rollout", help="staged rollouts of model versions (canary, waves, gates, rollback)")
    actions = parser.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start a rollout of a published NAME:VERSION")
    start.add_argument("target", metavar="NAME:VERSION")
    start.add_argument("--canary", type=int, default=0, metavar="N", help="canary edges (default: the config's)")
    start.add_argument("--bake-s", type=float, default=0.0, metavar="S", help="bake time per wave (default: config)")
    status = actions.add_parser("status", help="every rollout: state, reason, per-edge progress")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    for name in ("pause", "resume", "abort"):
        p = actions.add_parser(name, help=f"{name} a rollout")
        p.add_argument("rollout_id", metavar="ROLLOUT_ID")
    for name in ("pin", "unpin"):
        p = actions.add_parser(name, help=f"{name} an edge (or zone:NAME) {'to' if name == 'pin' else 'from'} a "
                                          f"version; pinned edges are skipped by rollouts")
        p.add_argument("target", metavar="EDGE|zone:NAME")
        p.add_argument("model", metavar="NAME:VERSION" if name == "pin" else "NAME")
    for p in (start, status, *[actions.choices[n] for n in ("pause", "resume", "abort", "pin", "unpin")]):
        p.add_argument("--config", required=True, metavar="CLOUD.toml", help="cloud config (address, token, TLS)")
        p.set_defaults(handler=run)


def _name_version(text: str) -> tuple[str, int]:
    name, sep, version = text.rpartition(":")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise ValueError(f"{text!r}: expected NAME:VERSION with a version >= 1")
    return name, int(version)


def run(args) -> int:
    import grpc

    from edgeloop.config import ConfigError, load_cloud_config
    from edgeloop.coordinator.fleet_client import open_fleet_channel
    from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
    from edgeloop.protocol.auth import AuthError

    action = args.rollout_command
    request = mesh_pb2.RolloutRequest(action=action)
    try:
        if action == "start":
            request.model, request.version = _name_version(args.target)
            if args.canary < 0 or args.bake_s < 0:
                raise ValueError(f"--canary {args.canary} --bake-s {args.bake_s}: expected numbers >= 0")
            request.canary, request.bake_s = args.canary, args.bake_s
        elif action in ("pause", "resume", "abort"):
            request.rollout_id = args.rollout_id
        elif action == "pin":
            request.target = args.target
            request.model, request.version = _name_version(args.model)
        elif action == "unpin":
            request.target, request.model = args.target, args.model
        channel = open_fleet_channel(load_cloud_config(args.config))
    except (ValueError, ConfigError, AuthError, OSError) as exc:
        print(f"edgeloop rollout: {exc}", file=sys.stderr)
        return 2
    try:
        reply = mesh_pb2_grpc.FleetStub(channel).Rollout(request, timeout=30)
    except grpc.RpcError as exc:
        print(f"edgeloop rollout: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    doc = json.loads(reply.json)
    if action == "status" and not args.json:
        for r in doc["rollouts"]:
            done = sum(1 for s in r["edges"].values() if s == "applied")
            print(f"{r['rollout_id']:<32} {r['model']}:{r['version']:<5} {r['state']:<12} wave "
                  f"{r['wave'] + 1}/{len(r['waves'])}  applied {done}/{len(r['edges'])}  {r['reason']}")
        if not doc["rollouts"]:
            print("no rollouts")
        return 0
    if action == "status":
        doc = {"rollouts": [{k: r[k] for k in ("rollout_id", "model", "version", "state", "reason", "edges", "waves",
                                                 "wave", "pinned", "plan", "decisions")} for r in doc["rollouts"]]}
    print(json.dumps(doc, indent=2) if action == "status" else
          (f"rollout {doc['rollout_id']}: {doc['state']} ({doc['reason']})" if "rollout_id" in doc else
           json.dumps(doc)))
    return 0
