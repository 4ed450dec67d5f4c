"""The container image, built and run with podman: it runs the quickstart and answers /healthz.

Slow (building installs streamfn and its extras from the package index inside the build) and
opt-in with --run-slow. It needs Debian's ``podman`` and ``runc`` packages; this machine's podman
runs containers only through runc (crun refuses hybrid cgroup hierarchies) and only with explicit
rlimits (rootful podman's default raises them past what the sandbox allows). Base images cannot be
pulled here: without a local ``python:3.11-slim`` the test builds a stand-in Debian 12 base
(python3 3.11) with debootstrap from Debian's packages, once, and keeps it as
``localhost/streamfn-test-base:bookworm``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipelines import REPO, output_objects

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None,
                       reason="podman and runc are not installed (apt-get install podman runc)"),
]

RUNTIME = ["--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
UPSTREAM_BASE = "python:3.11-slim"
LOCAL_BASE = "localhost/streamfn-test-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *RUNTIME, *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-4000:]}"
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def build_local_base(tmp: Path) -> None:
    """A Debian 12 root file system with python3 and venv, trusting what this machine trusts
    (so pip in the build reaches the package index through the same proxy as the host)."""
    if shutil.which("debootstrap") is None:
        pytest.skip(f"no {UPSTREAM_BASE} image (it cannot be pulled here) and no debootstrap to make a base "
                    "(apt-get install debootstrap)")
    root = tmp / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                    "bookworm", str(root)],  # debootstrap's default Debian mirror
                   check=True, capture_output=True, timeout=900)
    shutil.copy(HOST_CA, root / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "--change", f"ENV PIP_CERT={HOST_CA}", "--change", 'CMD ["/bin/bash"]',
                    "-", LOCAL_BASE], stdin=tar.stdout, check=True, capture_output=True, timeout=300)
    assert tar.wait() == 0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = UPSTREAM_BASE if image_exists(UPSTREAM_BASE) else LOCAL_BASE
    if base == LOCAL_BASE and not image_exists(LOCAL_BASE):
        build_local_base(tmp_path_factory.mktemp("base"))
    id_file = tmp_path_factory.mktemp("image") / "id"
    # docker format: the OCI image format has no HEALTHCHECK; no layers: no build-stage image left behind
    podman("build", "--layers=false", "--format", "docker", "--network", "host", *LIMITS, "--build-arg", f"BASE={base}",
           "--iidfile", str(id_file), str(REPO), timeout=900)
    image_id = id_file.read_text().strip()
    yield image_id
    podman("rmi", "--force", image_id, check=False)


def test_image_runs_the_quickstart_and_answers_healthz(image: str, tmp_path: Path) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    assert info["Config"]["User"] == "streamfn"
    assert "/var/lib/streamfn" in info["Config"]["Volumes"]
    assert info["Config"]["StopSignal"] in ("SIGTERM", "15")
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"])

    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)  # the image's user (uid 10001) writes here
    volume = ["-v", f"{state}:/var/lib/streamfn"]
    podman("run", "--rm", *LIMITS, *volume, image, "produce", "/etc/streamfn/quickstart.toml", "--count", "2000",
           "--quiet")

    name = f"streamfn-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, *LIMITS, *volume, "-p", "127.0.0.1::9464", image)
    try:
        port = podman("port", name, "9464").stdout.strip().rsplit(":", 1)[1]
        assert wait_for(f"http://127.0.0.1:{port}/healthz") == "ok\n"
        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the HEALTHCHECK passes"
        deadline = time.monotonic() + 60
        while count_views(state / "out" / "quickstart") < 2000 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count_views(state / "out" / "quickstart") == 2000
        metrics = wait_for(f"http://127.0.0.1:{port}/metrics")
        assert any(line.startswith("streamfn_build_info{") for line in metrics.splitlines())

        podman("stop", "--time", "30", name, timeout=60)
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
        logs = podman("logs", name)
        assert "stopping on SIGTERM" in logs.stdout + logs.stderr
    finally:
        podman("rm", "--force", name, check=False)


def count_views(folder: Path) -> int:
    return sum(row["views"] for rows in output_objects(folder).values() for row in rows) if folder.exists() else 0


def wait_for(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
