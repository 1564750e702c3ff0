import pytest

from coordkit import Running, cloud_config


@pytest.fixture
def running(tmp_path):
    r = Running(cloud_config(tmp_path))
    yield r
    r.stop()
