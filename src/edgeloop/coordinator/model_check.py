"""A pushed model must be an ONNX model that stands alone: caught here, before every edge is told to load it.

Edges check again when they load (and refuse external data files); checking at the coordinator turns a
wrong file into one INVALID_ARGUMENT for the operator instead of a failed directive on every edge.
"""
from __future__ import annotations

from pathlib import Path


def onnx_problem(path: str | Path) -> str | None:
    """Why the file at ``path`` is not a self-contained ONNX model, or None."""
    import onnx
    from onnx import external_data_helper

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        return f"not an ONNX model ({type(exc).__name__}: {str(exc)[:120]})"
    if not model.graph.node and not model.graph.output:
        return "not an ONNX model (no graph: no nodes and no outputs)"
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            return f"tensor {tensor.name[:120]!r} references an external data file (models must be self-contained)"
    return None
