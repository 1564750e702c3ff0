"""The model repository on disk: ``<root>/<model>/<version>/model.onnx`` (+ optional ``manifest.json``).

Only reads and atomic writes live here; which versions are served is the manager's business.
A ``manifest.json`` beside ``model.onnx`` may carry ``sha256`` (hex) and ``size`` (bytes); when present
they are checked before the file is handed to onnxruntime, so a torn or tampered copy never loads.

Model names are ``MODEL_NAME_PATTERN`` (1..128 of letters, digits, ``_ . -``, not starting with ``.``
or ``-``), matched whole: a name is a directory and a log field, so no newline, slash or space.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from edgeloop.protocol.errors import quote
from edgeloop.protocol.versions import parse_version  # the one version parser (re-exported)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
#: Every model name: load, unload, infer, metadata and config alike (the edge config's names too).
MODEL_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
MODEL_NAME_EXPECTATION = ("a model name of 1..128 characters: letters, digits, '_', '-' or '.', not starting with "
                          "'.' or '-'")
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
#: Largest ``manifest.json`` read or accepted in a push.
MAX_MANIFEST_BYTES = 1 << 20


class RepositoryError(Exception):
    """A repository entry that cannot be used; the message is the reason shown in the index."""


def valid_model_name(name: str) -> bool:
    """Model names are plain directory names: letters, digits, ``_ . -``, not starting with a dot."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a torn one.

    Temp file in the same directory, fsync, ``os.replace``, then fsync of the directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(data):x}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ModelRepository:
    """Read access (and atomic writes) to one repository root; ``root=None`` is an empty repository."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None

    def model_names(self) -> list[str]:
        """Model directories under the root, sorted."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_model_name(p.name))

    def has_model(self, name: str) -> bool:
        return self.root is not None and valid_model_name(name) and (self.root / name).is_dir()

    def versions(self, name: str) -> list[int]:
        """Positive integer version directories of ``name`` that hold a model file, ascending."""
        if not self.has_model(name):
            return []
        found = []
        for entry in (self.root / name).iterdir():
            version = parse_version(entry.name)
            if version is not None and (entry / MODEL_FILE).is_file():
                found.append(version)
        return sorted(found)

    def model_path(self, name: str, version: int) -> Path:
        if self.root is None:
            raise RepositoryError("no model repository is configured (--model-repository)")
        return self.root / name / str(version) / MODEL_FILE

    def fingerprint(self, name: str, version: int) -> tuple[int, int, int]:
        """(inode, mtime_ns, size) of the model file: changes whenever the file is replaced."""
        st = self.model_path(name, version).stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read_model(self, name: str, version: int) -> tuple[bytes, dict | None]:
        """The model file's bytes and its manifest (None if absent), checked against the manifest."""
        path = self.model_path(name, version)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror or exc}") from None
        manifest_path = path.with_name(MANIFEST_FILE)
        manifest = None
        if manifest_path.exists():
            try:
                text = manifest_path.read_bytes()
            except OSError as exc:
                raise RepositoryError(f"cannot read {manifest_path}: {exc.strerror or exc}") from None
            manifest = check_manifest(text, data, str(manifest_path))
        return data, manifest

    def version_file_path(self, name: str, relative: str) -> tuple[int, Path]:
        """The version and path that ``file:<relative>`` of a load request names (checked: no escape)."""
        if self.root is None:
            raise RepositoryError("no model repository is configured (--model-repository)")
        if not valid_model_name(name):
            raise RepositoryError(f"model_name {quote(name)} is not a valid model name; expected "
                                  f"{MODEL_NAME_EXPECTATION}")
        parts = relative.split("/")
        version = parse_version(parts[0]) if len(parts) == 2 else None
        if version is None or parts[1] not in (MODEL_FILE, MANIFEST_FILE):
            raise RepositoryError(f"file parameter {quote('file:' + relative)} is not allowed; expected "
                                  f"'file:<positive version>/{MODEL_FILE}' or 'file:<version>/{MANIFEST_FILE}'")
        return version, self.root / name / str(version) / parts[1]

    @staticmethod
    def keep_previous(path: Path) -> Path | None:
        """Hard-link the file at ``path`` (if any) to a hidden backup, so a failed push can be undone.

        A hard link keeps the inode and mtime, so a restored file has the fingerprint the serving
        version was loaded from and is not reloaded.
        """
        if not path.exists():
            return None
        backup = path.with_name(f".{path.name}.previous-{os.getpid()}")
        backup.unlink(missing_ok=True)
        os.link(path, backup)
        return backup

    @staticmethod
    def restore_previous(path: Path, backup: Path | None) -> None:
        """Undo a write: put the backup back (atomically), or remove a file that did not exist before."""
        if backup is not None:
            os.replace(backup, path)
            return
        path.unlink(missing_ok=True)
        for directory in (path.parent, path.parent.parent):  # drop the version/model dirs the push created
            try:
                directory.rmdir()
            except OSError:
                break

    @staticmethod
    def drop_previous(backup: Path | None) -> None:
        if backup is not None:
            backup.unlink(missing_ok=True)


def check_manifest(text: bytes, data: bytes, where: str) -> dict:
    """The manifest ``text`` as a dict, checked against the model bytes it describes (``where`` names it).

    Bounded: at most ``MAX_MANIFEST_BYTES``, JSON nested at most ``MAX_JSON_DEPTH`` deep; ``size`` and
    ``sha256`` (when present) must match ``data``.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise RepositoryError(f"{where} is {len(text)} bytes; expected at most {MAX_MANIFEST_BYTES}")
    try:
        manifest = bounded_json(text)
    except ValueError as exc:
        raise RepositoryError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise RepositoryError(f"{where} holds {type(manifest).__name__}; expected a JSON object")
    size = manifest.get("size")
    if size is not None and size != len(data):
        raise RepositoryError(f"{MODEL_FILE} is {len(data)} bytes but {where} says size={quote(size)}")
    digest = manifest.get("sha256")
    if digest is not None:
        actual = hashlib.sha256(data).hexdigest()
        if not isinstance(digest, str) or digest.lower() != actual:
            raise RepositoryError(f"{MODEL_FILE} has sha256 {actual} but {where} says sha256={quote(digest)}")
    return manifest


#: JSON nesting accepted in manifests and load configs (Triton's configs nest 4 deep).
MAX_JSON_DEPTH = 32


def bounded_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads(text)``, refusing documents nested deeper than ``max_depth`` before parsing them.

    Raises ValueError (JSONDecodeError, an over-long integer, too deep) with the reason; never
    RecursionError.  The depth is counted over brackets outside strings, so the parser never recurses
    further than ``max_depth``.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep; expected at most {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"nested too deeply; expected at most {max_depth} levels") from None
    except ValueError as exc:  # Python refuses integers of more than 4300 digits
        if "digits" in str(exc):
            raise ValueError("holds an integer of more than 4300 digits; expected numbers of sane size") from None
        raise ValueError(str(exc)) from None


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for token in _JSON_TOKENS.findall(text):
        first = token[0]
        if first in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif first in "]}":
            depth -= 1
    return deepest


__all__ = [
    "MANIFEST_FILE",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MODEL_FILE",
    "MODEL_NAME_EXPECTATION",
    "MODEL_NAME_PATTERN",
    "ModelRepository",
    "RepositoryError",
    "atomic_write",
    "bounded_json",
    "check_manifest",
    "json_depth",
    "parse_version",
    "valid_model_name",
]
