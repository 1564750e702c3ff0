"""Shared plumbing of the continuous-training commands (``retrain``, ``triggers``, ``data``, ``models show|…``):
open the coordinator channel from the cloud config, make one call, print text or JSON, map errors to exit codes.
"""
from __future__ import annotations

import sys


def add_common(parser, json_flag: bool = True) -> None:
    parser.add_argument("--config", required=True, metavar="CLOUD.toml", help="cloud config (address, token, TLS)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def call(args, command: str, method: str, **fields) -> int:
    """Run ``method`` against the coordinator of ``args.config``; 0 on success, 1 on a refusal, 2 on bad setup."""
    import grpc

    from edgeloop.config import ConfigError, load_cloud_config
    from edgeloop.coordinator.fleet_client import ct_call, open_fleet_channel
    from edgeloop.protocol.auth import AuthError

    try:
        channel = open_fleet_channel(load_cloud_config(args.config))
    except (ConfigError, AuthError, OSError) as exc:
        print(f"edgeloop {command}: {exc}", file=sys.stderr)
        return 2
    try:
        reply = ct_call(channel, method, **fields)
    except grpc.RpcError as exc:
        print(f"edgeloop {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(reply.json if getattr(args, "json", False) else reply.text)
    return 0


def model_ref(text: str) -> tuple[str, int]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or 0)."""
    name, sep, version = text.partition(":")
    if not sep:
        return name, 0
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{text!r}: expected NAME or NAME:VERSION with a version >= 1")
    return name, int(version)
