"""The CT loop's Fleet RPCs through the real CLI: retrain, triggers list, data quarantine, models
show | lineage | promote | rollback, and their refusals (status code, field, value)."""
from __future__ import annotations

import json

import pytest
from loopkit import MODEL, Feeder, champion, push, start_cloud, stream

from edgeloop.cli import main


@pytest.fixture
def cloud(tmp_path):
    c = start_cloud(tmp_path)
    yield c
    c.stop(1.0)


def cli(capsys, config, *argv) -> tuple[int, str, str]:
    code = main([*argv, "--config", str(config)])
    out = capsys.readouterr()
    return code, out.out, out.err


def config_file(tmp_path, cloud):
    path = tmp_path / "cli.toml"
    path.write_text(f'[node]\ngrpc_port = {cloud.grpc_port}\nmetrics_port = 9\n'
                    f'[storage]\ndatabase = "{cloud.config.database}"\n')
    return path


def test_retrain_triggers_and_registry_commands(tmp_path, cloud, capsys):
    push(cloud, champion())
    feeder = Feeder(cloud.store)
    config = config_file(tmp_path, cloud)
    for k in range(10):  # concept change after 6 rounds: the loop publishes version 2
        for j, edge in enumerate(("edge-a", "edge-b")):
            x, y = stream(100, 1000 * k + j, changed=k >= 6)
            feeder.feed(edge, x, y, version=max(p.version for p in cloud.store.published_models()))
        cloud.ct.step(1000.0 + k)
    assert max(p.version for p in cloud.store.published_models()) == 2
    for k in range(10, 16):  # version 2 serves: its reference, then monitoring windows
        for j, edge in enumerate(("edge-a", "edge-b")):
            x, y = stream(100, 1000 * k + j, changed=True)
            feeder.feed(edge, x, y, version=2)
        cloud.ct.step(1000.0 + k)

    # the monitors' latest values: in `edgeloop status` and as Prometheus gauges
    code, out, err = cli(capsys, config, "status")
    assert code == 0 and "MONITOR" in out and "accuracy" in out and "wasserstein" in out, err
    accuracy = cloud.metrics.registry.get_sample_value("edgeloop_ct_monitor_value",
                                                       {"model": MODEL, "monitor": "accuracy", "slice": "fleet"})
    assert accuracy is not None and 0.5 < accuracy <= 1.0
    assert cloud.metrics.registry.get_sample_value("edgeloop_ct_monitor_threshold",
                                                   {"model": MODEL, "monitor": "ks", "slice": "fleet"}) > 0

    code, out, err = cli(capsys, config, "triggers", "list")
    assert code == 0, err
    assert ("performance" in out or "drift" in out) and "published: version 2" in out
    code, out, _ = cli(capsys, config, "models", "lineage", f"{MODEL}:2")
    assert code == 0 and "trigger:" in out and "data window:" in out and "evaluation: blessed" in out
    assert "compression: chose" in out and "seed 0" in out
    code, out, _ = cli(capsys, config, "models", "lineage", f"{MODEL}:1", "--json")
    assert code == 0 and json.loads(out)["source"] == "push"
    code, out, _ = cli(capsys, config, "models", "show", MODEL)
    assert code == 0 and "version 1" in out and "version 2" in out and "champion=2" in out

    code, out, _ = cli(capsys, config, "retrain", MODEL, "--reason", "operator asked")
    assert code == 0 and "requested" in out
    (run,) = cloud.ct.step(2000.0)
    code, out, _ = cli(capsys, config, "triggers", "list", "--model", MODEL, "--json")
    fired = json.loads(out)
    assert fired[-1]["kind"] == "manual" and "operator asked" in fired[-1]["evidence"]
    assert fired[-1]["run_id"] == run.run_id and fired[-1]["outcome"]

    before = sorted(cloud.store.published_models(), key=lambda p: p.version)
    target = [p for p in before[:-1] if p.sha256 != before[-1].sha256][-1]  # the previous bytes
    code, out, _ = cli(capsys, config, "models", "rollback", MODEL, "--reason", "test")
    assert code == 0 and "rollback" in out
    newest = max(cloud.store.published_models(), key=lambda p: p.version)
    assert newest.version == before[-1].version + 1 and newest.sha256 == target.sha256  # versions only increase
    assert cloud.store.aliases(MODEL)["champion"] == newest.version
    code, out, _ = cli(capsys, config, "models", "lineage", f"{MODEL}:{newest.version}")
    assert code == 0 and f"rollback of version {target.version}" in out
    code, out, _ = cli(capsys, config, "data", "quarantine")
    assert code == 0


def test_refusals_name_the_field_and_value(tmp_path, cloud, capsys):
    push(cloud, champion())
    config = config_file(tmp_path, cloud)
    code, _, err = cli(capsys, config, "retrain", "nope", "--reason", "x")
    assert code == 1 and "NOT_FOUND" in err and "'nope'" in err
    code, _, err = cli(capsys, config, "retrain", MODEL, "--reason", "   ")
    assert code == 1 and "INVALID_ARGUMENT" in err and "reason" in err
    code, _, err = cli(capsys, config, "retrain", "../etc", "--reason", "x")
    assert code == 1 and "INVALID_ARGUMENT" in err and "model" in err
    code, _, err = cli(capsys, config, "models", "lineage", f"{MODEL}:7")
    assert code == 1 and "NOT_FOUND" in err and "7" in err
    code, _, err = cli(capsys, config, "models", "lineage", f"{MODEL}:x")
    assert code == 2 and "NAME:VERSION" in err
    code, _, err = cli(capsys, config, "models", "rollback", MODEL)
    assert code == 1 and "NOT_FOUND" in err and "earlier version" in err
    code, _, err = cli(capsys, config, "triggers", "list", "--limit", "5000")
    assert code == 1 and "INVALID_ARGUMENT" in err and "limit" in err
