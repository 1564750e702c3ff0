"""Real-time features through a real edge node: the vectors the model saw equal ``features.replay``'s.

The model is ``build_feature_echo`` (its output is its input), so each response is the exact vector
onnxruntime was fed.  Requests carry only the raw inputs, the ``routing_key`` and the event's
``timestamp_ms``; late labels go through the node's Feedback service by routing key + timestamp.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.config.errors import ConfigError
from edgeloop.config.models import parse_model_table
from edgeloop.features import FeatureDefinition, LabelEvent, replay
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2, inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import infer_response_to_numpy
from edgeloop.serving.feature_models import (build_feature_echo, build_feature_linear, feature_request, fold_scaling,
                                             manifest_bytes, write_feature_model)

MODEL = "fe"
T0_MS = 1_700_000_000_000


def definition() -> FeatureDefinition:
    return FeatureDefinition.from_dict({
        "version": 1, "entity": "meter", "inputs": ["a", "b", "price"],
        "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "lag", "col": "a", "k": 3},
                     {"op": "delta", "col": "b", "k": 2}, {"op": "mean", "col": "a", "k": 4},
                     {"op": "std", "col": "b", "k": 5}, {"op": "dev", "col": "b", "k": 3},
                     {"op": "since_last"}, {"op": "label_lag", "k": 1}, {"op": "label_lag", "k": 2},
                     {"op": "label_mean", "k": 4, "default": 0.5}],
        "forbidden": ["price"]})


def stream(seed: int, n: int, entities: int):
    """Keys, FP32 rows, integer-ms event times, labels and their arrival times (ms, out of order)."""
    rng = np.random.default_rng(seed)
    keys = [f"m-{int(i)}" for i in rng.integers(0, entities, n)]
    rows = (rng.standard_normal((n, 3)) * 3 + 1).astype(np.float32)
    ts = T0_MS + np.cumsum(rng.integers(500, 2000, n))
    labels = (rows[:, 0] > 1).astype(np.float64)
    arrivals = ts + rng.integers(0, 6000, n)
    return keys, rows, ts, labels, arrivals


def config(tmp: Path, repository: Path, node_id: str = "fe-edge", **model_keys) -> EdgeConfig:
    models = (ModelConfig(name=MODEL, sample_rate=1.0, **model_keys),)
    return EdgeConfig(node=NodeConfig(id=node_id, host="127.0.0.1", grpc_port=0, metrics_port=-1),
                      serving=ServingConfig(model_repository=repository, models=models),
                      mesh=MeshConfig(enabled=False), coordinator_address=None,
                      coordinator=CoordinatorConfig(outbox_path=tmp / f"{node_id}-outbox.sqlite"))


class Client:
    def __init__(self, node: EdgeNode) -> None:
        self.node = node
        self.channel = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.feedback = mesh_pb2_grpc.FeedbackStub(self.channel)

    def serve(self, rows, key=None, ts=None, request_id=""):
        response = self.stub.ModelInfer(feature_request(MODEL, definition(), rows, key, ts, request_id), timeout=10)
        return infer_response_to_numpy(response)["vector"]

    def label(self, key: str, ts: int, value: float, sample_id: str = "") -> None:
        label = mesh_pb2.Label(sample_id=sample_id, model=MODEL if not sample_id else "", routing_key=key,
                               timestamp_ms=int(ts), value=value)
        assert self.feedback.Label(mesh_pb2.LabelRequest(labels=[label]), timeout=10).accepted == 1

    def close(self) -> None:
        self.channel.close()
        self.node.stop(2.0)


@pytest.fixture
def echo_repo(tmp_path):
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_feature_echo(definition().width), definition())
    return repo


def replay_stream(keys, rows, ts, labels, arrivals, upto=None):
    n = len(keys) if upto is None else upto
    events = [LabelEvent(k, float(y), t / 1000.0, a / 1000.0) for k, y, t, a in zip(keys, labels, ts, arrivals)]
    return replay(definition(), rows[:n].astype(np.float64), keys[:n], ts[:n] / 1000.0, events)


def drive(client: Client, keys, rows, ts, labels, arrivals, start=0, stop=None, sent=None):
    """Send requests in order; before each, the labels that have arrived by its time (as the replay does)."""
    stop = len(keys) if stop is None else stop
    order = np.argsort(arrivals, kind="stable")
    sent = set() if sent is None else sent
    out = []
    for i in range(start, stop):
        for j in order:
            if arrivals[j] > ts[i]:
                break
            if j not in sent:
                client.label(keys[j], ts[j], labels[j])
                sent.add(j)
        out.append(client.serve(rows[i], keys[i], ts[i])[0])
    return np.array(out), sent


def test_replayed_stream_through_a_node_matches_replay_bit_for_bit(tmp_path, echo_repo):
    keys, rows, ts, labels, arrivals = stream(1, 150, 5)
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        served, _ = drive(client, keys, rows, ts, labels, arrivals)
        stats = client.node.models.features.of_model(MODEL)[0].stats()
    finally:
        client.close()
    expected = replay_stream(keys, rows, ts, labels, arrivals)
    assert served.dtype == np.float32 and served.shape == expected.vectors.shape
    assert served.tobytes() == expected.vectors.tobytes()
    assert stats.served == 150 and stats.entities == 5 and stats.labels > 0


def test_label_features_never_see_the_current_or_a_later_label(tmp_path, echo_repo):
    d = definition()
    lag1 = d.output_names.index("label_lag_1")
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        # the label of the event at T0+2000 and a later one arrive before the request at T0+2000 is served
        client.serve([1, 2, 3], "k", T0_MS)
        client.label("k", T0_MS, 7.0)
        client.label("k", T0_MS + 2000, 99.0)
        client.label("k", T0_MS + 5000, 55.0)
        vector = client.serve([1, 2, 3], "k", T0_MS + 2000)[0]
        assert vector[lag1] == 7.0  # the earlier event's label only: never 99 (its own) nor 55 (later)
        later = client.serve([1, 2, 3], "k", T0_MS + 6000)[0]
        assert later[lag1] == 55.0
    finally:
        client.close()


def test_labels_by_request_id_reach_the_entity(tmp_path, echo_repo):
    lag1 = definition().output_names.index("label_lag_1")
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        client.serve([1, 2, 3], "k", T0_MS, request_id="req-1")
        client.label("", 0, 4.0, sample_id="req-1")
        assert client.serve([1, 2, 3], "k", T0_MS + 1000)[0][lag1] == 4.0
    finally:
        client.close()


def test_labels_by_a_generated_request_id_reach_the_entity(tmp_path, echo_repo):
    lag1 = definition().output_names.index("label_lag_1")
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        response = client.stub.ModelInfer(feature_request(MODEL, definition(), [1, 2, 3], "g", T0_MS), timeout=10)
        assert response.id  # generated by the node's recorder
        client.label("", 0, 3.0, sample_id=response.id)
        assert client.serve([1, 2, 3], "g", T0_MS + 1000)[0][lag1] == 3.0
        client.label("", 0, 5.0, sample_id="never-served")  # stored for the coordinator, no state to update
        assert client.node.models.features.labels_unmatched == 1
    finally:
        client.close()


def test_batches_get_each_entity_its_own_features_and_samples_record_what_was_seen(tmp_path, echo_repo):
    keys, rows, ts, labels, arrivals = stream(2, 60, 4)
    cfg = config(tmp_path, echo_repo, max_batch_size=8, max_queue_delay_us=2000)
    client = Client(EdgeNode(cfg).start())
    try:
        from concurrent.futures import ThreadPoolExecutor

        # entities in parallel (each entity's own stream in order): rows of different keys merge into batches
        by_key: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_key.setdefault(k, []).append(i)
        served = np.zeros((len(keys), definition().width), np.float32)

        def run(indices):
            for i in indices:
                served[i] = client.serve(rows[i], keys[i], ts[i])[0]

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(run, by_key.values()))
        batches = [s for s in client.stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=MODEL),
                                                          timeout=10).model_stats[0].batch_stats]
        outbox = client.node.outbox
    finally:
        client.close()
    expected = replay(definition(), rows.astype(np.float64), keys, ts / 1000.0)  # no labels sent here
    assert served.tobytes() == expected.vectors.tobytes()
    assert sum(b.batch_size * b.compute_infer.count for b in batches) == 60
    samples = [mesh_pb2.Sample.FromString(p) for p in _outbox_samples(cfg.coordinator.outbox_path)]
    assert len(samples) == 60
    width = definition().width
    recorded = {}
    for s in samples:
        assert s.feature_digest == definition().digest
        assert [t.name for t in s.inputs] == ["features"] and list(s.inputs[0].shape) == [1, width]
        assert [t.name for t in s.raw_inputs] == ["a", "b", "price"]
        raw = np.array([np.frombuffer(t.data, "<f4")[0] for t in s.raw_inputs], np.float32)
        recorded[np.frombuffer(s.inputs[0].data, "<f4").tobytes()] = (s.routing_key, s.features_cold, raw.tobytes())
    # every recorded vector is one the model saw, with its raw row, key and cold flag
    for i in range(60):
        key, cold, raw = recorded[expected.vectors[i].tobytes()]
        assert (key, cold, raw) == (keys[i], bool(expected.cold[i]), rows[i].tobytes())


def _outbox_samples(path):
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [row[0] for row in conn.execute("SELECT payload FROM samples")]
    finally:
        conn.close()


def test_metadata_shows_raw_inputs_and_plain_requests_work(tmp_path, echo_repo):
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        meta = client.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MODEL), timeout=10)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == \
            [("a", "FP32", [-1]), ("b", "FP32", [-1]), ("price", "FP32", [-1])]
        # a tritonclient-style request: typed contents, no raw bytes, the key in the parameters
        request = inference_pb2.ModelInferRequest(model_name=MODEL)
        for name, value in (("a", 1.5), ("b", 2.0), ("price", 9.0)):
            tensor = request.inputs.add(name=name, datatype="FP32", shape=[1])
            tensor.contents.fp32_contents.append(value)
        request.parameters["routing_key"].string_param = "plain"
        first = infer_response_to_numpy(client.stub.ModelInfer(request, timeout=10))["vector"][0]
        second = infer_response_to_numpy(client.stub.ModelInfer(request, timeout=10))["vector"][0]
        names = definition().output_names
        assert list(first[:3]) == [1.5, 2.0, 9.0]
        assert second[names.index("lag_a_1")] == 1.5  # the entity's history was kept between plain requests
        # no key: served with cold defaults, nothing kept, counted
        del request.parameters["routing_key"]
        client.stub.ModelInfer(request, timeout=10)
        assert client.node.models.features.no_key == 1
        with pytest.raises(grpc.RpcError) as err:  # the graph's full-vector input is not what clients send
            client.stub.ModelInfer(_full_vector_request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "features" in err.value.details()
    finally:
        client.close()


def test_any_input_order_and_malformed_raw_inputs_are_checked_like_any_request(tmp_path, echo_repo):
    client = Client(EdgeNode(config(tmp_path, echo_repo)).start())
    try:
        rows = np.array([[1.5, -2.0, 3.0], [4.0, 5.0, -6.5]], np.float32)
        in_order = [client.serve(r, "ordered", T0_MS + i * 1000)[0] for i, r in enumerate(rows)]
        shuffled = []
        for i, r in enumerate(rows):  # the same rows, inputs sent in another order: the slow, checked path
            request = feature_request(MODEL, definition(), r, "shuffled", T0_MS + i * 1000)
            order = [2, 0, 1]
            tensors = [request.inputs[j] for j in order]
            raws = [request.raw_input_contents[j] for j in order]
            del request.inputs[:]
            del request.raw_input_contents[:]
            request.inputs.extend(tensors)
            request.raw_input_contents.extend(raws)
            shuffled.append(infer_response_to_numpy(client.stub.ModelInfer(request, timeout=10))["vector"][0])
        assert np.array(in_order).tobytes() == np.array(shuffled).tobytes()
        bad = feature_request(MODEL, definition(), rows[0], "bad", T0_MS)
        bad.inputs[1].contents.fp32_contents.append(1.0)  # typed contents and raw bytes at once
        with pytest.raises(grpc.RpcError) as err:
            client.stub.ModelInfer(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'b'" in err.value.details()
        short = feature_request(MODEL, definition(), rows[0], "bad", T0_MS)
        short.raw_input_contents[2] = b"\0\0"
        with pytest.raises(grpc.RpcError) as err:
            client.stub.ModelInfer(short, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "price" in err.value.details()
        wrong_type = feature_request(MODEL, definition(), rows[0], "bad", T0_MS)
        wrong_type.inputs[0].datatype = "INT32"
        with pytest.raises(grpc.RpcError) as err:
            client.stub.ModelInfer(wrong_type, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "FP32" in err.value.details()
        assert "bad" not in client.node.models.features.of_model(MODEL)[0]  # refused rows never enter the state
    finally:
        client.close()


def _full_vector_request():
    from edgeloop.protocol.codec import build_infer_request

    return build_infer_request(MODEL, {"features": np.zeros((1, definition().width), np.float32)})


@pytest.mark.parametrize("features, expected", [
    ({"version": 1, "entity": "e", "inputs": ["a"], "features": [{"op": "lag", "col": "zz", "k": 1}]}, "col"),
    ({"version": 1, "entity": "e", "inputs": ["a"], "features": [{"op": "lag", "col": "a", "k": 5000}]}, "k"),
    ("not an object", "features"),
])
def test_bad_definitions_are_refused_at_load(tmp_path, features, expected):
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_feature_echo(2), FeatureDefinition.from_dict(
        {"version": 1, "entity": "e", "inputs": ["a"], "features": [{"op": "lag", "col": "a", "k": 1}]}))
    manifest_path = repo / MODEL / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["features"] = features
    manifest_path.write_text(json.dumps(manifest))
    node = EdgeNode(config(tmp_path, repo)).start()
    try:
        state, reason = node.models.index()[0][2:]
        assert state == "UNAVAILABLE" and "manifest.json features" in reason and repr(expected)[1:-1] in reason
    finally:
        node.stop(2.0)


def test_a_graph_that_does_not_take_the_full_vector_is_refused(tmp_path):
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_feature_echo(definition().width + 1), definition())
    node = EdgeNode(config(tmp_path, repo)).start()
    try:
        state, reason = node.models.index()[0][2:]
        assert state == "UNAVAILABLE" and f"FP32 [batch, {definition().width}]" in reason
    finally:
        node.stop(2.0)


def test_feature_history_bound_is_enforced_at_load_and_validated_in_toml(tmp_path, echo_repo):
    node = EdgeNode(config(tmp_path, echo_repo, feature_max_history=3)).start()  # the definition has k=5
    try:
        assert "feature_max_history (3)" in node.models.index()[0][3]
    finally:
        node.stop(2.0)
    with pytest.raises(ConfigError, match="feature_max_entities"):
        parse_model_table({"feature_max_entities": 0}, "edge.toml", "serving.models.fe", ModelConfig(name="fe"))
    with pytest.raises(ConfigError, match="feature_max_history"):
        parse_model_table({"feature_max_history": 4096}, "edge.toml", "serving.models.fe", ModelConfig(name="fe"))
    parsed = parse_model_table({"feature_max_entities": 10, "feature_max_history": 48}, "edge.toml",
                               "serving.models.fe", ModelConfig(name="fe"))
    assert (parsed.feature_max_entities, parsed.feature_max_history) == (10, 48)


def test_entities_are_bounded_by_the_models_config(tmp_path, echo_repo):
    client = Client(EdgeNode(config(tmp_path, echo_repo, feature_max_entities=16)).start())
    try:
        for i in range(40):
            client.serve([i, 1, 2], f"k{i}", T0_MS + i)
        stats = client.node.models.features.of_model(MODEL)[0].stats()
        assert stats.entities <= 16 and stats.evictions == 40 - stats.entities
    finally:
        client.close()


def test_a_push_with_a_manifest_loads_features_too(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    node = EdgeNode(config(tmp_path, repo)).start()
    client = Client(node)
    try:
        data = build_feature_echo(definition().width).SerializeToString()
        request = inference_pb2.RepositoryModelLoadRequest(model_name=MODEL)
        request.parameters["file:1/model.onnx"].bytes_param = data
        request.parameters["file:1/manifest.json"].bytes_param = manifest_bytes(data, definition(), MODEL, 1)
        client.stub.RepositoryModelLoad(request, timeout=30)
        vector = client.serve([1, 2, 3], "p", T0_MS)[0]
        assert vector.shape == (definition().width,) and list(vector[:3]) == [1, 2, 3]
    finally:
        client.close()


def test_scaling_folded_into_the_graph_with_onnx_compose():
    width = definition().width
    mean = np.linspace(-1, 1, width).astype(np.float32)
    scale = np.linspace(0.5, 2, width).astype(np.float32)
    weights = np.random.default_rng(0).standard_normal((width, 2)).astype(np.float32)
    folded = fold_scaling(build_feature_linear(width, weights=weights), mean, scale)
    assert [i.name for i in folded.graph.input] == ["features"]
    x = np.random.default_rng(1).standard_normal((5, width)).astype(np.float32)
    got = ort.InferenceSession(folded.SerializeToString()).run(None, {"features": x})[0]
    plain = ort.InferenceSession(build_feature_linear(width, weights=weights).SerializeToString())
    want = plain.run(None, {"features": ((x - mean) / scale).astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    onnx.checker.check_model(folded)


def _front(max_batch_size: int = 8):
    from edgeloop.serving.features import FeatureFront, FeatureStates
    from edgeloop.serving.signature import ModelSignature, TensorSpec

    d = definition()
    graph = ModelSignature([TensorSpec("features", "FP32", (-1, d.width), "input", ("batch", None))], [],
                           max_batch_size)
    states = FeatureStates()
    return FeatureFront(MODEL, d, graph, max_batch_size, states.state_for(MODEL, d, 100), states)


def _read(front, request):
    from edgeloop.kernels import features as _k

    out = np.full((1, front.definition.width), np.nan, np.float32)
    got = _k.read_one_row(request.SerializeToString(), front._fast_tensors, out)
    return got, out[0, : len(front.definition.inputs)]


def test_the_one_row_wire_read_takes_only_the_exact_form_and_reads_it_right():
    front = _front()
    d = front.definition
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((50, 3)).astype(np.float32)
    rows[0] = np.frombuffer(b"\x3a\x04\x3a\x04" * 3, np.float32)  # values that look like the tags
    for i, row in enumerate(rows):
        key = f"k{i}" if i % 2 else f"\u00e9t\u00e9-{i}"  # non-ASCII keys: the str and its UTF-8 bytes
        got, values = _read(front, feature_request(MODEL, d, row, key, T0_MS + i, request_id=f"id{i}"))
        assert got == (key, key.encode("utf-8"), T0_MS + i) and values.tobytes() == row.tobytes()
    got, values = _read(front, feature_request(MODEL, d, rows[1]))  # no key, no timestamp: the node decides
    assert got == (None, None, -1) and values.tobytes() == rows[1].tobytes()
    asked = feature_request(MODEL, d, rows[1], "k", T0_MS)
    asked.outputs.add(name="vector")  # requested outputs are the signature's business, not the reader's
    asked.parameters["priority"].int64_param = 3  # other parameters are skipped
    asked.parameters["timestamp_ms"].uint64_param = T0_MS + 7
    assert _read(front, asked)[0] == ("k", b"k", T0_MS + 7)

    def variant(change):
        request = feature_request(MODEL, d, rows[1], "k", T0_MS)
        change(request)
        return request
    others = {
        "a tensor parameter": lambda r: r.inputs[0].parameters["x"].CopyFrom(
            inference_pb2.InferParameter(bool_param=True)),
        "another datatype": lambda r: setattr(r.inputs[1], "datatype", "INT32"),
        "another name": lambda r: setattr(r.inputs[2], "name", "prices"),
        "two rows in the shape": lambda r: r.inputs[0].shape.__setitem__(0, 2),
        "a short raw": lambda r: r.raw_input_contents.__setitem__(2, b"\0\0"),
        "two rows of raw": lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 8),
        "typed contents too": lambda r: r.inputs[1].contents.fp32_contents.append(1.0),
        "an extra raw": lambda r: r.raw_input_contents.append(b"\0\0\0\0"),
        "a raw missing": lambda r: r.raw_input_contents.pop(),
        "an extra input": lambda r: r.inputs.add(name="d", datatype="FP32", shape=[1]),
        "inputs reordered": lambda r: (setattr(r.inputs[0], "name", "b"), setattr(r.inputs[1], "name", "a")),
        "a key of another kind": lambda r: r.parameters["routing_key"].CopyFrom(
            inference_pb2.InferParameter(int64_param=5)),
        "an empty key": lambda r: setattr(r.parameters["routing_key"], "string_param", ""),
        "a key too long": lambda r: setattr(r.parameters["routing_key"], "string_param", "x" * 257),
        "a timestamp of another kind": lambda r: r.parameters["timestamp_ms"].CopyFrom(
            inference_pb2.InferParameter(double_param=1.5)),
        "a negative timestamp": lambda r: setattr(r.parameters["timestamp_ms"], "int64_param", -1),
        "a timestamp past 2^53": lambda r: setattr(r.parameters["timestamp_ms"], "int64_param", 2**53),
    }
    for what, change in others.items():
        assert _read(front, variant(change))[0] is None, what
    from edgeloop.kernels import features as _k

    wire = feature_request(MODEL, d, rows[1], "k", T0_MS).SerializeToString()
    out = np.zeros((1, d.width), np.float32)
    for cut in range(len(wire)):  # every truncation of a valid request: refused, never read past the end
        got = _k.read_one_row(wire[:cut], front._fast_tensors, out)
        assert got is None or got[2] == -1 or got[2] == T0_MS, cut
    # what falls back is still served by the checked path: the reordered request reads the same values
    swapped = variant(others["inputs reordered"])
    assert front._rows(swapped)[0].tolist() == [[rows[1][1], rows[1][0], rows[1][2]]]


def test_the_fast_path_and_the_checked_path_serve_the_same_vectors_and_counts():
    """Every request served twice, by the native one-row path and by the checked path (fast path off), on
    two fronts with their own state: the vectors, flags and state counters are equal bit for bit."""
    from edgeloop.serving.features import take_served

    fast, checked = _front(0), _front(0)
    checked._fast_tensors = ()  # every request takes ``_enrich_rows``
    keys, rows, ts, labels, _arrivals = stream(11, 300, 7)
    for i in range(300):
        request = feature_request(MODEL, fast.definition, rows[i], keys[i] if i % 10 else None, int(ts[i]),
                                  request_id=f"r{i}")
        if i % 9 == 0:
            rows_bad = rows[i].copy()
            rows_bad[0] = np.nan  # a non-finite kept column: refused by both, naming the input
            bad = feature_request(MODEL, fast.definition, rows_bad, keys[i], int(ts[i]))
            for front in (fast, checked):
                with pytest.raises(Exception) as err:
                    front.enrich(bad)
                assert "'a'" in str(err.value) or " a " in str(err.value), str(err.value)
        got = []
        for front in (fast, checked):
            feeds, batch = front.enrich(request)
            served = take_served(request)
            got.append((feeds["features"].tobytes(), batch, served.cold, served.partial, served.entity, served.t))
        assert got[0] == got[1], i
        if i % 4 == 0 and i:
            for front in (fast, checked):
                front.state.update_with_label(keys[i - 1], labels[i - 1], ts[i - 1] / 1000.0)
    a, b = fast.state.stats(), checked.state.stats()
    assert a == b and a.served == 270 and a.cold == 7
    assert fast.states.no_key == checked.states.no_key == 30


def test_a_request_is_read_from_the_bytes_it_was_parsed_from_while_it_is_served():
    """The servicer hands the request's wire bytes over (``parsed_from``): enrich reads those, only for
    that very message, and serializes the message itself once they are withdrawn."""
    from edgeloop.serving.features import parsed_from, take_served

    front = _front(0)
    d = front.definition
    rows = np.array([[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]], np.float32)
    request = feature_request(MODEL, d, rows[0], "k", T0_MS)
    sent = feature_request(MODEL, d, rows[1], "k", T0_MS + 1000).SerializeToString()
    try:
        parsed_from(request, sent)
        feeds, _ = front.enrich(request)
        assert feeds["features"][0, :3].tolist() == [7.0, 8.0, 9.0] and take_served(request).t == T0_MS / 1000 + 1
        other = feature_request(MODEL, d, rows[0], "k", T0_MS + 2000)  # another message: its own bytes
        assert front.enrich(other)[0]["features"][0, :3].tolist() == [1.0, 2.0, 3.0]
    finally:
        parsed_from(None, b"")
    feeds, _ = front.enrich(request)
    assert feeds["features"][0, :3].tolist() == [1.0, 2.0, 3.0]


# -- the online head: the entity's late labels correct the model's output -------------------------------------
ONLINE = {"lr": 0.5, "classes": [0, 1], "pending": 16}


def online_definition(**online) -> FeatureDefinition:
    return FeatureDefinition.from_dict({**definition().to_dict(), "online": {**ONLINE, **online}})


def build_classifier(width: int, seed: int = 4, classes: int = 2, declared=2) -> onnx.ModelProto:
    """``vector`` (what the model saw), ``probabilities = softmax(x @ W + b)`` leaning to class 0, and
    ``label = argmax`` (INT64 [batch]): the head's outputs are not the graph's first.  ``declared``: the
    probabilities' second dimension in the graph's signature (a name: open, not known until it runs)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeloop.serving.demo_models import _model

    w = (np.random.default_rng(seed).standard_normal((width, classes)) * 0.02).astype(np.float32)
    b = np.array([2.0] + [0.0] * (classes - 1), np.float32)
    # an open width: a Reshape to the logits' own runtime shape hides it from shape inference
    opened = [helper.make_node("Gemm", ["features", "W", "B"], ["gemm"]),
              helper.make_node("Shape", ["gemm"], ["shape"]), helper.make_node("Reshape", ["gemm", "shape"], ["logits"])]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["vector"]),
         *(opened if isinstance(declared, str) else [helper.make_node("Gemm", ["features", "W", "B"], ["logits"])]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)], "online_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", declared]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return _model(graph)


