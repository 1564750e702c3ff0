"""``edgeloop mesh replay LOG``: recompute every logged placement decision, report mismatches."""
from __future__ import annotations

import sys


def _replay(args) -> int:
    from edgeloop.node import replay_decision_log as replay

    try:
        report = replay(args.log)
    except OSError as exc:
        print(f"edgeloop mesh replay: LOG {args.log!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for line in report.mismatches[: args.max_report]:
        print(f"MISMATCH {line}")
    if len(report.mismatches) > args.max_report:
        print(f"... and {len(report.mismatches) - args.max_report} more mismatches")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {report.decisions} decisions over {report.snapshots} snapshots replayed, "
          f"{len(report.mismatches)} mismatches")
    return 0 if report.ok else 1


def register(sub) -> None:
    parser = sub.add_parser("mesh", help="mesh tools (replay a placement decision log)")
    which = parser.add_subparsers(dest="mesh_command", metavar="ACTION", required=True)
    replay = which.add_parser("replay", help="recompute each decision in a decision log; non-zero exit on mismatch")
    replay.add_argument("log", metavar="LOG", help="JSON-lines decision log written with [mesh] decision_log")
    replay.add_argument("--max-report", type=int, default=20, help="mismatches to print in full (default 20)")
    replay.set_defaults(handler=_replay)
