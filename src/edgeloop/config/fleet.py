"""Loading a whole fleet's configs at once, so clashes between files are caught before anything starts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .cloud import parse_cloud_config
from .edge import parse_edge_config
from .errors import ConfigError
from .network import hosts_overlap
from .schema import CloudConfig, EdgeConfig, NodeConfig
from .toml_source import read_toml


def load_fleet(paths: Iterable[str | Path]) -> tuple[CloudConfig | None, tuple[EdgeConfig, ...]]:
    """Load a cloud config (a file with ``[storage]``) and edge configs; ids and endpoints must be unique."""
    cloud: CloudConfig | None = None
    edges: list[EdgeConfig] = []
    seen: list[tuple[str, NodeConfig]] = []
    for path in paths:
        source = str(path)
        data = read_toml(path)
        if "storage" in data:
            config: CloudConfig | EdgeConfig = parse_cloud_config(data, source=source,
                                                                  base_dir=Path(path).resolve().parent)
            if cloud is not None:
                raise ConfigError.for_value(source, "storage", "a second cloud config",
                                            f"one cloud config per fleet; {cloud.source} is already the cloud")
            cloud = config
        else:
            config = parse_edge_config(data, source=source, base_dir=Path(path).resolve().parent)
            edges.append(config)
        _check_unique(source, config.node, seen)
        seen.append((source, config.node))
    return cloud, tuple(edges)


def _check_unique(source: str, node: NodeConfig, seen: list[tuple[str, NodeConfig]]) -> None:
    for other_source, other in seen:
        if node.id == other.id:
            raise ConfigError.for_value(source, "node.id", node.id,
                                        f"a node id unique across the fleet, but {other_source} uses it too",
                                        other_file=other_source)
        if not hosts_overlap(node.host, other.host):
            continue
        for key, port in (("grpc_port", node.grpc_port), ("metrics_port", node.metrics_port)):
            if port in (other.grpc_port, other.metrics_port):
                raise ConfigError.for_value(
                    source, f"node.{key}", port,
                    f"a host:port unique across the fleet, but {other_source} ({other.id}) already uses "
                    f"{node.host}:{port}", other_file=other_source)
