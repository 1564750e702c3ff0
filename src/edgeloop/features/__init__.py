"""The feature store: one definition and one implementation of derived features for training and serving.

``FeatureDefinition`` (JSON, travels with the model), ``compute``/``serve``/``update_with_*`` (the one
implementation, over one entity's state), ``FeatureState`` (the owner node's bounded per-entity
state) and ``replay`` (the same vectors from a logged stream, for training and backfill).
"""
from __future__ import annotations

from .compute import Plan, Served, compute, serve, update_with_label, update_with_row
from .definition import MAX_K, FeatureDefinition, FeatureSpec
from .errors import DefinitionError, FeatureError, StateError
from .replay import LabelEvent, Replayed, labels_after, replay
from .state import FeatureState, FeatureStats

__all__ = [
    "MAX_K", "DefinitionError", "FeatureDefinition", "FeatureError", "FeatureSpec", "FeatureState", "FeatureStats",
    "LabelEvent", "Plan", "Replayed", "Served", "StateError", "compute", "labels_after", "replay", "serve",
    "update_with_label", "update_with_row",
]
