"""The edge data-path keys: per-model ``sample_rate`` and the outbox/uploader keys of ``[coordinator]``."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.config import ConfigError, EdgeConfig, load_edge_config

NODE = '[node]\nid = "edge-t"\n'


def load(tmp_path: Path, text: str):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return load_edge_config(path), path


def test_sample_rate_defaults_follow_the_coordinator(tmp_path):
    without, _ = load(tmp_path, NODE)
    assert without.sample_rate("any") == 0.0
    with_coord, _ = load(tmp_path, NODE + '[coordinator]\naddress = "127.0.0.1:7001"\n')
    assert with_coord.sample_rate("any") == 1.0


def test_sample_rate_per_model_and_defaults(tmp_path):
    config, _ = load(tmp_path, NODE + "[serving.model_defaults]\nsample_rate = 0.25\n"
                                      "[serving.models.mlp]\nsample_rate = 1\n"
                                      '[coordinator]\naddress = "127.0.0.1:7001"\n')
    assert config.sample_rate("mlp") == 1.0
    assert config.sample_rate("other") == 0.25


def test_outbox_keys_parse_and_resolve_relative_to_the_file(tmp_path):
    config, _ = load(tmp_path, NODE + '[coordinator]\naddress = "127.0.0.1:7001"\noutbox_path = "data/outbox.db"\n'
                                      "outbox_max_rows = 10\noutbox_max_bytes = 65536\noutbox_queue_size = 3\n"
                                      "upload_batch_size = 7\nupload_backoff_max_ms = 50\n")
    c = config.coordinator
    assert c.outbox_path == (tmp_path / "data" / "outbox.db").resolve()
    assert (c.outbox_max_rows, c.outbox_max_bytes, c.outbox_queue_size, c.upload_batch_size,
            c.upload_backoff_max_ms) == (10, 65536, 3, 7, 50)


def test_overrides_keep_the_data_path_keys(tmp_path):
    config, _ = load(tmp_path, NODE + "[serving.models.mlp]\nsample_rate = 0.5\n"
                                      "[coordinator]\noutbox_max_rows = 10\n")
    moved = config.with_overrides(**{"node.grpc_port": 9001, "coordinator.upload_batch_size": 3})
    assert moved.sample_rate("mlp") == 0.5
    assert moved.coordinator.outbox_max_rows == 10 and moved.coordinator.upload_batch_size == 3
    assert EdgeConfig().sample_rate("x") == 0.0


@pytest.mark.parametrize("text,key,fragment", [
    ("[serving.models.mlp]\nsample_rate = 1.5\n", "serving.models.mlp.sample_rate", "number in 0..1"),
    ("[serving.model_defaults]\nsample_rate = -0.1\n", "serving.model_defaults.sample_rate", "number in 0..1"),
    ("[serving.models.mlp]\nsample_rate = true\n", "serving.models.mlp.sample_rate", "number in 0..1"),
    ("[serving.models.mlp]\nsample_rate = nan\n", "serving.models.mlp.sample_rate", "number in 0..1"),
    ("[coordinator]\noutbox_max_rows = 0\n", "coordinator.outbox_max_rows", "integer in 1.."),
    ("[coordinator]\noutbox_max_bytes = 10\n", "coordinator.outbox_max_bytes", "size in bytes"),
    ("[coordinator]\noutbox_queue_size = '5'\n", "coordinator.outbox_queue_size", "integer in 1.."),
    ("[coordinator]\nupload_batch_size = 0\n", "coordinator.upload_batch_size", "samples per upload batch"),
    ("[coordinator]\nupload_backoff_max_ms = 1\n", "coordinator.upload_backoff_max_ms", "10..600000"),
    ("[coordinator]\noutbox_pth = 'x'\n", "coordinator.outbox_pth", "did you mean 'outbox_path'"),
    ("[coordinator]\noutbox_path = 5\n", "coordinator.outbox_path", "file path"),
])
def test_bad_data_path_keys_name_file_and_key(tmp_path, text, key, fragment):
    path = tmp_path / "edge.toml"
    path.write_text(NODE + text)
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_outbox_path_in_an_unusable_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "edge.toml"
    path.write_text(NODE + '[coordinator]\noutbox_path = "file/outbox.db"\n')
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert info.value.key == "coordinator.outbox_path"
