"""Fixtures: real edge nodes on 127.0.0.1 port 0 over repositories built with onnx.helper."""
from __future__ import annotations

import contextlib

import pytest
from serving_fixtures import NodeHandle, make_config

from edgeloop.node import EdgeNode
from edgeloop.serving.demo_models import build_mlp, build_multi_io_model, write_model


@pytest.fixture
def start_node():
    """``start_node(repository, models=(ModelConfig...), **serving_overrides) -> NodeHandle``."""
    handles = []

    def start(repository, models=(), **serving):
        handle = NodeHandle(EdgeNode(make_config(repository, models, **serving)).start())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.close()


@pytest.fixture
def repo(tmp_path):
    """A repository with ``mlp`` (v1) and ``multi`` (v1)."""
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "multi", 1, build_multi_io_model())
    return root


