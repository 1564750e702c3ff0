"""A real PostgreSQL server for the store tests that run on both backends.

``EDGELOOP_POSTGRES_URL`` (set by scripts/test.sh after ``scripts/postgres.sh start``) names a running
server; it must then answer, or the tests fail.  Without it, one throwaway server is started for the
session with the same script; if that cannot be done, the PostgreSQL tests skip with the reason.
Every test gets its own fresh database, dropped afterwards.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _with_dbname(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (URLs here are ``postgresql://user@/db?host=...`` or with a host)."""
    head, sep, query = url.partition("?")
    scheme, rest = head.split("://", 1)
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a running PostgreSQL server's ``postgres`` database (skips when none can be had)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests: psycopg is not installed (pip install -e '.[test]')")
    url = os.environ.get("EDGELOOP_POSTGRES_URL", "")
    if url:
        _connect(url).close()  # the CI script started it: it must answer (no silent skip)
        yield url
        return
    skip_reason = os.environ.get("EDGELOOP_POSTGRES_SKIP", "")
    if skip_reason:
        pytest.skip(f"PostgreSQL tests: {skip_reason}")
    directory = tempfile.mkdtemp(prefix="edgeloop-pg-", dir="/tmp")
    try:
        done = subprocess.run(["bash", str(SCRIPT), "start", directory], capture_output=True, text=True, timeout=90)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"PostgreSQL tests: scripts/postgres.sh start failed: {exc}")
    if done.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", directory], capture_output=True, timeout=60)
        reason = (done.stderr.strip() or done.stdout.strip())[-300:]
        message = f"PostgreSQL tests: scripts/postgres.sh start exited {done.returncode}: {reason}"
        print(message)
        pytest.skip(message)
    try:
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", directory], capture_output=True, timeout=60)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server; dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:16]
    with _connect(postgres_server) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield _with_dbname(postgres_server, name)
    with _connect(postgres_server) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
