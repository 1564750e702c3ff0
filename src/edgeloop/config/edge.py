"""Edge configs: TOML document (or dict) → EdgeConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .delivery import parse_edge_delivery
from .errors import ConfigError
from .fields import TableReader, top_level_table, unknown_key_error
from .mesh import parse_mesh
from .models import parse_model_table, parse_models
from .network import ADDRESS_EXPECTATION, split_address
from .auth import parse_auth
from .node import EDGE_NODE_KEYS, parse_node
from .paths import directory_problem, resolve
from .schema import CoordinatorConfig, EdgeConfig, ModelConfig, NodeConfig, ServingConfig
from .toml_source import read_toml

EDGE_TABLES = ("node", "serving", "mesh", "coordinator", "auth", "delivery")
SERVING_KEYS = ("model_repository", "max_receive_message_bytes", "max_send_message_bytes", "grpc_workers",
                "model_defaults", "models")
COORDINATOR_KEYS = ("address", "outbox_path", "outbox_max_rows", "outbox_max_bytes", "outbox_queue_size",
                    "upload_batch_size", "upload_backoff_max_ms", "keepalive_ms")
MAX_OUTBOX_ROWS = 100_000_000
MAX_OUTBOX_BYTES = 1 << 40
MAX_QUEUE = 1 << 22
MAX_UPLOAD_BATCH = 100_000
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC takes these limits as a signed 32-bit int


def load_edge_config(path: str | Path) -> EdgeConfig:
    """Read and check an edge config file; relative paths in it are taken from the file's directory."""
    data = read_toml(path)
    return parse_edge_config(data, source=str(path), base_dir=Path(path).resolve().parent)


def parse_edge_config(data: dict[str, Any], source: str = "<string>", base_dir: Path | None = None) -> EdgeConfig:
    """Check a TOML-shaped dict and build the EdgeConfig; ``base_dir`` (default: cwd) anchors relative paths."""
    if not isinstance(data, dict):
        raise ConfigError.for_value(source, "<document>", data, "a table of [node], [serving], [mesh], [coordinator], [auth]")
    base = Path.cwd() if base_dir is None else Path(base_dir)
    for name, value in data.items():
        if name not in EDGE_TABLES:
            raise unknown_key_error(source, "", name, value, EDGE_TABLES)
    node = parse_node(top_level_table(data, source, "node"), source, keys=EDGE_NODE_KEYS, default=NodeConfig(),
                      id_required=True)
    serving = parse_serving(top_level_table(data, source, "serving"), source, base)
    mesh = parse_mesh(top_level_table(data, source, "mesh"), source, base)
    coordinator_table = top_level_table(data, source, "coordinator")
    coordinator = parse_coordinator(coordinator_table, source)
    data_path = parse_data_path(coordinator_table, source, base)
    auth = parse_auth(top_level_table(data, source, "auth"), source, base)
    delivery = parse_edge_delivery(top_level_table(data, source, "delivery"), source, base)
    return EdgeConfig(source=source, node=node, serving=serving, mesh=mesh, coordinator_address=coordinator,
                      auth=auth, coordinator=data_path, delivery=delivery)


def parse_serving(table: dict[str, Any], source: str, base_dir: Path) -> ServingConfig:
    """The ``[serving]`` table with its model defaults and per-model tables."""
    fields = TableReader(table, source, "serving", SERVING_KEYS)
    default = ServingConfig()
    repository = None
    text = fields.string("model_repository", "", expected="a directory path (relative to the config file)",
                         allow_empty=True)
    if text:
        repository = resolve(text, base_dir)
        problem = directory_problem(repository)
        if problem:
            raise fields.error("model_repository", text, f"a readable directory or one that can be created, "
                                                         f"but {problem} (resolved to {str(repository)!r})")
    size_expected = f"a message size in bytes, 1..{MAX_MESSAGE_BYTES}"
    receive = fields.integer("max_receive_message_bytes", default.max_receive_message_bytes, minimum=1,
                             maximum=MAX_MESSAGE_BYTES, expected=size_expected)
    send = fields.integer("max_send_message_bytes", default.max_send_message_bytes, minimum=1,
                          maximum=MAX_MESSAGE_BYTES, expected=size_expected)
    workers = fields.integer("grpc_workers", default.grpc_workers, minimum=1, maximum=1024)
    defaults = parse_model_table(fields.subtable("model_defaults"), source, "serving.model_defaults",
                                 ModelConfig(name="*"))
    models = parse_models(fields.subtable("models"), source, "serving.models", defaults)
    return ServingConfig(model_repository=repository, max_receive_message_bytes=receive,
                         max_send_message_bytes=send, grpc_workers=workers, model_defaults=defaults, models=models)


def parse_coordinator(table: dict[str, Any], source: str) -> str | None:
    """``[coordinator] address`` as ``host:port``; absent or empty means no coordinator."""
    fields = TableReader(table, source, "coordinator", COORDINATOR_KEYS)
    address = fields.string("address", "", expected=ADDRESS_EXPECTATION, allow_empty=True)
    if not address:
        return None
    if split_address(address) is None:
        raise fields.error("address", address, ADDRESS_EXPECTATION)
    return address


def parse_data_path(table: dict[str, Any], source: str, base_dir: Path) -> CoordinatorConfig:
    """The outbox and uploader keys of ``[coordinator]`` (bounds are checked so a typo cannot fill a disk)."""
    fields = TableReader(table, source, "coordinator", COORDINATOR_KEYS)
    default = CoordinatorConfig()
    path = None
    text = fields.string("outbox_path", "", expected="a file path for the SQLite outbox (relative to the config "
                                                     "file)", allow_empty=True)
    if text:
        path = resolve(text, base_dir)
        problem = directory_problem(path.parent)
        if problem:
            raise fields.error("outbox_path", text, f"a file in a writable directory, but {problem} "
                                                    f"(resolved to {str(path)!r})")
    rows = fields.integer("outbox_max_rows", default.outbox_max_rows, minimum=1, maximum=MAX_OUTBOX_ROWS)
    size = fields.integer("outbox_max_bytes", default.outbox_max_bytes, minimum=1 << 16, maximum=MAX_OUTBOX_BYTES,
                          expected=f"a size in bytes, {1 << 16}..{MAX_OUTBOX_BYTES}")
    queue = fields.integer("outbox_queue_size", default.outbox_queue_size, minimum=1, maximum=MAX_QUEUE)
    batch = fields.integer("upload_batch_size", default.upload_batch_size, minimum=1, maximum=MAX_UPLOAD_BATCH,
                           expected=f"samples per upload batch, 1..{MAX_UPLOAD_BATCH}")
    backoff = fields.integer("upload_backoff_max_ms", default.upload_backoff_max_ms, minimum=10, maximum=600_000,
                             expected="the longest wait between upload retries in ms, 10..600000")
    keepalive = fields.integer("keepalive_ms", default.keepalive_ms, minimum=1000, maximum=3_600_000,
                               expected="the interval of keepalive pings to the coordinator in ms, 1000..3600000")
    return CoordinatorConfig(outbox_path=path, outbox_max_rows=rows, outbox_max_bytes=size, outbox_queue_size=queue,
                             upload_batch_size=batch, upload_backoff_max_ms=backoff, keepalive_ms=keepalive)
