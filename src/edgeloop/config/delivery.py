"""``[delivery]`` tables: the edge's trusted keys and signing requirement, the cloud's signing key and
rollout defaults."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fields import TableReader
from .paths import resolve

EDGE_DELIVERY_KEYS = ("trusted_keys", "require_signed")
CLOUD_DELIVERY_KEYS = ("signing_key", "canary", "wave_factor", "bake_s", "manifest_ttl_s", "min_requests",
                       "min_success", "max_p99_ratio", "max_psi", "min_labelled", "max_accuracy_drop",
                       "accuracy_alpha", "accuracy_wait_s")


@dataclass(frozen=True)
class EdgeDeliveryConfig:
    trusted_keys: tuple[Path, ...] = ()
    require_signed: bool = False


@dataclass(frozen=True)
class CloudDeliveryConfig:
    signing_key: Path | None = None
    canary: int = 1
    wave_factor: float = 2.0
    bake_s: float = 60.0
    manifest_ttl_s: float = 7 * 24 * 3600.0
    min_requests: int = 20
    min_success: float = 0.99
    max_p99_ratio: float = 1.2
    max_psi: float = 0.5
    min_labelled: int = 30          # labelled requests per version before the canary accuracy gate judges
    max_accuracy_drop: float = 0.02  # accuracy the new version may lose against the champion
    accuracy_alpha: float = 0.05    # significance of the one-sided test that it lost more
    accuracy_wait_s: float = 300.0  # a wave waits this long for labels, then passes on the other gates (says so)


def parse_edge_delivery(table: dict[str, Any], source: str, base: Path) -> EdgeDeliveryConfig:
    fields = TableReader(table, source, "delivery", EDGE_DELIVERY_KEYS)
    raw = fields.array("trusted_keys", [], expected="a list of public key file paths (signing.pub)")
    keys = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            raise fields.error("trusted_keys", item, f"a file path as element {i}")
        path = resolve(item, base)
        if not path.is_file():
            raise fields.error("trusted_keys", item, f"an existing public key file (resolved to {str(path)!r})")
        keys.append(path)
    return EdgeDeliveryConfig(trusted_keys=tuple(keys), require_signed=fields.boolean("require_signed", False))


def parse_cloud_delivery(table: dict[str, Any], source: str, base: Path) -> CloudDeliveryConfig:
    fields = TableReader(table, source, "delivery", CLOUD_DELIVERY_KEYS)
    d = CloudDeliveryConfig()
    text = fields.string("signing_key", "", expected="the signing.key path of `edgeloop keys init`", allow_empty=True)
    key = None
    if text:
        key = resolve(text, base)
        if not key.is_file():
            raise fields.error("signing_key", text, f"an existing private key file (resolved to {str(key)!r})")
    return CloudDeliveryConfig(
        signing_key=key, canary=fields.integer("canary", d.canary, minimum=1, maximum=100_000),
        wave_factor=fields.number("wave_factor", d.wave_factor, minimum=1.0, expected="a number >= 1.0"),
        bake_s=fields.number("bake_s", d.bake_s, minimum=0.0, expected="a number >= 0.0"),
        manifest_ttl_s=fields.number("manifest_ttl_s", d.manifest_ttl_s, minimum=1.0, expected="a number >= 1.0"),
        min_requests=fields.integer("min_requests", d.min_requests, minimum=0, maximum=1 << 40),
        min_success=fields.number("min_success", d.min_success, minimum=0.0, expected="a number >= 0.0"),
        max_p99_ratio=fields.number("max_p99_ratio", d.max_p99_ratio, minimum=1.0, expected="a number >= 1.0"),
        max_psi=fields.number("max_psi", d.max_psi, minimum=0.0, expected="a number >= 0.0"),
        min_labelled=fields.integer("min_labelled", d.min_labelled, minimum=0, maximum=1 << 40),
        max_accuracy_drop=_fraction(fields, "max_accuracy_drop", d.max_accuracy_drop, "a number in [0, 1]"),
        accuracy_alpha=_fraction(fields, "accuracy_alpha", d.accuracy_alpha, "a significance level in (0, 0.5]",
                                 low_exclusive=True, high=0.5),
        accuracy_wait_s=fields.number("accuracy_wait_s", d.accuracy_wait_s, minimum=0.0, expected="seconds >= 0"))


def _fraction(fields, name: str, default: float, expected: str, low_exclusive: bool = False,
              high: float = 1.0) -> float:
    value = fields.number(name, default, minimum=0.0, expected=expected)
    if value > high or (low_exclusive and value == 0.0):
        raise fields.error(name, value, expected)
    return value
