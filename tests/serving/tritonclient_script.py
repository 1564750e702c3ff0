"""Drives an edgeloop edge node with the unmodified ``tritonclient[grpc]`` package.

Run by ``test_tritonclient_compat.py`` with the Python of a separate virtualenv that has
tritonclient installed: tritonclient ships its own ``inference`` proto and protobuf pin,
which cannot share a process with edgeloop's.  The model it talks to is the multi-dtype
model the test builds (see ``MULTI_IO`` there):

    y_fp32  = x_fp32 * 2 + 1        (FP32,  [-1, 4])
    y_int64 = x_int64 + 10          (INT64, [-1, 3])
    y_bool  = not x_bool            (BOOL,  [-1, 2])
    y_fp16  = x_fp16 * 2            (FP16,  [-1, 2])
    y_bytes = x_bytes               (BYTES, [-1, 1])

Every check compares against numpy values computed here; the first mismatch prints
``FAIL <check>: <why>`` and exits 1.  All calls carry a client timeout.
"""
from __future__ import annotations

import argparse
import queue
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 10.0
INPUT_TYPES = {"x_fp32": "FP32", "x_int64": "INT64", "x_bool": "BOOL", "x_fp16": "FP16", "x_bytes": "BYTES"}
OUTPUT_TYPES = {"y_fp32": "FP32", "y_int64": "INT64", "y_bool": "BOOL", "y_fp16": "FP16", "y_bytes": "BYTES"}


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def make_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_fp32": rng.standard_normal((batch, 4)).astype(np.float32),
        "x_int64": rng.integers(-1000, 1000, size=(batch, 3)).astype(np.int64),
        "x_bool": rng.integers(0, 2, size=(batch, 2)).astype(np.bool_),
        "x_fp16": rng.standard_normal((batch, 2)).astype(np.float16),
        "x_bytes": np.array([[f"row-{i}-é".encode()] for i in range(batch)], dtype=np.object_),
    }


def expected_outputs(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "y_fp32": x["x_fp32"] * np.float32(2) + np.float32(1),
        "y_int64": x["x_int64"] + 10,
        "y_bool": np.logical_not(x["x_bool"]),
        "y_fp16": x["x_fp16"] * np.float16(2),
        "y_bytes": x["x_bytes"],
    }


