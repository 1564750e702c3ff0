"""Example fleet TLS material: a CA, a server certificate for localhost/127.0.0.1 and a client certificate.

``edgeloop certs init DIR`` writes ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and
``client.pem``/``client.key`` (keys mode 0600), plus a random fleet ``token`` (0600) when none is
there.  The server certificate is good for client authentication as well, so fleet commands that read
the cloud's own config (which names the server certificate) work under mTLS.  They are meant for
the loopback example configs and tests; a real fleet uses its own PKI.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
VALID_DAYS = 825


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write ``data``; a private file is created 0600 from the start (never readable by others)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600 if private else 0o644)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        # the server certificate may act as a client too: fleet commands run with the cloud's own config
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
            [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def init_certs(directory: str | Path, force: bool = False) -> dict[str, Path]:
    """Make the CA, server and client certificates (and a token) in ``directory``; returns the paths.

    Existing files are kept unless ``force`` (FileExistsError naming them otherwise).
    """
    from cryptography.hazmat.primitives import serialization

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILES if (root / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{root}: {', '.join(existing)} already exist (use --force to replace them)")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("edgeloop fleet CA", ca_key, "edgeloop fleet CA", ca_key, ca=True)
    server = _cert("localhost", server_key, "edgeloop fleet CA", ca_key, ca=False, server=True)
    client = _cert("edgeloop fleet client", client_key, "edgeloop fleet CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    paths = {}
    for name, data, private in (("ca.pem", ca.public_bytes(pem), False), ("ca.key", _key_pem(ca_key), True),
                                ("server.pem", server.public_bytes(pem), False),
                                ("server.key", _key_pem(server_key), True),
                                ("client.pem", client.public_bytes(pem), False),
                                ("client.key", _key_pem(client_key), True)):
        _write(root / name, data, private)
        paths[name] = root / name
    token = root / "token"
    if not token.exists() or force:
        _write(token, (secrets.token_urlsafe(32) + "\n").encode(), True)
    paths["token"] = token
    return paths


__all__ = ["FILES", "init_certs"]
