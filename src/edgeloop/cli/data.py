"""``edgeloop data quarantine [--model NAME] --config CLOUD.toml``: batches kept out of training, with reasons."""
from __future__ import annotations

from .ctcalls import add_common, call


def register(sub) -> None:
    parser = sub.add_parser("data", help="training data the continuous-training loop judged")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = actions.add_parser("quarantine", help="quarantined batches (kept, never deleted) and why")
    q.add_argument("--model", default="", metavar="NAME", help="one model (default: all)")
    q.add_argument("--limit", type=int, default=100, metavar="N", help="newest N batches (default 100)")
    add_common(q)
    q.set_defaults(handler=run_quarantine)


def run_quarantine(args) -> int:
    return call(args, "data quarantine", "ListQuarantine", model=args.model, limit=max(0, args.limit))
