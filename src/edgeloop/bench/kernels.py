"""``edgeloop bench kernels``: each compiled kernel against its NumPy/SciPy/sklearn baseline.

Cases come from ``kernel_cases_linalg`` (dense, randomized SVD, compression) and
``kernel_cases_stats`` (histograms, placement).  Everything runs with one BLAS thread.
"""
from __future__ import annotations

import argparse
import json

from edgeloop.bench.harness import measure, print_table, single_blas_thread


def collect_cases(quick: bool, only: str | None):
    from edgeloop.bench import kernel_cases_linalg, kernel_cases_stats

    cases = [*kernel_cases_linalg.cases(quick), *kernel_cases_stats.cases(quick)]
    if only:
        cases = [c for c in cases if only in c.kernel]
    return cases


def run(quick: bool = False, only: str | None = None, json_path: str | None = None) -> int:
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
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller time budget per case")
    parser.add_argument("--only", metavar="SUBSTR", help="run only kernels whose name contains SUBSTR")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write results as JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.quick, args.only, args.json_path)
