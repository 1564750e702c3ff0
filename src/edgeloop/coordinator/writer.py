"""The one thread that commits uploads, with group commit for sample batches.

Upload streams validate their batches on their own gRPC threads and hand them here, several at a
time (a stream's batches are only acknowledged together, at its end, so nothing waits longer for
it); sample batches that are waiting together are committed in one transaction (up to
``max_group_rows`` rows), which writes each touched index page once instead of once per batch.
SQLite releases the GIL while it works, so validation of the next batches overlaps the commit.  If
a group fails, its batches are retried one by one, so one bad batch never fails another stream's
batches.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

log = logging.getLogger("edgeloop.coordinator")

_STOP = object()


class IngestWriter:
    def __init__(self, store, max_group_rows: int = 5000) -> None:
        self._store = store
        self._max_rows = max_group_rows
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgeloop-store-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def samples(self, node_id: str, batch_id: str, rows, now_ms: int) -> Future:
        """Queue one sample batch; the future gives what ``store.ingest_samples`` returns."""
        return self.sample_batches([(node_id, batch_id, rows, now_ms)])[0]

    def sample_batches(self, batches) -> list[Future]:
        """Queue (node_id, batch_id, rows, now_ms) batches to commit together; one future per batch."""
        futures = [Future() for _ in batches]
        self._put(("samples", list(batches), futures))
        return futures

    def call(self, fn, *args) -> Future:
        """Queue any other store write; it runs alone, in order with the sample batches."""
        future: Future = Future()
        self._put(("call", (fn, args), future))
        return future

    def _put(self, job) -> None:
        if self._closed:
            for future in job[2] if isinstance(job[2], list) else [job[2]]:
                future.set_exception(RuntimeError("the ingest writer is closed"))
            return
        self._jobs.put(job)

    def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        self._closed = True
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        carry = None
        while True:
            job = carry if carry is not None else self._jobs.get()
            carry = None
            if job is _STOP:
                return
            kind, payload, future = job
            if kind == "call":
                self._settle(future, payload[0], *payload[1])
                continue
            group, futures = list(payload), list(future)
            rows = sum(len(b[2]) for b in payload)
            while rows < self._max_rows:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[0] != "samples":
                    carry = nxt
                    break
                group.extend(nxt[1])
                futures.extend(nxt[2])
                rows += sum(len(b[2]) for b in nxt[1])
            self._commit(group, futures)

    def _commit(self, group, futures) -> None:
        """Commit ``group`` in one transaction (futures are never cancelled: a stream that gives up stops waiting)."""
        try:
            results = self._store.ingest_sample_batches(group)
        except Exception as exc:  # noqa: BLE001 - retried one by one below, so the culprit alone fails
            if len(group) == 1:
                futures[0].set_exception(exc)
                return
            for payload, future in zip(group, futures):
                try:
                    future.set_result(self._store.ingest_sample_batches([payload])[0])
                except Exception as one:  # noqa: BLE001
                    future.set_exception(one)
            return
        for future, result in zip(futures, results):
            future.set_result(result)

    @staticmethod
    def _settle(future: Future, fn, *args) -> None:
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting stream
            future.set_exception(exc)
