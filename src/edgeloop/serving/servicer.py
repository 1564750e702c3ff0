"""The Open Inference Protocol servicer (Triton's ``inference.GRPCInferenceService``).

It translates RPCs to ModelManager calls and ``ProtocolError`` into gRPC status codes.  The mesh
plugs in through ``router``: when set, ``router.maybe_forward(request, context)`` sees every
ModelInfer / ModelStreamInfer request first and may answer it (a response) or decline (None).

Register it with ``add_to_server``, not the generated helper: requests arrive as raw bytes and are
parsed here, so bytes that are not the RPC's message get INVALID_ARGUMENT (and, inside a stream, an
``error_message`` while the stream goes on) instead of grpcio's INTERNAL "Exception deserializing
request!".  Every reply is a documented status: ProtocolError maps to its code, any other failure to
INTERNAL (logged), never grpcio's UNKNOWN.
Joint inference plugs in through ``escalation`` (``serving.escalation.Escalation``): a model with an
escalation policy has its local answer passed to ``escalation.after_local`` before it is returned.
"""
from __future__ import annotations

import functools
import logging
import threading
from time import perf_counter_ns

import grpc

import edgeloop
from edgeloop.protocol import inference_pb2, inference_pb2_grpc
from edgeloop.protocol.errors import ProtocolError, invalid_argument, quote, unavailable
from edgeloop.serving.features import parsed_from
from edgeloop.serving.manager import invalid_name
from edgeloop.serving.repository import valid_model_name

log = logging.getLogger("edgeloop.serving")

SERVER_NAME = "edgeloop"
#: ``model_repository(unload_dependents)`` is not claimed: no model here depends on another (there are
#: no ensembles), so an unload's ``unload_dependents`` flag is accepted and has nothing to act on.
EXTENSIONS = ("model_repository", "statistics", "parameters")
SERVICE = "inference.GRPCInferenceService"
_FILE_PREFIX = "file:"
_CONFIG_KEY = "config"
_UNLOAD_DEPENDENTS = "unload_dependents"
_ID_ECHO = 1024  # characters of a failed stream request's id echoed back


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves the models of one ModelManager; ``router`` is the mesh's forwarding hook (or None)."""

    def __init__(self, models, router=None, server_name: str = SERVER_NAME, max_streams: int | None = None) -> None:
        self.models = models
        self.router = router
        #: joint inference hook (``serving.escalation.Escalation``), set by the node; None: answer locally
        self.escalation = None
        self.server_name = server_name
        self.draining = False
        #: ``on_served(request, response, model, version)`` after each inference run here (not forwarded)
        self.on_served = None
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
        except Exception as exc:
            _abort_internal(context, "ModelMetadata", exc)

    def ModelConfig(self, request, context):
        try:
            return inference_pb2.ModelConfigResponse(config=self.models.triton_config(request.name, request.version))
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _abort_internal(context, "ModelConfig", exc)

    # ---------------------------------------------------------------------------- inference
    def _infer(self, request, context):
        if self.draining:
            raise unavailable(f"model {quote(request.model_name)}: this node is draining (shutting down) and takes "
                              f"no new requests; expected to be retried on another node")
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
            response = escalation.after_local(request, response, mv, context, t_start)
        if self.on_served is not None:
            self.on_served(request, response, mv.name, mv.version)
        return response

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _abort_internal(context, "ModelInfer", exc)

    def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order; a failed request yields ``error_message`` and the stream goes on.

        A stream holds a handler thread for as long as the client keeps it open, idle or not; past
        ``max_streams`` open streams a new one is refused, so streams can never take every thread
        and leave unary calls (ServerLive, ModelInfer) unanswered.  Requests may come as messages or,
        from ``add_to_server``'s handler, as raw bytes parsed here one by one: an unparseable one is
        answered with ``error_message`` like any other failed request.
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
            if type(request) is bytes:
                raw = request
                try:
                    request = _parse(_ModelInferRequest, raw)
                except ProtocolError as exc:
                    yield inference_pb2.ModelStreamInferResponse(error_message=f"{exc.code.name}: {exc.message}")
                    continue
                parsed_from(request, raw)
            try:
                response = self._infer(request, context)
            except ProtocolError as exc:
                name = request.model_name
                yield inference_pb2.ModelStreamInferResponse(  # echoes identify the request, if they are sane
                    error_message=f"{exc.code.name}: {exc.message}",
                    infer_response=inference_pb2.ModelInferResponse(
                        model_name=name if valid_model_name(name) else "",
                        model_version=request.model_version[:32], id=request.id[:_ID_ECHO]))
                continue
            except Exception as exc:  # a stream must survive anything one request does
                log.exception("stream request %s failed", quote(request.id))
                yield inference_pb2.ModelStreamInferResponse(
                    error_message=f"INTERNAL: {type(exc).__name__}: {quote(str(exc), 1000)}")
                continue
            finally:
                parsed_from(None, b"")
            yield inference_pb2.ModelStreamInferResponse(infer_response=response)

    # --------------------------------------------------------------------------- statistics
    def ModelStatistics(self, request, context):
        try:
            stats = self.models.statistics(request.name, request.version)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _abort_internal(context, "ModelStatistics", exc)
        return inference_pb2.ModelStatisticsResponse(model_stats=stats)

    # --------------------------------------------------------------------------- repository
    def RepositoryIndex(self, request, context):
        Index = inference_pb2.RepositoryIndexResponse.ModelIndex
        rows = self.models.index(ready_only=request.ready)
        return inference_pb2.RepositoryIndexResponse(
            models=[Index(name=n, version=v, state=s, reason=r) for n, v, s, r in rows])

    #: set by a node with ``[delivery] require_signed = true``: models arrive only as signed deliveries
    refuse_unsigned_loads = False

    def RepositoryModelLoad(self, request, context):
        try:
            _check_model_name(request.model_name, "the name of a model in the repository")
            files, config = _load_parameters(request.parameters)
            if files and self.refuse_unsigned_loads:
                raise ProtocolError(grpc.StatusCode.PERMISSION_DENIED,
                                    f"RepositoryModelLoad of {request.model_name[:200]!r} with file parameters: "
                                    f"this node has delivery.require_signed = true; expected a signed delivery "
                                    f"from the coordinator")
            self.models.load(request.model_name, files, config)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _abort_internal(context, "RepositoryModelLoad", exc)
        return inference_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        try:
            _check_model_name(request.model_name, "the name of a loaded model")
            _unload_parameters(request.parameters)
            self.models.unload(request.model_name)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _abort_internal(context, "RepositoryModelUnload", exc)
        return inference_pb2.RepositoryModelUnloadResponse()


