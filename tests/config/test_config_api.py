"""Flag-built configs, defaults, overrides and the dataclass helpers other parts rely on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.config import (ConfigError, EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig,
                             VersionPolicy, load_edge_config, parse_edge_config)
from edgeloop.config.overrides import edge_config_to_data

EXAMPLE = Path(__file__).resolve().parents[2] / "edge-configs" / "edge-a.toml"


def test_defaults_build_a_usable_config():
    config = EdgeConfig()
    assert config.source == "<flags>" and config.node.grpc_port == 8001 and config.mesh.enabled
    assert config.serving.model("any").name == "any"
    assert config.serving.model("any").max_batch_size == 0


def test_all_dataclasses_are_frozen():
    for value in (EdgeConfig(), NodeConfig(), ServingConfig(), MeshConfig(), ModelConfig("m"), VersionPolicy()):
        field = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_parse_from_dict_uses_string_source():
    with pytest.raises(ConfigError) as info:
        parse_edge_config({"node": {"id": "e", "grpc_port": "x"}})
    assert info.value.file == "<string>" and info.value.key == "node.grpc_port"
    assert isinstance(info.value, ValueError)


def test_parse_from_dict_resolves_against_base_dir(tmp_path):
    config = parse_edge_config({"node": {"id": "e"}, "serving": {"model_repository": "models"}}, base_dir=tmp_path)
    assert config.serving.model_repository == tmp_path / "models"


def test_model_lookup_merges_defaults_and_entry():
    config = parse_edge_config({
        "node": {"id": "e"},
        "serving": {"model_defaults": {"max_batch_size": 32, "intra_op_threads": 2},
                    "models": {"mlp": {"version_policy": {"specific": [3, 1]}, "preferred_batch_sizes": [8, 4]}}},
    })
    mlp = config.serving.model("mlp")
    assert (mlp.name, mlp.max_batch_size, mlp.intra_op_threads) == ("mlp", 32, 2)
    assert mlp.preferred_batch_sizes == (4, 8)
    assert mlp.version_policy == VersionPolicy(kind="specific", latest_n=0, versions=(1, 3))
    other = config.serving.model("other")
    assert (other.name, other.max_batch_size, other.version_policy.kind) == ("other", 32, "latest")


def test_version_policy_forms_and_selection():
    models = {"a": {"version_policy": "all"}, "b": {"version_policy": {"latest": 2}},
              "c": {"version_policy": {"specific": [2, 5]}}, "d": {"version_policy": "latest"}}
    serving = parse_edge_config({"node": {"id": "e"}, "serving": {"models": models}}).serving
    available = [1, 2, 3, 5]
    assert serving.model("a").version_policy.select(available) == (1, 2, 3, 5)
    assert serving.model("b").version_policy.select(available) == (3, 5)
    assert serving.model("c").version_policy.select(available) == (2, 5)
    assert serving.model("d").version_policy.select(available) == (5,)


def test_overrides_replace_keys_and_keep_source():
    base = load_edge_config(EXAMPLE)
    changed = base.with_overrides(**{"node.grpc_port": 9101, "node__metrics_port": 9102,
                                     "coordinator_address": "127.0.0.1:7101"})
    assert (changed.node.grpc_port, changed.node.metrics_port) == (9101, 9102)
    assert changed.coordinator_address == "127.0.0.1:7101"
    assert changed.source == base.source and changed.serving == base.serving


def test_override_of_a_default_reaches_models_that_do_not_set_it():
    base = load_edge_config(EXAMPLE)
    changed = base.with_overrides(**{"serving.model_defaults.max_queue_delay_us": 100})
    assert changed.serving.model("demo_mlp").max_queue_delay_us == 100
    assert changed.serving.model("demo_mlp").preferred_batch_sizes == (4, 8)


def test_bad_override_is_reported_against_flags():
    with pytest.raises(ConfigError) as info:
        EdgeConfig().with_overrides(**{"node.grpc_port": 70000})
    assert str(info.value) == "<flags>: key 'node.grpc_port': got 70000, expected an integer port in 1..65535"
    with pytest.raises(ConfigError) as info:
        EdgeConfig().with_overrides(**{"node.grpc_prot": 1})
    assert "did you mean 'grpc_port'" in info.value.expected


def test_mesh_name_defaults_to_default_and_survives_overrides():
    assert EdgeConfig().mesh.name == "default" and load_edge_config(EXAMPLE).mesh.name == "default"
    config = parse_edge_config({"node": {"id": "e"}, "mesh": {"name": "lab-1.blue_2"}})
    assert config.mesh.name == "lab-1.blue_2"
    assert config.with_overrides(**{"node.grpc_port": 9101}).mesh.name == "lab-1.blue_2"
    assert config.with_overrides(**{"mesh.name": "green"}).mesh.name == "green"
    with pytest.raises(ConfigError) as info:
        config.with_overrides(**{"mesh.name": "no spaces"})
    assert info.value.key == "mesh.name" and info.value.file == "<flags>"


def test_round_trip_through_data():
    config = load_edge_config(EXAMPLE)
    again = parse_edge_config(edge_config_to_data(config), source=config.source)
    assert again == config


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_any_port_outside_range_is_rejected(port):
    data = {"node": {"id": "e", "grpc_port": port, "metrics_port": 1 if port != 1 else 2}}
    if 1 <= port <= 65535:
        assert parse_edge_config(data).node.grpc_port == port
    else:
        with pytest.raises(ConfigError) as info:
            parse_edge_config(data)
        assert info.value.key == "node.grpc_port" and info.value.value == repr(port)


def test_none_override_unsets_a_key():
    base = load_edge_config(EXAMPLE)
    assert base.mesh.capacity_factor == 1.25
    changed = base.with_overrides(**{"mesh.capacity_factor": None, "coordinator.address": None})
    assert changed.mesh.capacity_factor is None and changed.coordinator_address is None


def test_model_name_with_trailing_newline_is_refused():
    """The TOML model table name follows the repository's rule matched whole (a `$` anchor let "mlp\n" in)."""
    from edgeloop.config.models import is_model_name

    assert is_model_name("mlp") and not is_model_name("mlp\n") and not is_model_name(".hidden")
