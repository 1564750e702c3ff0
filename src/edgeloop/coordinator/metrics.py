"""The coordinator's Prometheus metrics, in their own registry (several coordinators may share a process in tests)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples = Counter("edgeloop_coordinator_samples_ingested", "Samples newly stored", registry=r)
        self.labels = Counter("edgeloop_coordinator_labels_ingested", "Label writes stored (joined or pending)",
                              ["source"], registry=r)
        self.duplicate_batches = Counter("edgeloop_coordinator_duplicate_batches",
                                         "Upload batches received again (no-ops)", ["kind"], registry=r)
        self.unauthenticated = Counter("edgeloop_coordinator_unauthenticated_calls",
                                       "Calls refused for a missing or wrong fleet token", ["method"], registry=r)
        self.rejected = Counter("edgeloop_coordinator_rejected_calls", "Calls refused with a gRPC error",
                                ["method", "code"], registry=r)
        self.leader = Gauge("edgeloop_coordinator_leader",
                            "1 while this coordinator holds the lease that runs the CT loop and rollouts "
                            "(always 1 on SQLite: one coordinator)", registry=r)
        self.leader.set(1)
        self.fenced_writes = Counter("edgeloop_coordinator_fenced_writes",
                                     "Writes made as CT-loop leader that the database refused because the lease "
                                     "had moved to another coordinator (this one then stepped down)", registry=r)
        self.connected = Gauge("edgeloop_coordinator_connected_edges", "Edges holding a directive stream", registry=r)
        self.directives = Counter("edgeloop_coordinator_directives", "Directives sent, applied or failed",
                                  ["outcome"], registry=r)
        self.artifact_bytes = Counter("edgeloop_coordinator_artifact_bytes_sent", "Artifact bytes served",
                                      registry=r)
