"""The tensor checks of uploaded samples: every tensor checked, errors name the tensor by its index path."""
import grpc
import pytest

from edgeloop.coordinator.validate import MAX_TENSORS, TensorChecker
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.errors import ProtocolError


def tensor(name="x", datatype="FP32", shape=(1, 4), nbytes=16):
    return mesh_pb2.TensorData(name=name, datatype=datatype, shape=list(shape), data=b"\x00" * nbytes)


def refused(checker, field, tensors, at=None) -> str:
    with pytest.raises(ProtocolError) as err:
        checker.check(field, tensors, at)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


def test_every_tensor_of_a_field_is_checked_and_named_by_sample_and_tensor_index():
    checker = TensorChecker()
    sample = mesh_pb2.Sample(outputs=[tensor(), tensor(nbytes=12)])
    checker.check("samples[%d].inputs", mesh_pb2.Sample(inputs=[tensor()]).inputs, 0)  # caches the good header
    details = refused(checker, "samples[%d].outputs", sample.outputs, 7)
    assert "samples[7].outputs[1].data" in details and "12 bytes" in details and "16 bytes" in details


def test_a_cached_header_does_not_admit_another_length_name_datatype_or_shape():
    checker = TensorChecker()
    checker.check("t", [tensor()])
    assert "t[0].data" in refused(checker, "t", [tensor(nbytes=20)])
    assert "t[0].name" in refused(checker, "t", [tensor(name="")])
    assert "t[0].datatype" in refused(checker, "t", [tensor(datatype="FP99")])
    assert "t[0].shape" in refused(checker, "t", [tensor(shape=(1,) * 9, nbytes=4)])
    assert "t[0].shape" in refused(checker, "t", [tensor(shape=(-1, 4))])


def test_too_many_tensors_are_refused_before_any_is_read():
    details = refused(TensorChecker(), "samples[%d].raw_inputs", [tensor()] * (MAX_TENSORS + 1), 3)
    assert "samples[3].raw_inputs" in details and f"at most {MAX_TENSORS}" in details
