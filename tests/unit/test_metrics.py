"""The metrics collector and the ops HTTP endpoint: series from ShardStats, health and readiness."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamfn.engine.stats import ShardStats
from streamfn.metrics import Metric, MetricsConfig, OpsServer, StatsCollector, build_registry
from streamfn.protocols.assignment import Assigner, ShardController
from streamfn.testing.memory import MemoryCheckpointStore


class FakeAssigner(Assigner):
    def __init__(self, settled: bool, leases: int | None) -> None:
        self.settled, self._leases = settled, leases

    async def run(self, controller: ShardController) -> None:
        return None

    def leases_held(self) -> int | None:
        return self._leases


def fake_pipeline(name: str, *stats: ShardStats, settled: bool = True, leases: int | None = None) -> Any:
    assigner = FakeAssigner(settled, leases)
    return SimpleNamespace(name=name, runners={s.shard_id: SimpleNamespace(stats=s) for s in stats},
                           shard_stats={s.shard_id: s for s in stats},
                           assigner=assigner, store=MemoryCheckpointStore())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def busy_stats(shard_id: str) -> ShardStats:
    stats = ShardStats(shard_id)
    stats.read, stats.filtered, stats.handled, stats.failed = 120, 7, 100, 15
    stats.sent_to_destination, stats.batches, stats.retries, stats.attempt = 5, 12, 3, 2
    stats.sink_seconds, stats.behind_ms, stats.checkpoint = 0.25, 1500.0, "105"
    stats.blocked_since = time.monotonic() - 42
    for seconds in (0.0005, 0.003, 0.003, 0.2, 99.0):
        stats.observe_handler(seconds)
    return stats


def test_collector_turns_shard_stats_into_series() -> None:
    from prometheus_client import generate_latest

    pipelines = [fake_pipeline("clicks", busy_stats("shard-0"), ShardStats("shard-1"), leases=2)]
    text = generate_latest(build_registry(StatsCollector(lambda: pipelines), process=False)).decode()
    got = samples(text)
    shard0 = (("pipeline", "clicks"), ("shard", "shard-0"))
    assert got[("streamfn_records_read_total", shard0)] == 120
    assert got[("streamfn_records_filtered_total", shard0)] == 7
    assert got[("streamfn_records_handled_total", shard0)] == 100
    assert got[("streamfn_records_failed_total", shard0)] == 15
    assert got[("streamfn_records_sent_to_destination_total", shard0)] == 5
    assert got[("streamfn_batches_total", shard0)] == 12
    assert got[("streamfn_retries_total", shard0)] == 3
    assert got[("streamfn_attempt", shard0)] == 2
    assert got[("streamfn_iterator_age_seconds", shard0)] == 1.5
    assert got[("streamfn_checkpoint_lag_records", shard0)] == 15  # read - handled - disposed
    assert got[("streamfn_checkpoint_sequence", shard0)] == 105
    assert got[("streamfn_shard_blocked", shard0)] == 1
    assert 41 <= got[("streamfn_shard_blocked_seconds", shard0)] < 60
    assert got[("streamfn_sink_write_seconds_total", shard0)] == 0.25
    # the histogram is cumulative and its count is every call, the slow one in +Inf only
    assert got[("streamfn_handler_duration_seconds_bucket", (("le", "0.001"), *shard0))] == 1
    assert got[("streamfn_handler_duration_seconds_bucket", (("le", "0.005"), *shard0))] == 3
    assert got[("streamfn_handler_duration_seconds_bucket", (("le", "60.0"), *shard0))] == 4
    assert got[("streamfn_handler_duration_seconds_bucket", (("le", "+Inf"), *shard0))] == 5
    assert got[("streamfn_handler_duration_seconds_count", shard0)] == 5
    assert got[("streamfn_handler_duration_seconds_sum", shard0)] == pytest.approx(99.2065)
    idle = (("pipeline", "clicks"), ("shard", "shard-1"))
    assert got[("streamfn_shard_blocked", idle)] == 0
    assert math.isnan(got[("streamfn_checkpoint_sequence", idle)])
    assert ("streamfn_iterator_age_seconds", idle) not in got  # unknown is absent, not zero
    assert got[("streamfn_shards_owned", (("pipeline", "clicks"),))] == 2
    assert got[("streamfn_leases_held", (("pipeline", "clicks"),))] == 2
    assert got[("streamfn_output_at_least_once", (("pipeline", "clicks"),))] == 0


def test_metric_names_are_prometheus_names() -> None:
    import re

    for metric in Metric:
        assert re.fullmatch(r"streamfn_[a-z_]+", metric.value)
        assert not metric.value.endswith("_total"), "counters get _total from the client library"


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_healthz_and_readyz_over_http() -> None:
    blocked = ShardStats("shard-0")
    pipeline = fake_pipeline("clicks", blocked)
    server = OpsServer(MetricsConfig(enabled=True, port=0, ready_max_blocked_seconds=30), lambda: [pipeline])
    await server.start()
    try:
        assert await http_get(server.port, "/healthz") == (200, "ok\n")
        status, body = await http_get(server.port, "/readyz")
        assert status == 503 and "clicks not started" in body
        server.mark_started("clicks")
        assert await http_get(server.port, "/readyz") == (200, "ready\n")
        blocked.blocked_since = time.monotonic() - 10  # blocked, but within the limit
        blocked.last_error = "boom"
        assert (await http_get(server.port, "/readyz"))[0] == 200
        blocked.blocked_since = time.monotonic() - 31
        status, body = await http_get(server.port, "/readyz")
        assert status == 503 and "shard-0 blocked for 31s" in body and "boom" in body
        status, body = await http_get(server.port, "/metrics")
        assert status == 200 and 'streamfn_shard_blocked{pipeline="clicks",shard="shard-0"} 1.0' in body
        assert "process_resident_memory_bytes" in body
        assert (await http_get(server.port, "/nope"))[0] == 404
    finally:
        await server.close()


async def test_readyz_waits_for_the_first_shard_listing() -> None:
    pipeline = fake_pipeline("clicks", settled=False)
    server = OpsServer(MetricsConfig(enabled=True, port=0), lambda: [pipeline])
    await server.start()
    try:
        server.mark_started("clicks")
        assert (await http_get(server.port, "/readyz"))[0] == 503
        pipeline.assigner.settled = True
        assert (await http_get(server.port, "/readyz"))[0] == 200
    finally:
        await server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_scrape_after_a_real_pipeline_run(tmp_path: Path) -> None:
    pytest.importorskip("streamfn.connectors.local.source")
    from streamfn.config import load_pipeline
    from streamfn.engine.daemon import run_pipelines
    from tests.pipelines import append, write_pipeline

    handler = """
    def handle(batch, context):
        if any(r.json()["v"] == 7 for r in batch) and context.attempt == 0:
            raise RuntimeError("first try of the batch holding 7 fails")
        return [r.json() for r in batch]
    """
    config = write_pipeline(tmp_path, handler, name="clicks", shards=2)
    append(config, [(f"k{i % 3}", orjson.dumps({"v": i})) for i in range(40)])
    port, stop = free_port(), asyncio.Event()
    run = asyncio.create_task(run_pipelines([load_pipeline(config)], stop=stop, handle_signals=False,
                                            metrics=MetricsConfig(enabled=True, port=port)))
    try:
        async with asyncio.timeout(30):
            while True:
                await asyncio.sleep(0.05)
                try:
                    _, body = await http_get(port, "/metrics")
                except OSError:
                    continue
                got = samples(body)
                handled = sum(v for (name, _), v in got.items() if name == "streamfn_records_handled_total")
                if handled == 40:
                    break
        assert (await http_get(port, "/readyz"))[0] == 200
    finally:
        stop.set()
        await run
    shards = {dict(labels)["shard"] for (name, labels) in got if name == "streamfn_batches_total"}
    assert len(shards) == 2
    total = {name: sum(v for (n, _), v in got.items() if n == name) for name in (
        "streamfn_records_read_total", "streamfn_retries_total", "streamfn_handler_duration_seconds_count",
        "streamfn_batches_total", "streamfn_checkpoint_lag_records")}
    assert total["streamfn_records_read_total"] == 40
    assert total["streamfn_retries_total"] == 1
    assert total["streamfn_handler_duration_seconds_count"] == total["streamfn_batches_total"] + 1
    assert total["streamfn_checkpoint_lag_records"] == 0
    assert got[("streamfn_shards_owned", (("pipeline", "clicks"),))] == 2
    assert got[("streamfn_pipeline_started", (("pipeline", "clicks"),))] == 1


def test_leases_held_come_from_the_assigner() -> None:
    from streamfn.metrics import leases_held

    assert leases_held(fake_pipeline("p")) is None, "no leases: no series rather than a zero"
    assert leases_held(fake_pipeline("p", leases=3)) == 3


async def test_a_busy_port_is_a_config_error() -> None:
    from streamfn.errors import ConfigError

    first = OpsServer(MetricsConfig(enabled=True, port=0), list)
    await first.start()
    try:
        second = OpsServer(MetricsConfig(enabled=True, port=first.port), list)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.start()
    finally:
        await first.close()


async def test_a_shard_started_again_continues_its_counters(tmp_path: Path) -> None:
    """A lease lost and taken back restarts the shard in the same process: its counters (and the
    pipeline's append-to-done histogram) must not go back, or Prometheus reads a reset."""
    pytest.importorskip("streamfn.connectors.local.source")
    from prometheus_client import generate_latest

    from streamfn.config import load_pipeline
    from streamfn.engine.pipeline import Pipeline
    from streamfn.protocols.source import ShardInfo
    from tests.pipelines import append, write_pipeline

    config = write_pipeline(tmp_path, "def handle(batch, context):\n    return None\n", name="again", shards=1)
    pipeline = Pipeline(load_pipeline(config))
    await pipeline.open()
    shard = ShardInfo("shard-0000")

    async def scrape_once_handled(total: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        deadline = time.monotonic() + 20
        while (stats := pipeline.shard_stats.get(shard.shard_id)) is None or stats.handled < total:
            assert time.monotonic() < deadline, f"{total} records not handled within 20s"
            await asyncio.sleep(0.02)
        return samples(generate_latest(build_registry(StatsCollector(lambda: [pipeline]), process=False)).decode())

    try:
        append(config, [("k", orjson.dumps({"v": i})) for i in range(30)])
        await pipeline.start_shard(shard)
        first = await scrape_once_handled(30)
        stats = pipeline.shard_stats[shard.shard_id]
        stats.mark_blocked("sink", "still blocked when the shard stopped")
        await pipeline.stop_shard(shard.shard_id)
        append(config, [("k", orjson.dumps({"v": i})) for i in range(30, 50)])
        await pipeline.start_shard(shard)
        assert pipeline.runners[shard.shard_id].stats is stats
        assert stats.blocked_since is None  # what it was doing did not come back with it
        second = await scrape_once_handled(50)
    finally:
        await pipeline.shutdown()
    labels = (("pipeline", "again"), ("shard", shard.shard_id))
    assert first[("streamfn_records_handled_total", labels)] == 30
    assert second[("streamfn_records_handled_total", labels)] == 50
    done = ("streamfn_append_to_done_seconds_count", (("pipeline", "again"),))
    assert second[done] == first[done] + 20
