"""``edgeloop bench``: run the project's benchmarks from an installed package."""
from __future__ import annotations


def _run_kernels(args) -> int:
    import sys

    from edgeloop.bench.kernels import MissingBenchExtra, run

    try:
        return run(args.quick, args.only, args.json_path, args.check)
    except MissingBenchExtra as exc:  # one line saying what to install, not a traceback
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2


def register(sub) -> None:
    parser = sub.add_parser("bench", help="run benchmarks (ratios against baselines timed in the same run)")
    which = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    kernels = which.add_parser("kernels", help="compiled numeric core vs NumPy/SciPy/sklearn, 1 BLAS thread")
    from edgeloop.bench.kernels import add_arguments

    add_arguments(kernels)
    kernels.set_defaults(handler=_run_kernels)
