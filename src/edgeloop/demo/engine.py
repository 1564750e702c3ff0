"""The demo's engine: publish the first model, replay the stream through ``MeshClient``, label it late.

Rows are replayed in file order, a chunk of 96 at a time (two days of Elec2) (within a chunk one worker thread per group of
entities, so the mesh's edges work in parallel, each entity's rows in order); each row is sent to its entity's owner with ``routing_key``,
a ``request_id`` of ``r<row>`` and its event time (``timestamp_ms``: one row per 30 minutes); the label of row
``j`` arrives ``label_delay`` rows later, before row ``j + label_delay`` is served (as in every row of the CT
benchmark: with a delay of 1, row ``i`` is predicted knowing the labels up to row ``i - 1``), through
``MeshClient.label`` (the feedback path the CT loop learns from, and the owner's feature state).  A model with a
feature definition gets its raw inputs as one tensor per column (the edge computes the derived features).
The CT loop retrains on its own triggers; what the demo
sees of it is read from the coordinator's database, read-only (``Progress.poll_cloud``).
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeloop.client import MeshClient
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.protocol.errors import ProtocolError

from . import definition as feature_definition
from . import model as initial_model
from .fleet import Fleet
from .stream import Stream

MODEL = "demo"
ROLLING = 500
#: the first row's event time (Elec2 starts on 7 May 1996); row i is ``i`` x 30 minutes later
EPOCH_MS = 831_427_200_000


@dataclass
class Progress:
    """Shared between the workers, the live view and the report (one lock)."""

    rows: int
    pred: np.ndarray = None  # predicted class per row (-1: not yet)
    version: np.ndarray = None
    edge: list = None
    latency_ms: dict = field(default_factory=dict)  # edge -> list of ms
    done: int = 0
    labels_sent: int = 0
    errors: list = field(default_factory=list)
    edge_version: dict = field(default_factory=dict)
    first_seen: dict = field(default_factory=dict)  # version -> (row, time)
    triggers: list = field(default_factory=list)
    published: list = field(default_factory=list)
    received: int = 0
    rollout: dict = field(default_factory=dict)  # the latest staged rollout (delivery's document), if any
    served_at: np.ndarray = None  # wall time each row was answered (places triggers on the row axis)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.pred = np.full(self.rows, -1, np.int64)
        self.version = np.zeros(self.rows, np.int64)
        self.edge = [""] * self.rows
        self.served_at = np.zeros(self.rows)

    def row_at(self, t: float) -> int | None:
        """The first row answered at or after wall time ``t`` (None: after the replay)."""
        served = np.flatnonzero(self.served_at >= t)
        return int(served.min()) if len(served) else None

    def poll_cloud(self, database: Path) -> None:
        """Triggers, publications and stored samples, from the coordinator's SQLite file (read-only)."""
        if not database.exists():
            return
        try:
            conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2.0)
            try:
                triggers = conn.execute("SELECT kind, at_ms, evidence, outcome FROM ct_triggers WHERE model = ? "
                                        "ORDER BY id", (MODEL,)).fetchall()
                published = conn.execute("SELECT version, created_ms FROM published_models WHERE model = ? "
                                         "ORDER BY version", (MODEL,)).fetchall()
                received = conn.execute("SELECT count(*) FROM samples WHERE model = ?", (MODEL,)).fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return  # the coordinator is migrating or busy: the next poll reads it
        rollout = self.rollout
        try:  # staged rollouts (delivery): the newest rollout document, when this coordinator keeps them
            conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2.0)
            try:
                row = conn.execute("SELECT doc FROM delivery_docs WHERE kind = 'rollout' "
                                   "ORDER BY updated_ms DESC LIMIT 1").fetchone()
            finally:
                conn.close()
            rollout = json.loads(row[0]) if row else {}
        except (sqlite3.Error, ValueError):
            pass
        with self.lock:
            self.triggers, self.published, self.received, self.rollout = triggers, published, received, rollout


def publish(fleet: Fleet, stream: Stream, train_rows: int, workdir: Path, definition=None, label_delay: int = 1):
    """Fit the first model on rows [0, train_rows) and publish it with ``edgeloop models push`` (a process),
    with ``--features`` when the model declares a feature definition.  Returns (params, every row's model
    input: the raw inputs, or the served vectors of ``definition``) for the static baseline."""
    x = stream.x if definition is None else feature_definition.vectors(definition, stream, label_delay)
    params = initial_model.fit_softmax(x[:train_rows], stream.y[:train_rows], len(stream.classes))
    path = workdir / "initial.onnx"
    path.write_bytes(initial_model.to_onnx(params, len(stream.classes)))
    extra = []
    if definition is not None:
        (workdir / "features.json").write_text(json.dumps(definition.to_dict(), indent=2))
        extra = ["--features", str(workdir / "features.json")]
    done = subprocess.run([sys.executable, "-m", "edgeloop", "models", "push", str(path), "--model", MODEL,
                           "--config", str(fleet.cloud_config), *extra], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"edgeloop models push failed: {done.stderr.strip()[:500]}")
    return params, x


