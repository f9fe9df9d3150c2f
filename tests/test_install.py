"""The README's "Install for real" runs as written, in a temporary root, on this Debian 12 machine.

Every line of the block runs in order under bash with the paths moved below a temporary root; what is left
out, and why: `apt-get` (its packages must already be installed: checked instead), `adduser` (a system
user; the group becomes the caller's), `systemctl` (no unit is started in a test) and `--connect` (it would reach
the example's real servers). The configuration is edited where the README says "then edit it".
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# In /usr/sbin, which is not on a non-root user's PATH on Debian.
TSIG_KEYGEN = shutil.which("tsig-keygen", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "tsig-keygen"


def _block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Install for real"):]
    block = section[section.index("```sh") + 5:section.index("```", section.index("```sh") + 5)]
    return [line for line in block.strip().splitlines() if line.strip()]


@pytest.mark.system
@pytest.mark.skipif(shutil.which("git") is None, reason="git is missing")
def test_install_for_real_runs_as_written() -> None:
    lines = _block()
    apt = next(line for line in lines if line.startswith("apt-get install"))
    packages = [w for w in apt.split()[2:] if not w.startswith("-")]
    assert {"python3-venv", "tesseract-ocr-ind", "fonts-dejavu-core"} <= set(packages)
    for pkg in packages:
        state = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        assert "install ok installed" in state.stdout, f"{pkg} (from the README's apt line) is not installed"
    assert any("daemon-reload" in line for line in lines)
    root = Path(tempfile.mkdtemp(prefix="install-"))
    root.chmod(0o755)
    try:
        script = ["set -euo pipefail", f"mkdir -p {root}/etc/systemd/system {root}/opt"]
        for line in lines:
            if line.startswith(("apt-get ", "adduser ")) or "--connect" in line:
                continue
            line = line.replace("/etc/", f"{root}/etc/").replace("/opt/subdomaind", f"{root}/opt/subdomaind")
            line = line.replace("-g subdomaind", f"-g {grp.getgrgid(os.getgid()).gr_name}")
            line = re.sub(r" && systemctl .*$", "", line)
            if "tsig-secret" in line:
                key = subprocess.run([TSIG_KEYGEN, "-a", "hmac-sha256", "subdomaind"], capture_output=True,
                                     text=True, check=True).stdout
                line = line.replace("printf '%s' 'key \"subdomaind\" { algorithm hmac-sha256; secret \"…\"; };'",
                                    "printf '%s' " + "'" + key.replace("'", "") + "'")
            if ".venv/bin/subdomaind check-config" in line:
                # "then edit it": the signer and the state directory of this machine.
                cfg = f"{root}/etc/subdomaind/config.toml"
                script.append(f"sed -i -e 's/(nama Kepala Dinas)/Drs. Contoh Pejabat, M.Si/' "
                              f"-e 's/000000000000000000/197106091992011002/' "
                              f"-e 's#/var/lib/subdomaind#{root}/var/lib/subdomaind#' {cfg}")
            script.append(line)
        proc = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=900,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                                   "SUBDOMAIND_REPO": str(ROOT)})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "OK: 1 agency(ies): trenggalek" in proc.stdout
        assert (root / "etc/systemd/system/subdomaind.service").exists()
        for name in ("imap-password", "smtp-password", "tsig-secret"):
            assert (root / "etc/subdomaind/credentials" / name).stat().st_mode & 0o077 == 0
        version = subprocess.run([str(root / "opt/subdomaind/.venv/bin/subdomaind"), "--version"],
                                 capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.startswith("subdomaind ")
        # The product installs under one name; the dev kit (test servers, demo office) stays in the checkout.
        site = next((root / "opt/subdomaind/.venv/lib").glob("python3*/site-packages"))
        assert (site / "subdomaind/daemon/cli.py").exists() and (site / "subdomaind/parsers/labels.toml").exists()
        assert not {"daemon", "parsers", "workflows", "templates", "tests"} & {p.name for p in site.iterdir()}
        shipped = [p.name for p in (site / "subdomaind").rglob("*.py")]
        assert not {"devservers.py", "localoffice.py", "netguard.py", "sitecustomize.py"} & set(shipped)
    finally:
        shutil.rmtree(root, ignore_errors=True)
