"""``edgeloop labels import FILE.csv --config CLOUD.toml``: ground truth from another system.

The CSV has a header ``request_id,label[,timestamp]`` (timestamp: Unix ms when the label became known;
later ones win).  Bad rows are reported with their line numbers and nothing is sent unless ``--skip-bad``.
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    parser = sub.add_parser("labels", help="import late labels (request_id,label[,timestamp] CSV) into the coordinator")
    actions = parser.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="send the labels of FILE.csv; they join samples by request id")
    imp.add_argument("file", metavar="FILE.csv")
    imp.add_argument("--config", required=True, metavar="CLOUD.toml", help="cloud config (address, token, TLS)")
    imp.add_argument("--skip-bad", action="store_true", help="send the good rows even when some rows are bad")
    imp.set_defaults(handler=run_import)


def run_import(args) -> int:
    import grpc

    from edgeloop.config import ConfigError, load_cloud_config
    from edgeloop.coordinator.fleet_client import import_labels, open_fleet_channel, read_labels_csv
    from edgeloop.protocol.auth import AuthError

    try:
        labels, problems = read_labels_csv(args.file)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        print(f"edgeloop labels import: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{args.file}: line {p.line}: {p.message}", file=sys.stderr)
    if problems and not args.skip_bad:
        print(f"edgeloop labels import: {len(problems)} bad row(s); nothing sent (fix them or use --skip-bad)",
              file=sys.stderr)
        return 1
    try:
        channel = open_fleet_channel(load_cloud_config(args.config))
    except (ConfigError, AuthError, OSError) as exc:
        print(f"edgeloop labels import: {exc}", file=sys.stderr)
        return 2
    try:
        ack = import_labels(channel, [label for _, label in labels])
    except grpc.RpcError as exc:
        print(f"edgeloop labels import: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(f"imported {ack.rows_stored} label(s) from {len(labels)} row(s) in {len(ack.accepted_batch_ids)} batch(es)")
    return 0
