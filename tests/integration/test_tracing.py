"""OpenTelemetry spans of a real pipeline on the local log, through the SDK's in-memory exporter: one
span per batch, with its read, handler calls, sink write and checkpoint as children."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from streamfn.engine import tracing
from tests.pipelines import REPO, append, run_until_caught_up, write_pipeline

FAILS_ONCE = """
def handle(batch, context):
    if batch.shard_id == "shard-0000" and batch[0].sequence == 1 and context.attempt == 0:
        raise RuntimeError("first call fails")
    return [r.json() for r in batch]
"""


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    try:
        yield spans
    finally:
        tracing.disable()
        provider.shutdown()


def test_one_span_per_batch_with_read_invoke_sink_write_and_checkpoint(tmp_path: Path,
                                                                       exporter: InMemorySpanExporter) -> None:
    config = write_pipeline(tmp_path, FAILS_ONCE, shards=2, batching="max_records = 5")
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(30)])
    run_until_caught_up(config)
    spans = exporter.get_finished_spans()
    batches = [s for s in spans if s.name == "batch"]
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    assert sum(int(b.attributes["streamfn.records"]) for b in batches) == 30  # type: ignore[arg-type,index]
    for batch in batches:
        attributes = dict(batch.attributes or {})
        assert attributes["streamfn.pipeline"] == "p" and attributes["streamfn.shard"] in ("shard-0000", "shard-0001")
        first, last = int(attributes["streamfn.first_sequence"]), int(attributes["streamfn.last_sequence"])
        assert last - first + 1 == attributes["streamfn.records"]
        mine = children[batch.context.span_id]
        names = [s.name for s in sorted(mine, key=lambda s: s.start_time or 0)]
        failed_first = attributes["streamfn.shard"] == "shard-0000" and first == 1
        assert names == ["read", *(["invoke"] * (2 if failed_first else 1)), "sink write", "checkpoint"], names
        for child in mine:
            assert child.context.trace_id == batch.context.trace_id
            assert (child.attributes or {})["streamfn.shard"] == attributes["streamfn.shard"]
            start, end = child.start_time, child.end_time
            assert batch.start_time is not None and batch.end_time is not None and start is not None and end is not None
            assert batch.start_time <= start <= end <= batch.end_time
        invokes = [s for s in mine if s.name == "invoke"]
        assert [(s.attributes or {})["streamfn.attempt"] for s in invokes] == list(range(len(invokes)))
        if failed_first:
            assert invokes[0].status.status_code is StatusCode.ERROR
            assert any(event.name == "exception" for event in invokes[0].events)


def test_off_by_default_and_opentelemetry_never_imported(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, "def handle(batch, context):\n    return []\n", shards=1)
    append(config, [("k", b"{}")])
    probe = ("import sys, runpy\nsys.argv = ['streamfn', 'run', sys.argv[1], '--until-caught-up']\n"
             "try:\n    runpy.run_module('streamfn', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    result = subprocess.run([sys.executable, "-c", probe, str(config)], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert not tracing.enabled()


def test_run_with_traces_exports_over_otlp_http(tmp_path: Path) -> None:
    """``streamfn run --traces`` sends its spans to the OTLP/HTTP endpoint the standard variable names."""
    import http.server
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = write_pipeline(tmp_path, "def handle(batch, context):\n    return []\n", shards=1,
                                batching="max_records = 5")
        append(config, [(f"k{i}", b"{}") for i in range(10)])
        env = {**os.environ, "PYTHONPATH": str(REPO), "OTEL_SERVICE_NAME": "streamfn-test",
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up", "--traces"],
                       cwd=tmp_path, env=env, capture_output=True, timeout=60, check=True)
    finally:
        server.shutdown()
    names: list[str] = []
    services = set()
    for path, body in received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            names += [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert services == {"streamfn-test"}
    assert names.count("batch") == 2 and names.count("invoke") == 2 and names.count("read") == 2
