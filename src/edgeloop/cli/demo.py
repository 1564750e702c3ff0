"""``edgeloop demo``: a coordinator and three edges on loopback, a drifting stream, a live view, a report."""
from __future__ import annotations

import sys

#: ``--fast`` on Elec2: a slice around row 17,424, where vicprice/vicdemand/transfer stop being constant
FAST_ELEC2 = (15_000, 19_500)
FAST_ROWS = 3000
#: the default pace (rows/s): the full Elec2 replay in about 3 minutes, slow enough that the CT loop's runs and
#: staged rollouts land while the stream goes on (--speed 0: as fast as the mesh goes)
SPEED, FAST_SPEED = 250.0, 200.0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole loop in one command: 3 edges + cloud on a drifting stream")
    p.add_argument("--data", metavar="FILE.csv", help="a CSV stream (default: Elec2, shipped with edgeloop)")
    p.add_argument("--label", metavar="COLUMN", help="the class column (required with --data)")
    p.add_argument("--key", metavar="COLUMN", help="the entity column (routing key); default: eight streams")
    p.add_argument("--features", metavar="A,B,C", help="input columns (default: every other column)")
    p.add_argument("--definition", metavar="DEF.json",
                   help="the model's feature definition (raw inputs + real-time features the edges compute); "
                        "default for Elec2: the one shipped with it (label and demand history)")
    p.add_argument("--raw", action="store_true", help="no feature definition: the model sees the raw inputs only")
    p.add_argument("--no-online-head", action="store_true",
                   help="the definition without its online head (the edges serve the model's own output)")
    p.add_argument("--label-delay", type=int, default=1, metavar="ROWS", help="labels arrive this many rows late")
    p.add_argument("--eval-start", type=int, metavar="ROW",
                   help="first evaluated row; the first model trains on the rows before (default: 10%%)")
    p.add_argument("--speed", type=float, default=None, metavar="ROWS_PER_S",
                   help=f"0: as fast as the mesh goes (default {SPEED:.0f}; with --fast {FAST_SPEED:.0f})")
    p.add_argument("--fast", action="store_true", help="a short slice (under a minute), for CI")
    p.add_argument("--workdir", metavar="DIR", help="working directory (default: a fresh one, printed)")
    p.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live view")
    p.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from edgeloop.demo import stream as streams
    from edgeloop.demo.run import Options, run

    if args.label_delay < 1 or args.label_delay > 100_000:
        return _fail(f"--label-delay {args.label_delay}: expected 1..100000 rows")
    if args.speed is None:
        args.speed = FAST_SPEED if args.fast else SPEED
    if args.speed < 0:
        return _fail(f"--speed {args.speed}: expected >= 0 rows per second (0: unlimited)")
    if args.data and not args.label:
        return _fail("--data: expected --label COLUMN with it")
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    try:
        if args.data:
            stream = streams.load_csv(args.data, args.label, args.key, features)
            if args.fast:
                stream = stream.slice(0, FAST_ROWS)
        else:
            stream = streams.elec2()
            if args.fast:
                stream = stream.slice(*FAST_ELEC2)
        definition = None
        if not args.raw and (args.definition or not args.data):
            from edgeloop.demo import definition as definitions

            definition = definitions.load(args.definition or definitions.ELEC2_DEFINITION, stream)
            if args.no_online_head:
                definition = definition.without_online()
    except streams.StreamError as exc:
        return _fail(str(exc))
    eval_start = args.eval_start
    if eval_start is None and args.fast:
        eval_start = min(600, stream.rows // 5)
    try:
        run(Options(stream, args.workdir, args.label_delay, eval_start, args.speed, args.fast,
                    live=not args.no_live and sys.stdout.isatty(), definition=definition))
    except ValueError as exc:
        return _fail(str(exc))
    except RuntimeError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(message: str) -> int:
    print(f"edgeloop demo: {message}", file=sys.stderr)
    return 2
