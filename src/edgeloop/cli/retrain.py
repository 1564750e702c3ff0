"""``edgeloop retrain MODEL --reason TEXT --config CLOUD.toml``: a manual trigger for the CT loop."""
from __future__ import annotations

from .ctcalls import add_common, call


def register(sub) -> None:
    parser = sub.add_parser("retrain", help="ask the continuous-training loop to retrain MODEL now (manual trigger)")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded with the run)")
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    return call(args, "retrain", "Retrain", model=args.model, reason=args.reason)
