"""TOML configs → frozen dataclasses, with errors that name file, key, value and expectation.

Stdlib only, so every part (serving, mesh, ct, delivery) can depend on it cheaply.
"""

from .cloud import load_cloud_config, parse_cloud_config
from .edge import load_edge_config, parse_edge_config
from .errors import ConfigError
from .fleet import load_fleet
from .schema import (
    AuthConfig,
    CloudConfig,
    CoordinatorConfig,
    EdgeConfig,
    EscalationPolicy,
    MeshConfig,
    ModelConfig,
    NodeConfig,
    ServingConfig,
    VersionPolicy,
)

__all__ = [
    "AuthConfig",
    "CloudConfig",
    "ConfigError",
    "CoordinatorConfig",
    "EdgeConfig",
    "EscalationPolicy",
    "MeshConfig",
    "ModelConfig",
    "NodeConfig",
    "ServingConfig",
    "VersionPolicy",
    "load_cloud_config",
    "load_edge_config",
    "load_fleet",
    "parse_cloud_config",
    "parse_edge_config",
]
