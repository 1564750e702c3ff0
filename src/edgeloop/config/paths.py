"""Resolving and checking paths named in a config.

Relative paths are resolved against the config file's directory so a config works from any working directory.
A path that does not exist yet is accepted when it can be created: its nearest existing ancestor must be a
writable directory (so ``../.edgeloop/edge-a/models`` works in a fresh checkout), and no ancestor may be a file.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve(text: str, base_dir: Path) -> Path:
    """``text`` as an absolute path, relative ones taken from ``base_dir``; ``~`` is expanded."""
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base_dir) / path
    return Path(os.path.normpath(path))


def _creatable(path: Path) -> str | None:
    """Why ``path`` (absent) cannot be created, or ``None``."""
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            return f"its parent {str(path.parent)!r} does not exist"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"its parent {str(path.parent)!r} does not exist ({str(ancestor)!r} is not a directory)"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"its parent {str(path.parent)!r} cannot be created ({str(ancestor)!r} is not writable)"
    return None


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a readable directory, or ``None``."""
    if path.exists():
        if not path.is_dir():
            return "it exists but is not a directory"
        if not os.access(path, os.R_OK | os.X_OK):
            return "it is a directory that cannot be read"
        return None
    return _creatable(path)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a writable file, or ``None``."""
    if path.exists():
        if path.is_dir():
            return "it is a directory, not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return "it is a file that cannot be read and written"
        return None
    return _creatable(path)
