"""Provisioning that is safe to automate, and hostile form fields, on the real servers (issues 5 and 7).

- The `command` hosting backend runs a real script: no shell, the password on stdin, checked exit code;
  it creates an account file the test reads.
- The password the command was given is the one the PIC's credential mail carries; quoted back in base64,
  it is stored blanked (the full search for it is tests/test_pic_password.py).
- Hostile values in the form (CR/LF, template syntax, HTML, SQL, shell) are stored and shown literally.
"""

from __future__ import annotations

import json
import re
import secrets
import stat
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select

from subdomaind.daemon.config import load_config
from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import Request, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import REQUEST_BODY, UNVOUCHED, Office, body_text, parse_mail, reply_to

pytestmark = pytest.mark.servers

SCRIPT = """#!/usr/bin/env python3
import json, os, sys
password = sys.stdin.readline().rstrip("\\n")
out = {"argv": sys.argv[2:], "password": password, "env_has_password": "SUBDOMAIND_PASSWORD" in os.environ,
       "env_has_credentials": "CREDENTIALS_DIRECTORY" in os.environ}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(out) + "\\n")
print("akun dibuat untuk", sys.argv[2])
"""


def _office(base: Path, dovecot: Dovecot, relay: SmtpRelay, bind: Bind, accounts: Path) -> tuple[Office, Daemon]:
    script = base / "buat-akun"
    base.mkdir(parents=True, exist_ok=True)
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    o = Office.create(base, dovecot, relay, bind, auth=UNVOUCHED,
                      hosting={"backend": "command",
                               "argv": [str(script), str(accounts), "{username}", "{fqdn}", "{ip}"],
                               "secret_via": "stdin", "timeout_seconds": 20},
                      agency_extra={"username_pattern": "{pic}_{subdomain}"})
    cfg = load_config(o.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    d = Daemon(cfg, make_sessionmaker(engine))
    o.pump = d.run_once
    return o, d


def test_command_backend_gets_the_password_the_pic_is_sent(dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                                       bind: Bind,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    base = Path(tempfile.mkdtemp(prefix="prov-"))
    accounts = base / "accounts.jsonl"
    o, d = _office(base / "office", dovecot, smtp_relay, bind, accounts)
    # As under systemd, after the config is read: the secrets directory must not reach the command.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(base))
    label = f"k{secrets.token_hex(3)}"
    body = REQUEST_BODY.format(label=label, pic=o.requester.address).replace(
        "Nama Penanggung Jawab : Lukman Hakim", "Nama Penanggung Jawab : Lukman $(touch /tmp/pwned-subdomaind) Hakim")
    o.send_request(label, body=body)
    for role in ("kadis", "kabid", "kasi", "kasi", "kabid", "kadis"):
        o.decide(role, "SETUJU")
    creds = o.wait_mail(o.requester, lambda m: "Kata sandi akun" in str(m["Subject"]))
    password = re.search(r"Kata sandi\s*:\s*(\S+)", body_text(creds)).group(1)  # type: ignore[union-attr]
    # The PIC answers under the credential mail, quoting it, as a client that sends text as base64 would.
    answer = parse_mail(reply_to(creds, o.requester.address, "BERHASIL"))
    answer.set_content(answer.get_content(), cte="base64")
    assert password.encode() not in answer.as_bytes()  # hidden from a byte scan
    o.send(answer.as_bytes(), o.requester.address)
    o.wait_until(lambda: _requests(d)[0].status == "done")
    # The script ran once, without a shell, with the password on stdin only.
    made = [json.loads(line) for line in accounts.read_text().splitlines()]
    assert len(made) == 1
    assert made[0]["argv"][1:] == [f"{label}.trenggalekkab.go.id", "203.0.113.10"]
    assert made[0]["argv"][0].startswith("lukman") and "$" not in made[0]["argv"][0]
    assert made[0]["password"] == password and not made[0]["env_has_password"]
    assert not made[0]["env_has_credentials"]
    assert not Path("/tmp/pwned-subdomaind").exists()
    # Decoded, not only as bytes: the stored reply quotes the letter with the password blanked out.
    from subdomaind.workflows.store import Inbound

    with d.sessions() as s:
        for row in s.execute(select(Inbound)).scalars():
            for part in parse_mail(row.raw).walk():
                if part.get_content_maintype() == "text":
                    assert password not in part.get_content(), row.subject
    d.shutdown(flush_seconds=2)


def test_hostile_form_fields_stay_literal(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    base = Path(tempfile.mkdtemp(prefix="inj-"))
    o, d = _office(base / "office", dovecot, smtp_relay, bind, base / "accounts.jsonl")
    label = f"j{secrets.token_hex(3)}"
    sql = "Situs layanan'; DROP TABLE requests; --"
    body = (REQUEST_BODY.format(label=label, pic=o.requester.address)
            .replace("Unit Kerja : Dinas Sosial Kabupaten Trenggalek",
                     "Unit Kerja : Dinas {{ 7*7 }} <script>alert(1)</script> {% raw %}")
            .replace("Keperluan : Situs informasi layanan bantuan sosial", f"Keperluan : {sql}"))
    o.send_request(label, body=body)
    ack = o.wait_mail(o.requester, lambda m: "diterima" in str(m["Subject"]))
    text = body_text(ack)
    assert "{{ 7*7 }}" in text and "49" not in text.split("Unit kerja")[1].split("\n")[0]
    step = o.wait_mail(o.officials["kadis"], lambda m: "Mohon keputusan" in str(m["Subject"]))
    html = parse_mail(step).get_body(preferencelist=("html",))
    assert html is not None and "<script>" not in html.get_content() and "&lt;script&gt;" in html.get_content()
    req = _requests(d)[0]
    assert "'; DROP TABLE requests;" in req.fields["purpose"]  # stored literally; the table is still there
    d.shutdown(flush_seconds=1)


def test_cr_lf_in_user_text_never_becomes_a_header() -> None:
    from datetime import UTC, datetime
    from unittest.mock import MagicMock

    from subdomaind.workflows.mailer import Mailer

    m = Mailer(agency_id="t", agency_name="Diskominfo\r\nBcc: jahat@example.net", address="layanan@trenggalekkab.go.id",
               zone="trenggalekkab.go.id", clock=lambda: datetime.now(UTC))
    row = m.queue(MagicMock(), to=["a@b.id"], template="staff_alert", purpose="alert", ticket="SD/2026/0001",
                  context={"ticket": "SD/2026/0001", "problem": "x", "subdomain": "dinsos\r\nBcc: jahat@example.net"})
    msg = parse_mail(row.raw)
    assert msg["Bcc"] is None and "jahat" not in str(msg["To"])
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])


def test_dns_illegal_names_are_refused_and_never_sent(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    base = Path(tempfile.mkdtemp(prefix="dnsbad-"))
    o, d = _office(base / "office", dovecot, smtp_relay, bind, base / "accounts.jsonl")
    for bad in ("dinas_sosial", "-dinsos", "dinsos.evil.example", "a" * 64):
        body = REQUEST_BODY.format(label=bad, pic=o.requester.address)
        o.send_request(bad.replace("_", "").replace(".", "")[:20] or "x", body=body)
    o.wait_until(lambda: len(_requests(d)) == 4)
    for req in _requests(d):
        # Refused at the completeness check: the unit is asked to fix the name; nothing reaches DNS.
        assert req.step == "lengkapi_awal", (req.subdomain, req.fields.get("problems"))
        assert req.provisioned is None
        assert any(p["field"] == "subdomain" for p in req.fields["check"]["problems"]) or \
            "subdomain" in req.fields["check"]["missing"]
    asks = [m for m in o.requester.messages() if "perlu dilengkapi" in str(parse_mail(m)["Subject"])]
    assert len(asks) == 4
    d.shutdown(flush_seconds=1)


def _requests(d: Daemon) -> list[Request]:
    with d.sessions() as s:
        return list(s.execute(select(Request).order_by(Request.id)).scalars())
