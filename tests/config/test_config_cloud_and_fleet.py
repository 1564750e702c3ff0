"""Cloud configs and whole-fleet loading: required keys, and clashes between files named by both files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.config import ConfigError, load_cloud_config, load_fleet

CLOUD = '[node]\nid = "cloud"\ngrpc_port = 7001\nmetrics_port = 7002\n[storage]\ndatabase = "db/coord.sqlite"\n'


def edge_text(node_id: str, grpc: int, metrics: int, host: str = "127.0.0.1") -> str:
    return f'[node]\nid = "{node_id}"\nhost = "{host}"\ngrpc_port = {grpc}\nmetrics_port = {metrics}\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_cloud_resolves_paths_against_its_file(tmp_path):
    cloud = load_cloud_config(write(tmp_path, "cloud.toml", CLOUD))
    assert cloud.database == tmp_path / "db" / "coord.sqlite"
    assert cloud.artifact_dir == tmp_path / "db" / "artifacts"
    assert cloud.heartbeat_interval_ms == 1000


def test_cloud_missing_database(tmp_path):
    path = write(tmp_path, "cloud.toml", '[node]\nid = "cloud"\n[storage]\nartifact_dir = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path)
    assert (info.value.file, info.value.key) == (str(path), "storage.database")
    assert "missing" in info.value.value


def test_cloud_rejects_edge_only_node_keys(tmp_path):
    path = write(tmp_path, "cloud.toml", CLOUD.replace("[storage]", "weight = 2.0\n[storage]"))
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path)
    assert info.value.key == "node.weight"


def test_cloud_database_that_is_a_directory(tmp_path):
    (tmp_path / "db" / "coord.sqlite").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load_cloud_config(write(tmp_path, "cloud.toml", CLOUD))
    assert info.value.key == "storage.database" and "is a directory" in info.value.expected


def test_cloud_unknown_table_suggests(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_cloud_config(write(tmp_path, "cloud.toml", CLOUD + "[storag]\nx = 1\n"))
    assert info.value.key == "storag" and "did you mean 'storage'" in info.value.expected


def test_fleet_splits_cloud_and_edges(tmp_path):
    paths = [write(tmp_path, "cloud.toml", CLOUD), write(tmp_path, "a.toml", edge_text("a", 8001, 8002)),
             write(tmp_path, "b.toml", edge_text("b", 8011, 8012))]
    cloud, edges = load_fleet(paths)
    assert cloud.node.id == "cloud" and [e.node.id for e in edges] == ["a", "b"]


def test_fleet_without_cloud(tmp_path):
    cloud, edges = load_fleet([write(tmp_path, "a.toml", edge_text("a", 8001, 8002))])
    assert cloud is None and len(edges) == 1


def test_fleet_duplicate_node_id_names_both_files(tmp_path):
    first = write(tmp_path, "a.toml", edge_text("same", 8001, 8002))
    second = write(tmp_path, "b.toml", edge_text("same", 8011, 8012))
    with pytest.raises(ConfigError) as info:
        load_fleet([first, second])
    err = info.value
    assert (err.file, err.key, err.value) == (str(second), "node.id", "'same'")
    assert str(first) in str(err) and str(second) in str(err)


def test_fleet_duplicate_host_port_names_both_files(tmp_path):
    first = write(tmp_path, "a.toml", edge_text("a", 8001, 8002))
    second = write(tmp_path, "b.toml", edge_text("b", 9000, 8001))
    with pytest.raises(ConfigError) as info:
        load_fleet([first, second])
    err = info.value
    assert (err.file, err.key, err.value) == (str(second), "node.metrics_port", "8001")
    assert str(first) in err.expected


def test_fleet_localhost_and_loopback_collide(tmp_path):
    first = write(tmp_path, "a.toml", edge_text("a", 8001, 8002))
    second = write(tmp_path, "b.toml", edge_text("b", 8001, 8012, host="localhost"))
    with pytest.raises(ConfigError) as info:
        load_fleet([first, second])
    assert info.value.key == "node.grpc_port"


def test_fleet_same_port_on_different_hosts_is_fine(tmp_path):
    first = write(tmp_path, "a.toml", edge_text("a", 8001, 8002))
    second = write(tmp_path, "b.toml", edge_text("b", 8001, 8002, host="127.0.0.2"))
    _, edges = load_fleet([first, second])
    assert len(edges) == 2


def test_fleet_edge_clashing_with_cloud(tmp_path):
    cloud = write(tmp_path, "cloud.toml", CLOUD)
    edge = write(tmp_path, "a.toml", edge_text("a", 7002, 8002))
    with pytest.raises(ConfigError) as info:
        load_fleet([cloud, edge])
    assert (info.value.file, info.value.key) == (str(edge), "node.grpc_port")


def test_fleet_rejects_two_clouds(tmp_path):
    first = write(tmp_path, "c1.toml", CLOUD)
    second = write(tmp_path, "c2.toml", CLOUD.replace('"cloud"', '"cloud2"').replace("700", "710"))
    with pytest.raises(ConfigError) as info:
        load_fleet([first, second])
    assert info.value.file == str(second) and str(first) in info.value.expected


def test_fleet_reports_the_bad_file(tmp_path):
    good = write(tmp_path, "a.toml", edge_text("a", 8001, 8002))
    bad = write(tmp_path, "b.toml", edge_text("b", 8011, 70000))
    with pytest.raises(ConfigError) as info:
        load_fleet([good, bad])
    assert (info.value.file, info.value.key) == (str(bad), "node.metrics_port")
