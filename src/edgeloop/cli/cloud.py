"""``edgeloop cloud --config CLOUD.toml``: run the coordinator (fleet registry, ingest, directives, artifacts)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    parser = sub.add_parser("cloud", help="run the coordinator: fleet registry, sample/label ingest, model pushes",
                            description=__doc__)
    parser.add_argument("--config", metavar="FILE", required=True, help="cloud config (TOML) with a [storage] table")
    parser.add_argument("--grpc-port", type=int, metavar="N", help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus metrics port (0 = pick a free one)")
    parser.add_argument("--grace-s", type=float, default=10.0, metavar="S",
                        help="on SIGTERM/SIGINT, how long in-flight uploads may take to commit (default 10)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(handler=run)


def run(args) -> int:
    import logging
    import signal
    import threading
    from dataclasses import replace

    from edgeloop.config import ConfigError, load_cloud_config
    from edgeloop.protocol.auth import AuthError, process_token

    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_cloud_config(args.config)
        for flag, field in (("grpc_port", "grpc_port"), ("metrics_port", "metrics_port")):
            value = getattr(args, flag)
            if value is not None:
                if not 0 <= value <= 65535:
                    raise ValueError(f"--{flag.replace('_', '-')} {value}: expected a port 0..65535 (0 = any free)")
                config = replace(config, node=replace(config.node, **{field: value}))
        token = process_token(config.auth, "coordinator")
    except (ConfigError, ValueError, AuthError, OSError) as exc:
        print(f"edgeloop cloud: {exc}", file=sys.stderr)
        return 2

    from edgeloop.coordinator import Coordinator

    try:
        coordinator = Coordinator(config, token=token)
    except (OSError, RuntimeError) as exc:
        print(f"edgeloop cloud: {exc}", file=sys.stderr)
        return 1
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("edgeloop.coordinator").info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        coordinator.start()
    except OSError as exc:
        print(f"edgeloop cloud: cannot start: {exc} (node.metrics_port / --metrics-port?)", file=sys.stderr)
        coordinator.stop(0)
        return 1
    print(f"coordinator listening on {coordinator.address} (metrics on port {coordinator.metrics_port})", flush=True)
    while not stop_requested.wait(0.5):
        pass
    coordinator.stop(args.grace_s)
    return 0
