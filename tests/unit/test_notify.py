"""sd_notify messages over real unix datagram sockets (no supervisor needed)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from streamfn.engine.notify import READY, STOPPING, announce_running, notify


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket in the abstract namespace, named as systemd names one: ``@name``."""
    name = f"streamfn-test-{os.getpid()}-{id(monkeypatch)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        yield sock


def test_notify_reaches_an_abstract_socket(abstract_socket: socket.socket) -> None:
    assert notify(READY)
    assert abstract_socket.recv(100) == b"READY=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify(READY)


@pytest.mark.parametrize("address", ["vsock:2:1234", "relative/path"])
def test_an_address_that_is_no_unix_path_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, address: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert not notify(READY)
    assert address in caplog.text


async def test_stopping_follows_the_stop_event(abstract_socket: socket.socket) -> None:
    stop = asyncio.Event()
    announce_running(stop)
    assert abstract_socket.recv(100) == READY.encode()
    await asyncio.sleep(0.05)
    abstract_socket.settimeout(0.1)
    with pytest.raises(TimeoutError):
        abstract_socket.recv(100)  # nothing until the stop begins
    stop.set()
    await asyncio.sleep(0.05)
    assert abstract_socket.recv(100) == STOPPING.encode()
