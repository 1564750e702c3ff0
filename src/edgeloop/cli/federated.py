"""``edgeloop federated round MODEL --config CLOUD.toml``: one federated round (train on the edges, gate, publish)."""
from __future__ import annotations

from .ctcalls import add_common, call

#: a round waits up to twice ``[training] federated_timeout_s`` for the edges (train, then evaluate)
ROUND_TIMEOUT_S = 600.0


def register(sub) -> None:
    parser = sub.add_parser("federated", help="federated training of models whose raw data stays on the edges")
    commands = parser.add_subparsers(dest="federated_command", required=True)
    rnd = commands.add_parser("round", help="run one round for MODEL now: edges train locally, the coordinator "
                                            "aggregates, evaluates on the edges' holdouts and publishes if blessed")
    rnd.add_argument("model", metavar="MODEL")
    rnd.add_argument("--reason", default="", metavar="TEXT", help="why (recorded with the run)")
    add_common(rnd)
    rnd.set_defaults(handler=run)


def run(args) -> int:
    return call(args, "federated round", "FederatedRound", model=args.model, reason=args.reason,
                timeout=ROUND_TIMEOUT_S)
