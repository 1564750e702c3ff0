"""``edgeloop demo`` from start to report: processes up, first model published, replay, report, all stopped."""
from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop.client import MeshClient

from . import definition as feature_definition
from . import model as initial_model
from .engine import MODEL, Progress, publish, replay
from .fleet import Fleet
from .stream import Stream

#: the CT loop's settings for the demo (the cloud config's [training] table): windows sized to the stream.
#: The regular retrain is volume: a run per 240 new labelled rows (5 days of Elec2) on the newest 2,880 (60
#: days; measured in-process with the loop's trainer: 0.770 raw / 0.870 with features, vs 0.767 / 0.860 on 30
#: days), the newest 10% (at least 288 rows, 6 days) held out to judge challenger and champion on the same
#: rows, and 10% of the rest as the trainer's validation: every row not fitted on makes the model older
#: (in-process, fitting up to 1,037 / 576 / 120 rows before the newest: 0.862 / 0.870 / 0.877).  Drift and performance alarms mark the change; their run waits for 600 rows after it, and a due
#: volume run is never held back by that wait (fitted on ~300 post-change rows, challengers at 0.57 were
#: blessed).  Measured through the mesh (Elec2 from row 4,531, ``benchmarks/ct_stream.py``): 0.906 with features
#: and the definition's online head, 0.836 with features alone, 0.870 raw + head, 0.744 raw (static 0.801 /
#: 0.719), 20-36 retrains, 160-265 s.  --fast: a run per 600 rows
TRAINING = {"enabled": True, "interval_ms": 500, "monitor_window": 200, "reference_rows": 600, "drift_windows": 4,
            "cooldown_s": 5.0, "min_change_rows": 600, "train_rows": 2880, "holdout_fraction": 0.1,
            "min_holdout_rows": 288, "validation_fraction": 0.1, "volume": 240, "performance_margin": 0.15,
            # after a rolled-back rollout the loop waits this long (production: a minute; at the demo's ~150
            # rows/s that was 9,000 rows on a champion the stream had left behind)
            "retry_after_rollback_s": 5.0,
            # infra validation's latency budget (3 x the champion's p99 + 0.25 ms) refused challengers on
            # scheduler noise of this shared machine (p99 1.6 ms vs 0.06 ms for the same 1 kB model)
            "latency_ratio": 50.0}


#: staged rollouts at the demo's pace: canary, then waves, each baking a few seconds (production: minutes).
#: One four-week entity is active at a time, so an edge may see no request for ~30 s: a wave that waited for
#: 20 requests, and for 30 labelled ones up to 300 s, kept a version serving 10,000 rows after four newer ones
#: were published (measured); here a wave waits for labels 6 s at most.  The p99 gate is loose: the edges
#: share a loaded machine with training and replay (a canary was rolled back on p99 25 ms > 1.2 x 5.2 ms).
#: The paired accuracy gate stays as in production whenever the canary has labels.
DELIVERY = {"canary": 1, "wave_factor": 2.0, "bake_s": 3.0, "min_requests": 0, "max_p99_ratio": 50.0,
            "accuracy_wait_s": 6.0}


@dataclass
class Options:
    stream: Stream
    workdir: Path | None = None
    label_delay: int = 1
    eval_start: int | None = None
    speed: float = 0.0
    fast: bool = False
    live: bool = True
    workers: int = 8
    definition: object = None  # the model's FeatureDefinition (None: raw inputs only)


def training_settings(fast: bool) -> dict:
    if not fast:
        return dict(TRAINING)
    return dict(TRAINING, monitor_window=100, reference_rows=300, min_change_rows=200, cooldown_s=5.0, volume=600,
                train_rows=1440, holdout_fraction=0.25, min_holdout_rows=200, drift_windows=2,
                performance_margin=0.05)


def run(opts: Options) -> dict:
    stream = opts.stream
    workdir = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="edgeloop-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    eval_start = opts.eval_start if opts.eval_start is not None else max(10, stream.rows // 10)
    if not 10 <= eval_start < stream.rows:
        raise ValueError(f"--eval-start {eval_start}: expected 10..{stream.rows - 1} (rows in the stream)")
    print(f"edgeloop demo: working directory {workdir}", flush=True)
    fleet = Fleet(workdir, training_settings(opts.fast), dict(DELIVERY, bake_s=2.0) if opts.fast else dict(DELIVERY))
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    progress = Progress(stream.rows)
    started = time.monotonic()
    try:
        fleet.start()
        params, x = publish(fleet, stream, eval_start, workdir, opts.definition, opts.label_delay)
        static = initial_model.predict(params, x)
        with MeshClient(interfaces=["127.0.0.1"], mesh_name=fleet.mesh_name) as client:
            if not client.wait_ready(nodes=3, model=MODEL, timeout=90):
                fleet.check_alive()
                raise RuntimeError(f"the three edges did not serve {MODEL!r} within 90 s (logs: {workdir / 'logs'})")
            client.wait_settled(timeout=5)
            worker = threading.Thread(target=replay, args=(client, stream, progress, opts.label_delay, opts.speed,
                                                           stop, opts.workers, 96, opts.definition is not None),
                                      daemon=True)
            worker.start()
            _watch(worker, fleet, stream, progress, started, opts.live)
            # every served sample reaches the cloud (the edges' outboxes drain): wait, bounded
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and progress.received < progress.done:
                time.sleep(0.5)
                progress.poll_cloud(fleet.database)
        from .report import write

        features = feature_definition.declared(opts.definition, stream)
        online = opts.definition.online.to_dict() if getattr(opts.definition, "online", None) else None
        summary = write(workdir, stream, progress, static, eval_start, opts.label_delay, features,
                        time.monotonic() - started, online)
    except KeyboardInterrupt:
        stop.set()
        print("edgeloop demo: interrupted; stopping everything it started", file=sys.stderr)
        raise
    finally:
        stop.set()
        fleet.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    acc = summary["prequential_accuracy"]
    print(f"prequential accuracy from row {eval_start}: edgeloop {acc['edgeloop']:.4f}, static {acc['static']:.4f}, "
          f"no change {acc['no_change']:.4f}; {len(summary['retrains'])} retrain(s); samples {summary['samples']}")
    for name in ("report.png", "summary.json", "predictions.csv"):
        print(workdir / name)
    return summary


def _interrupt(signum, frame) -> None:
    """SIGTERM ends the demo as Ctrl-C does: the ``finally`` in ``run`` stops every process it started."""
    raise KeyboardInterrupt


def _watch(worker, fleet: Fleet, stream: Stream, progress: Progress, started: float, live: bool) -> None:
    """Poll the cloud and redraw until the replay ends (a dead process ends it with an error)."""
    from .view import render

    def tick():
        progress.poll_cloud(fleet.database)
        fleet.check_alive()

    if live:
        from rich.live import Live

        with Live(render(stream, progress, started), refresh_per_second=4, transient=False) as view:
            while worker.is_alive():
                worker.join(0.5)
                tick()
                view.update(render(stream, progress, started))
    else:
        last = 0.0
        while worker.is_alive():
            worker.join(0.5)
            tick()
            if time.monotonic() - last > 5:
                last = time.monotonic()
                print(f"  {progress.done}/{stream.rows} rows, {len(progress.published)} version(s) published, "
                      f"{len(progress.triggers)} trigger(s)", flush=True)
