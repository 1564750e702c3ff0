"""Joint inference through the unmodified tritonclient: the policy is server-side, the client just asks.

Run by test_escalation.py in the tritonclient virtualenv (its own ``inference`` proto).  Sends three
rows to the edge model ``--model`` (row 1 unsure) and checks that row 1 carries the big model's answer
and that the response parameters say it was escalated; exits 1 with the reason otherwise.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    x = np.array([[0.95, 0.2], [0.55, 0.3], [0.05, 0.7]], dtype=np.float32)
    client = grpcclient.InferenceServerClient(url=args.url)
    try:
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(args.model, [tensor], request_id="tc-1", client_timeout=10)
        probs = result.as_numpy("probabilities")
        params = result.get_response().parameters
    finally:
        client.close()
    want = np.array([[0.95, 0.05], [0.3, 0.7], [0.05, 0.95]], dtype=np.float32)
    if probs is None or not np.allclose(probs, want, atol=1e-6):
        print(f"FAIL probabilities {probs!r}; expected {want!r}", file=sys.stderr)
        return 1
    got = {k: getattr(params[k], params[k].WhichOneof("parameter_choice")) for k in params}
    if got.get("edgeloop_answered_by") != "escalated" or got.get("edgeloop_escalated_row_ids") != "1":
        print(f"FAIL parameters {got!r}; expected answered_by 'escalated' for row 1", file=sys.stderr)
        return 1
    print(f"ok   escalated via tritonclient: {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
