"""``edgeloop perf`` against a real edge node (EdgeNode on loopback, port 0), with tiny counts."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import grpc
import pytest

from edgeloop.cli import main
from edgeloop.config import EdgeConfig
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2, inference_pb2_grpc
from edgeloop.serving.demo_models import build_mlp, build_multi_io_model, write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("perf-repo")
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "multi", 1, build_multi_io_model())
    base = EdgeConfig()
    config = replace(
        base,
        node=replace(base.node, id="perf-test", host="127.0.0.1", grpc_port=0, metrics_port=0),
        serving=replace(base.serving, model_repository=root),
        mesh=replace(base.mesh, enabled=False),
    )
    edge = EdgeNode(config).start()
    try:
        yield edge
    finally:
        edge.stop(grace_s=2.0)


def success_count(address: str, model: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=model), timeout=5)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def test_sweep_writes_json_and_csv_with_exact_counts(node, tmp_path, capsys):
    before = success_count(node.address, "mlp")
    json_path, csv_path = tmp_path / "perf.json", tmp_path / "perf.csv"
    code = main(["perf", "--url", node.address, "--model", "mlp", "--concurrency", "1,3", "--requests", "25",
                 "--warmup", "2", "--json", str(json_path), "--csv", str(csv_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(json_path.read_text())
    assert doc["model"] == "mlp" and doc["url"] == node.address
    assert doc["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 32]}]
    assert [level["concurrency"] for level in doc["levels"]] == [1, 3]
    for level in doc["levels"]:
        assert level["count"] == 25 and level["errors"] == 0 and level["stopped_by"] == "count"
        assert 0 < level["min_ms"] <= level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["infer_per_s"] == pytest.approx(25 / level["duration_s"])
    # every request, warm-up included, reached the server and succeeded
    assert success_count(node.address, "mlp") - before == 2 * (25 + 2)
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 3] and all(int(r["count"]) == 25 for r in rows)
    # not a TTY: one line per level on stderr, the table on stdout
    assert "concurrency 1: count 25, errors 0" in err and "concurrency 3: count 25, errors 0" in err
    assert out.splitlines()[0].split()[:3] == ["concurrency", "count", "errors"]


def test_duration_bounds_a_level_when_no_count_is_given(node, tmp_path, capsys):
    json_path = tmp_path / "perf.json"
    code = main(["perf", "--url", node.address, "--model", "mlp", "--duration", "0.3", "--warmup", "0",
                 "--json", str(json_path)])
    assert code == 0, capsys.readouterr().err
    (level,) = json.loads(json_path.read_text())["levels"]
    assert level["stopped_by"] == "time" and level["count"] > 0 and level["errors"] == 0
    assert 0.25 <= level["duration_s"] < 2.0


def test_batch_size_fills_the_dynamic_dimension(node, tmp_path, capsys):
    json_path = tmp_path / "perf.json"
    code = main(["perf", "--url", node.address, "--model", "mlp", "--batch-size", "4", "--requests", "5",
                 "--warmup", "0", "--json", str(json_path)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(json_path.read_text())
    assert doc["inputs"][0]["shape"] == [4, 32]
    (level,) = doc["levels"]
    assert level["count"] == 5 and level["infer_per_s"] == pytest.approx(4 * level["requests_per_s"])


def test_every_datatype_is_accepted_by_the_server(node, tmp_path, capsys):
    """The multi-I/O model takes one input per protocol datatype, BYTES included."""
    json_path = tmp_path / "perf.json"
    code = main(["perf", "--url", node.address, "--model", "multi", "--requests", "4", "--warmup", "0",
                 "--batch-size", "2", "--json", str(json_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    doc = json.loads(json_path.read_text())
    datatypes = {t["datatype"] for t in doc["inputs"]}
    assert {"BOOL", "UINT8", "INT64", "FP16", "FP32", "FP64", "BYTES"} <= datatypes
    assert doc["levels"][0]["count"] == 4 and doc["levels"][0]["errors"] == 0


def test_unknown_model_exits_2_naming_the_model(node, capsys):
    code = main(["perf", "--url", node.address, "--model", "no_such_model", "--requests", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model 'no_such_model' is not served at " + node.address in err


def test_unknown_version_exits_2_naming_model_and_version(node, capsys):
    code = main(["perf", "--url", node.address, "--model", "mlp", "--model-version", "7", "--requests", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model 'mlp' version '7'" in err


def test_failed_requests_are_counted_and_sampled(node):
    """A request the server refuses (wrong shape) counts as an error, not as a latency sample."""
    from edgeloop.perf.load import LevelPlan, run_level

    good = inference_pb2.ModelInferRequest(model_name="mlp")
    good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 32])
    good.raw_input_contents.append(bytes(4 * 32))
    bad = inference_pb2.ModelInferRequest(model_name="mlp")
    bad.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 31])
    bad.raw_input_contents.append(bytes(4 * 31))
    with grpc.insecure_channel(node.address) as channel:
        outcome = run_level(channel, [good.SerializeToString(), bad.SerializeToString()],
                            LevelPlan(concurrency=1, max_requests=10, max_duration_s=10.0))
    assert outcome.stats.count == 5 and outcome.stats.errors == 5
    assert len(outcome.error_samples) == 1
    assert outcome.error_samples[0].startswith("INVALID_ARGUMENT:") and "INPUT0" in outcome.error_samples[0]
