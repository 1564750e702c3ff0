"""Ed25519 key pairs for signing manifests: ``edgeloop keys init DIR`` and the loaders both sides use."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_FILE = "signing.key"
PUBLIC_FILE = "signing.pub"
MAX_KEY_FILE_BYTES = 16 * 1024


class KeyFileError(Exception):
    """A key file that is missing, too large or not an Ed25519 key; the message names the file."""


def init_keys(directory: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/signing.key`` (PEM, mode 0600) and ``DIR/signing.pub``; refuses to overwrite a key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_FILE, directory / PUBLIC_FILE
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(f"{private_path}: a key pair already exists there; expected an empty directory "
                        f"(remove it first to make a new one)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: {size} bytes; expected a PEM key file of at most {MAX_KEY_FILE_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot be read ({exc.strerror}); expected a PEM key file") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(Path(path)), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key in PEM; expected the signing.key of "
                        f"`edgeloop keys init`")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(Path(path)))
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key in PEM; expected the signing.pub of "
                        f"`edgeloop keys init`")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (the first 16 hex digits of the sha256 of its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
