"""onnxruntime sessions built from a model's serving settings (threads, graph optimisation, providers)."""
from __future__ import annotations

import logging

log = logging.getLogger("edgeloop.serving")

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


class SessionError(Exception):
    """onnxruntime refused the model or its options; the message says why."""


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


__all__ = ["SessionError", "choose_providers", "create_session"]
