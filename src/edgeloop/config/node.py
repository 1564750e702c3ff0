"""The ``[node]`` table shared by edge and cloud configs: identity and listening endpoints."""

from __future__ import annotations

from typing import Any

from .fields import REQUIRED, TableReader
from .network import HOST_EXPECTATION, NODE_ID_EXPECTATION, PORT_EXPECTATION, is_host, is_node_id
from .schema import NodeConfig

MAX_WEIGHT = 1e100  # kernels.hrw_assign accepts weights up to this
EDGE_NODE_KEYS = ("id", "host", "grpc_port", "metrics_port", "weight", "zone")
CLOUD_NODE_KEYS = ("id", "host", "grpc_port", "metrics_port")


def parse_node(table: dict[str, Any], source: str, *, keys: tuple[str, ...], default: NodeConfig,
               id_required: bool) -> NodeConfig:
    """A NodeConfig from ``[node]``; ports must be valid and distinct from each other."""
    fields = TableReader(table, source, "node", keys)
    node_id = fields.string("id", REQUIRED if id_required else default.id, expected=NODE_ID_EXPECTATION)
    if not is_node_id(node_id):
        raise fields.error("id", node_id, NODE_ID_EXPECTATION)
    host = fields.string("host", default.host, expected=HOST_EXPECTATION)
    if not is_host(host):
        raise fields.error("host", host, HOST_EXPECTATION)
    grpc_port = fields.integer("grpc_port", default.grpc_port, minimum=1, maximum=65535, expected=PORT_EXPECTATION)
    metrics_port = fields.integer("metrics_port", default.metrics_port, minimum=1, maximum=65535,
                                  expected=PORT_EXPECTATION)
    if grpc_port == metrics_port:
        blamed = "metrics_port" if fields.has("metrics_port") else "grpc_port"
        other = "grpc_port" if blamed == "metrics_port" else "metrics_port"
        raise fields.error(blamed, metrics_port, f"a port different from node.{other} ({grpc_port})")
    weight = default.weight
    zone = default.zone
    if "weight" in keys:
        weight_expected = f"a finite number > 0 and <= {MAX_WEIGHT:g} (relative placement weight)"
        weight = fields.number("weight", default.weight, exclusive_minimum=0.0, expected=weight_expected)
        if weight > MAX_WEIGHT:  # the placement kernel refuses larger weights
            raise fields.error("weight", weight, weight_expected)
    if "zone" in keys:
        zone = fields.string("zone", default.zone, expected="a non-empty zone name")
    return NodeConfig(id=node_id, host=host, grpc_port=grpc_port, metrics_port=metrics_port, weight=weight, zone=zone)
