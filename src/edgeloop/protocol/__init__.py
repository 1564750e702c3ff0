"""Wire formats: generated gRPC stubs, numpy <-> inference-tensor codecs, status helpers.

The stubs in ``_gen`` are generated from ``protos/`` by ``edgeloop.protocol.codegen``.
"""
from edgeloop.protocol._gen.edgeloop.v1 import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol._gen.inference import grpc_service_pb2 as inference_pb2
from edgeloop.protocol._gen.inference import grpc_service_pb2_grpc as inference_pb2_grpc
from edgeloop.protocol._gen.inference import model_config_pb2

__all__ = ["inference_pb2", "inference_pb2_grpc", "mesh_pb2", "mesh_pb2_grpc", "model_config_pb2"]
