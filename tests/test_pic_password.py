"""The PIC's password reaches the PIC alone, on the real servers (Dovecot, SMTP relay, BIND) with the real
`subdomaind run` process.

One request goes to the end. The password is then looked for, decoded, everywhere it must not be: the
SQLite file and its WAL (also as they were while the letter went up for approval), the daemon's log, every
mail in every mailbox (base64 and quoted-printable parts decoded, PDFs as pdftotext reads them, forwarded
messages opened) except the PIC's credential mail itself and the PIC's own answer as it arrived in the
office mailbox, and every PDF. The PIC answers quoting the password in a base64 text part, in a forwarded
.eml and in a PDF: what the daemon stores of that answer holds it nowhere either.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import UNVOUCHED, Office, body_text, parse_mail, reply_to

pytestmark = pytest.mark.servers


def _pdf_text(data: bytes) -> str:
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, timeout=60, check=False)
    return out.stdout.decode("utf-8", "replace")


def _views(raw: bytes, pdfs: list[bytes]) -> Iterator[bytes]:
    """The bytes as stored, then every leaf part decoded (base64, quoted-printable), every PDF as text,
    and every attached message the same way; PDFs found are added to `pdfs`."""
    yield raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    yield from _part_views(msg, pdfs)


def _part_views(msg: Message, pdfs: list[bytes]) -> Iterator[bytes]:
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        yield data
        name = (part.get_filename() or "").lower()
        if part.get_content_type() == "application/pdf" or name.endswith(".pdf"):
            pdfs.append(data)
            yield _pdf_text(data).encode()
        elif name.endswith(".eml") or part.get_content_type().startswith("message/"):
            yield from _views(data, pdfs)


def _hits(password: str, views: Iterator[bytes]) -> int:
    needle = password.encode()
    return sum(1 for v in views if needle in v)


def _pdf_with(text: str) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    y = 800
    for line in text.splitlines():
        c.drawString(60, y, line)
        y -= 16
    c.save()
    return buf.getvalue()


def test_the_pic_password_is_seen_by_the_pic_alone(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    base = Path(tempfile.mkdtemp(prefix="picpw-"))
    base.chmod(0o755)
    o = Office.create(base, dovecot, smtp_relay, bind, auth=UNVOUCHED)
    pic = dovecot.new_user("pic")
    o.start()
    try:
        label = f"pw{secrets.token_hex(3)}"
        o.send_request(label, pic=pic.address)
        for role in ("kadis", "kabid", "kasi"):
            o.decide(role, "SETUJU")
        # Provisioned; the draft letter goes up for approval. The database as a backup would take it now.
        o.decide("kasi", "SETUJU")
        state = Path(o.data["state_dir"])
        during = base / "during-approval"
        during.mkdir()
        for f in state.iterdir():
            if f.is_file():
                shutil.copy2(f, during / f.name)
        for role in ("kabid", "kadis"):
            o.decide(role, "SETUJU")
        letter = o.wait_mail(o.requester, lambda m: "telah aktif" in str(m["Subject"]))
        creds = o.wait_mail(pic, lambda m: "Kata sandi akun" in str(m["Subject"]))
        password = re.search(r"Kata sandi\s*:\s*(\S+)", body_text(creds)).group(1)  # type: ignore[union-attr]
        assert len(password) == 20 and password not in body_text(letter)
        assert pic.address in str(parse_mail(creds)["To"]) and o.requester.address not in str(parse_mail(creds)["To"])

        # The PIC answers under the credential mail: the text in base64, the mail forwarded as .eml, and a
        # PDF "screenshot" of it. All three quote the password.
        answer = parse_mail(reply_to(creds, pic.address, "BERHASIL, sudah dapat digunakan."))
        answer.set_content(answer.get_content(), cte="base64")
        fwd = EmailMessage()
        fwd.set_content(body_text(creds), cte="base64")
        fwd["Subject"] = "Kata sandi"
        answer.add_attachment(fwd)  # message/rfc822
        answer.add_attachment(_pdf_with(f"Catatan akun\nKata sandi: {password}\n"), maintype="application",
                              subtype="pdf", filename="catatan-akun.pdf")
        raw_answer = answer.as_bytes()
        assert password.encode() not in raw_answer  # hidden from a byte scan in all three
        o.send(raw_answer, pic.address)
        o.wait_until(lambda: label not in o.cli("status", "--json").stdout, timeout=60)
    finally:
        assert o.stop() == 0

    searched: dict[str, int] = {}
    hits: dict[str, int] = {}
    pdfs: list[bytes] = []

    def look(kind: str, views: Iterator[bytes]) -> None:
        searched[kind] = searched.get(kind, 0) + 1
        hits[kind] = hits.get(kind, 0) + _hits(password, views)

    # The database files as they are and as they were during the approvals (a backup then).
    for f in [*state.iterdir(), *during.iterdir()]:
        if f.is_file():
            look("database file" if "-wal" not in f.name else "WAL", iter([f.read_bytes()]))
    assert any(f.name.endswith("-wal") for f in during.iterdir())
    then = sqlite3.connect(during / "subdomaind.db")
    assert [v[:7] for (v,) in then.execute("SELECT value FROM pending_secrets")] == ["sdbox1:"]  # it was there, sealed
    then.close()
    log_file = o.base / "daemon.log"
    look("log", iter([log_file.read_bytes()]))
    # What the daemon stored of every message, decoded (the PIC's answer included).
    db = sqlite3.connect(state / "subdomaind.db")
    for (raw,) in db.execute("SELECT raw FROM inbound_raw"):
        look("stored inbound mail", _views(bytes(raw), []))
    db.close()
    # Every mail in every mailbox, decoded, except the PIC's credential mail and the PIC's own answer.
    own = parse_mail(raw_answer)["Message-ID"]
    boxes = {"official": [u for u in o.officials.values()], "staff": [o.staff], "requester": [o.requester],
             "pic": [pic], "office": [o.mailbox]}
    for kind, users in boxes.items():
        for user in users:
            for folder in ("INBOX", "Karantina") if kind == "office" else ("INBOX",):
                try:
                    messages = user.messages(folder)
                except Exception:  # noqa: BLE001 - the quarantine folder exists only once used
                    continue
                for raw in messages:
                    if raw == creds or (kind == "office" and parse_mail(raw)["Message-ID"] == own):
                        continue
                    look(f"mail ({kind})", _views(raw, pdfs))
    for data in pdfs:
        look("PDF", iter([data, _pdf_text(data).encode()]))
    print("\nsearched:", searched, "\nhits:", hits)
    assert searched["PDF"] >= 4  # the draft letter thrice (Kasi, Kabid, Kadis) and the letter
    assert searched["WAL"] >= 1 and searched["stored inbound mail"] >= 8  # the WAL is gone once the daemon stopped
    assert sum(hits.values()) == 0, hits
    # The credential mail itself does hold it: the search would have found it.
    assert _hits(password, _views(creds, [])) > 0
