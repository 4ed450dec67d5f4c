"""The example systemd unit: systemd's own checker accepts it, and it has the directives operators rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines import REPO

UNIT = REPO / "deploy" / "streamfn.service"


def directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_unit_declares_notify_validate_and_restart() -> None:
    lines = directives(UNIT.read_text())
    assert "Type=notify" in lines
    assert "Restart=on-failure" in lines
    assert any(line.startswith("ExecStartPre=") and " validate $PIPELINES" in line for line in lines)
    assert any(line.startswith("ExecStart=") and " run $PIPELINES" in line for line in lines)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines, "what `streamfn run` reloads on (test_reload.py)"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``verify`` also checks that the commands exist: point them at this venv's streamfn."""
    streamfn = Path(sys.executable).parent / "streamfn"
    assert streamfn.exists(), f"{streamfn}: the dev venv's console script"
    unit = tmp_path / "streamfn.service"
    unit.write_text(UNIT.read_text().replace("/opt/streamfn/bin/streamfn", str(streamfn)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "streamfn.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
