"""``edgeloop perf``: a load generator for any Open Inference Protocol gRPC endpoint.

In the spirit of Triton's perf_analyzer: read the model's metadata, build random inputs
from its signature, and sweep concurrency levels, reporting latency percentiles and
throughput.  It is a pure protocol client (no serving internals), so it measures ours
and Triton's servers the same way.
"""
from edgeloop.perf.errors import PerfError
from edgeloop.perf.stats import LevelStats, percentile, summarize

__all__ = ["PerfError", "LevelStats", "percentile", "summarize"]
