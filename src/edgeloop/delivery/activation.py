"""Admission and activation of a delivered model.

The order is verify → stage → load → warm up → self-test → swap → report.

``admit`` decides whether a manifest may be used at all (signature by a trusted key, expiry, no
downgrade or replay of a version already accepted).  ``activate`` runs the edge's steps in order; a step
that fails stops it there, so a model that fails any step is never served and the old one keeps serving.
The serving-side steps themselves live in ``node`` (this part never imports ``serving``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import manifest as mf

STEPS = ("stage", "load", "warm_up", "self_test", "swap")


class ActivationError(Exception):
    """A step failed; ``step`` names it and the message says why."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"activation step {step} failed: {message}")
        self.step = step


@dataclass(frozen=True)
class Policy:
    """The edge's ``[delivery]`` settings, keys loaded."""

    trusted_keys: Sequence = ()
    require_signed: bool = False


def admit(raw: bytes, policy: Policy, now_ms: int, accepted_version: int, *, model: str, version: int,
          sha256: str | None = None, size: int | None = None, rollback_to_held: bool = False) -> dict | None:
    """The manifest to use, or None for an unsigned one a development edge may take; ManifestError otherwise.

    ``accepted_version``: the highest version of ``model`` this edge ever accepted (persisted); a version
    at or below it is refused unless this is a signed rollback to a version the edge still holds.
    """
    if not raw:
        if policy.require_signed:
            raise mf.ManifestError(mf.UNSIGNED, f"model {model!r} version {version} came without a manifest; "
                                                f"expected a signed manifest (delivery.require_signed = true)")
        return None
    doc = mf.parse(raw)
    if doc.get("model") != model or doc.get("version") != version \
            or (sha256 is not None and doc.get("sha256") != sha256) or (size is not None and doc.get("size") != size):
        raise mf.ManifestError(mf.MISMATCH, f"manifest names {doc.get('model')!r} version {doc.get('version')} "
                                            f"sha256 {str(doc.get('sha256'))[:16]}; expected {model!r} version "
                                            f"{version} as the directive says")
    if "signature" in doc or policy.require_signed or policy.trusted_keys:
        if not policy.trusted_keys:
            raise mf.ManifestError(mf.BAD_SIGNATURE, "no trusted keys configured (delivery.trusted_keys); expected "
                                                     "at least one public key to verify signed manifests")
        mf.verify(doc, policy.trusted_keys, now_ms)
    kind = doc.get("kind", "model")
    if version <= accepted_version and not (kind == "rollback" and rollback_to_held):
        raise mf.ManifestError(mf.DOWNGRADE, f"model {model!r} version {version}: this edge already accepted "
                                             f"version {accepted_version}; expected a higher version (or a signed "
                                             f"rollback to a version still held)")
    return doc


def activate(steps: dict[str, Callable[[], None]]) -> None:
    """Run the steps in ``STEPS`` order (missing ones are skipped); ActivationError names the one that failed."""
    for name in STEPS:
        step = steps.get(name)
        if step is None:
            continue
        try:
            step()
        except ActivationError:
            raise
        except Exception as exc:  # any failure of a step stops activation with its reason
            raise ActivationError(name, f"{type(exc).__name__}: {str(exc)[:400]}") from None