def replay(client: MeshClient, stream: Stream, progress: Progress, label_delay: int, speed: float,
           stop: threading.Event, workers: int = 8, chunk: int = 96, columns: bool = False) -> None:
    """Replay every row in file order, ``chunk`` rows at a time (a chunk's rows go out in parallel, one worker
    per group of entities, each entity's rows in order); returns when all are served and labelled.
    ``columns``: send the raw inputs one tensor per column (a model with a feature definition)."""
    keys = sorted(set(stream.keys))
    group = {k: i % workers for i, k in enumerate(keys)}
    pending = [deque() for _ in range(workers)]  # (row, key) served, label not yet sent, per worker
    t0 = time.monotonic()

    def due(w: int, row: int) -> None:
        """Send worker ``w``'s labels that have arrived by ``row`` (rows <= row - label_delay)."""
        while pending[w] and pending[w][0][0] <= row - label_delay and not stop.is_set():
            _label(client, stream, progress, *pending[w].popleft())

    def serve(w: int, rows: list[int]) -> None:
        for i in rows:
            if stop.is_set():
                return
            if speed > 0:
                wait = t0 + i / speed - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            due(w, i)
            _serve(client, stream, progress, i, columns)
            pending[w].append((i, stream.keys[i]))

    with ThreadPoolExecutor(workers, thread_name_prefix="demo-replay") as pool:
        for lo in range(0, stream.rows, chunk):
            if stop.is_set():
                return
            rows_of: list[list[int]] = [[] for _ in range(workers)]
            for i in range(lo, min(stream.rows, lo + chunk)):
                rows_of[group[stream.keys[i]]].append(i)
            for f in [pool.submit(serve, w, r) for w, r in enumerate(rows_of) if r]:
                f.result()
            for f in [pool.submit(due, w, lo + chunk) for w in range(workers) if pending[w]]:
                f.result()  # labels due before the next chunk, whichever worker's entities they are
    for w in range(workers):  # the last labels
        due(w, stream.rows + label_delay)


def _serve(client: MeshClient, stream: Stream, progress: Progress, i: int, columns: bool = False) -> None:
    key = stream.keys[i]
    inputs = ({c: stream.x[i, j:j + 1] for j, c in enumerate(stream.columns)} if columns
              else {"input": stream.x[i:i + 1]})
    request = build_infer_request(MODEL, inputs, request_id=f"r{i}")
    request.parameters["timestamp_ms"].int64_param = EPOCH_MS + i * int(feature_definition.ROW_SECONDS * 1000)
    t = time.perf_counter()
    try:
        response = _when_viewed(client.infer_request, request, routing_key=key)
    except Exception as exc:  # a refused or lost request is counted and shown, the replay goes on
        with progress.lock:
            progress.errors.append(f"row {i}: {str(exc)[:200]}")
        return
    owner = client.owner(key, MODEL) or "?"
    ms = (time.perf_counter() - t) * 1000
    label = int(np.asarray(infer_response_to_numpy(response)["label"]).reshape(-1)[0])
    version = int(response.model_version or 0)
    with progress.lock:
        progress.pred[i], progress.version[i], progress.edge[i] = label, version, owner
        progress.served_at[i] = time.time()
        progress.latency_ms.setdefault(owner, []).append(ms)
        progress.edge_version[owner] = version
        progress.first_seen.setdefault(version, (i, time.time()))
        progress.done += 1


#: how long a row waits for the client's view of the mesh to list a node again (nothing was sent meanwhile)
VIEW_WAIT_S = 20.0


def _when_viewed(call, *args, **kwargs):
    """``call(*args, **kwargs)`` (a MeshClient request or label); when the client's view lists no node for
    the model (its liveness probes timed out on a loaded machine: nothing was sent), wait for the view to
    recover, up to VIEW_WAIT_S, and send then."""
    deadline = time.monotonic() + VIEW_WAIT_S
    while True:
        try:
            return call(*args, **kwargs)
        except ProtocolError as exc:
            if "no node in the client's view" not in exc.message or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _label(client: MeshClient, stream: Stream, progress: Progress, i: int, key: str) -> None:
    try:
        _when_viewed(client.label, MODEL, float(stream.y[i]), request_id=f"r{i}", routing_key=key)
        with progress.lock:
            progress.labels_sent += 1
    except Exception as exc:
        with progress.lock:
            progress.errors.append(f"label of row {i}: {str(exc)[:200]}")
