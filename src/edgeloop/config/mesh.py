"""The ``[mesh]`` table: the mesh's name, discovery, liveness timing and spill-over limits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .fields import TableReader
from .network import ADDRESS_EXPECTATION, is_ipv4_address, is_service_type, split_address
from .paths import file_problem, resolve
from .schema import MeshConfig

MESH_KEYS = ("enabled", "name", "zeroconf_interfaces", "service_type", "static_peers", "heartbeat_interval_ms",
             "down_after_ms", "capacity_factor", "spill_queue_depth", "decision_log")
INTERFACES_EXPECTATION = ("an array of distinct IP addresses to announce on, IPv4 only "
                          "(zeroconf runs IPv4 only), such as [\"127.0.0.1\"]")
PEERS_EXPECTATION = f"an array of distinct peers, each {ADDRESS_EXPECTATION}"
SERVICE_TYPE_EXPECTATION = "a DNS-SD service type such as '_edgeloop._tcp.local.'"
MESH_NAME_EXPECTATION = ("a mesh name of 1..63 characters: letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit, such as 'default'")
_MESH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def is_mesh_name(value: object) -> bool:
    """True for a valid mesh name (the scoping name nodes announce and compare; not a secret)."""
    return isinstance(value, str) and _MESH_NAME.fullmatch(value) is not None


def parse_mesh(table: dict[str, Any], source: str, base_dir: Path) -> MeshConfig:
    """A MeshConfig; ``down_after_ms`` must exceed the heartbeat interval or every peer would flap."""
    fields = TableReader(table, source, "mesh", MESH_KEYS)
    default = MeshConfig()
    enabled = fields.boolean("enabled", default.enabled)
    name = fields.string("name", default.name, expected=MESH_NAME_EXPECTATION)
    if not is_mesh_name(name):
        raise fields.error("name", name, MESH_NAME_EXPECTATION)
    interfaces = default.zeroconf_interfaces
    if fields.has("zeroconf_interfaces"):
        interfaces = _distinct_strings(fields, "zeroconf_interfaces", INTERFACES_EXPECTATION, is_ipv4_address)
    service_type = fields.string("service_type", default.service_type, expected=SERVICE_TYPE_EXPECTATION)
    if not is_service_type(service_type):
        raise fields.error("service_type", service_type, SERVICE_TYPE_EXPECTATION)
    peers = default.static_peers
    if fields.has("static_peers"):
        peers = _distinct_strings(fields, "static_peers", PEERS_EXPECTATION, lambda p: split_address(p) is not None)
    heartbeat = fields.integer("heartbeat_interval_ms", default.heartbeat_interval_ms, minimum=1, maximum=3_600_000)
    down_after = fields.integer("down_after_ms", default.down_after_ms, minimum=1, maximum=86_400_000)
    if down_after <= heartbeat:
        blamed = "down_after_ms" if fields.has("down_after_ms") else "heartbeat_interval_ms"
        value = down_after if blamed == "down_after_ms" else heartbeat
        raise fields.error(blamed, value, f"mesh.down_after_ms ({down_after}) > mesh.heartbeat_interval_ms "
                                          f"({heartbeat}), so a peer is marked down only after missed heartbeats")
    capacity = fields.number("capacity_factor", None, minimum=1.0,
                             expected="a number >= 1.0 (bounded-load cap as a multiple of the average load)")
    spill = fields.integer("spill_queue_depth", None, minimum=1, maximum=1_000_000)
    decision_log = None
    text = fields.string("decision_log", "", expected="a file path (empty disables the log)", allow_empty=True)
    if text:
        decision_log = resolve(text, base_dir)
        problem = file_problem(decision_log)
        if problem:
            raise fields.error("decision_log", text, f"a writable file path, but {problem} "
                                                     f"(resolved to {str(decision_log)!r})")
    return MeshConfig(enabled=enabled, name=name, zeroconf_interfaces=interfaces, service_type=service_type,
                      static_peers=peers, heartbeat_interval_ms=heartbeat, down_after_ms=down_after,
                      capacity_factor=capacity, spill_queue_depth=spill, decision_log=decision_log)


def _distinct_strings(fields: TableReader, name: str, expected: str, valid) -> tuple[str, ...]:
    value = fields.table[name]
    if not isinstance(value, list):
        raise fields.error(name, value, expected)
    for index, item in enumerate(value):
        if not isinstance(item, str) or not valid(item):
            raise fields.error(f"{name}[{index}]", item, expected)
    if len(set(value)) != len(value):
        duplicate = next(item for item in value if value.count(item) > 1)
        raise fields.error(name, duplicate, f"{expected} (listed twice)")
    return tuple(value)
