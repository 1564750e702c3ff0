"""Model lifecycle on a real node: version policies, warm-up, failed loads, hot swap, drain, pushes."""
from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from serving_fixtures import RPC_TIMEOUT_S, build_warmup_failing_model

from edgeloop.config import ModelConfig, VersionPolicy
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_matmul_chain, build_mlp, write_model

X = np.random.default_rng(7).standard_normal((2, 32)).astype(np.float32)


def mlp_output(seed, x=X):
    session = ort.InferenceSession(build_mlp(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"INPUT0": x})[0]


def infer_mlp(handle, version="", x=X):
    response = handle.infer(build_infer_request("mlp", {"INPUT0": x}, model_version=version))
    return response.model_version, infer_response_to_numpy(response)["OUTPUT0"]


def load_request(name, files=None):
    request = inference_pb2.RepositoryModelLoadRequest(model_name=name)
    for path, data in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = data
    return request


@pytest.fixture
def three_versions(tmp_path):
    root = tmp_path / "models"
    for version in (1, 2, 3):
        write_model(root, "mlp", version, build_mlp(seed=version))
    return root


@pytest.mark.parametrize("policy, expected", [
    (VersionPolicy(), [3]),
    (VersionPolicy(kind="latest", latest_n=2), [2, 3]),
    (VersionPolicy(kind="all"), [1, 2, 3]),
    (VersionPolicy(kind="specific", versions=(1, 3)), [1, 3]),
])
def test_version_policies(three_versions, start_node, policy, expected):
    handle = start_node(three_versions, models=[ModelConfig(name="mlp", version_policy=policy)])
    assert handle.node.models.ready_models() == {"mlp": expected}
    meta = handle.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="mlp"), timeout=RPC_TIMEOUT_S)
    assert list(meta.versions) == [str(v) for v in expected]
    version, out = infer_mlp(handle)
    assert version == str(max(expected))  # no version: the latest ready one
    np.testing.assert_array_equal(out, mlp_output(max(expected)))
    for v in expected:
        version, out = infer_mlp(handle, str(v))
        assert version == str(v)
        np.testing.assert_array_equal(out, mlp_output(v))
    for v in {1, 2, 3} - set(expected):
        with pytest.raises(grpc.RpcError) as err:
            infer_mlp(handle, str(v))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and f"'{v}'" in err.value.details()


