"""``edgeloop demo`` end to end (real processes on loopback) and its CSV input checks."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeloop.demo import model as demo_model
from edgeloop.demo.stream import StreamError, elec2, load_csv


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's working directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            found.append(f"{pid}: {cmd[:200]}")
    return found


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "edgeloop", "demo", "--fast", "--no-live", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _processes_naming(str(workdir)) == []  # cloud and edges all stopped
    last = done.stdout.strip().splitlines()[-3:]
    assert last == [str(workdir / n) for n in ("report.png", "summary.json", "predictions.csv")]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["samples"]["lost"] == 0 and summary["samples"]["served"] == summary["rows"] == 4500
    assert len(summary["retrains"]) >= 1, summary["triggers"]
    assert all(r["trigger"] in ("drift", "performance", "volume", "schedule") for r in summary["retrains"])
    assert set(summary["prequential_accuracy"]) == {"edgeloop", "static", "no_change"}
    assert len(summary["latency_ms"]["per_edge"]) == 3  # every edge carried traffic
    with open(workdir / "predictions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row", "label", "edgeloop", "static", "no_change", "model_version", "edge"]
    assert len(rows) == 4501 and {r[6] for r in rows[1:]} == {"edge-a", "edge-b", "edge-c"}
    versions = {int(r[5]) for r in rows[1:]}
    assert 1 in versions and max(versions) >= 2  # the loop's model served within the replay
    # the model declares its features (Elec2's shipped definition): label and demand history, no price history
    derived = [f for f in summary["features"] if f["op"] != "raw"]
    assert {"op": "label_lag", "name": "label_lag_1", "k": 1, "default": 0.5} in derived
    assert derived and not any(f.get("col") == "nswprice" for f in derived)
    # the edges computed the same vectors as the in-process replay (the static model's input), and each
    # key's owner corrected version 1's output by the entity's online head as the edge's own code does
    # in-process (``with_online_head`` over the static model's probabilities); float32 near-ties aside,
    # the rows version 1 served agree
    assert summary["online_head"]["lr"] > 0
    from edgeloop.cli.demo import FAST_ELEC2
    from edgeloop.demo import definition

    stream = elec2().slice(*FAST_ELEC2)
    d = definition.load(definition.ELEC2_DEFINITION, stream)
    x = definition.vectors(d, stream, 1)
    start = summary["eval_start"]
    proba = demo_model.proba(demo_model.fit_softmax(x[:start], stream.y[:start], len(stream.classes)), x)
    expected = definition.with_online_head(d, stream, 1, proba)
    v1 = [int(r[0]) for r in rows[1:] if r[5] == "1"]
    served = {int(r[0]): r[2] for r in rows[1:]}
    agree = np.mean([served[i] == stream.classes[expected[i]] for i in v1])
    assert len(v1) > 1000 and agree >= 0.99, agree
    # and the head changed what was served: the static model's own answers differ on some of those rows
    assert any(served[i] != r[3] for i, r in zip(v1, (rows[1 + i] for i in v1)))
    assert (workdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_data_refuses_a_non_numeric_column_by_name(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"{rng.random():.4f}", ["red", "blue"][i % 2], f"{rng.random():.4f}", i % 3] for i in range(50)]
    path = _write(tmp_path / "s.csv", ["a", "colour", "b", "y"], rows)
    with pytest.raises(StreamError, match="colour"):
        load_csv(path, "y")
    done = subprocess.run([sys.executable, "-m", "edgeloop", "demo", "--data", str(path), "--label", "y",
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "colour" in done.stderr and "non-numeric" in done.stderr
    assert not (tmp_path / "w").exists()  # refused before anything started
    # leaving it out works, and a three-class label is read as three classes
    stream = load_csv(path, "y", features=["a", "b"])
    assert stream.columns == ("a", "b") and stream.classes == ("0", "1", "2") and stream.rows == 50
    with pytest.raises(StreamError, match="--label 'nope'"):
        load_csv(path, "nope")


def test_key_column_and_multiclass_model(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 2))
    y = np.argmax(np.stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]], axis=1), axis=1)
    path = _write(tmp_path / "m.csv", ["site", "u", "v", "kind"],
                  [[f"s{i % 5}", f"{a:.5f}", f"{b:.5f}", ["x", "y", "z"][c]] for i, ((a, b), c) in enumerate(zip(x, y))])
    stream = load_csv(path, "kind", key="site")
    assert stream.classes == ("x", "y", "z") and set(stream.keys) == {f"site=s{i}" for i in range(5)}
    params = demo_model.fit_softmax(stream.x, stream.y, 3)
    import onnxruntime as ort

    session = ort.InferenceSession(demo_model.to_onnx(params, 3), providers=["CPUExecutionProvider"])
    label, proba = session.run(["label", "probabilities"], {"input": stream.x})
    assert proba.shape == (600, 3) and (label == demo_model.predict(params, stream.x)).mean() > 0.99
    assert (label == stream.y).mean() > 0.9


def test_shipped_definition_is_fair_and_fits_elec2(tmp_path):
    from edgeloop.demo import definition

    stream = elec2()
    d = definition.load(definition.ELEC2_DEFINITION, stream)
    assert d.inputs == stream.columns and "nswprice" in d.forbidden
    assert not any(f.col == "nswprice" for f in d.features)
    assert any(f.op == "label_lag" for f in d.features)
    other = stream.slice(0, 100)
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps(dict(d.to_dict(), inputs=list(reversed(stream.columns)))))
    with pytest.raises(StreamError, match="expected the stream's input columns"):
        definition.load(bad, other)
    # point in time: a row's label_lag_1 is the previous row's label, never its own
    x = definition.vectors(d, other, 1)
    j = len(stream.columns) + [f.name for f in d.features].index("label_lag_1")
    assert (x[1:, j] == other.y[:-1]).all() and x[0, j] == 0.5


def test_shipped_elec2_is_the_real_stream():
    stream = elec2()
    assert stream.rows == 45_312 and stream.columns[:2] == ("period", "nswprice")
    # one entity per four weeks: contiguous in time (an entity's rows follow each other), 34 of them
    assert len(set(stream.keys)) == 34 and stream.keys[0] == "weeks-0" and stream.keys[-1] == "weeks-33"
    first = {k: stream.keys.index(k) for k in set(stream.keys)}
    assert all(stream.keys[first[k]:first[k] + stream.keys.count(k)] == (k,) * stream.keys.count(k) for k in first)


@pytest.mark.slow
def test_interrupt_stops_everything(tmp_path):
    """Ctrl-C (SIGINT) in the middle of the replay: exit 130 and no process of the demo left."""
    import signal
    import time

    workdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "demo", "--fast", "--no-live", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # the first progress line: processes up, replay under way
            if "rows," in line or time.monotonic() > deadline:
                break
        assert len(_processes_naming(str(workdir))) >= 4  # cloud + 3 edges were running
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _processes_naming(str(workdir)) == []


def test_live_view_shows_edges_versions_trigger_and_rollout():
    import time

    from rich.console import Console

    from edgeloop.demo.engine import Progress
    from edgeloop.demo.view import render

    stream = elec2().slice(0, 1000)
    p = Progress(1000)
    p.pred[:300], p.done = stream.y[:300], 300
    p.latency_ms = {"edge-a": [1.0, 2.0, 4.0], "edge-b": [3.0]}
    p.edge_version = {"edge-a": 2, "edge-b": 1}
    p.triggers = [("drift", 0, "drift: feature 'input:3' KS statistic 0.9", "published: version 2")]
    p.published = [(1, 0), (2, 1)]
    p.rollout = {"version": 2, "state": "running", "waves": [["edge-a"], ["edge-b"]], "wave": 0,
                 "edges": {"edge-a": "serving", "edge-b": "waiting"}}
    console = Console(width=160, record=True, file=open(os.devnull, "w"))
    console.print(render(stream, p, time.monotonic() - 3))
    text = console.export_text()
    assert "300/1000 rows" in text and "30.0%" in text and "edge-a" in text and "v2" in text
    assert "KS statistic 0.9" in text and "1/2 edges serving it" in text and "wave 1/2" in text and "accuracy (last 500 rows): 1.000" in text


def test_a_row_waits_for_the_clients_view_only_when_nothing_was_sent():
    import grpc

    from edgeloop.demo import engine
    from edgeloop.protocol.errors import ProtocolError

    calls = []

    def empty_view_twice(x, routing_key=None):
        calls.append((x, routing_key))
        if len(calls) <= 2:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND,
                                "model 'm': no node in the client's view serves it (epoch 3, 0 nodes up)")
        return "answer"

    assert engine._when_viewed(empty_view_twice, 7, routing_key="k") == "answer"
    assert calls == [(7, "k")] * 3

    def refused(x):
        calls.append(x)
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "input 'x': bad")

    calls.clear()
    with pytest.raises(ProtocolError) as err:
        engine._when_viewed(refused, 1)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert calls == [1]  # a request the mesh answered is never sent again
