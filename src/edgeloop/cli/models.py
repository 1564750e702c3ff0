"""``edgeloop models push FILE.onnx --model NAME --config CLOUD.toml [--features DEF.json]``, ``models list``,
and the registry views ``models show NAME[:VERSION] | lineage NAME:VERSION | promote NAME:VERSION |
rollback NAME[:VERSION]``.

A push stores the file in the coordinator's artifact directory (by sha256) and directs every edge
to load it; edges that join later are directed on Join.
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    parser = sub.add_parser("models", help="publish models to the fleet through the coordinator, list them")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    push = actions.add_parser("push", help="store FILE.onnx as a new model version (printed) and start its "
                                           "staged rollout")
    push.add_argument("file", metavar="FILE.onnx")
    push.add_argument("--model", required=True, metavar="NAME", help="model name")
    push.add_argument("--version", type=int, default=0, metavar="N", help="version (default: one above the highest)")
    push.add_argument("--config", required=True, metavar="CLOUD.toml", help="cloud config (address, token, TLS)")
    push.add_argument("--features", default="", metavar="DEF.json",
                      help="the model's feature definition (raw inputs and derived features); it goes into the "
                           "signed manifest, and edges serve the model with real-time features")
    push.set_defaults(handler=run_push)
    listing = actions.add_parser("list", help="models and versions the fleet serves, with sample and label counts")
    listing.add_argument("--config", required=True, metavar="CLOUD.toml", help="cloud config (address, token, TLS)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_list)
    from .ctcalls import add_common

    show = actions.add_parser("show", help="versions, aliases and evaluations of NAME (or NAME:VERSION)")
    show.add_argument("ref", metavar="NAME[:VERSION]")
    add_common(show)
    show.set_defaults(handler=run_registry, method="ShowModel", verb="show")
    lineage = actions.add_parser("lineage", help="where NAME:VERSION came from: trigger, data, code, seed, "
                                                 "evaluation, compression, serving edges")
    lineage.add_argument("ref", metavar="NAME:VERSION")
    add_common(lineage)
    lineage.set_defaults(handler=run_registry, method="ModelLineage", verb="lineage")
    promote = actions.add_parser("promote", help="publish NAME:VERSION again as the newest version (champion)")
    promote.add_argument("ref", metavar="NAME:VERSION")
    promote.add_argument("--reason", default="", metavar="TEXT")
    add_common(promote)
    promote.set_defaults(handler=run_registry, method="PromoteModel", verb="promote")
    rollback = actions.add_parser("rollback", help="publish the version before the champion (or NAME:VERSION) "
                                                   "again as the newest version")
    rollback.add_argument("ref", metavar="NAME[:VERSION]")
    rollback.add_argument("--reason", default="", metavar="TEXT")
    add_common(rollback)
    rollback.set_defaults(handler=run_registry, method="RollBackModel", verb="rollback")


def _channel(args):
    from edgeloop.config import load_cloud_config
    from edgeloop.coordinator.fleet_client import open_fleet_channel

    return open_fleet_channel(load_cloud_config(args.config))


def _fail(exc) -> int:
    import grpc

    if isinstance(exc, grpc.RpcError):
        print(f"edgeloop models: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"edgeloop models: {exc}", file=sys.stderr)
    return 2


def run_push(args) -> int:
    import grpc

    from edgeloop.config import ConfigError
    from edgeloop.coordinator.fleet_client import push_model
    from edgeloop.protocol.auth import AuthError

    if args.version < 0:
        return _fail(ValueError(f"--version {args.version}: expected a version >= 1 (or 0 for the next one)"))
    try:
        with open(args.file, "rb"):
            pass
    except OSError as exc:
        return _fail(ValueError(f"{args.file}: cannot be read ({exc.strerror}); expected a model file"))
    try:
        features = _features_text(args.features)
    except ValueError as exc:
        return _fail(exc)
    try:
        channel = _channel(args)
    except (ConfigError, AuthError, OSError) as exc:
        return _fail(exc)
    try:
        reply = push_model(channel, args.file, args.model, args.version, features_json=features)
    except (grpc.RpcError, OSError) as exc:
        return _fail(exc)
    finally:
        channel.close()
    print(f"published {reply.model} version {reply.version} (sha256 {reply.sha256}, {reply.size} bytes"
          f"{', with its feature definition' if features else ''}); "
          f"{reply.edges_directed} edge(s) directed to load it (the rollout's first wave)")
    return 0


#: the largest feature definition file read (the coordinator's bound too)
MAX_FEATURES_FILE_BYTES = 1 << 20


def _features_text(path: str) -> str:
    """The definition file's text ('' without one); the coordinator validates it against the model."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FEATURES_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"--features {path}: cannot be read ({exc.strerror}); expected a feature definition "
                         f"JSON file") from None
    if len(raw) > MAX_FEATURES_FILE_BYTES:
        raise ValueError(f"--features {path}: more than {MAX_FEATURES_FILE_BYTES} bytes; expected a feature "
                         f"definition JSON file of at most that")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--features {path}: not UTF-8; expected a feature definition JSON file") from None


def run_list(args) -> int:
    import grpc

    from edgeloop.config import ConfigError
    from edgeloop.coordinator.fleet_client import fleet_status
    from edgeloop.protocol.auth import AuthError

    try:
        channel = _channel(args)
    except (ConfigError, AuthError, OSError) as exc:
        return _fail(exc)
    try:
        view = fleet_status(channel)
    except grpc.RpcError as exc:
        return _fail(exc)
    finally:
        channel.close()
    models: dict[str, dict] = {m["model"]: {"model": m["model"], "served": {}, **{k: m[k] for k in (
        "samples", "labelled", "labels", "unjoined_labels")}} for m in view["models"]}
    for node in view["nodes"]:
        for m in node["models"]:
            entry = models.setdefault(m["model"], {"model": m["model"], "served": {}, "samples": 0, "labelled": 0,
                                                   "labels": 0, "unjoined_labels": 0})
            entry["served"].setdefault(str(m["version"]), []).append(node["node_id"])
    rows = sorted(models.values(), key=lambda e: e["model"])
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    print(f"{'MODEL':<24} {'SAMPLES':>9} {'LABELLED':>9}  SERVED (version: edges)")
    for e in rows:
        versions = sorted(e["served"].items(), key=lambda item: int(item[0]))
        served = "; ".join(f"{v}: {','.join(sorted(n))}" for v, n in versions)
        print(f"{e['model']:<24} {e['samples']:>9} {e['labelled']:>9}  {served or '-'}")
    return 0


def run_registry(args) -> int:
    from .ctcalls import call, model_ref

    try:
        model, version = model_ref(args.ref)
    except ValueError as exc:
        return _fail(exc)
    if args.verb in ("lineage", "promote") and not version:
        return _fail(ValueError(f"{args.ref!r}: expected NAME:VERSION"))
    return call(args, f"models {args.verb}", args.method, model=model, version=version,
                reason=getattr(args, "reason", ""))
