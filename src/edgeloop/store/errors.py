"""The store's refusals (both backends raise these; the coordinator maps them to FAILED_PRECONDITION)."""
from __future__ import annotations


class StoreError(Exception):
    """A request the store refuses because of what is already stored (e.g. a version taken)."""


class FencedError(StoreError):
    """A write refused because the lease it was made under has moved on (another holder, a newer epoch)."""
