"""The ``[auth]`` table shared by edge and cloud configs: fleet token file and TLS paths.

The token itself is read when a process starts (``edgeloop.protocol.auth.read_token_file``), not
here, so a config can be checked on a machine that does not hold the secret; the paths are
resolved against the config file and must name readable files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fields import TableReader
from .paths import resolve
from .schema import AuthConfig

AUTH_KEYS = ("token_file", "tls_ca", "tls_cert", "tls_key", "tls_client_auth")


def parse_auth(table: dict[str, Any], source: str, base_dir: Path) -> AuthConfig:
    """``[auth]``: ``token_file``, ``tls_ca``/``tls_cert``/``tls_key`` (PEM) and ``tls_client_auth`` (mTLS)."""
    fields = TableReader(table, source, "auth", AUTH_KEYS)

    def readable_file(key: str) -> Path | None:
        text = fields.string(key, "", expected="a readable file path (relative to the config file)", allow_empty=True)
        if not text:
            return None
        path = resolve(text, base_dir)
        if not path.is_file():
            raise fields.error(key, text, f"a readable file, but {str(path)!r} is not a file")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise fields.error(key, text, f"a readable file, but it cannot be read ({exc.strerror})") from None
        return path

    token_file = readable_file("token_file")
    ca, cert, key = readable_file("tls_ca"), readable_file("tls_cert"), readable_file("tls_key")
    client_auth = fields.boolean("tls_client_auth", False)
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        raise fields.error(missing, "", "tls_cert and tls_key set together (a certificate and its private key)")
    if client_auth and (ca is None or cert is None):
        raise fields.error("tls_client_auth", True, "tls_ca, tls_cert and tls_key set as well (mutual TLS needs all three)")
    return AuthConfig(token_file=token_file, tls_ca=ca, tls_cert=cert, tls_key=key, tls_client_auth=client_auth)
