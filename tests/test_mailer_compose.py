"""The wire form of outgoing mail (workflows/mailer.compose, EmailMessage under policy.SMTP): read back by the
standard library, every header and part says what was written, in CRLF lines a server takes."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest

from subdomaind.workflows.mailer import MailAttachment, compose

LONG_ID = "<" + "a" * 90 + "@mail.dinsos.trenggalekkab.go.id>"
HEADERS = [
    ("From", '"Layanan Sub Domain Dinas Komunikasi dan Informatika Kabupaten Trenggalek" <layanan@trenggalekkab.go.id>'),
    ("To", "kadis@trenggalekkab.go.id, sekretaris@trenggalekkab.go.id"),
    ("Reply-To", "layanan+tabcdef@trenggalekkab.go.id"),
    ("Date", "Mon, 07 Dec 2026 08:00:00 +0700"),
    ("Message-ID", "<sd.2026.0001.step.0123456789ab@trenggalekkab.go.id>"),
    ("In-Reply-To", LONG_ID),
    ("References", f"<x@y.go.id> {LONG_ID} <b@c.go.id>"),
    ("Auto-Submitted", "auto-generated"),
    ("X-Subdomaind-Loop", "trenggalek"),
]
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


def read(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def lines(raw: bytes) -> list[bytes]:
    assert b"\n" not in raw.replace(b"\r\n", b""), "a bare LF"
    return raw.split(b"\r\n")


@pytest.mark.parametrize("subject", [
    "[SD/2026/0013] Balasan belum dapat dipahami: mohon jawab SETUJU atau TOLAK",
    "[SD/2026/0013] Balasan belum dapat dipahami: mohon jawab SETUJU atau TOLAK sebelum tanggal yang ditentukan",
    "[SD/2026/0002] Surat balasan — permohonan “Dinsos” ditolak oleh Kepala Dinas Komunikasi dan Informatika é",
    "Mohon keputusan",
    "[SD/2026/0001] " + "a" * 120 + ".trenggalekkab.go.id diterima",
    "x" * 300,  # one word longer than a line (user text, bounded at 300 by one_line)
])
def test_headers_read_back_as_written(subject: str) -> None:
    raw = compose([*HEADERS, ("Subject", subject)], "Yth. Bapak/Ibu\n", None)
    msg = read(raw)
    assert str(msg["Subject"]) == subject
    # A msg-id is one token: never split or encoded, or no client threads on it (RFC 5322 section 3.6.4).
    assert str(msg["In-Reply-To"]) == LONG_ID
    assert str(msg["References"]).split() == ["<x@y.go.id>", LONG_ID, "<b@c.go.id>"]
    assert str(msg["Message-ID"]) == "<sd.2026.0001.step.0123456789ab@trenggalekkab.go.id>"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Subdomaind-Loop"] == "trenggalek"
    assert msg["From"].addresses[0].display_name.startswith("Layanan Sub Domain")
    head = raw.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 or LONG_ID.encode() in line or b"a" * 78 in line or b"x" * 78 in line
               for line in lines(head))


def test_text_html_inline_image_and_files_nest_as_mime_says() -> None:
    html = '<html><body><p>Mohon keputusan</p><img src="cid:logo@sd"></body></html>\n'
    files = [
        MailAttachment("logo.png", "image/png", b"\x89PNG" * 40, content_id="logo@sd"),
        MailAttachment("Surat Permohonan Dinsos ü.pdf", "application/pdf", PDF),
        MailAttachment("asli.eml", "message/rfc822", b"From: a@b.go.id\r\n\r\nisi\r\n"),
    ]
    text = "Yth. Kepala Dinas — mohon keputusan\n" + "x" * 1200 + "\n"
    raw = compose([*HEADERS, ("Subject", "Mohon keputusan")], text, html, files)
    assert max(len(line) for line in lines(raw)) <= 998
    msg = read(raw)
    assert msg.get_content_type() == "multipart/mixed"
    alternative, pdf, forwarded = msg.iter_parts()
    plain, related = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain" and plain.get_content().replace("\r\n", "\n") == text
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"  # non-ASCII, safe without 8BITMIME
    assert related.get_content_type() == "multipart/related" and related.get_param("type") == "text/html"
    root, logo = related.iter_parts()
    assert root.get_content().replace("\r\n", "\n") == html and root["Content-Transfer-Encoding"] == "7bit"
    assert logo["Content-ID"] == "<logo@sd>" and logo.get_content_disposition() == "inline"
    assert pdf.get_filename() == "Surat Permohonan Dinsos ü.pdf" and pdf.get_content() == PDF
    assert pdf.get_content_disposition() == "attachment"
    # A forwarded letter goes as it came, so the official sees exactly what was sent.
    assert forwarded.get_content_type() == "application/octet-stream"
    assert forwarded.get_content() == b"From: a@b.go.id\r\n\r\nisi\r\n"
    assert [p for p in msg.walk() if p is not msg and p["MIME-Version"]] == []


def test_a_text_only_mail_is_one_ascii_part() -> None:
    raw = compose([*HEADERS, ("Subject", "Tanda terima")], "Permohonan diterima.\n", None)
    msg = read(raw)
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "us-ascii"
    assert msg["MIME-Version"] == "1.0" and msg.get_content().replace("\r\n", "\n") == "Permohonan diterima.\n"


def test_the_policy_is_policy_smtp() -> None:
    """The composing policy differs from the standard library's policy.SMTP only in its header classes."""
    from email.policy import SMTP

    from subdomaind.workflows.mailer import SMTP_POLICY

    for setting in ("linesep", "max_line_length", "cte_type", "utf8", "refold_source", "raise_on_defect",
                    "mangle_from_", "message_factory", "content_manager"):
        assert getattr(SMTP_POLICY, setting) == getattr(SMTP, setting), setting
