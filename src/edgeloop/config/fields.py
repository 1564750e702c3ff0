"""Typed, checked reads from one TOML table.

A ``TableReader`` knows where its table sits (file and dotted prefix), rejects keys it does not know (with a
difflib suggestion) and turns each wrong value into a ConfigError that names file, key, value and expectation.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

REQUIRED: Any = object()  # sentinel default: the key must be present


def is_integer(value: object) -> bool:
    """True for TOML integers; booleans are not integers here."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for TOML integers and floats (never booleans)."""
    return is_integer(value) or isinstance(value, float)


def join_key(prefix: str, name: str) -> str:
    """Dotted key ``prefix.name`` (or ``name`` at the top level)."""
    return f"{prefix}.{name}" if prefix else name


def unknown_key_error(source: str, prefix: str, name: str, value: object, known: Iterable[str]) -> ConfigError:
    """Error for a key the schema does not have, suggesting the closest known one."""
    known = sorted(known)
    where = f"[{prefix}]" if prefix else "the top level"
    expected = f"one of the keys known in {where}: {', '.join(known) if known else '(none)'}"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        expected += f" (did you mean '{close[0]}'?)"
    return ConfigError.for_value(source, join_key(prefix, name), value, expected)


class TableReader:
    """Reads the keys of one table; construction fails on any unknown key."""

    def __init__(self, table: dict[str, Any], source: str, prefix: str, known: Iterable[str]) -> None:
        self.table = table
        self.source = source
        self.prefix = prefix
        self.known = tuple(known)
        for name, value in table.items():
            if name not in self.known:
                raise unknown_key_error(source, prefix, name, value, self.known)

    # -- error helpers -------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        """The dotted key of ``name`` in this table."""
        return join_key(self.prefix, name)

    def error(self, name: str, value: object, expected: str) -> ConfigError:
        """A ConfigError for key ``name`` of this table."""
        return ConfigError.for_value(self.source, self.key(name), value, expected)

    def has(self, name: str) -> bool:
        """True when the key is present in the table."""
        return name in self.table

    def _raw(self, name: str, default: Any, expected: str) -> Any:
        if name in self.table:
            return self.table[name]
        if default is REQUIRED:
            raise ConfigError.missing(self.source, self.key(name), expected)
        return default

    # -- scalar readers ------------------------------------------------------------------------------
    def integer(self, name: str, default: Any = REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None, expected: str | None = None) -> Any:
        """An integer within ``minimum..maximum`` (either bound optional); the default passes unchecked."""
        expected = expected or _integer_expectation(minimum, maximum)
        value = self._raw(name, default, expected)
        if name not in self.table:
            return value
        if not is_integer(value):
            raise self.error(name, value, expected)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(name, value, expected)
        return value

    def number(self, name: str, default: Any = REQUIRED, *, minimum: float | None = None,
               exclusive_minimum: float | None = None, expected: str) -> Any:
        """A finite float (integers accepted) above the given bound."""
        value = self._raw(name, default, expected)
        if name not in self.table:
            return value
        if not is_number(value) or not math.isfinite(value):
            raise self.error(name, value, expected)
        if minimum is not None and value < minimum:
            raise self.error(name, value, expected)
        if exclusive_minimum is not None and value <= exclusive_minimum:
            raise self.error(name, value, expected)
        return float(value)

    def string(self, name: str, default: Any = REQUIRED, *, expected: str = "a string",
               allow_empty: bool = False) -> Any:
        """A string (non-empty unless ``allow_empty``)."""
        value = self._raw(name, default, expected)
        if name not in self.table:
            return value
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.error(name, value, expected)
        return value

    def boolean(self, name: str, default: Any = REQUIRED) -> Any:
        """A TOML boolean."""
        expected = "a boolean (true or false)"
        value = self._raw(name, default, expected)
        if name in self.table and not isinstance(value, bool):
            raise self.error(name, value, expected)
        return value

    def array(self, name: str, default: Any = REQUIRED, *, expected: str) -> Any:
        """A TOML array, returned as a list (items unchecked)."""
        value = self._raw(name, default, expected)
        if name in self.table and not isinstance(value, list):
            raise self.error(name, value, expected)
        return value

    def subtable(self, name: str) -> dict[str, Any]:
        """A nested table; absent means empty."""
        value = self.table.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, value, f"a table [{self.key(name)}]")
        return value


def top_level_table(data: dict[str, Any], source: str, name: str) -> dict[str, Any]:
    """A top-level table of the document; absent means empty."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError.for_value(source, name, value, f"a table [{name}]")
    return value


def _integer_expectation(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"
