"""A pushed model's feature definition: checked at the coordinator before it goes into the signed manifest.

The edge checks again when it loads (``serving.features``); checking here turns a wrong definition into
one INVALID_ARGUMENT naming the field for the operator, instead of a failed load on every edge.
"""
from __future__ import annotations

from pathlib import Path

from edgeloop.features import DefinitionError, FeatureDefinition

from . import validate as v

#: the largest definition a push may carry (FeatureDefinition's own bound)
MAX_FEATURES_JSON_CHARS = 1 << 20
_FLOAT_TYPES = (1, 10, 11)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE


def definition_of_push(features_json: str, model_path: str | Path, field: str = "features_json") -> dict | None:
    """The definition's normalised JSON object (None for ''), after checking it fits the model's graph.

    Raises INVALID_ARGUMENT naming ``field``: not a valid definition, or a graph that does not take one
    float input ``[batch, width]`` (the raw inputs then the derived features).
    """
    if not features_json:
        return None
    if len(features_json) > MAX_FEATURES_JSON_CHARS:
        raise v.bad(field, features_json, f"a feature definition of at most {MAX_FEATURES_JSON_CHARS} characters")
    try:
        definition = FeatureDefinition.from_json(features_json)
    except DefinitionError as exc:
        raise v.bad(field, features_json, f"a valid feature definition ({exc})") from None
    problem = graph_problem(model_path, definition.width)
    if problem is not None:
        raise v.bad(field, features_json, f"a definition the model can serve: {problem}")
    return definition.to_dict()


def graph_problem(model_path: str | Path, width: int) -> str | None:
    """Why the graph at ``model_path`` cannot take a feature vector of ``width`` values, or None."""
    import onnx

    model = onnx.load_model(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    shapes = []
    for i in inputs:
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        shapes.append((i.name, t.elem_type, dims))
    if len(shapes) != 1 or shapes[0][1] not in _FLOAT_TYPES or len(shapes[0][2]) != 2 \
            or shapes[0][2][1] not in (width, -1):
        return (f"the model's inputs are {[(n, d) for n, _t, d in shapes][:8]}; a model with features takes one "
                f"float input [batch, {width}] (raw inputs then derived features)")
    return None
