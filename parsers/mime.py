"""Read one RFC 5322 message into a `ParsedMessage`: decoded headers, text and HTML bodies, attachments.

Pure: bytes in, a frozen record out. A message that cannot be read raises `UnreadableMessage` with the
reason; nothing else escapes.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage, Message

from parsers.model import Attachment, Limits, ParsedMessage


class UnreadableMessage(Exception):
    """The bytes are not a message we can read; `str(exc)` is the reason."""


_MSGID_RE = re.compile(r"<[^<>\s]+>")


def _addresses(values: list[str]) -> tuple[str, ...]:
    return tuple(a.lower() for _, a in email.utils.getaddresses(values) if a and "@" in a)


def _header_str(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    return " ".join(str(value).split())


def parse_mime(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    limits = limits or Limits()
    if not raw or not raw.strip():
        raise UnreadableMessage("pesan kosong")
    if len(raw) > limits.max_message_bytes:
        raise UnreadableMessage(f"pesan terlalu besar ({len(raw)} bita)")
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:  # the stdlib parser is lenient; this is a last resort
        raise UnreadableMessage(f"struktur MIME tidak dapat dibaca: {exc}") from exc
    assert isinstance(msg, EmailMessage)
    headers: list[tuple[str, str]] = []
    for key in msg.keys():
        for value in msg.get_all(key, []):
            try:
                headers.append((key, " ".join(str(value).split())))
            except Exception:
                headers.append((key, ""))
    if not any(k.lower() in ("from", "subject", "message-id", "date") for k, _ in headers):
        raise UnreadableMessage("tidak ada header surel (From/Subject/Date)")
    from_pairs = email.utils.getaddresses([str(v) for v in msg.get_all("From", [])])
    from_name, from_addr = (from_pairs[0] if from_pairs else ("", ""))
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    parts = 0
    for part in msg.walk():
        parts += 1
        if parts > limits.max_parts:
            raise UnreadableMessage(f"terlalu banyak bagian MIME (lebih dari {limits.max_parts})")
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if disposition != "attachment" and not filename and ctype in ("text/plain", "text/html"):
            try:
                content = part.get_content()
            except Exception:
                payload = part.get_payload(decode=True) or b""
                content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
            if ctype == "text/plain" and text is None:
                text = content
            elif ctype == "text/html" and html is None:
                html = content
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        if len(data) > limits.max_attachment_bytes:
            raise UnreadableMessage(f"lampiran {filename or ctype} terlalu besar ({len(data)} bita)")
        attachments.append(Attachment(filename=filename, content_type=ctype, data=data))
    date = None
    try:
        dt = msg.get("Date")
        date = dt.datetime if dt is not None and getattr(dt, "datetime", None) else None
    except Exception:
        date = None
    mid = _header_str(msg, "Message-ID")
    irt = _header_str(msg, "In-Reply-To")
    refs = _header_str(msg, "References") or ""
    return ParsedMessage(
        message_id=(_MSGID_RE.search(mid).group(0) if mid and _MSGID_RE.search(mid) else mid),
        from_addr=from_addr.lower() or None,
        from_name=from_name or None,
        to=_addresses([str(v) for v in msg.get_all("To", [])]),
        cc=_addresses([str(v) for v in msg.get_all("Cc", [])]),
        reply_to=_addresses([str(v) for v in msg.get_all("Reply-To", [])]),
        delivered_to=_addresses([str(v) for v in msg.get_all("Delivered-To", [])]),
        subject=_header_str(msg, "Subject"),
        date=date,
        in_reply_to=(_MSGID_RE.search(irt).group(0) if irt and _MSGID_RE.search(irt) else None),
        references=tuple(_MSGID_RE.findall(refs)),
        headers=tuple(headers),
        text=text,
        html=html,
        attachments=tuple(attachments),
        defects=tuple(type(d).__name__ for d in msg.defects),
    )
