"""Every kind of bad edge config fails with one ConfigError naming file, key, value and expectation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.config import ConfigError, load_edge_config

NODE = '[node]\nid = "edge-t"\n'


def load_text(tmp_path: Path, text: str) -> ConfigError:
    """Write ``text`` as a config file, load it, and return the error it must raise."""
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    err = info.value
    assert err.file == str(path)
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: key '{err.key}': got {err.value}, expected ")
    return err


# (case id, TOML text, expected key, expected value repr, a fragment of the expectation)
CASES = [
    ("unknown-table", NODE + "[nodes]\nid = 1\n", "nodes", "{'id': 1}", "did you mean 'node'"),
    ("unknown-node-key", NODE + "grpc_prot = 9000\n", "node.grpc_prot", "9000", "did you mean 'grpc_port'"),
    ("unknown-serving-key", NODE + "[serving]\nmodel_repo = 'x'\n", "serving.model_repo", "'x'",
     "did you mean 'model_repository'"),
    ("typo-in-model-table", NODE + "[serving.models.mlp]\nmax_bach_size = 4\n",
     "serving.models.mlp.max_bach_size", "4", "did you mean 'max_batch_size'"),
    ("typo-in-model-defaults", NODE + "[serving.model_defaults]\nintra_threads = 2\n",
     "serving.model_defaults.intra_threads", "2", "did you mean 'intra_op_threads'"),
    ("typo-in-version-policy", NODE + "[serving.models.mlp]\nversion_policy = { lates = 1 }\n",
     "serving.models.mlp.version_policy.lates", "1", "did you mean 'latest'"),
    ("unknown-mesh-key", NODE + "[mesh]\nheartbeat_ms = 100\n", "mesh.heartbeat_ms", "100",
     "did you mean 'heartbeat_interval_ms'"),
    ("unknown-coordinator-key", NODE + "[coordinator]\naddr = '127.0.0.1:7001'\n", "coordinator.addr",
     "'127.0.0.1:7001'", "did you mean 'address'"),
    ("port-as-string", NODE + 'grpc_port = "8001"\n', "node.grpc_port", "'8001'", "integer port in 1..65535"),
    ("port-as-bool", NODE + "grpc_port = true\n", "node.grpc_port", "True", "integer port in 1..65535"),
    ("batch-as-bool", NODE + "[serving.model_defaults]\nmax_batch_size = true\n",
     "serving.model_defaults.max_batch_size", "True", "integer in 0..65536"),
    ("weight-as-bool", NODE + "weight = false\n", "node.weight", "False", "finite number > 0"),
    ("weight-zero", NODE + "weight = 0\n", "node.weight", "0", "finite number > 0"),
    ("weight-nan", NODE + "weight = nan\n", "node.weight", "nan", "finite number > 0"),
    ("enabled-as-int", NODE + "[mesh]\nenabled = 1\n", "mesh.enabled", "1", "boolean"),
    ("table-as-scalar", "node = 5\n", "node", "5", "a table [node]"),
    ("model-as-scalar", NODE + "[serving.models]\nmlp = 3\n", "serving.models.mlp", "3", "a table"),
    ("missing-node-table", "[serving]\ngrpc_workers = 2\n", "node.id", "nothing (the key is missing)", "node id"),
    ("missing-node-id", "[node]\ngrpc_port = 9000\n", "node.id", "nothing (the key is missing)", "node id"),
    ("bad-node-id", '[node]\nid = "edge a"\n', "node.id", "'edge a'", "node id of 1..63 characters"),
    ("empty-node-id", '[node]\nid = ""\n', "node.id", "''", "node id"),
    ("bad-host", NODE + 'host = "bad host!"\n', "node.host", "'bad host!'", "host name or IP address"),
    ("port-too-big", NODE + "grpc_port = 70000\n", "node.grpc_port", "70000", "integer port in 1..65535"),
    ("port-zero", NODE + "metrics_port = 0\n", "node.metrics_port", "0", "integer port in 1..65535"),
    ("port-negative", NODE + "metrics_port = -5\n", "node.metrics_port", "-5", "integer port in 1..65535"),
    ("same-port-twice", NODE + "grpc_port = 9000\nmetrics_port = 9000\n", "node.metrics_port", "9000",
     "different from node.grpc_port (9000)"),
    ("metrics-default-clash", NODE + "grpc_port = 8002\n", "node.grpc_port", "8002",
     "different from node.metrics_port"),
    ("policy-unknown-word", NODE + '[serving.models.mlp]\nversion_policy = "newest"\n',
     "serving.models.mlp.version_policy", "'newest'", '"all", "latest"'),
    ("policy-number", NODE + "[serving.models.mlp]\nversion_policy = 2\n",
     "serving.models.mlp.version_policy", "2", "{ specific = [V, ...] }"),
    ("policy-two-kinds", NODE + "[serving.models.mlp]\nversion_policy = { latest = 1, specific = [1] }\n",
     "serving.models.mlp.version_policy", "{'latest': 1, 'specific': [1]}", '"all"'),
    ("policy-latest-zero", NODE + "[serving.models.mlp]\nversion_policy = { latest = 0 }\n",
     "serving.models.mlp.version_policy.latest", "0", "integer >= 1"),
    ("policy-specific-empty", NODE + "[serving.models.mlp]\nversion_policy = { specific = [] }\n",
     "serving.models.mlp.version_policy.specific", "[]", "non-empty array of distinct"),
    ("policy-specific-dup", NODE + "[serving.models.mlp]\nversion_policy = { specific = [1, 1] }\n",
     "serving.models.mlp.version_policy.specific", "[1, 1]", "distinct integer versions >= 1"),
    ("policy-specific-zero", NODE + "[serving.models.mlp]\nversion_policy = { specific = [0, 2] }\n",
     "serving.models.mlp.version_policy.specific", "[0, 2]", "versions >= 1"),
    ("preferred-above-max", NODE + "[serving.model_defaults]\nmax_batch_size = 8\n"
     "[serving.models.mlp]\npreferred_batch_sizes = [4, 16]\n",
     "serving.models.mlp.preferred_batch_sizes", "[4, 16]", "<= max_batch_size (8)"),
    ("preferred-without-batching", NODE + "[serving.models.mlp]\npreferred_batch_sizes = [2]\n",
     "serving.models.mlp.preferred_batch_sizes", "[2]", "<= max_batch_size (0)"),
    ("max-below-inherited-preferred", NODE + "[serving.model_defaults]\nmax_batch_size = 64\n"
     "preferred_batch_sizes = [32]\n[serving.models.mlp]\nmax_batch_size = 16\n",
     "serving.models.mlp.max_batch_size", "16", "largest is 32"),
    ("preferred-zero", NODE + "[serving.model_defaults]\nmax_batch_size = 8\npreferred_batch_sizes = [0]\n",
     "serving.model_defaults.preferred_batch_sizes", "[0]", "distinct integers >= 1"),
    ("preferred-dup", NODE + "[serving.model_defaults]\nmax_batch_size = 8\npreferred_batch_sizes = [2, 2]\n",
     "serving.model_defaults.preferred_batch_sizes", "[2, 2]", "distinct integers >= 1"),
    ("negative-batch", NODE + "[serving.model_defaults]\nmax_batch_size = -1\n",
     "serving.model_defaults.max_batch_size", "-1", "0..65536"),
    ("negative-delay", NODE + "[serving.model_defaults]\nmax_queue_delay_us = -1\n",
     "serving.model_defaults.max_queue_delay_us", "-1", "integer in 0..10000000"),
    ("zero-intra-threads", NODE + "[serving.models.mlp]\nintra_op_threads = 0\n",
     "serving.models.mlp.intra_op_threads", "0", "positive integer thread count"),
    ("negative-inter-threads", NODE + "[serving.model_defaults]\ninter_op_threads = -2\n",
     "serving.model_defaults.inter_op_threads", "-2", "positive integer thread count"),
    ("bad-optimization-level", NODE + '[serving.models.mlp]\ngraph_optimization_level = "full"\n',
     "serving.models.mlp.graph_optimization_level", "'full'", "one of disable, basic, extended, all"),
    ("provider-lowercase", NODE + '[serving.models.mlp]\nexecution_providers = ["cpu"]\n',
     "serving.models.mlp.execution_providers", "['cpu']", "XxxExecutionProvider"),
    ("provider-not-array", NODE + '[serving.models.mlp]\nexecution_providers = "CPUExecutionProvider"\n',
     "serving.models.mlp.execution_providers", "'CPUExecutionProvider'", "non-empty array"),
    ("provider-empty", NODE + "[serving.model_defaults]\nexecution_providers = []\n",
     "serving.model_defaults.execution_providers", "[]", "non-empty array"),
    ("provider-dup", NODE + '[serving.model_defaults]\n'
     'execution_providers = ["CPUExecutionProvider", "CPUExecutionProvider"]\n',
     "serving.model_defaults.execution_providers", "['CPUExecutionProvider', 'CPUExecutionProvider']",
     "distinct"),
    ("bad-model-name", NODE + '[serving.models."a/b"]\nmax_batch_size = 1\n', "serving.models.a/b", "'a/b'",
     "model name"),
    ("peer-without-port", NODE + '[mesh]\nstatic_peers = ["127.0.0.1"]\n', "mesh.static_peers[0]",
     "'127.0.0.1'", "'host:port'"),
    ("peer-port-zero", NODE + '[mesh]\nstatic_peers = ["127.0.0.1:8011", "127.0.0.1:0"]\n',
     "mesh.static_peers[1]", "'127.0.0.1:0'", "port 1..65535"),
    ("peer-port-huge", NODE + '[mesh]\nstatic_peers = ["127.0.0.1:99999"]\n', "mesh.static_peers[0]",
     "'127.0.0.1:99999'", "'host:port'"),
    ("peer-bad-host", NODE + '[mesh]\nstatic_peers = ["bad host:80"]\n', "mesh.static_peers[0]",
     "'bad host:80'", "'host:port'"),
    ("peer-ipv6-unbracketed", NODE + '[mesh]\nstatic_peers = ["::1:80"]\n', "mesh.static_peers[0]",
     "'::1:80'", "'[::1]:8001'"),
    ("peer-not-string", NODE + "[mesh]\nstatic_peers = [8011]\n", "mesh.static_peers[0]", "8011", "'host:port'"),
    ("peer-listed-twice", NODE + '[mesh]\nstatic_peers = ["127.0.0.1:8011", "127.0.0.1:8011"]\n',
     "mesh.static_peers", "'127.0.0.1:8011'", "listed twice"),
    ("interface-name", NODE + '[mesh]\nzeroconf_interfaces = ["eth0"]\n', "mesh.zeroconf_interfaces[0]",
     "'eth0'", "IP addresses"),
    ("weight-too-large", NODE.replace("[node]\n", "[node]\nweight = 1e200\n", 1), "node.weight", "1e+200",
     "<= 1e+100"),
    # zeroconf runs IPv4 only (IPVersion.V4Only): an IPv6 interface would be silently unused
    ("interface-ipv6", NODE + '[mesh]\nzeroconf_interfaces = ["127.0.0.1", "::1"]\n', "mesh.zeroconf_interfaces[1]",
     "'::1'", "IPv4"),
    ("mesh-name-empty", NODE + '[mesh]\nname = ""\n', "mesh.name", "''", "a mesh name of 1..63 characters"),
    ("mesh-name-slash", NODE + '[mesh]\nname = "lab/1"\n', "mesh.name", "'lab/1'", "letters, digits"),
    ("mesh-name-space", NODE + '[mesh]\nname = "my mesh"\n', "mesh.name", "'my mesh'", "letters, digits"),
    ("mesh-name-leading-dot", NODE + '[mesh]\nname = ".hidden"\n', "mesh.name", "'.hidden'", "starting with"),
    ("mesh-name-too-long", NODE + f'[mesh]\nname = "{"m" * 64}"\n', "mesh.name", repr("m" * 64), "1..63"),
    ("mesh-name-int", NODE + "[mesh]\nname = 7\n", "mesh.name", "7", "a mesh name"),
    ("service-type", NODE + '[mesh]\nservice_type = "edgeloop"\n', "mesh.service_type", "'edgeloop'",
     "_edgeloop._tcp.local."),
    ("down-not-after-heartbeat", NODE + "[mesh]\nheartbeat_interval_ms = 500\ndown_after_ms = 500\n",
     "mesh.down_after_ms", "500", "> mesh.heartbeat_interval_ms (500)"),
    ("capacity-below-one", NODE + "[mesh]\ncapacity_factor = 0.5\n", "mesh.capacity_factor", "0.5", ">= 1.0"),
    ("spill-zero", NODE + "[mesh]\nspill_queue_depth = 0\n", "mesh.spill_queue_depth", "0", "integer in 1.."),
    ("coordinator-no-port", NODE + '[coordinator]\naddress = "127.0.0.1"\n', "coordinator.address",
     "'127.0.0.1'", "'host:port'"),
    ("message-size-zero", NODE + "[serving]\nmax_receive_message_bytes = 0\n",
     "serving.max_receive_message_bytes", "0", "message size in bytes"),
    ("message-size-int32", NODE + "[serving]\nmax_send_message_bytes = 4294967296\n",
     "serving.max_send_message_bytes", "4294967296", "1..2147483647"),
]


@pytest.mark.parametrize("text, key, value, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_edge_config_names_file_key_value_and_expectation(tmp_path, text, key, value, expected):
    err = load_text(tmp_path, text)
    assert (err.key, err.value) == (key, value)
    assert expected in err.expected


def test_model_repository_that_is_a_file(tmp_path):
    (tmp_path / "models").write_text("not a directory")
    err = load_text(tmp_path, NODE + '[serving]\nmodel_repository = "models"\n')
    assert (err.key, err.value) == ("serving.model_repository", "'models'")
    assert "not a directory" in err.expected and str(tmp_path / "models") in err.expected


def test_model_repository_whose_parent_is_missing(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    err = load_text(tmp_path, NODE + '[serving]\nmodel_repository = "blocker/edge/models"\n')
    assert err.key == "serving.model_repository"
    assert "does not exist" in err.expected


def test_model_repository_that_cannot_be_read(tmp_path):
    """Run as root (as CI does), the check runs in a child without the capabilities that bypass permissions."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    config = tmp_path / "edge.toml"
    config.write_text(NODE + '[serving]\nmodel_repository = "locked"\n')
    try:
        if os.geteuid() != 0:
            with pytest.raises(ConfigError) as raised:
                load_edge_config(config)
            key, expected = raised.value.key, raised.value.expected
        else:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without util-linux setpriv: cannot drop CAP_DAC_OVERRIDE")
            probe = ("import sys\nfrom edgeloop.config import ConfigError, load_edge_config\n"
                     "try:\n    load_edge_config(sys.argv[1])\nexcept ConfigError as e:\n"
                     "    print(e.key); print(e.expected)\n")
            done = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", sys.executable,
                                   "-c", probe, str(config)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            key, expected = (done.stdout.splitlines() + ["", ""])[:2]
    finally:
        locked.chmod(0o700)
    assert key == "serving.model_repository" and "cannot be read" in expected


def test_decision_log_that_is_a_directory(tmp_path):
    (tmp_path / "decisions").mkdir()
    err = load_text(tmp_path, NODE + '[mesh]\ndecision_log = "decisions"\n')
    assert err.key == "mesh.decision_log" and "is a directory" in err.expected


def test_invalid_toml_reports_line_and_column(tmp_path):
    err = load_text(tmp_path, '[node]\nid = "edge-t"\ngrpc_port = 80 01\n')
    assert err.key == "node.grpc_port"
    assert err.value == "'grpc_port = 80 01'"
    assert err.context["line"] == 3 and err.context["column"] > 1
    assert "line 3, column" in str(err)


def test_invalid_toml_duplicate_table(tmp_path):
    err = load_text(tmp_path, '[node]\nid = "a"\n[node]\nid = "b"\n')
    assert err.context["line"] == 3
    assert "line 3" in err.expected


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert info.value.key == "<file>" and info.value.file == str(path)
    assert "readable TOML file" in info.value.expected


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert info.value.key == "<file>" and "UTF-8" in info.value.expected