def test_warmup_failure_keeps_version_unavailable(tmp_path, start_node):
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "reshaper", 1, build_warmup_failing_model())
    handle = start_node(root)
    state, reason = handle.index()[("reshaper", "1")]
    assert state == "UNAVAILABLE" and "warm-up" in reason
    assert handle.node.models.ready_models() == {"mlp": [1]}
    request = build_infer_request("reshaper", {"X": np.ones((2, 3), np.float32)})
    with pytest.raises(grpc.RpcError) as err:
        handle.infer(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "warm-up" in err.value.details()
    assert ("reshaper", "1") not in handle.index(ready=True)


@pytest.mark.parametrize("breakage", ["garbage file", "manifest sha256", "declared signature"])
def test_failed_load_leaves_the_serving_version_untouched(repo, start_node, breakage):
    handle = start_node(repo)
    before = infer_mlp(handle)
    if breakage == "garbage file":
        write_model(repo, "mlp", 2, b"this is not an onnx model", manifest=False)
    else:
        write_model(repo, "mlp", 2, build_mlp(seed=2))
        manifest_path = repo / "mlp" / "2" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        if breakage == "manifest sha256":
            manifest["sha256"] = "0" * 64
        else:
            manifest["inputs"] = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}]
        manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelLoad(load_request("mlp"), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2" in err.value.details() and "still serving versions [1]" in err.value.details()
    state, reason = handle.index()[("mlp", "2")]
    assert state == "UNAVAILABLE" and reason
    assert handle.index()[("mlp", "1")][0] == "READY"
    after = infer_mlp(handle)
    assert after[0] == "1"
    np.testing.assert_array_equal(after[1], before[1])


def test_load_with_file_bytes_writes_atomically_and_serves(repo, start_node):
    handle = start_node(repo)
    data = build_mlp(seed=5).SerializeToString()
    handle.stub.RepositoryModelLoad(load_request("mlp", {"2/model.onnx": data}), timeout=RPC_TIMEOUT_S)
    assert (repo / "mlp" / "2" / "model.onnx").read_bytes() == data
    assert not [p for p in (repo / "mlp" / "2").iterdir() if ".tmp" in p.name]
    manifest = json.loads((repo / "mlp" / "2" / "manifest.json").read_text())
    assert manifest["size"] == len(data)
    assert handle.node.models.ready_models()["mlp"] == [2]  # default policy: latest 1
    version, out = infer_mlp(handle)
    assert version == "2"
    np.testing.assert_array_equal(out, mlp_output(5))
    # a brand-new model pushed as bytes
    handle.stub.RepositoryModelLoad(load_request("pushed", {"1/model.onnx": data}), timeout=RPC_TIMEOUT_S)
    assert handle.node.models.ready_models()["pushed"] == [1]


@pytest.mark.parametrize("key, value", [
    ("file:../escape/model.onnx", b"x"),
    ("file:0/model.onnx", b"x"),
    ("file:1/other.bin", b"x"),
    ("config", b"{}"),
])
def test_load_refuses_bad_file_parameters(repo, start_node, key, value):
    handle = start_node(repo)
    request = inference_pb2.RepositoryModelLoadRequest(model_name="mlp")
    request.parameters[key].bytes_param = value
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelLoad(request, timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and key in err.value.details()
    assert not (repo.parent / "escape").exists()


def test_load_unknown_model_is_not_found(repo, start_node):
    handle = start_node(repo)
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelLoad(load_request("ghost"), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_hot_swap_under_load_fails_no_request(repo, start_node):
    handle = start_node(repo)
    seen_versions, failures = [], []
    stop = threading.Event()

    def client():
        deadline = time.monotonic() + 20
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                version, out = infer_mlp(handle)
                seen_versions.append(version)
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    events = []
    handle.node.models.add_listener(events.append)
    data = build_mlp(seed=9).SerializeToString()
    handle.stub.RepositoryModelLoad(load_request("mlp", {"2/model.onnx": data}), timeout=RPC_TIMEOUT_S)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert "1" in seen_versions and seen_versions[-1] == "2"
    assert events and events[-1].model == "mlp" and events[-1].ready_versions == (2,)
    assert handle.index()[("mlp", "1")][0] == "UNAVAILABLE"


def test_unload_drains_in_flight_requests(tmp_path, start_node):
    root = tmp_path / "models"
    write_model(root, "slow", 1, build_matmul_chain())
    handle = start_node(root)
    models = handle.node.models
    x = np.ones((128, 1024), np.float32)
    result = {}

    def slow_request():
        response = handle.infer(build_infer_request("slow", {"X": x}), timeout=30)
        result["finished"] = time.monotonic()
        result["response"] = response

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 10
    while models.queue_depth("slow") == 0 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.0005)
    assert models.queue_depth("slow") == 1 and models.queue_depth() == 1
    version = models.acquire("slow", "1")
    version.leave()
    at_unload = {}
    models.add_listener(lambda event: at_unload.update(
        kind=event.kind, inflight=version.inflight, answered=version.stats.success_count))
    handle.stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name="slow"),
                                      timeout=RPC_TIMEOUT_S)
    worker.join(30)
    # when the unload completed, the in-flight request had already been answered on the server
    assert at_unload == {"kind": "unload", "inflight": 0, "answered": 1}
    assert result["response"].model_name == "slow"
    assert models.queue_depth() == 0 and models.ready_models() == {}
    assert handle.index()[("slow", "1")] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(grpc.RpcError) as err:
        handle.infer(build_infer_request("slow", {"X": x}))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    handle.stub.RepositoryModelLoad(load_request("slow"), timeout=RPC_TIMEOUT_S)
    assert models.ready_models() == {"slow": [1]}


