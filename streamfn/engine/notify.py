"""Readiness for supervisors: systemd's sd_notify protocol (``Type=notify``) over plain sockets.

systemd hands a service the path of a unix datagram socket in ``NOTIFY_SOCKET``; the service
sends ``READY=1`` once it does its job and ``STOPPING=1`` when it begins to shut down. Without
that variable nothing is sent, so the daemon runs the same under any other supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("streamfn.notify")

READY = "READY=1"
STOPPING = "STOPPING=1"

_watchers: set[asyncio.Task[None]] = set()  # held so the loop does not drop a pending watcher


def notify(state: str) -> bool:
    """Send one sd_notify message; True if sent, False when no supervisor asked for one.

    A supervisor that went away must not stop the pipelines: a failed send is logged, not raised.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # a socket in the abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%s is not a unix socket path: %s not sent", address, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not tell the supervisor %s through NOTIFY_SOCKET=%s: %s", state, address, exc)
        return False
    return True


def announce_running(stop: asyncio.Event) -> None:
    """Say ``READY=1`` now (every pipeline has opened and started), and ``STOPPING=1`` as soon as
    ``stop`` is set, which is when a signal or the end of ``--until-caught-up`` begins the shutdown."""
    notify(READY)
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    task = asyncio.get_running_loop().create_task(_notify_when_set(stop))
    _watchers.add(task)
    task.add_done_callback(_watchers.discard)


async def _notify_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    notify(STOPPING)
