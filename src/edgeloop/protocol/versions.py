"""The one parser of model version numbers, shared by the repository, the servicer, the router and the client.

A version is a positive integer written canonically: ASCII digits, no sign, no leading zero, no
``_`` separators, no spaces (``int()`` accepts ``"+1"``, ``"01"``, ``"1_0"`` and ``" 1"``; two parts
that disagree on which string names which version would route a request to one node and refuse it
on another).  At most 18 digits, so every version fits in an int64.
"""
from __future__ import annotations

import re

_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")

VERSION_EXPECTATION = "a positive integer without sign, leading zeros, separators or spaces (e.g. \"1\")"


def parse_version(text: str) -> int | None:
    """The positive integer ``text`` names, else None (``"1"`` -> 1; ``"01"``, ``"+1"``, ``" 1"`` -> None)."""
    return int(text) if _VERSION_RE.fullmatch(text) else None


__all__ = ["VERSION_EXPECTATION", "parse_version"]
