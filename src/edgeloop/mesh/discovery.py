"""Zeroconf (DNS-SD over mDNS) discovery: announce this node, browse for the others.

The TXT record carries what a peer needs before it ever calls us: mesh name, node id, gRPC
and metrics ports, protocol version, placement weight, zone and the ready model versions.
It is re-published (``update_service``) whenever models load or unload.

A mesh has a name (``mesh.name``): records of another mesh, or with no name, are ignored, so
unrelated edgeloop processes on one network never join each other's view.  The name scopes;
it does not authenticate (anyone on the network can announce any name).  The instance name
is ``<node id>@<mesh name>``, so equal node ids in two meshes do not clash.

Several responders share one host in tests and demos, so everything is bound to the
configured interfaces, IPv4 only, and lookups ask for multicast answers (QM): with
several sockets on port 5353, a unicast answer would reach only one of them.
Names are node ids, unique by configuration, so registration skips the conflict probe
(``cooperating_responders``) and a node is visible within a few hundred milliseconds.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

from edgeloop.config.mesh import is_mesh_name
from edgeloop.mesh.membership import DEFAULT_MESH, MAX_WEIGHT, PROTOCOL_VERSION, Membership
from edgeloop.protocol.versions import parse_version

log = logging.getLogger(__name__)

SOURCE = "mdns"
_TXT_LIMIT = 255  # bytes per "key=value" string in a TXT record


@dataclass(frozen=True)
class Announcement:
    """What this node publishes about itself."""

    node_id: str
    host: str
    grpc_port: int
    metrics_port: int = 0
    weight: float = 1.0
    zone: str = "default"
    models: Mapping[str, Sequence[int]] | None = None
    mesh_name: str = DEFAULT_MESH


def instance_name(node_id: str, mesh_name: str) -> str:
    """The DNS-SD instance label: unique per (node, mesh), so two meshes may reuse node ids."""
    return f"{node_id}@{mesh_name}"


def encode_models(models: Mapping[str, Sequence[int]]) -> str:
    """``{"mlp": [1, 2], "iris": [3]}`` -> ``"iris:3;mlp:1,2"`` (sorted, compact)."""
    return ";".join(f"{m}:{','.join(str(v) for v in sorted(vs))}" for m, vs in sorted(models.items()) if vs)


def decode_models(text: str) -> dict[str, list[int]]:
    """Inverse of ``encode_models``; raises ValueError naming the bad part."""
    models: dict[str, list[int]] = {}
    for part in filter(None, text.split(";")):
        name, sep, versions = part.rpartition(":")
        if not sep or not name:
            raise ValueError(f"TXT 'models': part {part!r}, expected 'name:v1,v2'")
        parsed = [parse_version(v) for v in versions.split(",") if v]
        if None in parsed:
            raise ValueError(f"TXT 'models': part {part[:200]!r}, expected versions that are positive integers")
        models[name] = parsed
    return models


def txt_properties(a: Announcement) -> dict[str, str]:
    props = {
        "mesh": a.mesh_name,
        "id": a.node_id,
        "grpc": str(a.grpc_port),
        "metrics": str(a.metrics_port),
        "proto": PROTOCOL_VERSION,
        "weight": repr(float(a.weight)),
        "zone": a.zone,
        "models": encode_models(a.models or {}),
    }
    for key, value in props.items():
        if len(key) + 1 + len(value.encode()) > _TXT_LIMIT:
            # Peers still learn the full list through Peer.Describe on their next heartbeat.
            log.warning("TXT %r is %d bytes, over the %d-byte limit; truncated", key, len(value), _TXT_LIMIT)
            props[key] = value.encode()[: _TXT_LIMIT - len(key) - 1].decode(errors="ignore").rpartition(";")[0]
    return props


def parse_txt(properties: Mapping[bytes, bytes | None]) -> dict:
    """Member fields from a peer's TXT properties; raises ValueError naming the key."""
    props = {k.decode(): (v or b"").decode() for k, v in properties.items()}

    def need(key: str) -> str:
        if key not in props:
            raise ValueError(f"TXT key {key!r} missing, got keys {sorted(props)}")
        return props[key]

    mesh_name = need("mesh")
    if not is_mesh_name(mesh_name):
        raise ValueError(f"TXT key 'mesh': got {mesh_name[:200]!r}, expected a mesh name like 'default'")
    try:
        fields = {
            "mesh_name": mesh_name,
            "node_id": need("id"),
            "grpc_port": int(need("grpc")),
            "metrics_port": int(props.get("metrics", "0") or 0),
            "protocol_version": props.get("proto", PROTOCOL_VERSION),
            "weight": float(props.get("weight", "1.0")),
            "zone": props.get("zone", "default") or "default",
            "models": decode_models(props.get("models", "")),
        }
    except ValueError as exc:
        raise ValueError(f"bad TXT record {str(props)[:400]}: {exc}") from None
    if not 0 < fields["grpc_port"] < 65536:
        raise ValueError(f"TXT key 'grpc': got {fields['grpc_port']}, expected a port in 1..65535")
    if not (math.isfinite(fields["weight"]) and 0 < fields["weight"] <= MAX_WEIGHT):  # else placement raises
        raise ValueError(f"TXT key 'weight': got {fields['weight']}, expected a finite number > 0 and <= {MAX_WEIGHT:g}")
    return fields


