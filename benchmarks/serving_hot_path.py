"""In-process cost of the serving hot path, per request, without the gRPC transport.

Times ``InferenceServicer.ModelInfer`` (+ serialising the response, as grpcio does) on the demo MLP,
batch 1, against ``session.run`` alone, and the pieces in between (decode, acquire/leave,
statistics, response building).  A developer's tool for shaving microseconds: the end-to-end
ratios against a bare-grpcio floor live in ``serving_latency.py``.  Each row is the best of
``--blocks`` blocks of ``--calls`` calls (bounded in count).

Targets (ratios of best times in this run, so they travel between machines): the unbatched
ModelInfer path <= 5x ``session.run`` of the demo MLP (3.5x when the targets were set), and
the path of a batching model at no load <= 1.5x the unbatched one (1.2x then).  With
``--check`` the exit status is 1 when one is missed.

    python benchmarks/serving_hot_path.py [--calls 4000] [--blocks 7] [--check]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeloop.config import ModelConfig, ServingConfig
from edgeloop.protocol import inference_pb2
from edgeloop.serving.demo_models import build_mlp, write_model
from edgeloop.serving.manager import ModelManager
from edgeloop.serving.repository import ModelRepository
from edgeloop.serving.servicer import InferenceServicer

TARGETS = {"unbatched / session.run": 5.0, "batching / unbatched": 1.5}


def best_us(fn, calls: int, blocks: int) -> tuple[float, float]:
    """(best, median) microseconds per call over ``blocks`` blocks of ``calls`` calls."""
    for _ in range(min(500, calls)):
        fn()
    per_call = []
    for _ in range(blocks):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter_ns() - t0) / calls / 1000)
    return min(per_call), statistics.median(per_call)


def request(name: str, x: np.ndarray):
    """A ModelInferRequest as the server sees it: parsed from the wire."""
    r = inference_pb2.ModelInferRequest(model_name=name, id="r1")
    tensor = r.inputs.add(name="INPUT0", datatype="FP32")
    tensor.shape.extend(x.shape)
    r.raw_input_contents.append(x.tobytes())
    return inference_pb2.ModelInferRequest.FromString(r.SerializeToString())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if not (1 <= args.calls <= 1_000_000 and 1 <= args.blocks <= 100):
        parser.error(f"--calls must be in [1, 1000000] and --blocks in [1, 100]; got {args.calls}, {args.blocks}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        write_model(root, "mlp", 1, build_mlp())
        write_model(root, "mlp_batching", 1, build_mlp())
        serving = ServingConfig(model_repository=root, models=(ModelConfig("mlp_batching", max_batch_size=8),))
        models = ModelManager(ModelRepository(root), serving)
        models.load_all()
        servicer = InferenceServicer(models)
        x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
        plain, batching = request("mlp", x), request("mlp_batching", x)
        mv = models.acquire("mlp", "")
        mv.leave()
        names, feeds = mv._all_output_names, {"INPUT0": x}
        outputs = mv.session.run(names, feeds)
        rows = {
            "session.run (the model alone)": lambda: mv.session.run(names, feeds),
            "ModelInfer + serialize, unbatched": lambda: servicer.ModelInfer(plain, None).SerializeToString(),
            "ModelInfer + serialize, batching model": lambda: servicer.ModelInfer(batching, None).SerializeToString(),
            "  signature.decode": lambda: mv.signature.decode(plain),
            "  acquire + leave": lambda: models.acquire("mlp", "").leave(),
            "  stats.record_solo": lambda: mv.stats.record_solo(12000, 2000, 5000, 1000),
            "  response building": lambda: mv._respond(plain, mv.signature.outputs, outputs),
        }
        results = {}
        for label, fn in rows.items():
            results[label] = best_us(fn, args.calls, args.blocks)
            print(f"{label:40s} best {results[label][0]:7.2f} us   median {results[label][1]:7.2f} us")
        overhead = results["ModelInfer + serialize, unbatched"][0] - results["session.run (the model alone)"][0]
        print(f"serving overhead over session.run (best, unbatched): {overhead:.2f} us per request")
        models.close(1.0)
    unbatched = results["ModelInfer + serialize, unbatched"][0]
    ratios = {"unbatched / session.run": unbatched / results["session.run (the model alone)"][0],
              "batching / unbatched": results["ModelInfer + serialize, batching model"][0] / unbatched}
    misses = 0
    for name, value in ratios.items():
        ok = value <= TARGETS[name]
        misses += not ok
        print(f"{name:40s} {value:7.2f}   target <= {TARGETS[name]:.2f}   {'ok' if ok else 'MISS'}")
    return 1 if args.check and misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
