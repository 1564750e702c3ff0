"""Applying dotted overrides (from command-line flags) to an EdgeConfig and re-checking the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .edge import parse_edge_config
from .errors import ConfigError
from .schema import EdgeConfig, ModelConfig, VersionPolicy

FLAGS_SOURCE = "<flags>"


def edge_config_to_data(config: EdgeConfig) -> dict[str, Any]:
    """The TOML-shaped dict that parses back to ``config`` (paths absolute)."""
    node = config.node
    serving = config.serving
    mesh = config.mesh
    defaults = model_to_data(serving.model_defaults)
    serving_data: dict[str, Any] = {
        "max_receive_message_bytes": serving.max_receive_message_bytes,
        "max_send_message_bytes": serving.max_send_message_bytes,
        "grpc_workers": serving.grpc_workers,
        "model_defaults": defaults,
        "models": {m.name: _differences(model_to_data(m), defaults) for m in serving.models},
    }
    if serving.model_repository is not None:
        serving_data["model_repository"] = str(serving.model_repository)
    mesh_data: dict[str, Any] = {
        "enabled": mesh.enabled,
        "name": mesh.name,
        "zeroconf_interfaces": list(mesh.zeroconf_interfaces),
        "service_type": mesh.service_type,
        "static_peers": list(mesh.static_peers),
        "heartbeat_interval_ms": mesh.heartbeat_interval_ms,
        "down_after_ms": mesh.down_after_ms,
    }
    if mesh.capacity_factor is not None:
        mesh_data["capacity_factor"] = mesh.capacity_factor
    if mesh.spill_queue_depth is not None:
        mesh_data["spill_queue_depth"] = mesh.spill_queue_depth
    if mesh.decision_log is not None:
        mesh_data["decision_log"] = str(mesh.decision_log)
    data: dict[str, Any] = {
        "node": {"id": node.id, "host": node.host, "grpc_port": node.grpc_port, "metrics_port": node.metrics_port,
                 "weight": node.weight, "zone": node.zone},
        "serving": serving_data,
        "mesh": mesh_data,
    }
    coordinator = config.coordinator
    data["coordinator"] = {
        "outbox_max_rows": coordinator.outbox_max_rows, "outbox_max_bytes": coordinator.outbox_max_bytes,
        "outbox_queue_size": coordinator.outbox_queue_size, "upload_batch_size": coordinator.upload_batch_size,
        "upload_backoff_max_ms": coordinator.upload_backoff_max_ms, "keepalive_ms": coordinator.keepalive_ms,
    }
    if coordinator.outbox_path is not None:
        data["coordinator"]["outbox_path"] = str(coordinator.outbox_path)
    if config.coordinator_address is not None:
        data["coordinator"]["address"] = config.coordinator_address
    return data


def model_to_data(model: ModelConfig) -> dict[str, Any]:
    """A model table that parses back to ``model``."""
    return {
        "version_policy": version_policy_to_data(model.version_policy),
        "max_batch_size": model.max_batch_size,
        "max_queue_delay_us": model.max_queue_delay_us,
        "max_queue_size": model.max_queue_size,
        "preferred_batch_sizes": list(model.preferred_batch_sizes),
        "intra_op_threads": model.intra_op_threads,
        "inter_op_threads": model.inter_op_threads,
        "graph_optimization_level": model.graph_optimization_level,
        "execution_providers": list(model.execution_providers),
        **({} if model.sample_rate is None else {"sample_rate": model.sample_rate}),
    }


def _differences(model: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Only the keys a model sets away from the defaults, so overriding a default still reaches it."""
    return {key: value for key, value in model.items() if defaults.get(key) != value}


def version_policy_to_data(policy: VersionPolicy) -> Any:
    """The TOML form of a version policy."""
    if policy.kind == "all":
        return "all"
    if policy.kind == "specific":
        return {"specific": list(policy.versions)}
    return {"latest": policy.latest_n}


def apply_overrides(config: EdgeConfig, dotted: dict[str, Any]) -> EdgeConfig:
    """``config`` with each dotted key set (``__`` also separates; ``None`` unsets), checked like a file."""
    data = edge_config_to_data(config)
    for raw_key, value in dotted.items():
        key = raw_key.replace("__", ".")
        if key == "coordinator_address":
            key = "coordinator.address"
        parts = key.split(".")
        if not all(parts):
            raise ConfigError.for_value(FLAGS_SOURCE, raw_key, value, "a dotted key such as 'node.grpc_port'")
        table = data
        for depth, part in enumerate(parts[:-1]):
            nested = table.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError.for_value(FLAGS_SOURCE, ".".join(parts[: depth + 1]), nested,
                                            f"a table, to set {key!r} inside it")
            table = nested
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        if value is None:
            table.pop(parts[-1], None)  # None means "not set": the key's default (often "disabled")
        else:
            table[parts[-1]] = value
    result = parse_edge_config(data, source=FLAGS_SOURCE, base_dir=Path.cwd())
    return EdgeConfig(source=config.source, node=result.node, serving=result.serving, mesh=result.mesh,
                      coordinator_address=result.coordinator_address, auth=config.auth,
                      coordinator=result.coordinator)
