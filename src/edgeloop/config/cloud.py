"""Cloud (coordinator) configs: TOML document (or dict) → CloudConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .auth import parse_auth
from .delivery import parse_cloud_delivery
from .errors import ConfigError
from .fields import REQUIRED, TableReader, top_level_table, unknown_key_error
from .node import CLOUD_NODE_KEYS, parse_node
from .paths import directory_problem, file_problem, resolve
from .schema import CloudConfig, NodeConfig
from .toml_source import read_toml
from .training import parse_training

CLOUD_TABLES = ("node", "storage", "fleet", "auth", "training", "delivery")
STORAGE_KEYS = ("database", "artifact_dir", "synchronous", "max_message_bytes", "max_batch_rows",
                "max_artifact_bytes", "fetch_chunk_bytes", "history_days", "lease_s")
POSTGRES_SCHEMES = ("postgresql", "postgres")
FLEET_KEYS = ("heartbeat_interval_ms", "grpc_workers")
CLOUD_NODE_DEFAULT = NodeConfig(id="cloud", host="127.0.0.1", grpc_port=7001, metrics_port=7002)


def load_cloud_config(path: str | Path) -> CloudConfig:
    """Read and check a cloud config file; relative paths in it are taken from the file's directory."""
    data = read_toml(path)
    return parse_cloud_config(data, source=str(path), base_dir=Path(path).resolve().parent)


def parse_cloud_config(data: dict[str, Any], source: str = "<string>", base_dir: Path | None = None) -> CloudConfig:
    """Check a TOML-shaped dict and build the CloudConfig; ``storage.database`` is required."""
    if not isinstance(data, dict):
        raise ConfigError.for_value(source, "<document>", data,
                                    "a table of [node], [storage], [fleet], [auth], [training]")
    base = Path.cwd() if base_dir is None else Path(base_dir)
    for name, value in data.items():
        if name not in CLOUD_TABLES:
            raise unknown_key_error(source, "", name, value, CLOUD_TABLES)
    node = parse_node(top_level_table(data, source, "node"), source, keys=CLOUD_NODE_KEYS,
                      default=CLOUD_NODE_DEFAULT, id_required=False)
    storage = TableReader(top_level_table(data, source, "storage"), source, "storage", STORAGE_KEYS)
    db_text = storage.string("database", REQUIRED, expected="a SQLite database file path (relative to the config) "
                                                            "or a postgresql:// URL")
    database: Path | str
    if "://" in db_text:
        database = _postgres_url(storage, db_text)
        artifact_dir = base / "artifacts"
    else:
        database = resolve(db_text, base)
        problem = file_problem(database)
        if problem:
            raise storage.error("database", db_text, f"a writable file path, but {problem} "
                                                     f"(resolved to {str(database)!r})")
        artifact_dir = database.parent / "artifacts"
    lease_s = storage.number("lease_s", CloudConfig.lease_s, minimum=0.5,
                             expected="seconds (at least 0.5) before another coordinator takes the "
                                      "continuous-training lease of one that stopped renewing it")
    art_text = storage.string("artifact_dir", "", expected="a directory path (relative to the config)",
                              allow_empty=True)
    if art_text:
        artifact_dir = resolve(art_text, base)
    problem = directory_problem(artifact_dir)
    if problem:
        raise storage.error("artifact_dir", art_text or str(artifact_dir),
                            f"a readable directory or one that can be created, but {problem} "
                            f"(resolved to {str(artifact_dir)!r})")
    synchronous = storage.string("synchronous", "normal", expected="'normal' or 'full' (SQLite synchronous)")
    if synchronous not in ("normal", "full"):
        raise storage.error("synchronous", synchronous, "'normal' or 'full' (SQLite synchronous)")
    limits = {key: storage.integer(key, getattr(CloudConfig, key), minimum=low, maximum=high)
              for key, low, high in (("max_message_bytes", 4096, 1 << 30), ("max_batch_rows", 1, 1_000_000),
                                     ("max_artifact_bytes", 1, 1 << 40), ("fetch_chunk_bytes", 1024, 1 << 26),
                                     ("history_days", 1, 3650))}
    if limits["fetch_chunk_bytes"] + 4096 > limits["max_message_bytes"]:
        raise storage.error("fetch_chunk_bytes", limits["fetch_chunk_bytes"],
                            f"at most storage.max_message_bytes - 4096 ({limits['max_message_bytes'] - 4096})")
    fleet = TableReader(top_level_table(data, source, "fleet"), source, "fleet", FLEET_KEYS)
    heartbeat = fleet.integer("heartbeat_interval_ms", 1000, minimum=1, maximum=3_600_000)
    workers = fleet.integer("grpc_workers", CloudConfig.grpc_workers, minimum=4, maximum=1024)
    auth = parse_auth(top_level_table(data, source, "auth"), source, base)
    training = parse_training(top_level_table(data, source, "training"), source)
    delivery = parse_cloud_delivery(top_level_table(data, source, "delivery"), source, base)
    return CloudConfig(source=source, node=node, database=database, artifact_dir=artifact_dir,
                       heartbeat_interval_ms=heartbeat, auth=auth, synchronous=synchronous, grpc_workers=workers,
                       training=training, delivery=delivery, lease_s=lease_s, **limits)


def redact_url(url: str) -> str:
    """``url`` without its password (errors and logs never show it)."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user = userinfo.split(":", 1)[0]
        authority = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}://{authority}{slash}{tail}"


def _postgres_url(storage: TableReader, text: str) -> str:
    """Check a PostgreSQL URL (``postgresql://user[:password]@host[:port]/db`` or ``…/db?host=/socket/dir``)."""
    from urllib.parse import parse_qs, urlsplit

    shown = redact_url(text)
    expected = "a postgresql://user@host[:port]/database URL (or ...?host=/socket/dir)"
    scheme = text.split("://", 1)[0]
    if scheme not in POSTGRES_SCHEMES:
        raise storage.error("database", shown, f"{expected}; scheme {scheme[:40]!r} is not postgresql")
    if len(text) > 2048 or any(ord(c) < 32 for c in text):
        raise storage.error("database", shown, f"{expected} (at most 2048 printable characters)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
        query = parse_qs(parts.query)
    except ValueError as exc:
        raise storage.error("database", shown, f"{expected}; {exc}") from None
    if not parts.hostname and not query.get("host"):
        raise storage.error("database", shown, f"{expected}; it names no host")
    if not parts.path.strip("/"):
        raise storage.error("database", shown, f"{expected}; it names no database")
    return text
