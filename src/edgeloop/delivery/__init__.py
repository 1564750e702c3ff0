"""Fleet delivery: signed manifests, chunked peer-assisted transfer, activation with self-test, staged rollouts.

Imports only ``mesh.placement``, ``protocol``, ``config`` and ``store`` (docs/architecture.md); the edge
(``node``) and the coordinator compose these pieces.
"""
