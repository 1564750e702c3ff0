"""The Open Inference Protocol servicer (Triton's ``inference.GRPCInferenceService``).

It translates RPCs to ModelManager calls and ``ProtocolError`` into gRPC status codes.  The mesh
plugs in through ``router``: when set, ``router.maybe_forward(request, context)`` sees every
ModelInfer / ModelStreamInfer request first and may answer it (a response) or decline (None).
Joint inference plugs in through ``escalation`` (``serving.escalation.Escalation``): a model with an
escalation policy has its local answer passed to ``escalation.after_local`` before it is returned.
"""
from __future__ import annotations

import logging
import threading
from time import perf_counter_ns

import grpc

import edgeloop
from edgeloop.protocol import inference_pb2, inference_pb2_grpc
from edgeloop.protocol.errors import ProtocolError, invalid_argument, unavailable

log = logging.getLogger("edgeloop.serving")

SERVER_NAME = "edgeloop"
EXTENSIONS = ("model_repository", "model_repository(unload_dependents)", "statistics", "parameters")
_FILE_PREFIX = "file:"
_CONFIG_KEY = "config"


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves the models of one ModelManager; ``router`` is the mesh's forwarding hook (or None)."""

    def __init__(self, models, router=None, server_name: str = SERVER_NAME, max_streams: int | None = None) -> None:
        self.models = models
        self.router = router
        #: joint inference hook (``serving.escalation.Escalation``), set by the node; None: answer locally
        self.escalation = None
        self.server_name = server_name
        self.draining = False
        #: open ModelStreamInfer calls allowed at once (None = no cap); see ``stream_limit``
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams) if max_streams else None

    # --------------------------------------------------------------------------- health-ish
    def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=not self.draining and self.models.any_ready())

    def ModelReady(self, request, context):
        return inference_pb2.ModelReadyResponse(ready=not self.draining
                                                and self.models.is_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        return inference_pb2.ServerMetadataResponse(name=self.server_name, version=edgeloop.__version__,
                                                    extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        try:
            return self.models.metadata(request.name, request.version)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)

    def ModelConfig(self, request, context):
        try:
            return inference_pb2.ModelConfigResponse(config=self.models.triton_config(request.name, request.version))
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)

    # ---------------------------------------------------------------------------- inference
    def _infer(self, request, context):
        if self.draining:
            raise unavailable(f"model {request.model_name!r}: this node is draining (shutting down) and takes no new "
                              f"requests; expected to be retried on another node")
        router = self.router
        if router is not None:
            response = router.maybe_forward(request, context)
            if response is not None:
                return response
        t_start = perf_counter_ns()
        mv = self.models.acquire(request.model_name, request.model_version)
        try:
            response = mv.infer(request, t_start)
        finally:
            mv.leave()
        escalation = self.escalation
        if escalation is not None and mv.config.escalation is not None:
            return escalation.after_local(request, response, mv, context, t_start)
        return response

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)

    def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order; a failed request yields ``error_message`` and the stream goes on.

        A stream holds a handler thread for as long as the client keeps it open, idle or not; past
        ``max_streams`` open streams a new one is refused, so streams can never take every thread
        and leave unary calls (ServerLive, ModelInfer) unanswered.
        """
        streams = self._streams
        if streams is not None and not streams.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"ModelStreamInfer: {self.max_streams} streams are already open on this node; expected at "
                          f"most {self.max_streams} at once (serving.grpc_workers / 2): close one or use ModelInfer")
        try:
            yield from self._stream(request_iterator, context)
        finally:
            if streams is not None:
                streams.release()

    def _stream(self, request_iterator, context):
        for request in request_iterator:
            try:
                response = self._infer(request, context)
            except ProtocolError as exc:
                yield inference_pb2.ModelStreamInferResponse(
                    error_message=f"{exc.code.name}: {exc.message}",
                    infer_response=inference_pb2.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id))
                continue
            except Exception as exc:  # a stream must survive anything one request does
                log.exception("stream request %r failed", request.id)
                yield inference_pb2.ModelStreamInferResponse(error_message=f"INTERNAL: {exc}")
                continue
            yield inference_pb2.ModelStreamInferResponse(infer_response=response)

    # --------------------------------------------------------------------------- statistics
    def ModelStatistics(self, request, context):
        try:
            stats = self.models.statistics(request.name, request.version)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        return inference_pb2.ModelStatisticsResponse(model_stats=stats)

    # --------------------------------------------------------------------------- repository
    def RepositoryIndex(self, request, context):
        Index = inference_pb2.RepositoryIndexResponse.ModelIndex
        rows = self.models.index(ready_only=request.ready)
        return inference_pb2.RepositoryIndexResponse(
            models=[Index(name=n, version=v, state=s, reason=r) for n, v, s, r in rows])

    def RepositoryModelLoad(self, request, context):
        try:
            if not request.model_name:
                raise invalid_argument("model_name is empty; expected the name of a model in the repository")
            files, config = _load_parameters(request.parameters)
            self.models.load(request.model_name, files, config)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        return inference_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        try:
            if not request.model_name:
                raise invalid_argument("model_name is empty; expected the name of a loaded model")
            self.models.unload(request.model_name)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        return inference_pb2.RepositoryModelUnloadResponse()


def _load_parameters(parameters) -> tuple[dict[str, bytes], str | None]:
    """The ``file:<version>/model.onnx`` bytes and the ``config`` JSON string of a load request.

    ``config`` is Triton's model configuration (Triton requires one whenever files are sent); see
    ``edgeloop.serving.triton_config`` for the fields honoured.  Other parameters are refused.
    """
    files, config = {}, None
    for key in sorted(parameters):
        value = parameters[key]
        kind = value.WhichOneof("parameter_choice")
        if key == _CONFIG_KEY:
            if kind != "string_param":
                raise invalid_argument(f"parameters['config'] holds {kind}; expected string_param with Triton's "
                                       f"model configuration as JSON")
            config = value.string_param
        elif key.startswith(_FILE_PREFIX):
            if kind != "bytes_param":
                raise invalid_argument(f"parameters[{key!r}] holds {kind}; expected bytes_param with the file's "
                                       f"contents")
            files[key[len(_FILE_PREFIX):]] = value.bytes_param
        else:
            raise invalid_argument(f"parameters[{key!r}] is not supported; expected 'config' (JSON string) and "
                                   f"'file:<version>/model.onnx' bytes parameters")
    return files, config


def stream_limit(grpc_workers: int) -> int:
    """Streams a node with ``grpc_workers`` handler threads keeps open at once: half its threads (at least 1)."""
    return max(1, int(grpc_workers) // 2)


__all__ = ["EXTENSIONS", "InferenceServicer", "SERVER_NAME", "stream_limit"]