def _ipv4_addresses(host: str, interfaces: Sequence[str]) -> list[bytes]:
    candidates = [host] if host not in ("", "0.0.0.0") else list(interfaces)
    out = []
    for c in candidates:
        try:
            if isinstance(ipaddress.ip_address(c), ipaddress.IPv4Address):
                out.append(socket.inet_aton(c))
        except ValueError:
            continue
    if not out:
        raise ValueError(f"host: got {host!r} with interfaces {list(interfaces)}, expected an IPv4 address to announce")
    return out


class Discovery:
    """Registers (optionally) this node and keeps ``membership`` in step with what mDNS sees."""

    def __init__(
        self,
        membership: Membership,
        service_type: str = "_edgeloop._tcp.local.",
        interfaces: Sequence[str] = ("127.0.0.1",),
        announcement: Announcement | None = None,
        mesh_name: str = DEFAULT_MESH,
    ):
        """``mesh_name``: only members announcing this name join ``membership``."""
        if announcement is not None and announcement.mesh_name != mesh_name:
            raise ValueError(f"announcement.mesh_name: got {announcement.mesh_name!r}, expected {mesh_name!r} "
                             "(a node announces the mesh it browses)")
        self.membership = membership
        self.mesh_name = mesh_name
        self.service_type = service_type
        self.interfaces = list(interfaces)
        self.announcement = announcement
        self._zc = None
        self._info = None
        self._browser = None
        self._names: dict[str, str] = {}  # service name -> node id
        self._foreign: set[str] = set()  # service names of other meshes, logged once
        self._live_names: set[str] = set()  # announced and not yet said goodbye
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, Zeroconf

        self._zc = Zeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._worker = threading.Thread(target=self._resolve_loop, name="edgeloop-mdns-resolve", daemon=True)
        self._worker.start()
        if self.announcement is not None:
            self._info = self._service_info(self.announcement)
            self._on_loop(self._zc.async_register_service(self._info, cooperating_responders=True))
        self._browser = ServiceBrowser(self._zc, self.service_type, handlers=[self._on_change])

    def stop(self) -> None:
        """Send goodbyes (peers drop us at once) and close the sockets."""
        if self._zc is None:
            return
        zc, self._zc = self._zc, None
        self._jobs.put(None)
        try:
            if self._browser is not None:
                self._browser.cancel()
            if self._info is not None:
                zc.unregister_service(self._info)
        finally:
            zc.close()
        if self._worker is not None:
            self._worker.join(timeout=2)

    def update_models(self, models: Mapping[str, Sequence[int]]) -> None:
        """Re-publish the TXT record with the current ready models."""
        if self.announcement is None:
            return
        with self._lock:
            self.announcement = Announcement(**{**self.announcement.__dict__, "models": dict(models)})
            info = self._service_info(self.announcement)
            if self._zc is not None and self._info is not None and info.properties != self._info.properties:
                self._info = info
                self._on_loop(self._zc.async_update_service(info))

    # ------------------------------------------------------------------ internals
    def _on_loop(self, coro) -> None:
        """Run a zeroconf coroutine on its loop; wait for it to *schedule* the announcements only.

        The blocking ``register_service`` / ``update_service`` wait for all three broadcasts
        (~0.5 s); the first goes out at once, which is all peers need, so only that is awaited.
        """
        import asyncio

        asyncio.run_coroutine_threadsafe(coro, self._zc.loop).result(timeout=5)

    def _service_info(self, a: Announcement):
        from zeroconf import ServiceInfo

        return ServiceInfo(
            self.service_type,
            f"{instance_name(a.node_id, a.mesh_name)}.{self.service_type}",
            addresses=_ipv4_addresses(a.host, self.interfaces),
            port=a.grpc_port,
            properties=txt_properties(a),
            server=f"edgeloop-{a.node_id}-{a.mesh_name}.local.",
        )

    def _on_change(self, zeroconf, service_type, name, state_change) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self._live_names.discard(name)
            node_id = self._names.pop(name, None)
            if node_id is not None:
                log.info("peer %s said goodbye", node_id)
                self.membership.remove_source(node_id, SOURCE)
        else:
            self._live_names.add(name)
            self._jobs.put(name)

    def _resolve_loop(self) -> None:
        from zeroconf import DNSQuestionType, ServiceInfo

        while True:
            name = self._jobs.get()
            zc = self._zc
            if name is None or zc is None:
                return
            info = ServiceInfo(self.service_type, name)
            try:
                if not info.request(zc, 1500, question_type=DNSQuestionType.QM):
                    log.debug("no answer resolving %s", name)
                    continue
                fields = parse_txt(info.properties)
            except Exception as exc:  # a foreign or malformed record must not stop discovery
                log.warning("ignoring mDNS service %s: %s", name, exc)
                continue
            addresses = info.parsed_addresses()
            node_id = fields.pop("node_id")
            other_mesh = fields.pop("mesh_name")
            if other_mesh != self.mesh_name:
                if name not in self._foreign:
                    self._foreign.add(name)
                    log.info("ignoring node %s: it is in mesh %r, this is mesh %r", node_id, other_mesh, self.mesh_name)
                continue
            if node_id == self.membership.self_id:
                continue
            if not addresses:
                continue
            fields["host"] = addresses[0]
            if name not in self._live_names:
                continue  # said goodbye while we were resolving it
            self._names[name] = node_id
            self.membership.upsert(node_id, SOURCE, **fields)
