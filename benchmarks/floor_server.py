"""The latency floor: the least a Python gRPC server can do to serve one ONNX model.

A sync ``grpc.server`` with one generic unary method and identity (de)serializers:
raw float32 bytes in, ``np.frombuffer``, ``session.run``, raw float32 bytes out.  No
protobuf, no validation, no batching, no metrics.  ``serving_latency.py`` starts it in
its own process and compares the edge node against it.

``--protocol`` serves the *protocol floor* instead: the same server and handler, but on
``/inference.GRPCInferenceService/ModelInfer`` with a serialized ``ModelInferRequest`` in
and a ``ModelInferResponse`` (one output in ``raw_output_contents``) out, still with no
validation, batching or metrics.  Its cost over the raw floor is what the Open Inference
Protocol itself costs; the edge node's cost over it is what edgeloop adds.

Prints ``PORT <n>`` once serving, then runs until stdin closes or SIGTERM arrives, so
it never outlives the benchmark that started it.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort

METHOD = "/edgeloop.bench.Floor/Infer"
PROTOCOL_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def make_session(model_path: str) -> ort.InferenceSession:
    """One intra-op thread, one inter-op thread, sequential: the same as the node is given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def make_handler(session: ort.InferenceSession):
    input_name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[-1]

    def infer(request: bytes, context) -> bytes:
        x = np.frombuffer(request, dtype=np.float32).reshape(-1, width)
        (y,) = session.run(None, {input_name: x})
        return y.tobytes()

    return grpc.method_handlers_generic_handler(
        "edgeloop.bench.Floor", {"Infer": grpc.unary_unary_rpc_method_handler(infer)}
    )


def make_protocol_handler(session: ort.InferenceSession):
    """ModelInfer with protobufs in and out, trusting the request: the protocol's own cost, nothing more."""
    from edgeloop.protocol import inference_pb2

    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    parse, response_type = inference_pb2.ModelInferRequest.FromString, inference_pb2.ModelInferResponse

    def infer(request_bytes: bytes, context) -> bytes:
        request = parse(request_bytes)
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(request.inputs[0].shape))
        (y,) = session.run(None, {input_name: x})
        response = response_type(model_name=request.model_name, id=request.id)
        response.outputs.add(name=output_name, datatype="FP32", shape=y.shape)
        response.raw_output_contents.append(y.tobytes())
        return response.SerializeToString()

    service, method = PROTOCOL_METHOD.strip("/").split("/")
    return grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(infer)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the ONNX model")
    parser.add_argument("--workers", type=int, default=16, help="thread pool size")
    parser.add_argument("--protocol", action="store_true",
                        help=f"serve the protocol floor: ModelInfer protobufs on {PROTOCOL_METHOD}")
    args = parser.parse_args(argv)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    handler = make_protocol_handler if args.protocol else make_handler
    server.add_generic_rpc_handlers((handler(make_session(args.model)),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(f"PORT {port}", flush=True)
    done.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
