"""The tensor checks of uploaded samples: every tensor checked, errors name the tensor by its index path."""
import grpc
import pytest

from edgeloop.coordinator.validate import MAX_TENSORS, TensorChecker
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.errors import ProtocolError


def tensor(name="x", datatype="FP32", shape=(1, 4), nbytes=16):
    return mesh_pb2.TensorData(name=name, datatype=datatype, shape=list(shape), data=b"\x00" * nbytes)


def refused(checker, sample, at=0) -> str:
    with pytest.raises(ProtocolError) as err:
        checker.check_sample(sample, at)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


def test_every_tensor_of_every_field_is_checked_and_named_by_sample_and_tensor_index():
    checker = TensorChecker()
    checker.check_sample(mesh_pb2.Sample(inputs=[tensor()], outputs=[tensor()]), 0)  # caches the good header
    details = refused(checker, mesh_pb2.Sample(inputs=[tensor()], outputs=[tensor(), tensor(nbytes=12)]), 7)
    assert "samples[7].outputs[1].data" in details and "12 bytes" in details and "16 bytes" in details
    details = refused(checker, mesh_pb2.Sample(inputs=[tensor()], raw_inputs=[tensor(), tensor(datatype="X")]), 2)
    assert "samples[2].raw_inputs[1].datatype" in details and "FP32" in details


def test_a_cached_header_does_not_admit_another_length_name_datatype_or_shape():
    checker = TensorChecker()
    checker.check_sample(mesh_pb2.Sample(inputs=[tensor()]), 0)
    for bad, field in ((tensor(nbytes=20), "data"), (tensor(name=""), "name"), (tensor(datatype="FP99"), "datatype"),
                       (tensor(shape=(1,) * 9, nbytes=4), "shape"), (tensor(shape=(-1, 4)), "shape")):
        assert f"samples[0].inputs[0].{field}" in refused(checker, mesh_pb2.Sample(inputs=[bad])), field


def test_too_many_tensors_are_refused_naming_the_field():
    details = refused(TensorChecker(), mesh_pb2.Sample(outputs=[tensor()] * (MAX_TENSORS + 1)), 3)
    assert "samples[3].outputs" in details and f"at most {MAX_TENSORS}" in details
