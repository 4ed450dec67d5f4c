"""The ops server's append-to-done histogram and write-error counters, scraped from a real daemon whose
sink fails until the operator fixes it; both exposition formats parse with prometheus_client."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.integration.test_ops_http import free_port
from tests.pipelines import append, daemon, kill, write_pipeline

ECHO = "def handle(batch, context):\n    return [r.json() for r in batch]\n"


def scrape(port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return str(answer.read().decode())


def samples(port: int) -> list[Sample]:
    return [s for family in text_string_to_metric_families(scrape(port)) for s in family.samples]


def wait_for(port: int, name: str, labels: dict[str, str], minimum: float) -> list[Sample]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            found = samples(port)
        except OSError:
            found = []
        if any(s.name == name and labels.items() <= s.labels.items() and s.value >= minimum for s in found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never reached {minimum}")


def test_append_to_done_histogram_and_sink_errors_by_kind(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=2, batching="max_records = 4")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p").write_text("a file where the sink wants a folder")  # every write fails
    arrived = time.time() - 100  # records that waited 100 s before streamfn saw them
    append(config, [(f"k{i}", b'{"v": 1}') for i in range(20)], arrival_time=arrived)
    port = free_port()
    process = daemon(config, "--metrics-port", str(port))
    try:
        found = wait_for(port, "streamfn_write_errors_total", {"target": "sink"}, 1)
        kinds = {s.labels["kind"] for s in found if s.name == "streamfn_write_errors_total"}
        assert kinds and kinds <= {"storage", "other", "rejected"}, kinds
        assert not [s for s in found if s.name == "streamfn_append_to_done_seconds_count" and s.value > 0]
        (tmp_path / "out" / "p").unlink()  # the operator fixes the sink: the retries go through
        found = wait_for(port, "streamfn_records_handled_total", {}, 0)
        found = wait_for(port, "streamfn_append_to_done_seconds_count", {"pipeline": "p"}, 20)
        buckets = {s.labels["le"]: s.value for s in found if s.name == "streamfn_append_to_done_seconds_bucket"}
        assert buckets["60.0"] == 0 and buckets["300.0"] == buckets["+Inf"] == 20, buckets
        total = next(s.value for s in found if s.name == "streamfn_append_to_done_seconds_sum")
        assert 20 * 100 <= total < 20 * 300
        families = {f.name: f for f in openmetrics_families(scrape(port, "application/openmetrics-text"))}
        assert families["streamfn_append_to_done_seconds"].type == "histogram"
    finally:
        kill(process)
        process.wait(timeout=10)
