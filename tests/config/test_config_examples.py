"""The shipped example configs load, agree with each other and form a valid fleet."""

from __future__ import annotations

from pathlib import Path

from edgeloop.config import CloudConfig, EdgeConfig, load_cloud_config, load_edge_config, load_fleet

EXAMPLES = Path(__file__).resolve().parents[2] / "edge-configs"
EDGE_FILES = [EXAMPLES / f"edge-{x}.toml" for x in "abc"]


def test_each_edge_example_loads_with_batching_on_loopback():
    ports = {"edge-a": (8001, 8002), "edge-b": (8011, 8012), "edge-c": (8021, 8022)}
    for path in EDGE_FILES:
        config = load_edge_config(path)
        assert isinstance(config, EdgeConfig) and config.source == str(path)
        assert (config.node.grpc_port, config.node.metrics_port) == ports[config.node.id]
        assert config.node.host == "127.0.0.1"
        assert config.mesh.zeroconf_interfaces == ("127.0.0.1",)
        assert config.serving.model_defaults.max_batch_size == 8
        assert config.serving.model_defaults.max_queue_delay_us == 500
        assert config.serving.model_repository == (EXAMPLES.parent / ".edgeloop" / config.node.id / "models")
        assert config.coordinator_address == "127.0.0.1:7001"
        mlp = config.serving.model("demo_mlp")
        assert mlp.preferred_batch_sizes == (4, 8) and mlp.max_batch_size == 8


def test_cloud_example_loads():
    cloud = load_cloud_config(EXAMPLES / "cloud.toml")
    assert isinstance(cloud, CloudConfig)
    assert (cloud.node.id, cloud.node.host, cloud.node.grpc_port, cloud.node.metrics_port) == (
        "cloud", "127.0.0.1", 7001, 7002)
    assert cloud.database.parent == EXAMPLES.parent / ".edgeloop" / "cloud"
    assert cloud.artifact_dir.is_absolute()


def test_fleet_of_all_examples():
    cloud, edges = load_fleet(sorted(EXAMPLES.glob("*.toml")))
    assert cloud is not None and cloud.node.id == "cloud"
    assert [e.node.id for e in edges] == ["edge-a", "edge-b", "edge-c"]
    assert [e.node.weight for e in edges] == [1.0, 1.0, 2.0]
    repositories = {e.serving.model_repository for e in edges}
    assert len(repositories) == 3


def test_examples_load_the_same_from_another_working_directory(tmp_path, monkeypatch):
    before = load_edge_config(EDGE_FILES[0])
    monkeypatch.chdir(tmp_path)
    after = load_edge_config(EDGE_FILES[0])
    assert after.serving.model_repository == before.serving.model_repository
