"""``edgeloop edge``: run one edge node (flags named as Triton names them override the config).

It needs ``--config FILE`` or ``--model-repository DIR``: with neither it would quietly serve nothing on
the default port and join the default mesh, so it asks instead.  On start it prints what it is doing
(address, repository and ready models, the mesh it joined and how).

``edgeloop edge --demo-model DIR`` writes the project's demo model (``demo_mlp`` version 1) into the
repository ``DIR`` and exits, so there is something to serve, and prints the command that serves it
(``--config FILE`` when given, or the example config in ``edge-configs/`` whose repository is DIR):
``edgeloop edge --demo-model models && edgeloop edge --model-repository models --grpc-port 8001``.
"""
from __future__ import annotations

import argparse
import sys

DEMO_MODEL_NAME = "demo_mlp"


def register(sub) -> None:
    parser = sub.add_parser("edge", help="run an edge node: ONNX models over the Open Inference Protocol (gRPC)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="edge config (TOML); flags below override it")
    parser.add_argument("--model-repository", metavar="DIR", help="model repository <DIR>/<model>/<version>/model.onnx")
    parser.add_argument("--grpc-port", type=int, metavar="N", help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus metrics port (0 = pick a free one)")
    parser.add_argument("--node-id", metavar="ID", help="this node's id")
    parser.add_argument("--host", metavar="ADDR", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--no-mesh", action="store_true", help="serve alone: no peer discovery or forwarding")
    parser.add_argument("--grace-s", type=float, default=10.0, metavar="S",
                        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 10)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--demo-model", metavar="DIR",
                        help=f"write the demo model '{DEMO_MODEL_NAME}' (version 1) into repository DIR and exit "
                             "(with --config, print how to serve it with that config)")
    parser.set_defaults(handler=run)


def build_config(args):
    """The EdgeConfig from ``--config`` (or defaults) with the flags applied."""
    from dataclasses import replace
    from pathlib import Path

    from edgeloop.config import EdgeConfig, load_edge_config

    config = load_edge_config(args.config) if args.config else EdgeConfig()
    node = config.node
    for flag, field in (("node_id", "id"), ("host", "host"), ("grpc_port", "grpc_port"),
                        ("metrics_port", "metrics_port")):
        value = getattr(args, flag)
        if value is not None:
            node = replace(node, **{field: value})
    for flag in ("grpc_port", "metrics_port"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 65535:
            raise ValueError(f"--{flag.replace('_', '-')} {value}: expected a port number 0..65535 (0 = any free)")
    serving = config.serving
    if args.model_repository is not None:
        serving = replace(serving, model_repository=Path(args.model_repository).resolve())
    mesh = replace(config.mesh, enabled=False) if args.no_mesh else config.mesh
    return replace(config, node=node, serving=serving, mesh=mesh)


def serve_hint(directory: str, config_file: str | None = None) -> str:
    """The command that serves repository ``directory``: a config whose ``serving.model_repository`` is it
    (``config_file``, else one of ``edge-configs/*.toml`` under the working directory), so the port
    shown is the one that config really uses; else flags on the default port."""
    from pathlib import Path

    from edgeloop.config import ConfigError, load_edge_config

    target = Path(directory).resolve()
    candidates = [Path(config_file)] if config_file else sorted(Path("edge-configs").glob("*.toml"))
    for path in candidates:
        try:
            config = load_edge_config(path)
        except (ConfigError, OSError):
            continue
        repo = config.serving.model_repository
        if repo is not None and repo.resolve() == target:
            return (f"edgeloop edge --config {path}   "
                    f"(node {config.node.id} on {config.node.host}:{config.node.grpc_port})")
    if config_file:
        return f"edgeloop edge --config {config_file} --model-repository {directory}"
    return f"edgeloop edge --model-repository {directory} --grpc-port 8001 --no-mesh"


def write_demo_model(directory: str, config_file: str | None = None) -> int:
    from edgeloop.node import write_demo_model as write

    path = write(directory, DEMO_MODEL_NAME, 1)
    print(f"wrote demo model {DEMO_MODEL_NAME} version 1 to {path}")
    print(f"serve it with: {serve_hint(directory, config_file)}")
    return 0


def describe_start(config, node) -> str:
    """One line saying what the started node is doing: where, which models, which mesh and how."""
    ready = node.models.ready_models()
    models = ", ".join(f"{m}:{','.join(map(str, v))}" for m, v in sorted(ready.items())) or "none yet"
    mesh = config.mesh
    if not mesh.enabled:
        how = "mesh off (--no-mesh or mesh.enabled = false)"
    else:
        how = (f"mesh {mesh.name!r} (zeroconf on {','.join(mesh.zeroconf_interfaces) or 'nothing'}, "
               f"{len(mesh.static_peers)} static peers)")
    return (f"listening on {node.address} (metrics on port {node.metrics_port}); "
            f"repository {config.serving.model_repository}; models ready: {models}; {how}")


def run(args) -> int:
    import logging
    import signal
    import threading

    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo_model:
        return write_demo_model(args.demo_model, args.config)

    from edgeloop.config import ConfigError

    try:
        config = build_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"edgeloop edge: {exc}", file=sys.stderr)
        return 2
    if args.config is None and args.model_repository is None:
        print("edgeloop edge: give --config FILE (examples in edge-configs/) or --model-repository DIR; "
              f"with neither, node {config.node.id!r} would serve no models on "
              f"{config.node.host}:{config.node.grpc_port}"
              + (f" and join mesh {config.mesh.name!r}" if config.mesh.enabled else "")
              + ". To try it: edgeloop edge --demo-model models && edgeloop edge --model-repository models",
              file=sys.stderr)
        return 2
    if config.serving.model_repository is not None:
        config.serving.model_repository.mkdir(parents=True, exist_ok=True)

    from edgeloop.node import EdgeNode
    from edgeloop.protocol.auth import AuthError

    try:
        node = EdgeNode(config)
    except (OSError, AuthError) as exc:  # a port in use; an unreadable or malformed token file
        print(f"edgeloop edge: {exc}", file=sys.stderr)
        return 1
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("edgeloop.node").info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except OSError as exc:
        print(f"edgeloop edge: cannot start: {exc} (node.metrics_port / --metrics-port?)", file=sys.stderr)
        node.stop(0)
        return 1
    print(describe_start(config, node), flush=True)
    while not stop_requested.wait(0.5):
        pass
    node.stop(args.grace_s)
    return 0
