"""Build real-shaped mail for the tests: a request letter, and an official's reply to one of our mails."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

REQUEST_BODY = """Dengan hormat,

Bersama ini kami mengajukan permohonan pembuatan sub domain untuk Dinas Sosial.

Nama Sub Domain : {label}
Unit Kerja : Dinas Sosial Kabupaten Trenggalek
Nama Penanggung Jawab : Lukman Hakim
NIP : 19870412 201001 1 003
Jabatan : Pengelola Website
Email : {pic}
No. HP : 0812-3456-7890
Keperluan : Situs informasi layanan bantuan sosial
Nomor Surat : 555/123/406.012/2026

Demikian permohonan kami, atas perhatian Bapak/Ibu kami sampaikan terima kasih.

Kepala Dinas Sosial
"""


def request_mail(sender: str, label: str = "dinsos", *, to: str = "layanan@trenggalekkab.go.id",
                 pic: str | None = None, body: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Dinas Sosial <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"Permohonan Sub Domain {label}.trenggalekkab.go.id"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="dinsos.example")
    msg.set_content(body if body is not None else REQUEST_BODY.format(label=label, pic=pic or sender))
    return msg.as_bytes()


def reply_to(original: bytes, sender: str, text: str) -> bytes:
    """A reply as a mail client makes it: To = the Reply-To, threading headers, the original quoted."""
    import email
    import email.policy

    orig = email.message_from_bytes(original, policy=email.policy.default)
    body = orig.get_body(preferencelist=("plain",))
    quoted = "\n".join("> " + line for line in (body.get_content() if body else "").splitlines())
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = parseaddr(str(orig["Reply-To"] or orig["From"]))[1]
    msg["Subject"] = "Re: " + str(orig["Subject"])
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg["In-Reply-To"] = str(orig["Message-ID"])
    msg["References"] = str(orig["Message-ID"])
    msg.set_content(f"{text}\n\nPada {orig['Date']} Layanan Sub Domain <{orig['From']}> menulis:\n{quoted}\n")
    return msg.as_bytes()
