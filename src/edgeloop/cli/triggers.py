"""``edgeloop triggers list [--model NAME] --config CLOUD.toml``: every trigger firing, its evidence and outcome."""
from __future__ import annotations

from .ctcalls import add_common, call


def register(sub) -> None:
    parser = sub.add_parser("triggers", help="continuous-training trigger firings with their evidence")
    actions = parser.add_subparsers(dest="triggers_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="trigger firings, oldest first, with evidence and outcome")
    listing.add_argument("--model", default="", metavar="NAME", help="one model (default: all)")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="newest N firings (default 100)")
    add_common(listing)
    listing.set_defaults(handler=run_list)


def run_list(args) -> int:
    return call(args, "triggers list", "ListTriggers", model=args.model, limit=max(0, args.limit))
