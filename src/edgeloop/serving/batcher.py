"""Dynamic batching without a scheduler thread: leader/follower over the gRPC handler threads.

A request that finds its model idle (nothing queued, nothing running) runs at once in its own
thread: no queue delay, no hand-off.  A request that arrives while an execution is running queues;
the first queued request becomes the *leader*.  The leader waits until the running execution ends,
and then, if the batch is still below ``max_batch_size`` / a preferred size, at most until its own
``max_queue_delay`` has passed, collecting the followers that arrive meanwhile.  It then merges the
queued requests whose non-batch dimensions match its own into one onnxruntime run, splits the
outputs back, wakes the followers with their slices and hands leadership to the next queued request.
Requests that cannot be merged (other non-batch dims) stay queued for the next leader.

One execution runs at a time per model version (like one Triton instance): while it runs, the next
batch forms.  The queue is bounded: with ``max_queue_size`` requests already waiting, the next one is
refused at once with RESOURCE_EXHAUSTED (naming the model and the limit) instead of waiting on a
deadline.  A batch merges at most one request per gRPC handler thread, so ``merge_limit_warning``
tells at load when ``max_batch_size`` is more than the worker pool could ever fill.

Merging concatenates along the batch dimension and slices the outputs; row-wise models give
bit-identical results (tests check this).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from time import perf_counter_ns

import grpc
import numpy as np

from edgeloop.config.schema import DEFAULT_MAX_QUEUE_SIZE
from edgeloop.protocol.errors import ProtocolError


class _Slot:
    """One queued request: its feeds, and where its results (or error) are handed back."""

    __slots__ = ("feeds", "batch", "key", "wake", "outputs", "error", "lead", "t_enqueue",
                 "queue_ns", "input_ns", "infer_ns")

    def __init__(self, feeds, batch: int, key, t_enqueue: int) -> None:
        self.feeds = feeds
        self.batch = batch
        self.key = key
        self.wake = threading.Lock()
        self.wake.acquire()  # released by whoever hands this slot its results or leadership
        self.outputs = None
        self.error: BaseException | None = None
        self.lead = False
        self.t_enqueue = t_enqueue
        self.queue_ns = self.input_ns = self.infer_ns = 0


class BatchResult:
    """What a submitter gets back: its output slices and where its time went."""

    __slots__ = ("outputs", "queue_ns", "input_ns", "infer_ns")

    def __init__(self, outputs, queue_ns: int, input_ns: int, infer_ns: int) -> None:
        self.outputs = outputs
        self.queue_ns = queue_ns
        self.input_ns = input_ns
        self.infer_ns = infer_ns


class DynamicBatcher:
    """Merges concurrent requests of one model version into shared onnxruntime runs.

    ``run(feeds) -> list[np.ndarray]`` executes the model (all outputs, in a fixed order);
    ``on_execution(batch_size, input_ns, infer_ns, output_ns)`` is told about every run.  At most
    ``max_queue_size`` requests wait at once; ``what`` (e.g. "model 'mlp' version 1") names the model
    when one more is refused.
    """

    def __init__(self, run: Callable[[dict], list], input_names: Sequence[str], max_batch_size: int,
                 max_queue_delay_us: int = 0, preferred_batch_sizes: Sequence[int] = (),
                 on_execution: Callable[[int, int, int, int], None] | None = None,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, what: str = "model") -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; expected >= 1 for a dynamic batcher")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size={max_queue_size}; expected >= 1")
        self.max_queue_size = max_queue_size
        self.what = what
        self._run = run
        self._input_names = tuple(input_names)
        self.max_batch_size = max_batch_size
        self._delay_ns = max(0, int(max_queue_delay_us)) * 1000
        self._preferred = frozenset(p for p in preferred_batch_sizes if 0 < p <= max_batch_size)
        self._on_execution = on_execution or (lambda *a: None)
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Slot] = []
        self._leader: _Slot | None = None
        self._busy = False

    def submit(self, feeds: dict, batch: int, key) -> BatchResult:
        """Run ``feeds`` (first dim ``batch``) alone or merged with others whose ``key`` matches."""
        t_enqueue = perf_counter_ns()
        cond = self._cond
        with cond:
            if not self._busy and not self._queue:
                self._busy = True
                slot = None
            else:
                if len(self._queue) >= self.max_queue_size:
                    raise self._full()
                slot = _Slot(feeds, batch, key, t_enqueue)
                self._queue.append(slot)
                if self._leader is None:
                    self._leader = slot
                    slot.lead = True
                else:
                    cond.notify()  # the waiting leader re-checks whether its batch is full
        if slot is None:
            return self._run_alone(feeds, batch)
        if not slot.lead:
            slot.wake.acquire()
            if not slot.lead:
                if slot.error is not None:
                    raise slot.error
                return BatchResult(slot.outputs, slot.queue_ns, slot.input_ns, slot.infer_ns)
        return self._lead(slot)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch now (not counting the one running)."""
        return len(self._queue)

    # ------------------------------------------------------------------------------ internals
    def _full(self) -> ProtocolError:
        return ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{self.what}: its batch queue is full ({self.max_queue_size} requests waiting; "
                             f"max_queue_size is {self.max_queue_size}); expected fewer concurrent requests: "
                             f"retry later, on another node, or raise max_queue_size")

    def _run_alone(self, feeds: dict, batch: int) -> BatchResult:
        try:
            t0 = perf_counter_ns()
            outputs = self._run(feeds)
            t1 = perf_counter_ns()
            self._on_execution(batch, 0, t1 - t0, 0)
            return BatchResult(outputs, 0, 0, t1 - t0)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _split(self) -> tuple[list[_Slot], list[_Slot], int]:
        """(slots the head of the queue would batch with: same key, within max_batch_size; the rest; batch size)."""
        key = self._queue[0].key
        group, rest, size = [], [], 0
        for slot in self._queue:
            if slot.key == key and size + slot.batch <= self.max_batch_size:
                group.append(slot)
                size += slot.batch
            else:
                rest.append(slot)
        return group, rest, size

    def _lead(self, me: _Slot) -> BatchResult:
        cond = self._cond
        with cond:
            while True:
                if self._busy:
                    cond.wait()
                    continue
                group, rest, size = self._split()
                if size >= self.max_batch_size or size in self._preferred:
                    break
                remaining = me.t_enqueue + self._delay_ns - perf_counter_ns()
                if remaining <= 0:
                    break
                cond.wait(remaining / 1e9)
            self._queue = rest  # the split above was made under this same hold of the lock
            self._busy = True
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                self._leader = nxt
                nxt.wake.release()
            else:
                self._leader = None
        try:
            self._execute(group)
        finally:
            with cond:
                self._busy = False
                cond.notify_all()
            for slot in group:
                if slot is not me:
                    slot.wake.release()
        if me.error is not None:
            raise me.error
        return BatchResult(me.outputs, me.queue_ns, me.input_ns, me.infer_ns)

    def _execute(self, group: list[_Slot]) -> None:
        t0 = perf_counter_ns()
        try:
            if len(group) == 1:
                feeds = group[0].feeds
            else:
                feeds = {name: np.concatenate([s.feeds[name] for s in group]) for name in self._input_names}
            t1 = perf_counter_ns()
            outputs = self._run(feeds)
            t2 = perf_counter_ns()
            if len(group) == 1:
                group[0].outputs = outputs
            else:
                start = 0
                for slot in group:
                    end = start + slot.batch
                    slot.outputs = [out[start:end] for out in outputs]
                    start = end
            t3 = perf_counter_ns()
        except BaseException as exc:  # every merged request learns of the failure
            for slot in group:
                slot.error = exc
            return
        for slot in group:
            slot.queue_ns = t0 - slot.t_enqueue
            slot.input_ns = t1 - t0
            slot.infer_ns = t2 - t1
        self._on_execution(sum(s.batch for s in group), t1 - t0, t2 - t1, t3 - t2)


def merge_limit_warning(max_batch_size: int, grpc_workers: int) -> str | None:
    """Why ``max_batch_size`` is out of reach of ``grpc_workers`` handler threads, or None when it is not.

    Each waiting request holds one handler thread, so a batch merges at most ``grpc_workers``
    requests; a larger ``max_batch_size`` fills only when requests carry several rows each.
    """
    if max_batch_size <= grpc_workers:
        return None
    return (f"max_batch_size {max_batch_size} is more than serving.grpc_workers {grpc_workers}: a batch merges at "
            f"most {grpc_workers} concurrent requests (one per handler thread), so it reaches {max_batch_size} rows "
            f"only when requests carry several rows each; raise grpc_workers or lower max_batch_size")


__all__ = ["BatchResult", "DynamicBatcher", "merge_limit_warning"]
