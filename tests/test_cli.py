"""The `subdomaind` command line: the parse --json contract, check-config, db upgrade, status, show."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.devkit.localoffice import config_data, parse_mail, request_mail, write_config
from tests.inprocess import run_main as run  # the command line, run by main in this process

SUBDOMAIND = Path(sys.executable).with_name("subdomaind")
CONTRACT_KEYS = {"kind", "message_id", "from", "subject", "request", "reply", "reason"}
REQUEST_KEYS = {"subdomain", "unit", "pic_name", "pic_nip", "pic_position", "pic_email", "pic_phone", "purpose",
                "service", "target_ip", "letter_number", "source", "missing", "problems"}


def run_process(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The installed command as a process of its own: for a daemon pass, which owns signals and threads."""
    return subprocess.run([str(SUBDOMAIND), *args], capture_output=True, timeout=60, check=False)


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


def test_quarantine_list_show_retry_drop(tmp_path: Path) -> None:
    from sqlalchemy import select

    from subdomaind.daemon.config import load_config
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.store import Inbound, make_engine, make_sessionmaker, utcnow

    cfg_path = write_config(tmp_path / "c.toml", config_data(tmp_path))
    cfg = load_config(cfg_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as s:
        for uid, raw in ((1, b"\x00 rusak"), (2, b"From: x@example.org\nSubject: halo\n\nhalo")):
            s.add(Inbound(agency="trenggalek", mailbox="INBOX", uidvalidity=1, uid=uid, message_id=f"<m{uid}@t>",
                          sha256="0", raw=raw, sender="x@example.org", status="quarantined", error="uji",
                          received_at=utcnow(), attempts=1))
    listed = run("--config", str(cfg_path), "quarantine", "list")
    assert listed.returncode == 0 and listed.stdout.count(b"quarantined") == 2
    assert b"rusak" in run("--config", str(cfg_path), "quarantine", "show", "1").stdout
    retried = run("--config", str(cfg_path), "quarantine", "retry", "2")
    assert retried.returncode == 0, retried.stderr
    assert run("--config", str(cfg_path), "quarantine", "drop", "1").returncode == 0
    with make_sessionmaker(engine)() as s:
        rows = {r.id: r for r in s.execute(select(Inbound)).scalars()}
        assert rows[1].status == "dropped" and rows[1].raw.startswith(b"\x00")  # the raw message is kept
        assert rows[2].status == "unmatched" and rows[2].attempts == 2
    # Retries are capped (quarantine_max_retries = 3 by default).
    assert run("--config", str(cfg_path), "quarantine", "retry", "2").returncode == 0
    capped = run("--config", str(cfg_path), "quarantine", "retry", "2")
    assert capped.returncode == 1 and b"sudah dicoba" in capped.stderr


def test_digest_preview_prints_the_queue(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", config_data(tmp_path))
    fresh = run("--config", str(cfg), "digest", "--preview")  # read-only: never creates the database
    assert fresh.returncode == 1 and b"belum ada basis data" in fresh.stderr and not (tmp_path / "state").exists()
    assert run("--config", str(cfg), "db", "upgrade").returncode == 0
    proc = run("--config", str(cfg), "digest", "--preview")
    assert proc.returncode == 0, proc.stderr
    assert b"Ringkasan harian" in proc.stdout and b"ANTREAN PERMOHONAN TERBUKA" in proc.stdout
    html = run("--config", str(cfg), "digest", "--preview", "--html")
    assert b"<table" in html.stdout and b"<script" not in html.stdout


def test_form_pdf_and_docx(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", config_data(tmp_path))
    pdf, docx = tmp_path / "f.pdf", tmp_path / "f.docx"
    assert run("--config", str(cfg), "form", "--pdf", "-o", str(pdf)).returncode == 0
    assert run("--config", str(cfg), "form", "--docx", "-o", str(docx)).returncode == 0
    from pypdf import PdfReader

    assert {"subdomain", "unit", "pic_name", "pic_email"} <= set(PdfReader(str(pdf)).get_fields() or {})
    assert docx.read_bytes()[:2] == b"PK"


def test_logs_redact_addresses_in_errors_and_json_carries_ticket() -> None:
    import logging

    from subdomaind.daemon.cli import JsonLines, RedactErrors

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactErrors())
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("subdomaind.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.warning("gagal mengirim ke %s", "kadis.diskominfo@trenggalekkab.go.id")
    logger.info("decision.accepted SD/2026/0001 <m@x>", extra={"ticket": "SD/2026/0001", "event": "decision.accepted",
                                                              "message_id": "<m@x>"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "k***@trenggalekkab.go.id" in lines[0]["msg"] and "kadis.diskominfo" not in lines[0]["msg"]
    assert lines[1]["ticket"] == "SD/2026/0001" and lines[1]["message_id"] == "<m@x>"
    logger.removeHandler(handler)


def test_plain_text_mail_transport_only_to_loopback(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    data["smtp"]["host"] = "mail.trenggalekkab.go.id"
    data["agency"][0]["imap"]["host"] = "mail.trenggalekkab.go.id"
    proc = run("check-config", str(write_config(tmp_path / "c.toml", data)))
    assert proc.returncode != 0
    assert b"smtp.tls: 'none' is only allowed to a loopback host" in proc.stdout
    assert b"agency[0].imap.tls: 'none' is only allowed to a loopback host" in proc.stdout


def test_loopback_guard_blocks_name_lookups_and_remote_addresses() -> None:
    import socket

    with pytest.raises(OSError, match="loopback-only guard"):
        socket.getaddrinfo("example.net", 53)
    with pytest.raises(OSError, match="loopback-only guard"):
        socket.create_connection(("192.0.2.1", 53), timeout=0.1)
    assert socket.getaddrinfo("127.0.0.1", 53)


def test_decisions_are_vouched_for_unless_none_is_written_and_none_is_warned(tmp_path: Path) -> None:
    from subdomaind.daemon.config import load_config

    data = config_data(tmp_path)
    assert "auth" not in data["agency"][0]
    default = write_config(tmp_path / "default.toml", data)
    assert load_config(default).agencies[0].auth.require == "authres_or_dkim"  # safe by default
    proc = run("check-config", str(default))
    assert proc.returncode == 0
    assert b"auth" not in proc.stdout + proc.stderr  # safe: DKIM verified here (the log at start advises)
    data["agency"][0]["auth"] = {"require": "none"}
    proc = run("check-config", str(write_config(tmp_path / "none.toml", data)))
    assert proc.returncode == 0
    assert b"WARNING: agency[0].auth.require: 'none': decisions are not vouched for" in proc.stdout
    data["agency"][0]["auth"] = {"require": "authres_or_dkim", "authserv_id": "mx.trenggalekkab.go.id"}
    proc = run("check-config", str(write_config(tmp_path / "pinned.toml", data)))
    assert proc.returncode == 0 and b"auth" not in proc.stdout + proc.stderr
    from subdomaind.daemon.config import config_warnings

    assert [w.split(":")[0] for w in config_warnings(load_config(default))] == ["agency[0].auth.authserv_id"]
    data["agency"][0]["auth"] = {"require": "authres"}
    proc = run("check-config", str(write_config(tmp_path / "bad.toml", data)))
    assert proc.returncode != 0 and b"authserv_id is required" in proc.stdout


@pytest.mark.servers
def test_outbox_list_release_drop_held_mail(tmp_path: Path, dovecot, smtp_relay) -> None:  # type: ignore[no-untyped-def]
    """Mail over the daily cap is held: staff see it (list, digest), send it (release) or drop it."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from subdomaind.daemon.config import load_config
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.mailer import Mailer
    from subdomaind.workflows.store import Outbox, make_engine, make_sessionmaker

    office, unit = dovecot.new_user("layanan"), dovecot.new_user("unit")
    cfg_path = write_config(tmp_path / "c.toml", config_data(
        tmp_path, imap_port=dovecot.imap_port, imap_user=office.name, imap_password=office.password,
        mailbox=office.address, smtp_port=smtp_relay.port))
    cfg = load_config(cfg_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    mailer = Mailer(agency_id="trenggalek", agency_name="Diskominfo", address=office.address,
                    zone="trenggalekkab.go.id", clock=lambda: datetime.now(UTC), daily_cap=1)
    with make_sessionmaker(engine).begin() as s:
        for n in range(3):  # the first goes out, the next two are over the cap of 1
            mailer.queue(s, to=[unit.address], template="staff_alert", purpose="ack", ticket=f"SD/2026/000{n}",
                         context={"ticket": f"SD/2026/000{n}", "problem": f"uji {n}", "subdomain": "dinsos"})
    with make_sessionmaker(engine)() as s:
        ids = [o.id for o in s.execute(select(Outbox).order_by(Outbox.id)).scalars()]
        statuses = [o.status for o in s.execute(select(Outbox).order_by(Outbox.id)).scalars()]
    assert statuses == ["queued", "held", "held"]
    sent_id, keep_id, drop_id = ids

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = run("--config", str(cfg_path), *args)
        assert b"Traceback" not in proc.stderr, proc.stderr
        return proc

    listed = cli("outbox", "list")
    assert listed.returncode == 0 and listed.stdout.count(b"held") == 2 and unit.address.encode() in listed.stdout
    digest = cli("digest", "--preview")
    assert b"SUREL DITAHAN (2)" in digest.stdout and f"#{keep_id}".encode() in digest.stdout
    assert b"Surel ditahan" in cli("digest", "--preview", "--html").stdout
    # Bad input: a clear line each, never a traceback.
    assert cli("outbox", "release").returncode == 2
    assert cli("outbox", "release", "abc").returncode == 2
    missing = cli("outbox", "drop", "99999")
    assert missing.returncode == 1 and missing.stderr.count(b"\n") == 1 and b"tidak ditemukan" in missing.stderr
    not_held = cli("outbox", "release", str(sent_id))
    assert not_held.returncode == 1 and b"berstatus queued" in not_held.stderr
    released = cli("outbox", "release", str(keep_id))
    assert released.returncode == 0 and released.stdout.count(b"\n") == 1
    dropped = cli("outbox", "drop", str(drop_id))
    assert dropped.returncode == 0 and dropped.stdout.count(b"\n") == 1
    assert cli("outbox", "release", str(drop_id)).returncode == 1  # dropped stays dropped
    # The next pass sends the released mail and the first one, never the dropped one.
    assert run_process("--config", str(cfg_path), "once").returncode == 0
    subjects = sorted(str(parse_mail(m)["Subject"]) for m in unit.messages())
    assert len(subjects) == 2 and "SD/2026/0000" in subjects[0] and "SD/2026/0001" in subjects[1]
    with make_sessionmaker(engine)() as s:
        rows = {o.id: o for o in s.execute(select(Outbox)).scalars()}
        assert rows[keep_id].status == "sent" and rows[drop_id].status == "dropped" and rows[drop_id].raw is None
    assert b"tidak ada surel yang ditahan" in cli("outbox", "list").stdout


def test_the_password_key_is_demanded_and_made_0600(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    del data["secrets"]
    proc = run("check-config", str(write_config(tmp_path / "nokey.toml", data)))
    assert proc.returncode == 78 and b"secrets.key_file" in proc.stdout and b"subdomaind keygen" in proc.stdout
    key = tmp_path / "credentials" / "pic-secret-key"
    key.parent.mkdir()
    made = run("keygen", str(key))
    assert made.returncode == 0 and made.stdout.count(b"\n") == 1
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    again = run("keygen", str(key))
    assert again.returncode == 1 and b"sudah ada" in again.stderr and key.read_bytes() == before
    data["secrets"] = {"key_file": str(key)}
    assert run("check-config", str(write_config(tmp_path / "key.toml", data))).returncode == 0
    key.write_text("bukan kunci\n")
    bad = run("check-config", str(write_config(tmp_path / "key.toml", data)))
    assert bad.returncode == 78 and b"secrets.key_file" in bad.stdout and b"Traceback" not in bad.stdout + bad.stderr


def test_check_config_warns_when_the_descriptor_limit_is_too_low_for_the_agencies(tmp_path: Path) -> None:
    import copy
    import resource

    data = config_data(tmp_path)
    one = data["agency"][0]
    many = []
    for i in range(30):
        ag = copy.deepcopy(one)
        ag["id"] = f"kab{i}"
        ag["imap"]["user"] = f"layanan{i}"
        many.append(ag)
    data["agency"] = many
    path = write_config(tmp_path / "many.toml", data)

    def low_limit() -> None:  # 30 agencies need about 110 descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    proc = subprocess.run([str(SUBDOMAIND), "check-config", str(path)], capture_output=True, timeout=60,
                          check=False, preexec_fn=low_limit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert b"WARNING: 30 agencies need about 110 file descriptors" in proc.stdout
    assert b"LimitNOFILE=" in proc.stdout
    ok = run("check-config", str(path))  # the usual 1024 is plenty for 30
    assert ok.returncode == 0 and b"file descriptors" not in ok.stdout
