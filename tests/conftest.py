"""Shared fixtures: real servers on 127.0.0.1 (or where STREAMFN_TEST_* point), fake AWS credentials, --run-slow."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from tests import servers

# Hypothesis checks invariants, not speed: a deadline per example only fails on a busy machine.
settings.register_profile("streamfn", deadline=None)
settings.load_profile("streamfn")

# ---- --run-slow -----------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow or benchmark")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow/benchmark test: pass --run-slow to run it")
    for item in items:
        if "slow" in item.keywords or "benchmark" in item.keywords:
            item.add_marker(skip)


# ---- servers ----------------------------------------------------------------------------------------------------

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _server_endpoint(name: str, start: Callable[[], servers.ServerHandle]) -> Iterator[str]:
    """The endpoint from the STREAMFN_TEST_* variable if set, else a server of our own for the session."""
    preset = os.environ.get(servers.ENV_VARS[name])
    if preset:
        yield preset
        return
    missing = None
    try:
        handle = start()
    except servers.ServerNotInstalledError as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(f"{name} is not installed: {missing}", pytrace=False)
    try:
        yield handle.endpoint
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def aws_env() -> Iterator[dict[str, str]]:
    """Fake AWS credentials and region in os.environ for the session (restored afterwards)."""
    saved = {key: os.environ.get(key) for key in [*FAKE_AWS_ENV, "AWS_PROFILE"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(FAKE_AWS_ENV)
    try:
        yield dict(FAKE_AWS_ENV)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto server URL (S3, DynamoDB, DynamoDB Streams); state is shared: use unique names or reset_moto()."""
    yield from _server_endpoint("moto", servers.start_moto)


@pytest.fixture(scope="session")
def kinesis_endpoint() -> Iterator[str]:
    """kinesis-mock URL: the Kinesis server with AWS-like resharding (ChildShards, closed parents end)."""
    yield from _server_endpoint("kinesis-mock", servers.start_kinesis_mock)


@pytest.fixture(scope="session")
def kinesalite_endpoint() -> Iterator[str]:
    """kinesalite URL: fast Kinesis for throughput tests (MillisBehindLatest always 0, no ChildShards)."""
    yield from _server_endpoint("kinesalite", servers.start_kinesalite)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a Kafka-protocol broker (Tansu, in memory) or of the cluster STREAMFN_TEST_KAFKA names."""
    yield from _server_endpoint("tansu", servers.start_tansu)


@pytest.fixture(scope="session")
def kafka_keeping_metadata() -> Iterator[str]:
    """host:port of a Kafka-protocol broker that keeps offset commit metadata (noida-db; Tansu drops it)."""
    yield from _server_endpoint("noida-db", servers.start_noida_kafka)
