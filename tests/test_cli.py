"""The `subdomaind` command line: the parse --json contract, check-config, db upgrade, status, show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.localoffice import config_data, request_mail, write_config

SUBDOMAIND = Path(sys.executable).with_name("subdomaind")
CONTRACT_KEYS = {"kind", "message_id", "from", "subject", "request", "reply", "reason"}
REQUEST_KEYS = {"subdomain", "unit", "pic_name", "pic_nip", "pic_position", "pic_email", "pic_phone", "purpose",
                "service", "target_ip", "letter_number", "source", "missing", "problems"}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(SUBDOMAIND), *args], input=stdin, capture_output=True, timeout=60, check=False)


def test_parse_json_contract_for_a_request(tmp_path: Path) -> None:
    eml = tmp_path / "request.eml"
    eml.write_bytes(request_mail("dinsos@example.org", "dinsos"))
    proc = run("parse", str(eml), "--json", "--zone", "trenggalekkab.go.id")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= CONTRACT_KEYS
    assert out["kind"] == "request"
    assert set(out["request"]) >= REQUEST_KEYS
    assert out["request"]["subdomain"] == "dinsos"


@pytest.mark.parametrize("data", [b"", b"\x00\xff\xfe garbage", b"From: x\n\n" + b"=" * 100000])
def test_parse_json_never_tracebacks(tmp_path: Path, data: bytes) -> None:
    eml = tmp_path / "broken.eml"
    eml.write_bytes(data)
    proc = run("parse", str(eml), "--json")
    assert proc.returncode == 0
    assert b"Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= CONTRACT_KEYS
    assert out["kind"] in {"request", "reply", "auto_reply", "bounce", "unrelated", "unreadable"}


def test_check_config_reports_each_problem_with_its_key(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    good = write_config(tmp_path / "good.toml", data)
    assert run("check-config", str(good)).returncode == 0
    data["agency"][0]["actors"].pop("kabid")
    data["agency"][0]["dns"]["tsig_secret_file"] = str(tmp_path / "missing.secret")
    data["agency"][0]["timezone"] = "Asia/Atlantis"
    bad = write_config(tmp_path / "bad.toml", data)
    proc = run("check-config", str(bad))
    assert proc.returncode != 0
    assert b"agency[0].timezone" in proc.stdout
    data["agency"][0]["timezone"] = "Asia/Jakarta"
    proc = run("check-config", str(write_config(tmp_path / "bad2.toml", data)))
    assert b"agency[0].actors.kabid" in proc.stdout and b"agency[0].dns.tsig_secret_file" in proc.stdout
    # The daemon refuses to start on the same config, with the same message.
    started = run("--config", str(tmp_path / "bad2.toml"), "once")
    assert started.returncode != 0 and b"agency[0].actors.kabid" in started.stderr


def test_db_upgrade_status_and_show_on_a_fresh_database(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", config_data(tmp_path))
    assert run("--config", str(cfg), "db", "upgrade").returncode == 0
    assert run("--config", str(cfg), "db", "upgrade").returncode == 0  # safe to run again
    status = run("--config", str(cfg), "status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["requests"] == []
    assert b"TIKET" in run("--config", str(cfg), "status").stdout
    missing = run("--config", str(cfg), "show", "SD/2026/9999")
    assert missing.returncode == 1 and b"tidak ditemukan" in missing.stderr
