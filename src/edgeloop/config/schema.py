"""The frozen dataclasses a parsed config becomes.

Defaults make ``EdgeConfig()`` a usable single-node config, so commands driven by flags need no file.
Values are validated by the parsers (``edge``, ``cloud``); building these directly trusts the caller.
"""

from __future__ import annotations

from .delivery import CloudDeliveryConfig, EdgeDeliveryConfig
from dataclasses import dataclass, replace
from pathlib import Path

from .training import TrainingConfig

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: the newest ``latest_n``, all, or a fixed set."""

    kind: str = "latest"
    latest_n: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: "tuple[int, ...] | list[int]") -> tuple[int, ...]:
        """The versions to serve out of those on disk, ascending."""
        present = sorted(set(available))
        if self.kind == "all":
            return tuple(present)
        if self.kind == "specific":
            return tuple(v for v in present if v in self.versions)
        return tuple(present[-self.latest_n:]) if self.latest_n > 0 else ()


#: rules of an escalation policy: classifiers (on probabilities) and regressors (on a declared range)
ESCALATION_RULES = ("top1", "margin", "entropy", "range")


@dataclass(frozen=True)
class EscalationPolicy:
    """When a row of a model's answer goes to a bigger model elsewhere (joint inference), and where.

    The rule reads ``output`` per row: ``top1`` escalates when the highest probability is below
    ``threshold``, ``margin`` when the top two are closer than ``threshold``, ``entropy`` when the
    entropy (nats) is above ``threshold``, ``range`` when a value falls outside ``[low, high]``.
    The target is ``target_model`` on a mesh node whose zone is ``target_zone``, or at ``target_address``.
    """

    target_model: str
    output: str
    rule: str
    threshold: float = 0.0
    low: float | None = None
    high: float | None = None
    target_zone: str | None = None
    target_address: str | None = None
    target_version: int | None = None
    budget_ms: int = 200  # the most an escalation may take (the request's own deadline may cut it shorter)
    max_share: float | None = None  # escalated rows / rows evaluated, over time (token bucket); None: no cap
    max_burst: int = 10  # rows that may escalate at once above the share (the bucket's size)


#: default ``max_queue_size`` of a model: bounded even where ``grpc_workers`` is raised far above 8
DEFAULT_MAX_QUEUE_SIZE = 64


@dataclass(frozen=True)
class ModelConfig:
    """How one model is served: batching and onnxruntime session options."""

    name: str
    version_policy: VersionPolicy = VersionPolicy()
    max_batch_size: int = 0  # 0 = no batching
    max_queue_delay_us: int = 0
    #: requests that may wait for a batch at once; past it a request gets RESOURCE_EXHAUSTED at once
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    preferred_batch_sizes: tuple[int, ...] = ()
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"  # disable|basic|extended|all
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    sample_rate: float | None = None  # share of requests recorded to the outbox; None = 1.0 with a coordinator, else 0
    escalation: EscalationPolicy | None = None  # joint inference: hard rows go to a bigger model
    #: real-time features (a model whose manifest declares a feature definition): entities kept in memory
    feature_max_entities: int = 100_000
    #: longest window a served feature definition may declare (rows of history kept per entity)
    feature_max_history: int = 1024

    @property
    def batching(self) -> bool:
        """True when requests may be merged into batches."""
        return self.max_batch_size > 0


@dataclass(frozen=True)
class NodeConfig:
    """Identity and listening endpoints of one process."""

    id: str = "edge"
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_port: int = 8002
    weight: float = 1.0
    zone: str = "default"


@dataclass(frozen=True)
class ServingConfig:
    """The inference server: repository, message limits, workers, per-model settings."""

    model_repository: Path | None = None
    max_receive_message_bytes: int = 64 * 2**20
    max_send_message_bytes: int = 64 * 2**20
    grpc_workers: int = 8
    model_defaults: ModelConfig = ModelConfig(name="*")
    models: tuple[ModelConfig, ...] = ()

    def model(self, name: str) -> ModelConfig:
        """Settings for ``name``: its own entry, else the defaults under that name."""
        for entry in self.models:
            if entry.name == name:
                return entry
        return replace(self.model_defaults, name=name)


@dataclass(frozen=True)
class MeshConfig:
    """Peer discovery, liveness and spill-over routing between edges.

    ``name`` scopes the mesh: nodes and clients only see members announcing the same name.
    It keeps unrelated meshes on one network apart; it is not authentication.
    """

    enabled: bool = True
    name: str = "default"
    zeroconf_interfaces: tuple[str, ...] = ("127.0.0.1",)
    service_type: str = "_edgeloop._tcp.local."
    static_peers: tuple[str, ...] = ()  # "host:port"
    heartbeat_interval_ms: int = 250
    down_after_ms: int = 1000
    capacity_factor: float | None = None
    spill_queue_depth: int | None = None
    decision_log: Path | None = None


@dataclass(frozen=True)
class AuthConfig:
    """Fleet token and TLS material (paths); all empty means an unauthenticated, plaintext loopback fleet."""

    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_auth: bool = False  # mTLS: the server requires a client certificate signed by tls_ca

    @property
    def tls(self) -> bool:
        """True when connections use TLS (a CA to trust, or a certificate to present)."""
        return self.tls_ca is not None or self.tls_cert is not None


@dataclass(frozen=True)
class CoordinatorConfig:
    """The edge's data path to the coordinator: sample outbox bounds and uploader settings.

    ``outbox_path`` None means ``<model repository's parent>/outbox-<node id>.sqlite`` (or ``.edgeloop/``
    in the working directory when there is no repository).
    """

    outbox_path: Path | None = None
    outbox_max_rows: int = 1_000_000
    outbox_max_bytes: int = 1 << 30
    outbox_queue_size: int = 65536  # samples waiting for the outbox writer; past it they are dropped
    upload_batch_size: int = 2000
    upload_backoff_max_ms: int = 10_000
    #: HTTP/2 keepalive pings on the channel to the coordinator: a coordinator that vanishes without
    #: closing its connections (frozen, unplugged) is noticed within about this plus 10 s
    keepalive_ms: int = 20_000


@dataclass(frozen=True)
class EdgeConfig:
    """Everything one edge process needs."""

    source: str = "<flags>"
    node: NodeConfig = NodeConfig()
    serving: ServingConfig = ServingConfig()
    mesh: MeshConfig = MeshConfig()
    coordinator_address: str | None = None
    auth: AuthConfig = AuthConfig()
    coordinator: CoordinatorConfig = CoordinatorConfig()
    delivery: "EdgeDeliveryConfig" = EdgeDeliveryConfig()

    def sample_rate(self, model: str) -> float:
        """The share of ``model``'s requests recorded: its own or the defaults' ``sample_rate``, else
        1.0 when a coordinator is configured and 0 without one."""
        rate = self.serving.model(model).sample_rate
        if rate is None:
            return 1.0 if self.coordinator_address else 0.0
        return rate

    def with_overrides(self, **dotted: object) -> "EdgeConfig":
        """A copy with dotted keys replaced, validated like a file.

        Use ``cfg.with_overrides(**{"node.grpc_port": 9001})``; ``__`` may stand for ``.``
        (``node__grpc_port=9001``). Errors name ``<flags>`` as their file.
        """
        from .overrides import apply_overrides  # late: overrides imports the parser, which imports this module

        return apply_overrides(self, dotted)


@dataclass(frozen=True)
class CloudConfig:
    """Everything the coordinator process needs."""

    source: str
    node: NodeConfig
    database: Path | str                     # a SQLite file, or a postgresql:// URL (str)
    artifact_dir: Path
    heartbeat_interval_ms: int = 1000
    auth: AuthConfig = AuthConfig()
    synchronous: str = "normal"              # SQLite: "normal" survives a process crash, "full" a power cut
    max_message_bytes: int = 16 * 1024 * 1024  # one gRPC message (an upload batch, a push chunk)
    max_batch_rows: int = 10_000             # samples or labels in one upload batch
    max_artifact_bytes: int = 1 << 30        # one pushed model
    fetch_chunk_bytes: int = 1 << 20         # FetchArtifact's default chunk (a request may ask for less)
    grpc_workers: int = 64                   # handler threads: one per directive stream and per upload
    history_days: int = 14                   # status reports and statistics windows kept this long
    training: TrainingConfig = TrainingConfig()  # the continuous-training loop ([training])
    delivery: CloudDeliveryConfig = CloudDeliveryConfig()  # signing key and rollout defaults
    lease_s: float = 10.0                    # PostgreSQL: another coordinator takes the CT loop this long after
                                             # its leader stopped renewing the lease


def join_host_port(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "AuthConfig",
    "CloudConfig",
    "CoordinatorConfig",
    "EdgeConfig",
    "ESCALATION_RULES",
    "EscalationPolicy",
    "GRAPH_OPTIMIZATION_LEVELS",
    "MeshConfig",
    "ModelConfig",
    "NodeConfig",
    "ServingConfig",
    "VersionPolicy",
    "join_host_port",
]
