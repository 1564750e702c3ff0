"""Decision logs replay exactly, and a tampered log is caught (library and CLI)."""
from __future__ import annotations

import json
import subprocess
import sys

from edgeloop.cli import main as cli_main
from edgeloop.mesh.decision_log import DecisionLog, replay
from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot


def _placements():
    nodes = [NodeEntry.build(f"n{i}", 1.0 + i % 3, {"mlp": [1], "iris": [1, 2]}) for i in range(6)]
    first = Placement(Snapshot.build(nodes, 1, capacity_factor=1.25))
    second = Placement(Snapshot.build(nodes[:-1], 2, capacity_factor=1.25))
    return first, second


def write_log(path):
    log = DecisionLog(path)
    for placement in _placements():
        for i in range(50):
            key = f"key-{i}"
            log.decision(placement, key, "mlp", None, placement.owner(key, "mlp"))
        log.decision(placement, b"\x00raw", "iris", 2, placement.owner(b"\x00raw", "iris", 2))
        pref = placement.preference("spilled", "mlp")
        log.decision(placement, "spilled", "mlp", None, pref[0], served_by=pref[1], reason="spill")
        keys = [f"b{i}" for i in range(40)]
        log.batch(placement, keys, "mlp", None, placement.assign(keys, "mlp"))
    log.close()


def test_log_replays_without_mismatch(tmp_path):
    path = tmp_path / "decisions.jsonl"
    write_log(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["type"] for x in lines].count("snapshot") == 2  # each snapshot written once
    report = replay(path)
    assert report.ok, report.mismatches
    assert report.snapshots == 2 and report.decisions == 2 * (50 + 1 + 1 + 40)


def _rewrite(path, edit):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    edit(lines)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_tampered_decision_is_reported(tmp_path):
    path = tmp_path / "d.jsonl"
    write_log(path)

    def flip(lines):
        d = next(x for x in lines if x["type"] == "decision" and x.get("key") == "key-7")
        d["node"] = next(n for n in ("n0", "n1") if n != d["node"])

    _rewrite(path, flip)
    report = replay(path)
    assert len(report.mismatches) == 1 and "'key-7'" in report.mismatches[0]


def test_tampered_snapshot_fails_its_digest(tmp_path):
    path = tmp_path / "d.jsonl"
    write_log(path)

    def reweigh(lines):
        snap = next(x for x in lines if x["type"] == "snapshot")
        snap["snapshot"]["nodes"][0]["weight"] = 9.0

    _rewrite(path, reweigh)
    report = replay(path)
    assert not report.ok
    assert "snapshot digest" in report.mismatches[0]
    assert any("no valid snapshot" in m for m in report.mismatches[1:])


def test_cli_replay_exit_codes(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    write_log(path)
    assert cli_main(["mesh", "replay", str(path)]) == 0
    assert "OK: 184 decisions" in capsys.readouterr().out
    _rewrite(path, lambda lines: lines[-1].__setitem__("nodes", list(reversed(lines[-1]["nodes"]))))
    assert cli_main(["mesh", "replay", str(path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert cli_main(["mesh", "replay", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_replay_runs_as_a_command(tmp_path):
    path = tmp_path / "d.jsonl"
    write_log(path)
    done = subprocess.run([sys.executable, "-m", "edgeloop", "mesh", "replay", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK:")
