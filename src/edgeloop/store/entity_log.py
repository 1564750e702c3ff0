"""The logged raw stream, per entity and per model: what a feature-state rebuild and a backfill replay.

Plain SQL shared by both backends (``PostgresStore`` inherits it; ``rowid`` orders labels by arrival on
both).  Rows come back in served order (``timestamp_ms`` then insertion id), labels with their arrival
time (``received_ms``), so the caller can replay them point-in-time.
"""
from __future__ import annotations

from .records import LoggedSample

#: the most rows (and labels) one entity's history returns
MAX_HISTORY = 1024
#: the most rows one model's stream returns (a backfill reads at most this many)
MAX_STREAM = 1_000_000

_COLUMNS = ("s.id, s.sample_id, s.node_id, s.model_version, s.routing_key, s.timestamp_ms, s.payload, "
            "l.value, l.received_ms")


def _logged(rows) -> list[LoggedSample]:
    return [LoggedSample(int(r[0]), r[1], r[2], int(r[3]), r[4], int(r[5]), bytes(r[6]),
                         None if r[7] is None else float(r[7]), None if r[8] is None else int(r[8])) for r in rows]


class EntityLog:
    """Mixed into the store: needs ``_reading()``."""

    def entity_history(self, model: str, key: str, limit: int) -> tuple[list[LoggedSample], list[LoggedSample]]:
        """``key``'s newest ``limit`` samples (served order) and its newest ``limit`` labelled samples (arrival order).

        The two lists overlap; labels are chosen by their sample's time (a label window reads the newest
        labels), then ordered by arrival (a re-sent label for one sample replaces the earlier one).
        """
        limit = max(1, min(int(limit), MAX_HISTORY))
        with self._reading() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM samples s LEFT JOIN labels l ON l.sample_id = s.sample_id "
                              "AND l.model = s.model WHERE s.model = ? AND s.routing_key = ? "
                              "ORDER BY s.timestamp_ms DESC, s.id DESC LIMIT ?", (model, key, limit)).fetchall()
            labelled = db.execute(f"SELECT {_COLUMNS}, l.rowid FROM samples s JOIN labels l ON l.sample_id = "
                                  "s.sample_id AND l.model = s.model WHERE s.model = ? AND s.routing_key = ? "
                                  "ORDER BY s.timestamp_ms DESC, s.id DESC LIMIT ?", (model, key, limit)).fetchall()
        labelled.sort(key=lambda r: (r[8], r[9]))
        return _logged(rows[::-1]), _logged(labelled)

    def feature_stream(self, model: str, limit: int = MAX_STREAM) -> list[LoggedSample]:
        """``model``'s newest ``limit`` samples, every routing key, in served order, each with its label."""
        limit = max(1, min(int(limit), MAX_STREAM))
        with self._reading() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM samples s LEFT JOIN labels l ON l.sample_id = s.sample_id "
                              "AND l.model = s.model WHERE s.model = ? ORDER BY s.timestamp_ms DESC, s.id DESC "
                              "LIMIT ?", (model, limit)).fetchall()
        return _logged(rows[::-1])


__all__ = ["EntityLog", "MAX_HISTORY", "MAX_STREAM"]
