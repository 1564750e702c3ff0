"""RepositoryModelLoad with Triton's ``parameters['config']`` (JSON model configuration), on real nodes."""
from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.config import ModelConfig, VersionPolicy
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_mlp, write_model


def load(handle, name, config=None, files=None):
    request = inference_pb2.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        request.parameters["config"].string_param = config if isinstance(config, str) else json.dumps(config)
    for path, data in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = data
    return handle.stub.RepositoryModelLoad(request, timeout=RPC_TIMEOUT_S)


def infer(handle, name, batch, version=""):
    x = np.arange(batch * 32, dtype=np.float32).reshape(batch, 32) / 100
    response = handle.infer(build_infer_request(name, {"INPUT0": x}, model_version=version))
    return response.model_version, infer_response_to_numpy(response)["OUTPUT0"]


def refused_batch(handle, name, batch):
    with pytest.raises(grpc.RpcError) as err:
        infer(handle, name, batch)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details()


def test_load_with_config_and_files_applies_batching_settings(repo, start_node):
    handle = start_node(repo)
    data = build_mlp(seed=3).SerializeToString()
    config = {"name": "pushed", "backend": "onnxruntime", "max_batch_size": 4,
              "dynamic_batching": {"max_queue_delay_microseconds": "1500", "preferred_batch_size": [2, 4]},
              "instance_group": [{"kind": "KIND_CPU", "count": 1}], "parameters": {}}
    load(handle, "pushed", config, {"1/model.onnx": data})
    assert handle.node.models.ready_models()["pushed"] == [1]
    settings = handle.node.models.model_config("pushed")
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.preferred_batch_sizes) == (4, 1500, (2, 4))
    version, out = infer(handle, "pushed", 4)
    assert version == "1" and out.shape == (4, 4)
    assert "expected 1..4 (max_batch_size)" in refused_batch(handle, "pushed", 5)


def test_config_without_files_reloads_with_new_settings_and_they_stick(repo, start_node):
    handle = start_node(repo)  # mlp: no batching, any batch size
    _, before = infer(handle, "mlp", 6)
    load(handle, "mlp", '{"backend":"onnxruntime","max_batch_size":2}')
    assert "max_batch_size" in refused_batch(handle, "mlp", 6)
    _, small = infer(handle, "mlp", 2)
    np.testing.assert_array_equal(small, before[:2])
    load(handle, "mlp")  # a later load without config keeps the override
    assert handle.node.models.model_config("mlp").max_batch_size == 2
    assert "max_batch_size" in refused_batch(handle, "mlp", 6)
    handle.node.models.unload("mlp")
    load(handle, "mlp")  # and so does unload + load
    assert "max_batch_size" in refused_batch(handle, "mlp", 6)
    load(handle, "mlp", {"platform": "onnxruntime_onnx", "max_batch_size": 0})  # a new config replaces it
    _, after = infer(handle, "mlp", 6)
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("policy, expected", [
    ({"all": {}}, [1, 2, 3]),
    ({"specific": {"versions": [1, 3]}}, [1, 3]),
    ({"latest": {"num_versions": "2"}}, [2, 3]),
    ({"latest": {"num_versions": 1}}, [3]),
])
def test_config_version_policy(tmp_path, start_node, policy, expected):
    root = tmp_path / "models"
    for version in (1, 2, 3):
        write_model(root, "mlp", version, build_mlp(seed=version))
    handle = start_node(root, models=[ModelConfig(name="mlp")])
    assert handle.node.models.ready_models() == {"mlp": [3]}
    load(handle, "mlp", {"backend": "onnxruntime", "version_policy": policy})
    assert handle.node.models.ready_models() == {"mlp": expected}
    for v in expected:
        assert infer(handle, "mlp", 1, str(v))[0] == str(v)


