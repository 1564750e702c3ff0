"""``edgeloop bench kernels``: each compiled kernel against its NumPy/SciPy/sklearn baseline.

Cases come from ``kernel_cases_linalg`` (dense, randomized SVD, compression) and
``kernel_cases_stats`` (histograms, placement).  Everything runs with one BLAS thread.
Every baseline is timed in the same run, interleaved with ours; with ``--check`` the exit
status is 1 when any ratio misses its target.
"""
from __future__ import annotations

import argparse
import importlib.util
import json

from edgeloop.bench.harness import measure, print_table, single_blas_thread

# What the baselines need beyond edgeloop's own dependencies: the ``bench`` extra.
BENCH_EXTRA = ("sklearn", "threadpoolctl")
INSTALL_HINT = "pip install 'edgeloop[bench]'"


class MissingBenchExtra(RuntimeError):
    """The ``bench`` extra is not installed; the message says what to install."""


def require_bench_extra() -> None:
    """Raise MissingBenchExtra (one line: what is missing, what to install) before any work."""
    missing = []
    for name in BENCH_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise MissingBenchExtra(
            f"edgeloop bench kernels needs {' and '.join(missing)} (the 'bench' extra): {INSTALL_HINT}"
        )


def collect_cases(quick: bool, only: str | None):
    from edgeloop.bench import kernel_cases_linalg, kernel_cases_stats

    cases = [*kernel_cases_linalg.cases(quick), *kernel_cases_stats.cases(quick)]
    if only:
        cases = [c for c in cases if only in c.kernel]
    return cases


def run(quick: bool = False, only: str | None = None, json_path: str | None = None,
        check: bool = False) -> int:
    """Run the cases and print the table; 1 when ``check`` and a target is missed, else 0."""
    require_bench_extra()
    # Collect first: building the cases imports SciPy/sklearn and loads their BLAS libraries, and
    # threadpoolctl can only limit libraries that are already loaded when the limit is entered.
    cases = collect_cases(quick, only)
    with single_blas_thread():
        results = []
        for case in cases:
            results.append(measure(case, max_seconds=3.0 if quick else 10.0))
        print_table(results)
    misses = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(misses)} of {len(results)} within target")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(
                [
                    {
                        "kernel": r.case.kernel,
                        "shape": r.case.shape,
                        "ours_s": r.ours_s,
                        "baseline_s": r.base_s,
                        "baseline": r.case.baseline_name,
                        "ratio": r.ratio,
                        "target": r.case.target,
                        "note": r.note,
                    }
                    for r in results
                ],
                fh,
                indent=2,
            )
    return exit_status(results, check)


def exit_status(results, check: bool) -> int:
    """1 when ``check`` and any result missed its target (saying which), else 0."""
    misses = [r for r in results if not r.ok]
    if check and misses:
        print(f"--check: {len(misses)} target(s) missed: "
              + ", ".join(f"{r.case.kernel} {r.case.shape} ({r.ratio:.3f} > {r.case.target:.2f})" for r in misses))
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller time budget per case")
    parser.add_argument("--only", metavar="SUBSTR", help="run only kernels whose name contains SUBSTR")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when any kernel misses its target")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args.quick, args.only, args.json_path, args.check)
    except MissingBenchExtra as exc:
        parser.exit(2, f"{exc}\n")
