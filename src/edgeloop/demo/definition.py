"""The model's feature definition for the demo: read from a JSON file, checked against the stream.

The definition is the model author's, declared in data (Elec2's ships beside the stream, ``data/
elec2_features.json``: label history and demand history, never ``nswprice``'s history, which recomputes the
label).  The first model trains on the vectors that ``edgeloop.features.replay`` computes, the code the edges
serve with, point in time (a row's label reaches its entity ``label_delay`` rows later), so the first model
and the loop's challengers see exactly what serving sees.  (``demo`` imports ``features`` for this: a second
implementation of the features here would be the training/serving skew the feature store exists to prevent.)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeloop.features import DefinitionError, FeatureDefinition, FeatureState, labels_after, replay

from .stream import Stream, StreamError

ELEC2_DEFINITION = Path(__file__).resolve().parent / "data" / "elec2_features.json"
MAX_BYTES = 1 << 20
#: the stream's clock for the features: one row per ``ROW_SECONDS`` (Elec2: 30 minutes); since_last sees it
ROW_SECONDS = 1800.0


def load(path: str | Path, stream: Stream) -> FeatureDefinition:
    """The definition at ``path``; its raw inputs must be the stream's input columns, in order."""
    path = Path(path)
    try:
        raw = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as exc:
        raise StreamError(f"--definition {path}: cannot be read ({exc.strerror}); expected a feature "
                          f"definition JSON file") from None
    if len(raw) > MAX_BYTES:
        raise StreamError(f"--definition {path}: more than {MAX_BYTES} bytes; expected a feature definition")
    try:
        definition = FeatureDefinition.from_dict(json.loads(raw))
    except (ValueError, DefinitionError) as exc:
        raise StreamError(f"--definition {path}: {str(exc)[:300]}; expected a feature definition JSON object") \
            from None
    if definition.inputs != stream.columns:
        raise StreamError(f"--definition {path}: inputs {list(definition.inputs)[:20]}; expected the stream's "
                          f"input columns in order, {list(stream.columns)[:20]}")
    return definition


def vectors(definition: FeatureDefinition, stream: Stream, label_delay: int) -> np.ndarray:
    """Every row's served vector (raw inputs then derived features, float32), point in time."""
    ts = np.arange(stream.rows, dtype=np.float64) * ROW_SECONDS
    keys = list(stream.keys)
    events = labels_after(keys, ts, stream.y.astype(np.float64), ROW_SECONDS * label_delay)
    return replay(definition, stream.x.astype(np.float64), keys, ts, events).vectors


def with_online_head(definition: FeatureDefinition, stream: Stream, label_delay: int, proba: np.ndarray) -> np.ndarray:
    """Class index per row served through the definition's online head, given the model's probabilities.

    The edge's code (``FeatureState``: vector, head, then the row waits for its label), driven in the
    demo's order: row j's label reaches its entity ``label_delay`` rows later, before that row is served.
    """
    if definition.online is None:
        raise ValueError("the definition declares no online head")
    state = FeatureState(definition, max_entities=max(1, len(set(stream.keys))) * 16)
    keys, x, y = stream.keys, stream.x.astype(np.float64), stream.y
    classes = definition.online.classes
    out = np.zeros(stream.rows, dtype=np.int64)
    for i in range(stream.rows):
        j = i - label_delay
        if j >= 0:
            state.update_with_label(keys[j], classes[int(y[j])], j * ROW_SECONDS)
        vector = state.serve(keys[i], x[i], i * ROW_SECONDS).vector
        logits = state.online_logits(keys[i], i * ROW_SECONDS, vector[None], proba[i:i + 1])
        out[i] = int(np.argmax(logits[0]))
    return out


def declared(definition: FeatureDefinition | None, stream: Stream) -> list[dict]:
    """The summary's ``features``: the raw inputs, then the derived features as declared."""
    raw = [{"op": "raw", "col": c} for c in stream.columns]
    return raw + ([f.to_dict() for f in definition.features] if definition is not None else [])