@pytest.mark.parametrize("config, needles", [
    ('{"backend": "onnxruntime", "max_batch_size": 8', ["not valid JSON", "line 1 column", "expected"]),
    ('{"backend": onnxruntime}', ["not valid JSON", "line 1 column 13", "expected"]),
    ("[1, 2]", ["JSON array", "expected Triton's model configuration as a JSON object"]),
    ({"backend": "tensorflow"}, ["backend is 'tensorflow'", "'onnxruntime'"]),
    ({"platform": "pytorch_libtorch"}, ["platform is 'pytorch_libtorch'", "'onnxruntime_onnx'"]),
    ({"max_batch_size": -1}, ["max_batch_size is -1", "expected an integer in 0..65536"]),
    ({"max_batch_size": "eight"}, ["max_batch_size is \"eight\"", "expected an integer"]),
    ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}},
     ["preferred_batch_size is [8]", "<= max_batch_size 4"]),
    ({"dynamic_batching": {"max_queue_delay_microseconds": -5}}, ["max_queue_delay_microseconds is -5"]),
    ({"version_policy": {"newest": {}}}, ["version_policy has kind 'newest'", "expected exactly one of"]),
    ({"version_policy": {"specific": {"versions": []}}}, ["specific.versions is []", "positive integers"]),
    ({"name": "other"}, ["name is 'other'", "expected the model's name 'mlp'"]),
])
def test_bad_config_is_invalid_argument_and_changes_nothing(repo, start_node, config, needles):
    handle = start_node(repo)
    _, before = infer(handle, "mlp", 3)
    with pytest.raises(grpc.RpcError) as err:
        load(handle, "mlp", config, {"2/model.onnx": build_mlp(seed=2).SerializeToString()})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "parameters['config']" in details
    for needle in needles:
        assert needle in details, details
    assert not (repo / "mlp" / "2").exists()  # refused before any file was written
    assert handle.node.models.model_config("mlp").max_batch_size == 0
    version, after = infer(handle, "mlp", 3)
    assert version == "1"
    np.testing.assert_array_equal(after, before)


def test_unknown_config_fields_are_ignored_and_logged_at_debug(repo, start_node, caplog):
    handle = start_node(repo)
    config = {"backend": "onnxruntime", "max_batch_size": 8, "input": [{"name": "INPUT0"}],
              "optimization": {"graph": {"level": 1}}, "instance_group": [{"count": 2}],
              "dynamic_batching": {"max_queue_delay_microseconds": 100, "priority_levels": 2}}
    with caplog.at_level(logging.DEBUG, logger="edgeloop.serving"):
        load(handle, "mlp", config)
    ignored = [r.getMessage() for r in caplog.records if "ignoring Triton config" in r.getMessage()]
    assert any("input, optimization" in m for m in ignored), ignored
    assert any("dynamic_batching.priority_levels" in m for m in ignored), ignored
    assert not any("instance_group" in m for m in ignored)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "ignoring Triton config" in r.getMessage())
    assert handle.node.models.model_config("mlp").max_batch_size == 8
    assert infer(handle, "mlp", 8)[1].shape == (8, 4)


def test_config_must_be_a_string_param(repo, start_node):
    handle = start_node(repo)
    request = inference_pb2.RepositoryModelLoadRequest(model_name="mlp")
    request.parameters["config"].int64_param = 8
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelLoad(request, timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters['config'] holds int64_param; expected string_param" in err.value.details()


def model_config(handle, name, version=""):
    request = inference_pb2.ModelConfigRequest(name=name, version=version)
    return handle.stub.ModelConfig(request, timeout=RPC_TIMEOUT_S).config


def test_model_config_states_batching_tensors_and_policy(repo, start_node):
    from edgeloop.protocol import model_config_pb2 as mc

    handle = start_node(repo, models=[ModelConfig(name="mlp", max_batch_size=16, max_queue_delay_us=300,
                                                  preferred_batch_sizes=(4, 8))])
    config = model_config(handle, "mlp")
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "mlp", "onnxruntime_onnx", "onnxruntime", 16)
    # batched: dims leave out the batch dimension, as Triton states them
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("INPUT0", mc.TYPE_FP32, [32])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("OUTPUT0", mc.TYPE_FP32, [4])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 300
    assert config.version_policy.latest.num_versions == 1
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]

    # unbatched: the full shape, -1 for the dynamic dim; BYTES is TYPE_STRING; no dynamic_batching
    multi = model_config(handle, "multi", "1")
    assert multi.max_batch_size == 0 and multi.WhichOneof("scheduling_choice") is None
    types = {t.name: (t.data_type, list(t.dims)) for t in multi.input}
    assert types["X"] == (mc.TYPE_FP32, [-1, 4]) and types["IN_BYTES"][0] == mc.TYPE_STRING
    assert types["IN_UINT64"][0] == mc.TYPE_UINT64 and types["IN_FP16"][0] == mc.TYPE_FP16


def test_model_config_json_loads_back_unchanged(tmp_path, start_node):
    """What get_model_config(as_json=True) returns is a valid load config that keeps every setting."""
    from google.protobuf import json_format

    root = tmp_path / "models"
    for version in (1, 2, 3):
        write_model(root, "mlp", version, build_mlp(seed=version))
    start = ModelConfig(name="mlp", max_batch_size=8, max_queue_delay_us=700, preferred_batch_sizes=(2,))
    handle = start_node(root, models=[start])
    load(handle, "mlp", {"version_policy": {"specific": {"versions": [1, 3]}}})
    stated = model_config(handle, "mlp")
    assert list(stated.version_policy.specific.versions) == [1, 3]
    for names in ("snake_case", "lowerCamelCase"):  # tritonclient's as_json form, and protobuf's default
        text = json_format.MessageToJson(stated, preserving_proto_field_name=names == "snake_case")
        assert ("max_batch_size" in text) == (names == "snake_case")  # 64-bit integers are strings in both
        load(handle, "mlp", text)
        assert model_config(handle, "mlp") == stated, names
    assert handle.node.models.model_config("mlp") == ModelConfig(
        name="mlp", max_batch_size=8, max_queue_delay_us=700, preferred_batch_sizes=(2,),
        version_policy=VersionPolicy(kind="specific", versions=(1, 3)))