def _infer(client: Client, rows, key, ts, outputs=()):
    request = feature_request(MODEL, online_definition(), rows, key, ts)
    for name in outputs:
        request.outputs.add(name=name)
    return infer_response_to_numpy(client.stub.ModelInfer(request, timeout=10))


@pytest.mark.parametrize("batching", [{}, {"max_batch_size": 8, "max_queue_delay_us": 2000}])
def test_online_head_over_grpc_flips_a_contradicted_entity_and_leaves_others_alone(tmp_path, batching):
    d = online_definition()
    repo = tmp_path / "models"
    model = build_classifier(d.width)
    write_feature_model(repo, MODEL, 1, model, d)
    session = ort.InferenceSession(model.SerializeToString())

    def own(vector):  # the model's own answer to the vector it saw
        p, label = session.run(["probabilities", "label"], {"features": vector})
        return p, label

    rng = np.random.default_rng(8)
    rows = rng.standard_normal((12, 3)).astype(np.float32)
    cfg = config(tmp_path, repo, **batching)
    client = Client(EdgeNode(cfg).start())
    try:
        flipped = 0
        # "a" and its twin "c" are labelled 1 after each row (one row late) where the model says 0; "b" never is
        for i in range(12):
            ts = T0_MS + 1000 * i
            for key in ("a", "b", "c"):
                got = _infer(client, rows[i], key, ts)
                p, label = own(got["vector"])
                assert label.tolist() == [0], (i, key)  # the model alone never says 1 for these rows
                if key == "b" or i == 0:  # untouched: exactly the model's output, bytes and types
                    assert got["probabilities"].tobytes() == p.tobytes(), (i, key)
                    assert got["label"].dtype == label.dtype and got["label"].tobytes() == label.tobytes()
                else:
                    assert not np.array_equal(got["probabilities"], p), i  # corrected
                    assert abs(got["probabilities"].sum() - 1) < 1e-6
                    assert got["label"].tolist() == [int(np.argmax(got["probabilities"]))]
                    flipped += int(got["label"][0] == 1 and key == "a")
            for key in ("a", "c"):
                client.label(key, ts, 1.0)
        assert flipped >= 6  # of the 11 rows of "a" after a label
        # a subset of the outputs is corrected too: "a" asked for its label only, "c" (the same head) for all
        differed = 0
        for j in range(6):
            ts = T0_MS + 20_000 + 1000 * j
            full = _infer(client, rows[j], "c", ts)
            only = _infer(client, rows[j], "a", ts, outputs=["label"])
            assert list(only) == ["label"] and only["label"].tobytes() == full["label"].tobytes(), j
            differed += int(full["label"].tolist() != own(full["vector"])[1].tolist())
        assert differed >= 3
        both = _infer(client, rows[2], "b", T0_MS + 30_000, outputs=["label", "vector"])
        assert list(both) == ["label", "vector"] and both["label"].tolist() == own(both["vector"])[1].tolist() == [0]
        stats = client.node.models.features.of_model(MODEL)[0].stats()
        assert stats.online_learned == 24 and stats.online_unmatched == 0
        assert stats.online_served == 3 * 12 + 2 * 6 + 1
    finally:
        client.close()
    # the recorded samples carry what the client was served: "a"'s first row as the model said, then corrected
    samples = [mesh_pb2.Sample.FromString(p) for p in _outbox_samples(cfg.coordinator.outbox_path)]
    by_time = {s.feature_time: s for s in samples if s.routing_key == "c"}
    first, later = by_time[T0_MS / 1000], by_time[(T0_MS + 20_000) / 1000]
    assert [t.name for t in later.outputs] == ["vector", "probabilities", "label"]
    p_first = np.frombuffer(first.outputs[1].data, "<f4")
    vector = np.frombuffer(later.inputs[0].data, "<f4").reshape(1, -1)
    assert p_first.tobytes() == own(np.frombuffer(first.inputs[0].data, "<f4").reshape(1, -1))[0].tobytes()
    assert np.frombuffer(later.outputs[1].data, "<f4").tobytes() != own(vector)[0].tobytes()


