"""Reading a TOML file into a dict, turning I/O and syntax problems into ConfigErrors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError, describe_value

_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed document at ``path``; errors name the file and, for bad syntax, line and column."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(source, "<file>", describe_value(source), f"a readable TOML file ({reason})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "<file>", f"a byte {raw[exc.start]:#04x} at offset {exc.start}",
                          "a UTF-8 encoded TOML file") from None
    return parse_toml_text(text, source)


def parse_toml_text(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse TOML text; a syntax error reports line, column and, when it can tell, the key involved."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION.search(message)
        if not match:
            raise ConfigError(source, "<document>", "invalid TOML", f"valid TOML syntax ({message})") from None
        line, column = int(match.group(1)), int(match.group(2))
        lines = text.splitlines()
        offending = lines[line - 1] if 0 < line <= len(lines) else ""
        raise ConfigError(source, _key_near(lines, line), describe_value(offending.strip()),
                          f"valid TOML syntax ({message})", line=line, column=column) from None


def _key_near(lines: list[str], line: int) -> str:
    """Best-effort dotted key of the line a syntax error points at ('<document>' when unclear)."""
    table = ""
    for text in lines[: max(line - 1, 0)]:
        header = _HEADER.match(text)
        if header:
            table = header.group(1).replace(" ", "")
    current = lines[line - 1] if 0 < line <= len(lines) else ""
    header = _HEADER.match(current)
    if header:
        return header.group(1).replace(" ", "")
    key = _KEY.match(current)
    if key:
        name = key.group(1).strip().replace('"', "").replace("'", "")
        return f"{table}.{name}" if table else name
    return table or "<document>"
