"""The single error type of the config part.

Every problem in a config is reported as one line naming the file, the dotted key, the value received and
what was expected, so an operator can fix it without reading the code.
"""

from __future__ import annotations

_MAX_VALUE_CHARS = 120


def describe_value(value: object) -> str:
    """repr() of a received value, kept to one short line."""
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class ConfigError(ValueError):
    """A config that cannot be used; ``str()`` is one line naming file, key, value and expectation."""

    def __init__(self, file: str, key: str, value: str, expected: str, **context: object) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.expected = expected
        self.context = dict(context)
        super().__init__(f"{self.file}: key '{key}': got {value}, expected {expected}")

    @classmethod
    def for_value(cls, file: str, key: str, value: object, expected: str, **context: object) -> "ConfigError":
        """Build the error from the raw received value (it is repr'd here)."""
        return cls(file, key, describe_value(value), expected, **context)

    @classmethod
    def missing(cls, file: str, key: str, expected: str) -> "ConfigError":
        """A required key that is absent."""
        return cls(file, key, "nothing (the key is missing)", expected)