def test_index_lists_every_model_and_filters_ready(repo, start_node):
    write_model(repo, "broken", 1, b"junk", manifest=False)
    handle = start_node(repo)
    index = handle.index()
    assert index[("mlp", "1")] == ("READY", "") and index[("multi", "1")] == ("READY", "")
    assert index[("broken", "1")][0] == "UNAVAILABLE" and "not a valid ONNX model" in index[("broken", "1")][1]
    assert set(handle.index(ready=True)) == {("mlp", "1"), ("multi", "1")}
    handle.stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name="multi"),
                                      timeout=RPC_TIMEOUT_S)
    assert set(handle.index(ready=True)) == {("mlp", "1")}
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name="ghost"),
                                          timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_failed_push_keeps_the_previous_file_on_disk(repo, start_node):
    handle = start_node(repo)
    version_dir = repo / "mlp" / "1"
    before = {p.name: p.read_bytes() for p in version_dir.iterdir()}
    with pytest.raises(grpc.RpcError) as err:
        handle.stub.RepositoryModelLoad(load_request("mlp", {"1/model.onnx": b"not an onnx model"}),
                                        timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "still serving" in err.value.details()
    assert {p.name: p.read_bytes() for p in version_dir.iterdir()} == before  # no garbage, no leftovers
    # the node keeps serving v1 and a reload (or a restart) still finds the good file
    handle.stub.RepositoryModelLoad(load_request("mlp"), timeout=RPC_TIMEOUT_S)
    assert handle.index()[("mlp", "1")] == ("READY", "")
    np.testing.assert_array_equal(infer_mlp(handle)[1], mlp_output(0))
    restarted = start_node(repo)
    assert restarted.node.models.ready_models()["mlp"] == [1]
    # a failed push of a new model leaves nothing behind but the reason in the index
    with pytest.raises(grpc.RpcError):
        handle.stub.RepositoryModelLoad(load_request("fresh", {"1/model.onnx": b"garbage"}), timeout=RPC_TIMEOUT_S)
    assert not (repo / "fresh").exists()
    state, reason = handle.index()[("fresh", "1")]
    assert state == "UNAVAILABLE" and "not a valid ONNX model" in reason


def test_a_draining_model_does_not_hold_up_another_models_load(tmp_path, start_node):
    """Admin work is per model: while ``slow`` drains an in-flight request, ``mlp`` unloads and loads."""
    root = tmp_path / "models"
    write_model(root, "slow", 1, build_matmul_chain())
    write_model(root, "mlp", 1, build_mlp())
    handle = start_node(root)
    models = handle.node.models
    in_flight = models.acquire("slow", "1")  # what the servicer does for each request: held until leave()
    unloader = threading.Thread(target=models.unload, args=("slow",))
    unloader.start()  # drains: blocks until the in-flight request leaves
    try:
        deadline = time.monotonic() + 5
        while models.is_ready("slow") and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not models.is_ready("slow") and unloader.is_alive()
        handle.stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name="mlp"),
                                          timeout=RPC_TIMEOUT_S)
        assert models.ready_models() == {}
        handle.stub.RepositoryModelLoad(load_request("mlp"), timeout=RPC_TIMEOUT_S)
        x = np.ones((1, 32), np.float32)
        assert handle.infer(build_infer_request("mlp", {"INPUT0": x})).model_name == "mlp"
        assert unloader.is_alive(), "slow's unload stopped waiting for its in-flight request"
    finally:
        in_flight.leave()
        unloader.join(30)
    assert not unloader.is_alive() and models.ready_models() == {"mlp": [1]}
    assert handle.index()[("slow", "1")] == ("UNAVAILABLE", "unloaded")


def test_unknown_names_are_refused_without_leaving_state_behind(repo, start_node):
    handle = start_node(repo)
    models = handle.node.models
    locks = dict(models._admin_locks)
    for i in range(20):
        for call in (handle.stub.RepositoryModelLoad, handle.stub.RepositoryModelUnload):
            request_type = (inference_pb2.RepositoryModelLoadRequest if call is handle.stub.RepositoryModelLoad
                            else inference_pb2.RepositoryModelUnloadRequest)
            with pytest.raises(grpc.RpcError) as err:
                call(request_type(model_name=f"ghost-{i}"), timeout=RPC_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and f"'ghost-{i}'" in err.value.details()
    assert models._admin_locks == locks  # a stream of bad names cannot grow the per-model locks
