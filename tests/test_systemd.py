"""The systemd unit: it verifies, and its hardening rates 2.0 or lower (OK) in systemd-analyze security."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "subdomaind.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def test_unit_verifies(tmp_path: Path) -> None:
    # The unit names /opt/subdomaind; point it at this checkout's venv so verify can check the executables.
    exe = Path(sys.executable).with_name("subdomaind")
    text = UNIT.read_text().replace("/opt/subdomaind/.venv/bin/subdomaind", str(exe))
    unit = tmp_path / "subdomaind.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if "subdomaind.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_hardening_rates_ok() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                          text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)
    assert "Type=notify" in UNIT.read_text() and "WatchdogSec=" in UNIT.read_text()
    assert "LoadCredential=" in UNIT.read_text() and "User=subdomaind" in UNIT.read_text()
    assert "RestartPreventExitStatus=78" in UNIT.read_text()
    # A refused configuration must end the main process with 78, not an ExecStartPre= (restarted regardless).
    assert not [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStartPre=")]
