"""Checks for network-shaped values: hosts, ports, ``host:port`` strings, zeroconf names.

Each function returns the problem as text (``None`` when the value is fine) so callers can attach file and key.
"""

from __future__ import annotations

import ipaddress
import re

PORT_EXPECTATION = "an integer port in 1..65535"
HOST_EXPECTATION = "a host name or IP address such as '127.0.0.1'"
ADDRESS_EXPECTATION = "a 'host:port' address such as '127.0.0.1:8001' (port 1..65535, IPv6 as '[::1]:8001')"
NODE_ID_EXPECTATION = ("a node id of 1..63 characters: letters, digits, '-', '_' or '.', "
                       "starting with a letter or digit")

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?\._(?:tcp|udp)\.local\.$")


def is_port(value: object) -> bool:
    """True for an integer (not bool) in 1..65535."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def is_host(value: str) -> bool:
    """True for an IPv4/IPv6 literal or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    return all(_HOSTNAME_LABEL.match(label) for label in name.split("."))


def is_node_id(value: str) -> bool:
    """True for ids that are safe as zeroconf instance names, file names and metric labels."""
    return bool(_NODE_ID.match(value))


def is_ip_address(value: str) -> bool:
    """True for an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_ipv4_address(value: str) -> bool:
    """True for an IPv4 literal (zeroconf runs IPv4 only, so its interfaces must be IPv4)."""
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def is_service_type(value: str) -> bool:
    """True for a DNS-SD service type such as ``_edgeloop._tcp.local.``."""
    return bool(_SERVICE_TYPE.match(value))


def split_address(text: str) -> tuple[str, int] | None:
    """``host:port`` → (host, port), IPv6 in brackets; ``None`` when malformed."""
    if not isinstance(text, str):
        return None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1: close + 2] != ":":
            return None
        host, port_text = text[1:close], text[close + 2:]
        if ":" not in host or not is_ip_address(host):
            return None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host or not is_host(host):
            return None
    if not port_text.isdigit() or port_text != str(int(port_text)):
        return None
    port = int(port_text)
    return (host, port) if is_port(port) else None


def canonical_host(host: str) -> str:
    """A form of ``host`` for comparing endpoints: lower case, ``localhost`` as 127.0.0.1, IPs normalised."""
    lowered = host.lower().rstrip(".")
    if lowered == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(lowered))
    except ValueError:
        return lowered


def hosts_overlap(a: str, b: str) -> bool:
    """True when two bind hosts would collide on the same port (a wildcard collides with everything)."""
    ca, cb = canonical_host(a), canonical_host(b)
    wildcards = {"0.0.0.0", "::"}
    return ca == cb or ca in wildcards or cb in wildcards
