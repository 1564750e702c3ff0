"""Federated training math shared by the edge (local updates) and the coordinator (aggregation).

A part of its own because ``node`` may not import ``ct`` and ``ct`` may not import ``node``: the
edge trains the global softmax-regression weights on its own labelled rows (``local``), the
coordinator combines the updates robustly (``aggregate``); both speak the flat float32 layout of
``weights``.  NumPy only.
"""