def test_online_heads_of_entities_served_concurrently_in_merged_batches_stay_their_own(tmp_path):
    """Four entities, each its own stream and labels on its own thread, on a batching model (rows that
    arrive while one runs are merged): each response is what that entity's head alone gives (a local
    ``FeatureState`` fed the same stream), whichever thread or batch served it."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeloop.features import FeatureState

    d = online_definition()
    repo = tmp_path / "models"
    model = build_classifier(d.width)
    write_feature_model(repo, MODEL, 1, model, d)
    session = ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(12)
    keys = [f"k{j}" for j in range(4)]
    rows = {key: rng.standard_normal((10, 3)).astype(np.float32) for key in keys}
    truth = {key: float(j % 2) for j, key in enumerate(keys)}
    client = Client(EdgeNode(config(tmp_path, repo, max_batch_size=8, max_queue_delay_us=20_000)).start())
    try:
        def run(key):
            got = []
            for i in range(10):
                ts = T0_MS + 1000 * i
                got.append(_infer(client, rows[key][i], key, ts))
                client.label(key, ts, truth[key])
            return got

        with ThreadPoolExecutor(4) as pool:
            served = dict(zip(keys, pool.map(run, keys)))
        stats = client.node.models.features.of_model(MODEL)[0].stats()
    finally:
        client.close()
    assert stats.online_learned == 40 and stats.online_served == 40
    local = FeatureState(d)
    for key in keys:
        for i in range(10):
            t = (T0_MS + 1000 * i) / 1000
            vector = local.serve(key, rows[key][i], t).vector.reshape(1, -1)
            got = served[key][i]
            assert got["vector"].tobytes() == vector.tobytes(), (key, i)
            proba, label = session.run(["probabilities", "label"], {"features": vector})
            logits = local.online_logits(key, t, vector, proba)[0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            want = proba[0] if i == 0 else p  # the first row: nothing learned, the model's own output
            np.testing.assert_allclose(got["probabilities"][0], want, rtol=0, atol=1e-5, err_msg=f"{key} {i}")
            assert got["label"].tolist() == ([int(np.argmax(p))] if i else label.tolist()), (key, i)
            local.update_with_label(key, truth[key], t)


def test_an_open_class_dimension_that_does_not_fit_the_head_fails_the_keyed_request_by_name(tmp_path):
    """Probabilities declared ``[batch, classes]`` load (the width is not known); three columns for a head
    of two classes fail each keyed request with a message naming the output, nothing learned or kept."""
    d = online_definition()
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_classifier(d.width, classes=3, declared="classes"), d)
    client = Client(EdgeNode(config(tmp_path, repo)).start())
    try:
        with pytest.raises(grpc.RpcError) as err:
            _infer(client, [1, 2, 3], "a", T0_MS)
        assert err.value.code() == grpc.StatusCode.INTERNAL  # the model is at fault, not the client
        assert "'probabilities'" in err.value.details() and "[1, 3]" in err.value.details()
        assert "[batch, 2]" in err.value.details()
        unkeyed = infer_response_to_numpy(client.stub.ModelInfer(
            feature_request(MODEL, d, [1, 2, 3], None, T0_MS), timeout=10))  # no entity: no head to apply
        assert unkeyed["probabilities"].shape == (1, 3)
        assert client.node.models.features.of_model(MODEL)[0].stats().online_served == 0
    finally:
        client.close()


@pytest.mark.parametrize("online, field", [
    ({"probabilities": "probs"}, "features.online.probabilities"),
    ({"classes": [0, 1, 2]}, "features.online.probabilities"),
    ({"probabilities": "vector"}, "features.online.probabilities"),
    ({"label": "y"}, "features.online.label"),
    ({"label": "probabilities", "probabilities": "vector"}, "features.online.probabilities"),
    ({"label": "vector"}, "features.online.label"),
])
def test_a_model_whose_outputs_do_not_fit_the_online_head_is_refused_at_load(tmp_path, online, field):
    d = online_definition(**online)
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_classifier(d.width), d)
    node = EdgeNode(config(tmp_path, repo)).start()
    try:
        state, reason = node.models.index()[0][2:]
        assert state == "UNAVAILABLE" and field in reason, reason
    finally:
        node.stop(2.0)
