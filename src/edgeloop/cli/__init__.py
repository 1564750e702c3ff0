"""The ``edgeloop`` command line.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``; modules are discovered, so adding a command touches no
shared list.  ``register`` must stay cheap (no grpc/onnxruntime imports): heavy
imports happen inside the command's handler, so ``edgeloop --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import edgeloop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop",
        description="edgeloop: an edge-to-cloud inference mesh that keeps its models fresh.",
    )
    parser.add_argument("--version", action="version", version=f"edgeloop {edgeloop.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at interpreter exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``edgeloop status | head``): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own final flush must not fail again
        return 141  # what a shell reports for a command ended by SIGPIPE


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)
