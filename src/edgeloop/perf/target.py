"""Connecting to the endpoint under test and reading the model's signature.

Setup failures become :class:`PerfError` messages that name the URL or the model,
so a typo is obvious from the one line the CLI prints.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc

from edgeloop.perf.errors import PerfError
from edgeloop.protocol import inference_pb2

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_METADATA_METHOD = "/inference.GRPCInferenceService/ModelMetadata"
_LIVE_METHOD = "/inference.GRPCInferenceService/ServerLive"

# Large tensors must not hit grpc's 4 MiB default.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


def normalize_url(url: str) -> str:
    """``host:port`` from ``host:port`` or ``grpc://host:port``."""
    target = url[len("grpc://"):] if url.startswith("grpc://") else url
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PerfError(f"--url {url!r} is not a gRPC address; expected HOST:PORT such as 127.0.0.1:8001")
    return target


@dataclass
class Target:
    """An open channel to a reachable server plus the model's metadata."""

    url: str
    channel: grpc.Channel
    metadata: object  # inference_pb2.ModelMetadataResponse

    def close(self) -> None:
        self.channel.close()


def open_channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(normalize_url(url), options=CHANNEL_OPTIONS)


def connect(url: str, model: str, version: str = "", timeout_s: float = 5.0) -> Target:
    """Open a channel, check the server answers, and fetch ``model``'s metadata."""
    channel = open_channel(url)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise PerfError(f"cannot reach a gRPC server at {url} (no connection within {timeout_s:g} s)") from None
        live = channel.unary_unary(
            _LIVE_METHOD,
            request_serializer=inference_pb2.ServerLiveRequest.SerializeToString,
            response_deserializer=inference_pb2.ServerLiveResponse.FromString,
        )
        metadata_rpc = channel.unary_unary(
            _METADATA_METHOD,
            request_serializer=inference_pb2.ModelMetadataRequest.SerializeToString,
            response_deserializer=inference_pb2.ModelMetadataResponse.FromString,
        )
        try:
            live(inference_pb2.ServerLiveRequest(), timeout=timeout_s)
            metadata = metadata_rpc(inference_pb2.ModelMetadataRequest(name=model, version=version), timeout=timeout_s)
        except grpc.RpcError as err:
            raise _explain(err, url, model, version) from None
        return Target(url=url, channel=channel, metadata=metadata)
    except BaseException:
        channel.close()
        raise


def _explain(err: grpc.RpcError, url: str, model: str, version: str) -> PerfError:
    code, details = err.code(), err.details()
    what = f"model {model!r}" + (f" version {version!r}" if version else "")
    if code == grpc.StatusCode.NOT_FOUND:
        return PerfError(f"{what} is not served at {url}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return PerfError(f"the server at {url} does not implement the Open Inference Protocol (inference.GRPCInferenceService): {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return PerfError(f"cannot reach a gRPC server at {url}: {details}")
    return PerfError(f"reading metadata of {what} at {url} failed with {code.name}: {details}")
