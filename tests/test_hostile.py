"""Hostile mail through the real intake: every message ends handled, answered or quarantined with
a plain reason, no traceback, bounded time and memory, and the daemon goes on to the next message."""

from __future__ import annotations

import io
import resource
import tempfile
import time
import zipfile
import zlib
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import Inbound, Request, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import UNVOUCHED, hand_pdf, make_config, request_mail

pytestmark = pytest.mark.servers
UNIT = "dinkes@trenggalekkab.go.id"


def _mail(subject: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = UNIT, "layanan@trenggalekkab.go.id", subject
    m.set_content("Permohonan sub domain, formulir terlampir.")
    return m


def pdf_bomb() -> bytes:
    """A one-page PDF whose content stream inflates to 1 GiB of zeros (about 1 MB on the wire)."""
    z = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    body = b"".join(z.compress(chunk) for _ in range(1024)) + z.flush()
    return hand_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream",
    ])


def docx_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w", force_zip64=True) as f:
            chunk = b"<w:t>" + b"A" * (1 << 20) + b"</w:t>"
            for _ in range(600):
                f.write(chunk)
    return buf.getvalue()


def hostile_messages() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    m = _mail("Permohonan sub domain (PDF)")
    m.add_attachment(pdf_bomb(), maintype="application", subtype="pdf", filename="formulir.pdf")
    out["pdf_bomb"] = m.as_bytes()
    m = _mail("Permohonan sub domain (DOCX)")
    m.add_attachment(docx_bomb(), maintype="application",
                     subtype="vnd.openxmlformats-officedocument.wordprocessingml.document", filename="formulir.docx")
    out["docx_bomb"] = m.as_bytes()
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\nbagian {i}\r\n" for i in range(10_000))
    out["ten_thousand_parts"] = (f"From: {UNIT}\r\nSubject: banyak bagian\r\nMIME-Version: 1.0\r\n"
                                 f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n{parts}--b--\r\n').encode()
    nested = "".join(f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(1000))
    out["deep_nesting"] = f"From: {UNIT}\r\nSubject: dalam\r\nMIME-Version: 1.0\r\n{nested}isi\r\n".encode()
    out["bad_boundary"] = (f"From: {UNIT}\r\nSubject: batas rusak\r\nMIME-Version: 1.0\r\n"
                           'Content-Type: multipart/mixed; boundary="tidak-ada"\r\n\r\n--lain\r\n'
                           "Content-Type: text/plain\r\n\r\nNama Sub Domain : dinkes\r\n--lain--\r\n").encode()
    out["bad_charset"] = (f"From: {UNIT}\r\nSubject: =?x-unknown?q?aneh?=\r\nMIME-Version: 1.0\r\n"
                          "Content-Type: text/plain; charset=x-unknown-9\r\n\r\nNama Sub Domain : dinkes\xff\r\n"
                          ).encode("latin-1")
    big = _mail("Permohonan dengan lampiran besar")
    big.add_attachment(b"%PDF-1.4 " + b"x" * (30 << 20), maintype="application", subtype="pdf", filename="scan.pdf")
    out["oversized_attachment"] = big.as_bytes()
    return out


def test_hostile_mail_ends_with_a_reason_and_the_daemon_goes_on(dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                                bind: Bind) -> None:
    mailbox = dovecot.new_user("layanan")
    base = Path(tempfile.mkdtemp(prefix="hostile-"))
    cfg = make_config(base, imap_port=dovecot.imap_port, imap_user=mailbox.name, imap_password=mailbox.password,
                      mailbox=mailbox.address, smtp_port=smtp_relay.port, dns_port=bind.port, tsig_secret=bind.secret,
                      auth=UNVOUCHED)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    messages = hostile_messages()
    for raw in messages.values():
        dovecot.append(mailbox.name, raw)
    dovecot.append(mailbox.name, request_mail("dinsos@trenggalekkab.go.id", "dinsosh", to=mailbox.address))
    d = Daemon(cfg, sessions)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    d.run_once()
    elapsed = time.monotonic() - started
    d.shutdown(flush_seconds=2)
    with sessions() as s:
        rows = s.execute(select(Inbound).order_by(Inbound.uid)).scalars().all()
        statuses = {name: (r.status, r.error) for name, r in zip([*messages, "normal"], rows, strict=True)}
        # The normal letter after all of them was handled: nothing blocked the queue.
        assert statuses["normal"][0] == "handled"
        assert s.execute(select(Request).where(Request.subdomain == "dinsosh")).scalar_one()
    for name, (status, error) in statuses.items():
        assert status in ("handled", "answered", "quarantined", "unmatched", "ignored"), (name, status)
        if status == "quarantined":
            assert error and "Traceback" not in error, (name, error)  # a reason, not a crash
    over = [statuses[k] for k in ("ten_thousand_parts", "deep_nesting", "oversized_attachment")]
    # The unit is told once a day to send it smaller; the rest wait in quarantine with their reason.
    assert [st for st, _ in over].count("answered") == 1
    assert all(st in ("answered", "quarantined") and err for st, err in over)
    # Bounded: the whole hostile batch in well under the time a stuck parser would take, and memory too.
    assert elapsed < 120, elapsed
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 1_500_000  # KiB
