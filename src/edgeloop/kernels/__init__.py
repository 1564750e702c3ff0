"""The Python face of the compiled numeric core (``edgeloop._native``).

Argument checks, docstrings and dtype dispatch live here; the arithmetic lives in
``native/*.pyx``.  Names are resolved lazily so that importing one family of kernels
does not load the others.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # linear algebra (kernels/linalg.py over native/_linalg.pyx)
    "dense": "linalg",
    "lowrank_dense": "linalg",
    "randomized_svd": "linalg",
    "svd_compress": "linalg",
    "CompressionReport": "linalg",
    # streaming statistics (kernels/stats.py over native/_stats.pyx)
    "HistogramAccumulator": "stats",
    "RunningMoments": "stats",
    "psi": "stats",
    "js_distance": "stats",
    "reconstruction_error": "stats",
    # placement hashing (kernels/placement.py over native/_placement.pyx)
    "stable_hash": "placement",
    "stable_hash_many": "placement",
    "HrwNodes": "placement",
    "hrw_assign": "placement",
    "hrw_rank": "placement",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeloop.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