def to_infer_inputs(x: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, array in x.items():
        tensor = grpcclient.InferInput(name, list(array.shape), INPUT_TYPES[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def compare(name: str, got: np.ndarray | None, want: np.ndarray) -> None:
    expect(got is not None, f"output {name!r} missing from the response")
    expect(tuple(got.shape) == tuple(want.shape), f"output {name!r} has shape {got.shape}, expected {want.shape}")
    if want.dtype == np.object_:
        got_list = [bytes(v) for v in got.reshape(-1)]
        want_list = [bytes(v) for v in want.reshape(-1)]
        expect(got_list == want_list, f"output {name!r} is {got_list}, expected {want_list}")
    elif want.dtype.kind == "f":
        expect(got.dtype == want.dtype, f"output {name!r} has dtype {got.dtype}, expected {want.dtype}")
        tol = 1e-2 if want.dtype == np.float16 else 1e-6
        expect(np.allclose(got, want, rtol=tol, atol=tol), f"output {name!r} is {got.tolist()}, expected {want.tolist()}")
    else:
        expect(got.dtype == want.dtype, f"output {name!r} has dtype {got.dtype}, expected {want.dtype}")
        expect(np.array_equal(got, want), f"output {name!r} is {got.tolist()}, expected {want.tolist()}")


# --- the checks -------------------------------------------------------------------------

def check_health(client, model: str) -> None:
    expect(client.is_server_live(client_timeout=TIMEOUT_S), "is_server_live() returned False")
    expect(client.is_server_ready(client_timeout=TIMEOUT_S), "is_server_ready() returned False")
    expect(client.is_model_ready(model, client_timeout=TIMEOUT_S), f"is_model_ready({model!r}) returned False")
    expect(not client.is_model_ready("no-such-model", client_timeout=TIMEOUT_S),
           "is_model_ready('no-such-model') returned True")


def check_server_metadata(client, _model: str) -> None:
    meta = client.get_server_metadata(client_timeout=TIMEOUT_S)
    expect(bool(meta.name), f"server metadata has an empty name: {meta}")
    expect(bool(meta.version), f"server metadata has an empty version: {meta}")
    as_json = client.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
    expect(as_json.get("name") == meta.name, f"JSON server metadata {as_json} disagrees with {meta}")


def expect_unknown_model_named(call) -> None:
    """``call('no-such-model')`` must fail with an error that names the model."""
    try:
        call("no-such-model", client_timeout=TIMEOUT_S)
    except InferenceServerException as err:
        expect("no-such-model" in str(err), f"{call.__name__}: the error for an unknown model does not name it: {err}")
    else:
        raise CheckFailed(f"{call.__name__}('no-such-model') succeeded")


def check_model_metadata(client, model: str) -> None:
    meta = client.get_model_metadata(model, client_timeout=TIMEOUT_S)
    expect(meta.name == model, f"model metadata names {meta.name!r}, expected {model!r}")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    for name, dtype in INPUT_TYPES.items():
        expect(name in inputs, f"input {name!r} missing from model metadata inputs {sorted(inputs)}")
        expect(inputs[name][0] == dtype, f"input {name!r} has datatype {inputs[name][0]!r}, expected {dtype!r}")
    for name, dtype in OUTPUT_TYPES.items():
        expect(name in outputs, f"output {name!r} missing from model metadata outputs {sorted(outputs)}")
        expect(outputs[name][0] == dtype, f"output {name!r} has datatype {outputs[name][0]!r}, expected {dtype!r}")
    expect(inputs["x_fp32"][1][-1] == 4, f"input 'x_fp32' has shape {inputs['x_fp32'][1]}, expected [-1, 4]")
    expect_unknown_model_named(client.get_model_metadata)


def check_model_config(client, model: str) -> None:
    """get_model_config: Triton's ModelConfig message, parsed by tritonclient's own proto."""
    config = client.get_model_config(model, client_timeout=TIMEOUT_S).config
    expect(config.name == model and config.platform == "onnxruntime_onnx",
           f"model config names {config.name!r} on {config.platform!r}, expected {model!r} on 'onnxruntime_onnx'")
    expect(config.max_batch_size == 0, f"model config has max_batch_size {config.max_batch_size}, expected 0")
    as_json = client.get_model_config(model, as_json=True, client_timeout=TIMEOUT_S)["config"]
    inputs = {t["name"]: (t["data_type"], [int(d) for d in t["dims"]]) for t in as_json["input"]}
    expect(inputs.get("x_fp32") == ("TYPE_FP32", [-1, 4]), f"x_fp32 in the JSON config is {inputs.get('x_fp32')}, "
           f"expected ('TYPE_FP32', [-1, 4])")
    expect(inputs.get("x_bytes", ("?",))[0] == "TYPE_STRING", f"x_bytes in the JSON config is {inputs.get('x_bytes')}")
    outputs = {t["name"] for t in as_json["output"]}
    expect(outputs == set(OUTPUT_TYPES), f"JSON config outputs {sorted(outputs)}, expected {sorted(OUTPUT_TYPES)}")
    expect_unknown_model_named(client.get_model_config)


def check_infer_all_dtypes(client, model: str) -> None:
    x = make_inputs(batch=3, seed=1)
    want = expected_outputs(x)
    result = client.infer(model, to_infer_inputs(x), request_id="req-all", client_timeout=TIMEOUT_S)
    expect(result.get_response().id == "req-all", f"response id {result.get_response().id!r}, expected 'req-all'")
    for name, array in want.items():
        compare(name, result.as_numpy(name), array)


def check_infer_output_subset(client, model: str) -> None:
    x = make_inputs(batch=2, seed=2)
    want = expected_outputs(x)
    requested = [grpcclient.InferRequestedOutput("y_int64"), grpcclient.InferRequestedOutput("y_fp16")]
    result = client.infer(model, to_infer_inputs(x), outputs=requested, client_timeout=TIMEOUT_S)
    names = sorted(t.name for t in result.get_response().outputs)
    expect(names == ["y_fp16", "y_int64"], f"asked for outputs ['y_fp16', 'y_int64'], got {names}")
    compare("y_int64", result.as_numpy("y_int64"), want["y_int64"])
    compare("y_fp16", result.as_numpy("y_fp16"), want["y_fp16"])


def check_infer_errors(client, model: str) -> None:
    x = make_inputs(batch=1, seed=3)
    bad = grpcclient.InferInput("x_fp32", [1, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
    inputs = [bad] + [t for t in to_infer_inputs(x) if t.name() != "x_fp32"]
    try:
        client.infer(model, inputs, client_timeout=TIMEOUT_S)
    except InferenceServerException as err:
        expect("x_fp32" in str(err), f"error for a wrongly shaped input does not name 'x_fp32': {err}")
        expect(err.status() == "StatusCode.INVALID_ARGUMENT", f"wrongly shaped input gave status {err.status()}, expected INVALID_ARGUMENT")
    else:
        raise CheckFailed("infer with input 'x_fp32' of shape [1, 5] (expected [-1, 4]) succeeded")


def check_streaming(client, model: str) -> None:
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)), stream_timeout=TIMEOUT_S)
    try:
        batches = {f"stream-{i}": make_inputs(batch=i + 1, seed=10 + i) for i in range(3)}
        for request_id, x in batches.items():
            client.async_stream_infer(model, to_infer_inputs(x), request_id=request_id)
        seen = set()
        deadline = time.monotonic() + TIMEOUT_S
        while len(seen) < len(batches):
            remaining = deadline - time.monotonic()
            expect(remaining > 0, f"stream answered only {sorted(seen)} of {sorted(batches)} within {TIMEOUT_S} s")
            try:
                result, error = responses.get(timeout=remaining)
            except queue.Empty:
                continue
            expect(error is None, f"stream returned an error: {error}")
            request_id = result.get_response().id
            expect(request_id in batches, f"stream response has unknown id {request_id!r}")
            for name, array in expected_outputs(batches[request_id]).items():
                compare(name, result.as_numpy(name), array)
            seen.add(request_id)
    finally:
        client.stop_stream()


def check_load_unload(client, model: str, model_file: str) -> None:
    pushed = "pushed-multi-io"
    with open(model_file, "rb") as fh:
        onnx_bytes = fh.read()
    expect(not client.is_model_ready(pushed, client_timeout=TIMEOUT_S), f"{pushed!r} is ready before it was loaded")
    # Triton's server requires ``config`` with ``files``; edgeloop honours it (max_batch_size etc.).
    client.load_model(pushed, config='{"backend":"onnxruntime","max_batch_size":8}',
                      files={"file:1/model.onnx": onnx_bytes}, client_timeout=TIMEOUT_S)
    expect(client.is_model_ready(pushed, client_timeout=TIMEOUT_S), f"{pushed!r} is not ready after load_model")
    pushed_config = client.get_model_config(pushed, client_timeout=TIMEOUT_S).config
    dims = {t.name: list(t.dims) for t in pushed_config.input}
    expect(pushed_config.max_batch_size == 8 and dims.get("x_fp32") == [4],
           f"config of {pushed!r} after load_model: max_batch_size {pushed_config.max_batch_size}, x_fp32 dims "
           f"{dims.get('x_fp32')}; expected 8 and [4] (batch dimension left out, as Triton states it)")
    x = make_inputs(batch=2, seed=4)
    result = client.infer(pushed, to_infer_inputs(x), client_timeout=TIMEOUT_S)
    compare("y_fp32", result.as_numpy("y_fp32"), expected_outputs(x)["y_fp32"])
    too_big = make_inputs(batch=9, seed=5)
    try:
        client.infer(pushed, to_infer_inputs(too_big), client_timeout=TIMEOUT_S)
    except InferenceServerException as exc:
        expect("max_batch_size" in str(exc), f"batch 9 on {pushed!r} failed without naming max_batch_size: {exc}")
    else:
        raise CheckFailed(f"batch 9 on {pushed!r} succeeded although its load config said max_batch_size 8")

    index = client.get_model_repository_index(client_timeout=TIMEOUT_S)
    names = {m.name for m in index.models}
    expect({model, pushed} <= names, f"repository index lists {sorted(names)}, expected {model!r} and {pushed!r}")

    client.unload_model(pushed, client_timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while client.is_model_ready(pushed, client_timeout=TIMEOUT_S):
        expect(time.monotonic() < deadline, f"{pushed!r} still ready {TIMEOUT_S} s after unload_model")
        time.sleep(0.05)
    try:
        client.infer(pushed, to_infer_inputs(x), client_timeout=TIMEOUT_S)
    except InferenceServerException:
        pass
    else:
        raise CheckFailed(f"infer on {pushed!r} succeeded after unload_model")


def check_statistics(client, model: str) -> None:
    stats = client.get_inference_statistics(model, client_timeout=TIMEOUT_S)
    rows = [s for s in stats.model_stats if s.name == model]
    expect(rows, f"get_inference_statistics({model!r}) has no row for the model: {stats}")
    # Earlier checks made 1 + 1 + 3 successful inferences (the shape error is a failure).
    success = sum(r.inference_stats.success.count for r in rows)
    expect(success >= 5, f"statistics count {success} successful requests, expected >= 5")
    inferences = sum(r.inference_count for r in rows)
    expect(inferences >= 5, f"statistics count {inferences} inferences, expected >= 5")


CHECKS = [
    ("health", check_health),
    ("server_metadata", check_server_metadata),
    ("model_metadata", check_model_metadata),
    ("model_config", check_model_config),
    ("infer_all_dtypes", check_infer_all_dtypes),
    ("infer_output_subset", check_infer_output_subset),
    ("infer_errors", check_infer_errors),
    ("streaming", check_streaming),
    ("statistics", check_statistics),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="HOST:PORT of the node's inference endpoint")
    parser.add_argument("--model", required=True, help="name of the served multi-dtype model")
    parser.add_argument("--model-file", required=True, help="ONNX file pushed with load_model")
    args = parser.parse_args(argv)
    client = grpcclient.InferenceServerClient(url=args.url)
    try:
        steps = [*CHECKS, ("load_unload", lambda c, m: check_load_unload(c, m, args.model_file))]
        for name, check in steps:
            try:
                check(client, args.model)
            except CheckFailed as err:
                print(f"FAIL {name}: {err}", file=sys.stderr)
                return 1
            except InferenceServerException as err:
                print(f"FAIL {name}: server error {err.status()}: {err.message()}", file=sys.stderr)
                return 1
            print(f"ok   {name}")
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