_ModelInferRequest = inference_pb2.ModelInferRequest


def _parse(message_type, raw: bytes):
    """``message_type`` parsed from a request's bytes; ProtocolError(INVALID_ARGUMENT) when they are not one."""
    try:
        return message_type.FromString(raw)
    except Exception as exc:  # DecodeError; no parse failure may escape as grpcio's INTERNAL
        raise invalid_argument(f"request is not a valid {message_type.DESCRIPTOR.full_name}: {quote(str(exc))} "
                               f"({len(raw)} bytes); expected a serialized {message_type.DESCRIPTOR.full_name}") \
            from None


def _parsing(method, message_type):
    """A unary handler taking raw bytes: parse (INVALID_ARGUMENT if they do not parse), then ``method``.

    An inference request's bytes stay at hand while it is served (``features.parsed_from``): a model
    with features reads its raw inputs from them rather than serializing the message again.
    """
    infer = message_type is _ModelInferRequest

    @functools.wraps(method)
    def handler(raw, context):
        try:
            request = _parse(message_type, raw)
        except ProtocolError as exc:
            context.abort(exc.code, exc.message)
        if not infer:
            return method(request, context)
        parsed_from(request, raw)
        try:
            return method(request, context)
        finally:
            parsed_from(None, b"")

    return handler


def _abort_internal(context, rpc: str, exc: Exception) -> None:
    """A failure no check foresaw: logged with its traceback, answered INTERNAL (grpcio would say UNKNOWN)."""
    log.exception("%s failed", rpc)
    context.abort(grpc.StatusCode.INTERNAL, f"{rpc}: the server failed: {type(exc).__name__}: "
                                            f"{quote(str(exc), 1000)}")


#: method -> (request message, response message) for every unary RPC of the service
_UNARY = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
}


def method_handlers(servicer: InferenceServicer) -> dict:
    """grpc method handlers for every RPC of ``servicer``, each taking the request as raw bytes."""
    handlers = {}
    for method, (request_name, response_name) in _UNARY.items():
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            _parsing(getattr(servicer, method), getattr(inference_pb2, request_name)),
            request_deserializer=None,  # raw bytes: parse errors are ours to answer
            response_serializer=getattr(inference_pb2, response_name).SerializeToString)
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=None,
        response_serializer=inference_pb2.ModelStreamInferResponse.SerializeToString)
    return handlers


def add_to_server(servicer: InferenceServicer, server) -> None:
    """Serve ``servicer`` as ``inference.GRPCInferenceService`` on ``server`` (raw-bytes requests)."""
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63: a faster method lookup
        server.add_registered_method_handlers(SERVICE, handlers)


def _check_model_name(name: str, expected: str) -> None:
    if not name:
        raise invalid_argument(f"model_name is empty; expected {expected}")
    if not valid_model_name(name):
        raise invalid_name(name)


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
                raise invalid_argument(f"parameters[{quote(key)}] holds {kind}; expected bytes_param with the "
                                       f"file's contents")
            files[key[len(_FILE_PREFIX):]] = value.bytes_param
        else:
            raise invalid_argument(f"parameters[{quote(key)}] is not supported; expected 'config' (JSON string) "
                                   f"and 'file:<version>/model.onnx' bytes parameters")
    return files, config


def _unload_parameters(parameters) -> None:
    """An unload takes only ``unload_dependents`` (bool, as tritonclient always sends it).

    No model here depends on another, so either value unloads just the named model.
    """
    for key in sorted(parameters):
        kind = parameters[key].WhichOneof("parameter_choice")
        if key != _UNLOAD_DEPENDENTS:
            raise invalid_argument(f"parameters[{quote(key)}] is not supported; expected only "
                                   f"'{_UNLOAD_DEPENDENTS}' (bool_param)")
        if kind != "bool_param":
            raise invalid_argument(f"parameters['{_UNLOAD_DEPENDENTS}'] holds {kind}; expected bool_param")


def stream_limit(grpc_workers: int) -> int:
    """Streams a node with ``grpc_workers`` handler threads keeps open at once: half its threads (at least 1)."""
    return max(1, int(grpc_workers) // 2)


__all__ = ["EXTENSIONS", "InferenceServicer", "SERVER_NAME", "SERVICE", "add_to_server", "method_handlers",
           "stream_limit"]
