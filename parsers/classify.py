"""Classify one inbound message and extract what it carries (`parsers.parse` is this module's `parse`)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from subdomaind.parsers.autoreply import detect_auto_reply, detect_bounce
from subdomaind.parsers.mime import OverLimit, UnreadableMessage, parse_mime
from subdomaind.parsers.model import Limits, ParsedMessage, ParseOptions, ParseResult
from subdomaind.parsers.pdf import text_layer
from subdomaind.parsers.reply import extract_reply
from subdomaind.parsers.request import extract_request
from subdomaind.parsers.tags import find_ticket, find_token

_REPLY_SUBJECT_PREFIXES = ("re:", "balas:", "bls:", "aw:", "sv:", "vs:", "r:")


def _looks_like_reply(subject: str | None) -> bool:
    s = (subject or "").strip().lower()
    return s.startswith(_REPLY_SUBJECT_PREFIXES)


def parse(raw: bytes, options: ParseOptions | None = None) -> ParseResult:
    """Classify one message: bounce, auto-reply, reply to one of our mails, request, or unrelated.

    Never raises for bad input: an unreadable message is a result with kind "unreadable" and the reason.
    """
    opts = options or ParseOptions()
    try:
        msg = parse_mime(raw, opts.limits)
    except UnreadableMessage as exc:
        return ParseResult(kind="unreadable", message=None, reason=str(exc), over_limit=isinstance(exc, OverLimit))
    except (RecursionError, MemoryError, ValueError, LookupError, TypeError) as exc:
        return ParseResult(kind="unreadable", message=None, reason=f"pesan tidak dapat dibaca: {exc}")
    result = _classify(msg, opts)
    texts = attachment_texts(msg, opts.limits)
    return replace(result, attachment_text=texts) if texts else result


def _is_pdf(content_type: str, filename: str | None) -> bool:
    return content_type == "application/pdf" or (filename or "").lower().endswith(".pdf")


def attachment_texts(msg: ParsedMessage, limits: Limits) -> tuple[tuple[str, str], ...]:
    """What a reader sees in each PDF attachment (its text layer) and each .eml file that is not a
    message/rfc822 part (its text, HTML and PDFs), keyed by the attachment's SHA-256."""
    out: dict[str, str] = {}
    for m in (msg, *msg.attached_messages):
        for att in m.attachments:
            if not att.data:
                continue
            key = hashlib.sha256(att.data).hexdigest()
            if key in out:
                continue
            if _is_pdf(att.content_type, att.filename):
                out[key] = text_layer(att.data, limits)
            elif (att.filename or "").lower().endswith(".eml") and not att.content_type.startswith("message/"):
                try:
                    inner = parse_mime(att.data, limits)
                except Exception:  # noqa: BLE001, S112 - an unreadable file is just a file
                    continue
                parts = [inner.text or "", inner.html or ""]
                parts += [text_layer(a.data, limits) for a in inner.attachments if _is_pdf(a.content_type, a.filename)]
                out[key] = "\n".join(parts)
    return tuple((k, v) for k, v in out.items() if v.strip())


def _classify(msg: ParsedMessage, opts: ParseOptions) -> ParseResult:
    # A bounce is checked before an auto-reply: a DSN often carries Auto-Submitted too.
    bounce = detect_bounce(msg)
    if bounce is not None:
        return ParseResult(kind="bounce", message=msg, bounce=bounce, reason=bounce.reason)
    auto = detect_auto_reply(msg)
    if auto is not None:
        return ParseResult(kind="auto_reply", message=msg, auto_reply=auto, reason=auto.reason)

    ticket = find_ticket(msg, opts.ticket_prefix)
    token = find_token(msg)
    if token or ticket or (msg.in_reply_to and _looks_like_reply(msg.subject)):
        reply = extract_reply(msg, opts.vocabulary)
        # A corrected form in a reply counts only from what the sender just wrote (and attached): the
        # quoted mail of ours holds example values ("Nama Sub Domain : (contoh: dinsos)").
        request = extract_request(replace(msg, text=reply.text, html=None), opts)
        return ParseResult(kind="reply", message=msg, reply=reply, request=request, ticket=ticket, token=token)
    request = extract_request(msg, opts)
    if request is not None:
        return ParseResult(kind="request", message=msg, request=request)
    return ParseResult(kind="unrelated", message=msg, reason="bukan permohonan sub domain dan bukan balasan")
