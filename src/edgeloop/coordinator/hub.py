"""Wakes directive streams when a directive is added, and knows which edges hold a stream now."""
from __future__ import annotations

import threading
from collections import Counter


class DirectiveHub:
    """A generation counter under a condition: a stream waits until the generation moves on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._streams: Counter[str] = Counter()
        self._closed = False

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation differs from ``seen`` (or ``timeout``, or close); returns it."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen or self._closed, timeout)
            return self._generation

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def connect(self, node_id: str, limit: int) -> bool:
        """Count a new stream of ``node_id``; False (not counted) when ``limit`` streams are open."""
        with self._cond:
            if sum(self._streams.values()) >= limit:
                return False
            self._streams[node_id] += 1
            return True

    def disconnect(self, node_id: str) -> None:
        with self._cond:
            self._streams[node_id] -= 1
            if self._streams[node_id] <= 0:
                del self._streams[node_id]

    def connected(self) -> set[str]:
        with self._cond:
            return set(self._streams)
