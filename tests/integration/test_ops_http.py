"""The ops server of a running daemon, through real HTTP clients: HEAD probes and OpenMetrics by ``Accept``."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from tests.pipelines import append, daemon, kill, write_pipeline

FAILING = "def handle(batch, context):\n    raise RuntimeError('always fails')\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw(port: int, request: bytes) -> bytes:
    """Everything the server sends back for ``request``, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def get(port: int, path: str, accept: str | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path, headers={"Accept": accept} if accept else {})
    return connection.getresponse()


@pytest.fixture
def blocked_daemon(tmp_path: Path) -> Iterator[int]:
    """A daemon whose only shard is blocked (its handler always fails): /readyz fails after 1 s."""
    config = write_pipeline(tmp_path, FAILING, shards=1, extra="[metrics]\nready_max_blocked_seconds = 1\n")
    append(config, [("k", b'{"v": 1}')])
    port = free_port()
    process = daemon(config, "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if get(port, "/readyz").status == 503 and b"blocked for" in get(port, "/readyz").read():
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the daemon never reported the blocked shard")
        yield port
    finally:
        kill(process)
        process.wait(timeout=10)


def test_head_answers_like_get_without_a_body(blocked_daemon: int) -> None:
    port = blocked_daemon
    for path, status in (("/healthz", 200), ("/readyz", 503)):
        got = raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headed = raw(port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        get_head, get_body = got.split(b"\r\n\r\n", 1)
        head_head, head_body = headed.split(b"\r\n\r\n", 1)
        assert get_head.split(b"\r\n")[0] == head_head.split(b"\r\n")[0] == f"HTTP/1.1 {status} ".encode() + (
            b"OK" if status == 200 else b"Service Unavailable")
        assert head_body == b"", "HEAD sends no body"
        assert f"Content-Length: {len(get_body)}".encode() in head_head, "the length GET would send"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # and a stock client agrees
    connection.request("HEAD", "/healthz")
    answer = connection.getresponse()
    assert answer.status == 200 and answer.read() == b""
    refused = raw(port, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in refused


def test_metrics_in_openmetrics_when_accept_asks(blocked_daemon: int) -> None:
    port = blocked_daemon
    prometheus_accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                         "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus sends
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": prometheus_accept})
    with urllib.request.urlopen(request, timeout=5) as answer:
        content_type, body = answer.headers["Content-Type"], answer.read().decode()
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    families = {family.name: family for family in text_string_to_metric_families(body)}  # strict parser
    blocked = families["streamfn_shard_blocked"].samples
    assert [(s.labels["shard"], s.value) for s in blocked] == [("shard-0000", 1.0)]
    assert families["streamfn_records_failed"].type == "counter"

    plain = get(port, "/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    text = plain.read().decode()
    assert "# EOF" not in text
    assert any(f.name == "streamfn_shard_blocked" for f in prometheus_families(text))
