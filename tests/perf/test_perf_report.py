"""How ``edgeloop perf`` shows results: live line only on a TTY, JSON without NaN, CSV rows."""
import csv
import io
import json

from edgeloop.perf.report import Progress, write_csv, write_json
from edgeloop.perf.stats import summarize


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def level(concurrency=2, latencies=(0.001, 0.002)):
    return summarize(concurrency, list(latencies), errors=0, duration_s=1.0, batch_size=1, stopped_by="count")


def test_progress_is_live_on_a_terminal():
    term = FakeTerminal()
    progress = Progress(term)
    progress.update(concurrency=2, done=10, errors=1, elapsed_s=0.5)
    progress.level_done(level())
    text = term.getvalue()
    assert text.startswith("\r  concurrency    2:       10 done, 1 errors")
    assert text.endswith("concurrency 2: count 2, errors 0, p50 1.000 ms, p90 2.000 ms, p99 2.000 ms, "
                         "max 2.000 ms, 2.0 infer/s\n")


def test_progress_prints_one_line_per_level_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream)
    progress.update(concurrency=2, done=10, errors=0, elapsed_s=0.5)
    progress.level_done(level())
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()


def test_json_has_header_levels_and_null_for_missing_latencies(tmp_path):
    path = tmp_path / "out.json"
    empty = summarize(4, [], errors=3, duration_s=1.0, batch_size=1, stopped_by="time")
    write_json(str(path), {"model": "m"}, [level(), empty], {4: ["UNAVAILABLE: gone"]})
    doc = json.loads(path.read_text())  # strict JSON: NaN would not parse in other tools
    assert doc["model"] == "m"
    assert doc["levels"][0]["p50_ms"] == 1.0 and doc["levels"][0]["error_samples"] == []
    assert doc["levels"][1]["p50_ms"] is None and doc["levels"][1]["error_samples"] == ["UNAVAILABLE: gone"]
    assert "NaN" not in path.read_text()


def test_csv_has_one_row_per_level(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(str(path), [level(1), level(8)])
    rows = list(csv.DictReader(path.open()))
    assert [r["concurrency"] for r in rows] == ["1", "8"]
    assert float(rows[0]["p90_ms"]) == 2.0
