"""``make quickstart`` installs streamfn alone: trying it needs no extra and no dev toolchain."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.pipelines import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_quickstart_installs_no_extras_and_setup_installs_the_dev_tools() -> None:
    def planned(target: str) -> str:  # -n prints the commands without running them, -B as on a fresh clone
        done = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    quickstart = planned("quickstart")
    installs = [line for line in quickstart.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [".venv/bin/pip install --quiet -e . -c constraints.txt"]
    assert "streamfn produce configs/quickstart.toml" in quickstart and "--until-caught-up" in quickstart
    assert "[dev]" in planned("setup")
