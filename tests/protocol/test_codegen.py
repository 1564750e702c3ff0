"""The committed gRPC stubs must be exactly what protoc generates from protos/."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "edgeloop" / "protocol" / "_gen"


def test_committed_stubs_match_regenerated(tmp_path):
    pytest.importorskip("grpc_tools")
    from edgeloop.protocol import codegen

    codegen.generate(ROOT / "protos", tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(COMMITTED): p.read_text()
        for p in COMMITTED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "generated file set differs: run python -m edgeloop.protocol.codegen"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run python -m edgeloop.protocol.codegen"


def test_imports_are_namespaced_under_edgeloop():
    text = (COMMITTED / "inference" / "grpc_service_pb2_grpc.py").read_text()
    assert "from edgeloop.protocol._gen.inference import grpc_service_pb2" in text


def test_triton_field_numbers_are_kept():
    from edgeloop.protocol import inference_pb2

    req = inference_pb2.ModelInferRequest.DESCRIPTOR
    assert {f.name: f.number for f in req.fields} == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    }
    resp = inference_pb2.ModelInferResponse.DESCRIPTOR
    assert resp.fields_by_name["raw_output_contents"].number == 6
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert "ModelStreamInfer" in service.methods_by_name
