"""``edgeloop perf``: latency percentiles and throughput of any Open Inference Protocol endpoint."""
from __future__ import annotations

import argparse


def _concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers such as 1,4,16, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"expected concurrency levels >= 1 such as 1,4,16, got {text!r}")
    return levels


def _bounded(kind, lowest, strict: bool, what: str):
    """An argparse type: ``kind(text)`` that must be > lowest (strict) or >= lowest."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value > lowest if strict else value >= lowest):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, 1, False, "an integer >= 1")
_non_negative_int = _bounded(int, 0, False, "an integer >= 0")
_positive_float = _bounded(float, 0.0, True, "a number of seconds > 0")


def _handle(args) -> int:
    import sys

    from edgeloop.perf.errors import PerfError
    from edgeloop.perf.sweep import PerfConfig, run

    cfg = PerfConfig(
        url=args.url,
        model=args.model,
        model_version=args.model_version,
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        batch_size=args.batch_size,
        warmup=args.warmup,
        seed=args.seed,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        json_path=args.json,
        csv_path=args.csv,
    )
    try:
        result = run(cfg)
    except PerfError as err:
        print(f"edgeloop perf: error: {err}", file=sys.stderr)
        return err.exit_code
    if result.total_errors:
        print(f"edgeloop perf: {result.total_errors} requests failed", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    parser = sub.add_parser(
        "perf",
        help="load-test an Open Inference Protocol gRPC endpoint (ours or Triton's)",
        description="Sweep concurrency levels against a model and report latency percentiles and throughput. "
        "Every level is bounded by a request count and a time limit.",
    )
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address HOST:PORT (default %(default)s)")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    parser.add_argument("--concurrency", type=_concurrency_list, default=[1], metavar="LIST",
                        help="comma-separated concurrency levels, e.g. 1,4,16 (default 1)")
    parser.add_argument("--requests", type=_positive_int, metavar="N",
                        help="measured requests per level (capped at 60 s unless --duration is given)")
    parser.add_argument("--duration", type=_positive_float, metavar="S",
                        help="seconds per level (default 5 when --requests is not given)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="B",
                        help="size of the dynamic first dimension of each input (default 1)")
    parser.add_argument("--warmup", type=_non_negative_int, default=10, metavar="N",
                        help="unrecorded requests sent before each level (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                        help="deadline of each request in seconds (default 10)")
    parser.add_argument("--connect-timeout", type=_positive_float, default=5.0, metavar="S",
                        help="seconds to wait for the server to answer (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write one CSV row per level")
    parser.set_defaults(handler=_handle)
