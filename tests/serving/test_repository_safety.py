"""Nothing a client sends reads or writes outside the repository: external data, model names, manifests."""
from __future__ import annotations

import hashlib
import json
import logging

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request
from edgeloop.serving.demo_models import IR_VERSION, OPSET, build_mlp, write_model
from edgeloop.serving.session import external_data_references

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SECRET = np.arange(32 * 64, dtype=np.float32) + 0.5  # W1's size: a file that must stay unreadable


def externalise(tensor: TensorProto, location: str) -> None:
    """Point ``tensor`` at ``location`` the way onnx's external-data format does."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(SECRET.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def leaking_mlp(location: str) -> bytes:
    model = build_mlp()
    externalise(model.graph.initializer[0], location)  # W1 [32, 64]
    return model.SerializeToString()


def load_request(name, files=None):
    request = inference_pb2.RepositoryModelLoadRequest(model_name=name)
    for path, data in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = data
    return request


def refused(call, code=INVALID) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    return err.value.details()


# ------------------------------------------------------------------------------ external data
def test_a_pushed_model_with_external_data_is_refused_and_the_file_stays_unread(tmp_path, repo, start_node,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # the node's working directory: onnxruntime resolves locations against it
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())  # outside the repository (tmp_path/models)
    data = leaking_mlp("secret.bin")
    # the threat is real: onnxruntime alone loads the file into W1 from these bytes
    ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    handle = start_node(repo)
    for name, payload in (("leak", data), ("leak2", leaking_mlp("../" * 30 + str(tmp_path / "secret.bin")))):
        details = refused(lambda: handle.stub.RepositoryModelLoad(load_request(name, {"1/model.onnx": payload}),
                                                                  timeout=RPC_TIMEOUT_S))
        assert "external file" in details and "'W1'" in details and "secret.bin" in details
        assert not (repo / name).exists()  # refused before anything was written
        refused(lambda: handle.infer(build_infer_request(name, {"INPUT0": np.ones((1, 32), np.float32)})),
                grpc.StatusCode.NOT_FOUND)
    # an existing model cannot be replaced by one either: v1 keeps serving
    refused(lambda: handle.stub.RepositoryModelLoad(load_request("mlp", {"1/model.onnx": data}),
                                                    timeout=RPC_TIMEOUT_S))
    assert handle.node.models.ready_models()["mlp"] == [1]
    assert (repo / "mlp" / "1" / "model.onnx").read_bytes() == build_mlp().SerializeToString()


def test_a_model_on_disk_with_external_data_is_not_loaded_and_the_reason_is_logged(tmp_path, repo, start_node,
                                                                                    monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    write_model(repo, "ondisk", 1, leaking_mlp("secret.bin"))
    with caplog.at_level(logging.WARNING, logger="edgeloop.serving"):
        handle = start_node(repo)
    state, reason = handle.index()[("ondisk", "1")]
    assert state == "UNAVAILABLE" and "external file 'secret.bin'" in reason
    assert any("ondisk" in r.getMessage() and "external file" in r.getMessage() for r in caplog.records)
    refused(lambda: handle.infer(build_infer_request("ondisk", {"INPUT0": np.ones((1, 32), np.float32)})),
            grpc.StatusCode.UNAVAILABLE)
    assert handle.node.models.ready_models()["mlp"] == [1]  # the others load as usual


def model_with_everything_external():
    """External tensors in every place a tensor can hide: initializer, sparse initializer, a Constant
    inside an If's subgraph, and a local function's Constant."""
    def ext(name):
        t = numpy_helper.from_array(np.zeros(2, np.float32), name)
        externalise(t, f"{name}.bin")
        return t

    sparse = helper.make_sparse_tensor(ext("sv"), numpy_helper.from_array(np.array([0, 1], np.int64), "si"), [4])
    then_graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=ext("deep"))], "then", [],
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Constant", [], ["e"], value_floats=[0.0, 0.0])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("F", [], ["f"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
                              [ext("init")], sparse_initializer=[sparse])
    function = helper.make_function("local", "F", [], ["f"],
                                    [helper.make_node("Constant", [], ["f"], value=ext("infunction"))],
                                    [helper.make_opsetid("", OPSET)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)],
                              functions=[function])
    model.ir_version = IR_VERSION
    return model


def test_external_data_is_found_wherever_a_tensor_can_hide():
    model = model_with_everything_external()
    found = {location for _where, location in external_data_references(model)}
    assert found == {"init.bin", "sv.bin", "deep.bin", "infunction.bin"}
    where = " ".join(w for w, _ in external_data_references(model))
    assert "then_branch" in where and "sparse_initializer" in where and "functions[0]" in where
    assert external_data_references(build_mlp()) == []
    only_flagged = build_mlp()  # data_location alone is enough, whatever external_data holds
    only_flagged.graph.initializer[1].data_location = TensorProto.EXTERNAL
    assert [loc for _w, loc in external_data_references(only_flagged)] == [""]


def test_an_ep_context_node_naming_a_cache_file_is_found():
    model = build_mlp()
    model.graph.node.append(helper.make_node("EPContext", [], ["ctx"], domain="com.microsoft", embed_mode=0,
                                             ep_cache_context="../../cache.bin", name="ctx0"))
    assert external_data_references(model) == [("model.graph.node[3] (EPContext node 'ctx0')", "../../cache.bin")]
    model.graph.node[3].attribute[0].i = 1  # embedded: the bytes are in the model itself
    assert external_data_references(model) == []


def test_a_pushed_model_with_external_data_in_a_subgraph_is_refused(repo, start_node):
    handle = start_node(repo)
    data = model_with_everything_external().SerializeToString()
    details = refused(lambda: handle.stub.RepositoryModelLoad(load_request("nested", {"1/model.onnx": data}),
                                                              timeout=RPC_TIMEOUT_S))
    assert "external file" in details and "(and 3 more tensors)" in details
    assert not (repo / "nested").exists()


# -------------------------------------------------------------------------------- model names
BAD_NAMES = ["mlp\n", "ml\np", "../mlp", "a/b", "a b", ".hidden", "-dash", "x" * 129, "é", "mlp\x00"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_names_outside_the_documented_set_are_refused_by_every_rpc(repo, start_node, name):
    handle = start_node(repo)
    stub = handle.stub
    x = {"INPUT0": np.ones((1, 32), np.float32)}
    calls = {
        "load": lambda: stub.RepositoryModelLoad(load_request(name), timeout=RPC_TIMEOUT_S),
        "push": lambda: stub.RepositoryModelLoad(load_request(name, {"1/model.onnx": build_mlp().SerializeToString()}),
                                                 timeout=RPC_TIMEOUT_S),
        "unload": lambda: stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name=name),
                                                     timeout=RPC_TIMEOUT_S),
        "infer": lambda: handle.infer(build_infer_request(name, x)),
        "metadata": lambda: stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=name), timeout=RPC_TIMEOUT_S),
        "config": lambda: stub.ModelConfig(inference_pb2.ModelConfigRequest(name=name), timeout=RPC_TIMEOUT_S),
        "statistics": lambda: stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=name),
                                                   timeout=RPC_TIMEOUT_S),
    }
    for what, call in calls.items():
        details = refused(call)
        assert "is not a valid model name" in details and "1..128 characters" in details, (what, details)
    assert sorted(p.name for p in repo.iterdir()) == ["mlp", "multi"]  # no directory was created
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name=name), timeout=RPC_TIMEOUT_S).ready


def test_names_inside_the_set_work(repo, start_node):
    handle = start_node(repo)
    name = "A_b-9." + "z" * 122  # 128 characters
    handle.stub.RepositoryModelLoad(load_request(name, {"1/model.onnx": build_mlp().SerializeToString()}),
                                    timeout=RPC_TIMEOUT_S)
    assert handle.infer(build_infer_request(name, {"INPUT0": np.ones((1, 32), np.float32)})).model_name == name


# ---------------------------------------------------------------------------------- manifests
def test_a_manifest_pushed_without_its_model_file_is_refused(repo, start_node):
    handle = start_node(repo)
    manifest = json.dumps({"sha256": "0" * 64, "size": 1}).encode()
    for name in ("mlp", "fresh"):
        details = refused(lambda: handle.stub.RepositoryModelLoad(
            load_request(name, {"1/manifest.json": manifest}), timeout=RPC_TIMEOUT_S))
        assert "'file:1/manifest.json'" in details and "without 'file:1/model.onnx'" in details
    assert not (repo / "fresh").exists()
    assert json.loads((repo / "mlp" / "1" / "manifest.json").read_text())["size"] != 1  # untouched
    # and a manifest for another version than the pushed file describes nothing it came with
    data = build_mlp(seed=4).SerializeToString()
    details = refused(lambda: handle.stub.RepositoryModelLoad(
        load_request("mlp", {"2/model.onnx": data, "3/manifest.json": manifest}), timeout=RPC_TIMEOUT_S))
    assert "'file:3/manifest.json'" in details
    assert not (repo / "mlp" / "2").exists() and not (repo / "mlp" / "3").exists()


@pytest.mark.parametrize("manifest, needle", [
    ({"sha256": "0" * 64}, "sha256"),
    ({"size": 3}, "size=3"),
    ({"sha256": ["not", "a", "string"]}, "sha256"),
    ([1, 2], "expected a JSON object"),
    ("[" * 50 + "]" * 50, "nested 50 levels deep"),
    ("{not json", "not valid JSON"),
])
def test_a_manifest_that_does_not_match_its_model_is_refused_before_writing(repo, start_node, manifest, needle):
    handle = start_node(repo)
    data = build_mlp(seed=4).SerializeToString()
    text = manifest.encode() if isinstance(manifest, str) else json.dumps(manifest).encode()
    details = refused(lambda: handle.stub.RepositoryModelLoad(
        load_request("mlp", {"2/model.onnx": data, "2/manifest.json": text}), timeout=RPC_TIMEOUT_S))
    assert "parameters['file:2/manifest.json']" in details and needle in details, details
    assert not (repo / "mlp" / "2").exists()


def test_a_matching_manifest_is_written_with_its_model(repo, start_node):
    handle = start_node(repo)
    data = build_mlp(seed=4).SerializeToString()
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "lineage_id": "run-7"}
    handle.stub.RepositoryModelLoad(load_request("mlp", {"2/model.onnx": data,
                                                         "2/manifest.json": json.dumps(manifest).encode()}),
                                    timeout=RPC_TIMEOUT_S)
    assert json.loads((repo / "mlp" / "2" / "manifest.json").read_text()) == manifest
    assert handle.node.models.ready_models()["mlp"] == [2]


# ------------------------------------------------------------------------- unload parameters
def test_unload_dependents_is_accepted_but_not_advertised_and_other_parameters_are_refused(repo, start_node):
    handle = start_node(repo)
    stub = handle.stub
    extensions = stub.ServerMetadata(inference_pb2.ServerMetadataRequest(), timeout=RPC_TIMEOUT_S).extensions
    assert "model_repository" in extensions and not any("unload_dependents" in e for e in extensions)
    bad = inference_pb2.RepositoryModelUnloadRequest(model_name="mlp")
    bad.parameters["force"].bool_param = True
    assert "parameters['force'] is not supported" in refused(lambda: stub.RepositoryModelUnload(
        bad, timeout=RPC_TIMEOUT_S))
    wrong_type = inference_pb2.RepositoryModelUnloadRequest(model_name="mlp")
    wrong_type.parameters["unload_dependents"].string_param = "yes"
    assert "holds string_param; expected bool_param" in refused(lambda: stub.RepositoryModelUnload(
        wrong_type, timeout=RPC_TIMEOUT_S))
    assert handle.node.models.ready_models()["mlp"] == [1]  # refused requests unloaded nothing
    for flag in (False, True):  # tritonclient always sends the flag; no model depends on another here
        ok = inference_pb2.RepositoryModelUnloadRequest(model_name="mlp")
        ok.parameters["unload_dependents"].bool_param = flag
        stub.RepositoryModelUnload(ok, timeout=RPC_TIMEOUT_S)
        assert "mlp" not in handle.node.models.ready_models()
        assert handle.node.models.ready_models()["multi"] == [1]
        stub.RepositoryModelLoad(load_request("mlp"), timeout=RPC_TIMEOUT_S)


def test_onnx_bytes_are_checked_without_touching_the_file(tmp_path):
    """The check parses the bytes only: a location that does not exist is reported, not opened."""
    data = leaking_mlp(str(tmp_path / "does-not-exist.bin"))
    found = external_data_references(onnx.ModelProto.FromString(data))
    assert found == [("model.graph.initializer[0] (tensor 'W1')", str(tmp_path / "does-not-exist.bin"))]
