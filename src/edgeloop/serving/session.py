"""onnxruntime sessions built from a model's serving settings (threads, graph optimisation, providers).

No session is built from a model that keeps tensor data in external files (``refuse_external_data``):
onnxruntime resolves such a location against the working directory when the model comes as bytes,
so a pushed model naming ``"../" * 30 + "etc/passwd"`` would serve that file's bytes as a tensor.
"""
from __future__ import annotations

import logging

from edgeloop.protocol.errors import quote

log = logging.getLogger("edgeloop.serving")

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


class SessionError(Exception):
    """onnxruntime refused the model or its options; the message says why."""


class ExternalDataError(SessionError):
    """The model references an external file: refused whatever the file holds."""


def _children(message, where: str):
    """``(child message, its path)`` for each message-typed field of ``message`` that is set."""
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.name == "attribute":  # attributes by name: node[0].attribute['then_branch'].g
            for item in value:
                yield item, f"{where}.attribute[{quote(item.name, 60)}]"
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield item, f"{where}.{field.name}[{i}]"
        else:
            yield value, f"{where}.{field.name}"


def external_data_references(model) -> list[tuple[str, str]]:
    """``(where, location)`` for every tensor of an ``onnx.ModelProto`` whose data lives outside it.

    Walks every message of the model, not a list of known places: initializers, sparse
    initializers, Constant attributes, the subgraphs of If/Loop/Scan at any depth, local functions
    and training info are all covered.  Iterative: protobuf's nesting limit bounds the depth anyway.
    An onnxruntime ``EPContext`` node with ``embed_mode=0`` names a cache file too, and is reported.
    """
    import onnx

    external = onnx.TensorProto.EXTERNAL
    tensor_type, node_type = onnx.TensorProto, onnx.NodeProto
    found = []
    stack = [(model, "model")]
    while stack:
        message, where = stack.pop()
        if isinstance(message, tensor_type):
            if message.data_location == external or len(message.external_data):
                entries = {e.key: e.value for e in message.external_data}
                found.append((f"{where} (tensor {quote(message.name)})", entries.get("location", "")))
            continue
        if isinstance(message, node_type) and message.op_type == "EPContext":
            attributes = {a.name: a for a in message.attribute}
            if "embed_mode" in attributes and attributes["embed_mode"].i == 0:
                cache = attributes.get("ep_cache_context")
                found.append((f"{where} (EPContext node {quote(message.name)})",
                              cache.s.decode("utf-8", "replace") if cache is not None else ""))
        stack.extend(_children(message, where))
    return found


def refuse_external_data(data: bytes, what: str) -> None:
    """Raise ExternalDataError if the model in ``data`` keeps any tensor's data in an external file.

    Parses ``data`` with ``onnx`` (never loading external data); bytes that are not an ONNX model
    raise SessionError, so nothing unchecked ever reaches onnxruntime.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(data)
    except DecodeError as exc:
        raise SessionError(f"{what}: not a valid ONNX model: {exc}") from None
    found = external_data_references(model)
    if found:
        where, location = found[0]
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        raise ExternalDataError(f"{what}: {where} keeps its data in the external file "
                                f"{quote(location)}{more}; expected every tensor's data inside the model file "
                                f"(models may not reference external files)")


def choose_providers(requested, available) -> list[str]:
    """The requested providers that this onnxruntime build has, in order (CPU if none remains)."""
    chosen = [p for p in requested if p in available]
    for p in requested:
        if p not in available:
            log.info("execution provider %s is not available here (have %s); skipping it", p, ", ".join(available))
    return chosen or ["CPUExecutionProvider"]


def create_session(data: bytes, config, what: str):
    """An InferenceSession for ``data`` with ``config`` (a ModelConfig); ``what`` names it in errors."""
    import onnxruntime as ort

    refuse_external_data(data, what)
    level = _OPT_LEVELS.get(config.graph_optimization_level)
    if level is None:
        raise SessionError(f"{what}: graph_optimization_level={config.graph_optimization_level!r}; expected one "
                           f"of {', '.join(_OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(config.intra_op_threads))
    options.inter_op_num_threads = max(0, int(config.inter_op_threads))
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    providers = choose_providers(tuple(config.execution_providers), ort.get_available_providers())
    try:
        return ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SessionError(f"{what}: onnxruntime cannot load the model: {message}") from None


__all__ = ["ExternalDataError", "SessionError", "choose_providers", "create_session", "external_data_references",
           "refuse_external_data"]
