"""Fleet token and TLS/mTLS on a real coordinator, with certificates from ``edgeloop certs init``."""
import stat
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coordinator"))
from coordkit import Running, cloud_config  # noqa: E402

from edgeloop.config import AuthConfig  # noqa: E402
from edgeloop.protocol import auth as fleet_auth  # noqa: E402
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc  # noqa: E402
from edgeloop.protocol.certs import init_certs  # noqa: E402

TOKEN = "s3cret-fleet-token-0123456789"


def status(channel):
    return mesh_pb2_grpc.FleetStub(channel).FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10)


def test_missing_or_wrong_token_is_unauthenticated_and_counted(tmp_path):
    r = Running(cloud_config(tmp_path), token=TOKEN, channel_token=None)
    try:
        for token in (None, "wrong-token-wrong-token"):
            channel = fleet_auth.open_channel(r.coordinator.address, None, token)
            with pytest.raises(grpc.RpcError) as err:
                status(channel)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert fleet_auth.TOKEN_METADATA_KEY in err.value.details()
            with pytest.raises(grpc.RpcError) as err:  # a client stream is refused the same way
                mesh_pb2_grpc.CoordinatorStub(channel).UploadSamples(iter([mesh_pb2.SampleBatch()]), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            channel.close()
        assert r.store.sample_ids() == []
        counter = r.coordinator.metrics.unauthenticated
        assert counter.labels("FleetStatus")._value.get() == 2 and counter.labels("UploadSamples")._value.get() == 2
        good = fleet_auth.open_channel(r.coordinator.address, None, TOKEN)
        assert status(good).fleet_epoch >= 1
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # health stays open for probes
        anonymous = grpc.insecure_channel(r.coordinator.address)
        reply = health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        anonymous.close()
        good.close()
    finally:
        r.stop()


def test_certs_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    paths = init_certs(tmp_path / "certs")
    for name in ("ca.key", "server.key", "client.key", "token"):
        assert stat.S_IMODE(paths[name].stat().st_mode) == 0o600, name
    assert len(fleet_auth.read_token_file(paths["token"])) >= 32
    with pytest.raises(FileExistsError):
        init_certs(tmp_path / "certs")


def test_tls_and_mutual_tls_with_the_generated_certificates(tmp_path):
    p = init_certs(tmp_path / "certs")
    server_auth = AuthConfig(token_file=p["token"], tls_ca=p["ca.pem"], tls_cert=p["server.pem"],
                             tls_key=p["server.key"], tls_client_auth=True)
    config = replace(cloud_config(tmp_path), auth=server_auth)
    token = fleet_auth.read_token_file(p["token"])
    from edgeloop.coordinator import Coordinator

    coordinator = Coordinator(config, token=token).start()
    try:
        address = f"127.0.0.1:{coordinator.grpc_port}"
        client_auth = AuthConfig(tls_ca=p["ca.pem"], tls_cert=p["client.pem"], tls_key=p["client.key"],
                                 tls_client_auth=True)
        channel = fleet_auth.open_channel(address, client_auth, token)
        assert status(channel).fleet_epoch >= 1
        channel.close()
        # fleet commands read the cloud's own config (server certificate as the client's) and get through
        from edgeloop.coordinator.fleet_client import fleet_status, open_fleet_channel

        cloud = replace(config, node=replace(config.node, grpc_port=coordinator.grpc_port))
        channel = open_fleet_channel(cloud)
        assert fleet_status(channel)["fleet_epoch"] >= 1
        channel.close()
        # no client certificate: the handshake fails under mTLS
        channel = fleet_auth.open_channel(address, AuthConfig(tls_ca=p["ca.pem"]), token)
        with pytest.raises(grpc.RpcError) as err:
            status(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
        # plaintext to a TLS server fails too
        channel = fleet_auth.open_channel(address, None, token)
        with pytest.raises(grpc.RpcError):
            status(channel)
        channel.close()
        # a CA that did not sign the server certificate is not trusted
        other = init_certs(tmp_path / "other")
        channel = fleet_auth.open_channel(address, AuthConfig(tls_ca=other["ca.pem"], tls_cert=p["client.pem"],
                                                              tls_key=p["client.key"]), token)
        with pytest.raises(grpc.RpcError) as err:
            status(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        coordinator.stop(1)


def test_tls_without_client_certificates(tmp_path):
    p = init_certs(tmp_path / "certs")
    config = replace(cloud_config(tmp_path), auth=AuthConfig(tls_cert=p["server.pem"], tls_key=p["server.key"]))
    from edgeloop.coordinator import Coordinator

    coordinator = Coordinator(config, token=None).start()
    try:
        channel = fleet_auth.open_channel(f"127.0.0.1:{coordinator.grpc_port}", AuthConfig(tls_ca=p["ca.pem"]),
                                          None)
        assert status(channel).fleet_epoch >= 1
        channel.close()
    finally:
        coordinator.stop(1)
