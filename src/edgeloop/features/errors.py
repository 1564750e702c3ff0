"""The feature store's error: one line naming the field, the value received and what was expected.

Definitions come from model manifests and exported state from peers, so both are untrusted; the
serving side turns a ``FeatureError`` into INVALID_ARGUMENT with this message.
"""
from __future__ import annotations

_MAX_VALUE_CHARS = 200


def describe_value(value: object) -> str:
    """repr() of a received value, cut to about 200 characters."""
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class FeatureError(ValueError):
    """A definition, row, label or state that cannot be used; names ``field``, value and expectation."""

    def __init__(self, what: str, field: str, value: object, expected: str) -> None:
        self.what = what
        self.field = field
        self.value = describe_value(value)
        self.expected = expected
        super().__init__(f"{what}: field '{field}': got {self.value}, expected {expected}")


class DefinitionError(FeatureError):
    """A feature definition that fails validation."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__("feature definition", field, value, expected)


class StateError(FeatureError):
    """Entity state (a snapshot, or bytes from a peer) that cannot be accepted."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__("feature state", field, value, expected)