@pytest.mark.parametrize("name, version, code, needle", [
    ("ghost", "", grpc.StatusCode.NOT_FOUND, "'ghost'"),
    ("mlp", "7", grpc.StatusCode.NOT_FOUND, "model_version '7'"),
    ("mlp", "x", grpc.StatusCode.INVALID_ARGUMENT, "expected a positive integer"),
])
def test_model_config_errors_name_the_field(repo, start_node, name, version, code, needle):
    handle = start_node(repo)
    with pytest.raises(grpc.RpcError) as err:
        model_config(handle, name, version)
    assert err.value.code() == code and needle in err.value.details()


@pytest.mark.parametrize("config, needles", [
    ("[" * 100_000 + "]" * 100_000, ["holds 200000 characters", "at most 65536"]),
    ("[" * 30_000 + "]" * 30_000, ["nested 30000 levels deep", "at most 32"]),
    ('{"a": ' * 10_000, ["nested 10000 levels deep", "at most 32"]),
    ('{"max_batch_size": ' + "9" * 5000 + "}", ["more than 4300 digits"]),
    ({"max_batch_size": 2**31}, ["max_batch_size is 2147483648", "0..65536"]),
    ({"max_batch_size": "2147483648"}, ["max_batch_size is \"2147483648\"", "0..65536"]),
    ({"max_batch_size": 8.0}, ["max_batch_size is 8.0", "an integer in 0..65536"]),
    ({"max_batch_size": True}, ["max_batch_size is true", "an integer"]),
    ({"max_batch_size": "\u00b2"}, ["max_batch_size is", "an integer"]),
    ({"dynamic_batching": {"max_queue_delay_microseconds": 10**17}},
     ["max_queue_delay_microseconds is 100000000000000000", "0..10000000"]),
    ({"dynamic_batching": {"preferred_batch_size": [2**31]}}, ["preferred_batch_size[0] is 2147483648", "1..65536"]),
    ({"dynamic_batching": {"preferred_batch_size": [2, 2]}}, ["preferred_batch_size is [2, 2]", "distinct"]),
    ({"dynamic_batching": []}, ["dynamic_batching holds a JSON array"]),
    ({"version_policy": {"latest": {"num_versions": 2**32}}}, ["num_versions is 4294967296", "1..4294967295"]),
    ({"version_policy": {"specific": {"versions": [10**18]}}}, ["versions[0] is 1000000000000000000",
                                                                "1..999999999999999999"]),
    ({"version_policy": "latest"}, ["version_policy is \"latest\"", "expected exactly one of"]),
    ({"name": "x" * 60_000}, ["name is 'xxx", "(60000 characters in all)"]),
    ({"backend": ["onnxruntime"]}, ["backend is ['onnxruntime']"]),
    ({"backend": "onnxruntime", "pad": "x" * 70_000}, ["holds 70", "at most 65536 characters"]),
])
def test_config_out_of_bounds_is_refused_at_load_time(repo, start_node, config, needles):
    """The same bounds as the TOML config, and the protobuf fields' ranges; nothing reaches the batcher."""
    handle = start_node(repo)
    _, before = infer(handle, "mlp", 3)
    with pytest.raises(grpc.RpcError) as err:
        load(handle, "mlp", config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()[:300]
    details = err.value.details()
    assert details.startswith("parameters['config']") and len(details) < 1000, details[:300]
    for needle in needles:
        assert needle in details, details
    assert handle.node.models.model_config("mlp").max_batch_size == 0
    np.testing.assert_array_equal(infer(handle, "mlp", 3)[1], before)


def test_the_largest_accepted_queue_delay_serves(repo, start_node):
    """10 s (the TOML limit) is accepted; a request that fills the batch does not wait for it."""
    handle = start_node(repo)
    load(handle, "mlp", {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 10_000_000,
                                                                   "preferred_batch_size": [1]}})
    assert handle.node.models.model_config("mlp").max_queue_delay_us == 10_000_000
    assert infer(handle, "mlp", 1)[1].shape == (1, 4)
