"""The coordinator's [storage] limits and [fleet] keys: defaults, bounds, errors naming file and key."""
import pytest

from edgeloop.config import ConfigError, parse_cloud_config


def cloud(tmp_path, storage=None, fleet=None):
    data = {"storage": {"database": "c.sqlite", **(storage or {})}, "fleet": fleet or {}}
    return parse_cloud_config(data, source="cloud.toml", base_dir=tmp_path)


def test_defaults(tmp_path):
    c = cloud(tmp_path)
    assert (c.synchronous, c.max_batch_rows, c.fetch_chunk_bytes, c.grpc_workers) == ("normal", 10_000, 1 << 20, 64)
    assert c.artifact_dir == tmp_path / "artifacts"


@pytest.mark.parametrize("storage, fleet, key", [
    ({"synchronous": "off"}, None, "storage.synchronous"),
    ({"max_batch_rows": 0}, None, "storage.max_batch_rows"),
    ({"max_message_bytes": True}, None, "storage.max_message_bytes"),
    ({"fetch_chunk_bytes": 1 << 24, "max_message_bytes": 1 << 20}, None, "storage.fetch_chunk_bytes"),
    ({"max_artifact_bytes": -1}, None, "storage.max_artifact_bytes"),
    ({"max_artifact_byte": 5}, None, "storage.max_artifact_byte"),
    (None, {"grpc_workers": 2}, "fleet.grpc_workers"),
])
def test_bad_values_name_the_key(tmp_path, storage, fleet, key):
    with pytest.raises(ConfigError) as err:
        cloud(tmp_path, storage, fleet)
    assert err.value.key == key and err.value.file == "cloud.toml"


def test_values_are_taken(tmp_path):
    c = cloud(tmp_path, {"synchronous": "full", "max_batch_rows": 5, "fetch_chunk_bytes": 4096},
              {"grpc_workers": 8})
    assert (c.synchronous, c.max_batch_rows, c.fetch_chunk_bytes, c.grpc_workers) == ("full", 5, 4096, 8)
