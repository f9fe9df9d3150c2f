"""Take one inbound message into the database: store it, run its handler, record what became of it.

One pass from bytes to store (`ingest`): prepare the bytes (`prepare`: issued passwords blanked), parse
them once (the parse made ahead in a parser worker is of these very bytes, unless preparing changed
them), store the message, run the first handler of workflows/handlers.py that takes it (a message over a
limit and an unreadable one included).

`ingest` runs inside the caller's transaction, which also holds the intake checkpoint (last UID) and
everything the message causes (state, audit, outbox). The handler runs in a savepoint: a refusal or a
crash rolls back only what the handler did, and the message itself is kept with its status and reason,
so every message ends handled, answered, ignored, unmatched or quarantined (DESIGN, "Bad input").
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
import traceback
from collections.abc import Iterator

from sqlalchemy import select

from subdomaind.parsers import parse
from subdomaind.parsers.model import ParsedMessage, ParseResult
from subdomaind.workflows.engine import Ctx, audit
from subdomaind.workflows.errors import Refusal
from subdomaind.workflows.handlers import Handler, handler_for
from subdomaind.workflows.notices import charge_unverified, record_refusal
from subdomaind.workflows.provision import PASSWORD_ALPHABET, PASSWORD_LENGTH
from subdomaind.workflows.rawmail import RawMail, Spooled, pieces, sha256, whole
from subdomaind.workflows.store import (
    Account,
    Inbound,
    store_inbound_raw,
    tx_state,
)

log = logging.getLogger("subdomaind.inbound")


def synthetic_message_id(digest: str) -> str:
    """A stable id for a message that has none (from its SHA-256), so the same bytes are recognised twice."""
    return f"<sha256.{digest[:40]}@subdomaind.invalid>"


# A password as workflows/provision.py makes them, standing alone (not inside a longer token).
_PASSWORD_RE = re.compile(
    rb"(?<![A-Za-z0-9])[" + re.escape(PASSWORD_ALPHABET.encode()) + rb"]{%d}(?![A-Za-z0-9])" % PASSWORD_LENGTH)


_PASSWORD_TEXT_RE = re.compile(_PASSWORD_RE.pattern.decode())


def _decoded_texts(msg: ParsedMessage) -> Iterator[str]:
    for m in (msg, *msg.attached_messages):
        yield from (t for t in (m.text, m.html) if t)
        yield from (a.data.decode("utf-8", "replace") for a in m.attachments if a.content_type.startswith("text/"))


def _quoted_passwords(raw: RawMail) -> dict[bytes, str]:
    """Each token of `raw` shaped like one of our passwords, with its SHA-256; a file is read in pieces,
    each scanned with the end of the one before (so that a token across two pieces is seen)."""
    found: set[bytes] = set()
    tail = b""
    for piece in pieces(raw):
        window = tail + bytes(piece) if tail else piece
        found.update(_PASSWORD_RE.findall(window))
        tail = bytes(window[-(PASSWORD_LENGTH + 1):])
    return {c: hashlib.sha256(c).hexdigest() for c in found}


def _quoted_in_text(ctx: Ctx, parsed: ParseResult | None) -> bool:
    """Whether the decoded text parts of `parsed` quote one of our passwords (True when not parsed)."""
    if parsed is None or parsed.message is None:
        return True
    quoted = {hashlib.sha256(t.encode()).hexdigest()
              for text in _decoded_texts(parsed.message) for t in _PASSWORD_TEXT_RE.findall(text)}
    return bool(_issued(ctx, quoted))


# A text part sent as base64 hides a quoted password from the byte scan; text parts are looked into only
# up to this size (text mail; a message that large is not a reply quoting a letter).
_TEXT_SCAN_MAX = 2_000_000


def _attachments_quoting(ctx: Ctx, parsed: ParseResult | None) -> set[str]:
    """SHA-256 of each PDF or .eml attachment whose text (read by the parser) quotes a password we issued."""
    if parsed is None or not parsed.attachment_text:
        return set()
    found = {key: {hashlib.sha256(t.encode()).hexdigest() for t in _PASSWORD_TEXT_RE.findall(text)}
             for key, text in parsed.attachment_text}
    issued = _issued(ctx, set().union(*found.values()))
    return {key for key, digests in found.items() if digests & issued}


_BLANKED_ATTACHMENT = ("Lampiran {name} dihapus oleh sistem layanan sub domain karena memuat kata sandi akun "
                       "yang telah diterbitkan. Pesan lainnya disimpan seperti aslinya.\n")


def redact_issued_passwords(ctx: Ctx, raw: RawMail, parsed: ParseResult | None = None) -> RawMail:
    """Blank out any password we issued that comes back quoted in a reply (the PIC answering BERHASIL
    under the credential mail): the password must not reach the database after delivery. Only its
    SHA-256 is kept to recognise it. `parsed` (the parse of `raw`) says whether a text part encoded as
    base64 or quoted-printable holds one, or a PDF or .eml attachment does, so the message is only
    re-read when it does. A text part, also inside a forwarded message (message/rfc822), is rewritten
    with the password blanked; a PDF or .eml file that holds one is replaced by a short note saying so
    (its bytes cannot be blanked in place). A letter in a file is read into memory only when it quotes
    one (workflows/rawmail.py)."""
    candidates = _quoted_passwords(raw)
    issued = _issued(ctx, candidates.values())
    in_files = _attachments_quoting(ctx, parsed)
    if isinstance(raw, Spooled):
        if not issued and not in_files and (len(raw) > _TEXT_SCAN_MAX or not _quoted_in_text(ctx, parsed)):
            return raw
        raw = raw.read()
    for token, digest in candidates.items():
        if digest in issued:
            raw = raw.replace(token, b"*" * len(token))
    if not in_files:
        if len(raw) > _TEXT_SCAN_MAX or b"base64" not in raw.lower():
            return raw
        if not _quoted_in_text(ctx, parsed):
            return raw  # the decoded text holds none of our passwords: nothing to rewrite
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        changed = False
        for part in msg.walk():
            if part.is_multipart():
                continue  # a forwarded message (message/rfc822) is walked into: its text parts come next
            if part.get_content_maintype() != "text":
                data = part.get_payload(decode=True) if in_files else None
                if isinstance(data, bytes) and hashlib.sha256(data).hexdigest() in in_files:
                    name = part.get_filename() or "tanpa nama"
                    part.set_content(_BLANKED_ATTACHMENT.format(name=name), disposition="attachment",
                                     filename=f"{name}.dihapus.txt")
                    changed = True
                continue
            content = part.get_content()
            found = {t: hashlib.sha256(t.encode()).hexdigest() for t in set(_PASSWORD_TEXT_RE.findall(content))}
            hits = [t for t, d in found.items() if d in _issued(ctx, found.values())]
            if hits:
                for t in hits:
                    content = content.replace(t, "*" * len(t))
                part.set_content(content, subtype=part.get_content_subtype())
                changed = True
        return msg.as_bytes() if changed else raw
    except Exception:  # noqa: BLE001 - a message the stdlib cannot rewrite is kept as the byte scan left it
        return raw


def prepare(ctx: Ctx, raw: RawMail, parsed: ParseResult | None = None) -> RawMail:
    """The bytes that are stored, parsed and handled: `raw` with every password we issued that comes back
    quoted blanked (`redact_issued_passwords`; `parsed`, the parse of `raw` made ahead, says where to look).
    Returns `raw` itself when nothing was blanked: then that parse is the parse of the prepared bytes."""
    return redact_issued_passwords(ctx, raw, parsed)


def _issued(ctx: Ctx, digests: object) -> set[str]:
    wanted = list(digests)  # type: ignore[call-overload]
    if not wanted:
        return set()
    found = ctx.session.execute(select(Account.secret_hash).where(Account.secret_hash.in_(wanted))).scalars()
    return {h for h in found if h}


def ingest(ctx: Ctx, *, mailbox: str, uidvalidity: int, uid: int, raw: RawMail,
           parsed: ParseResult | None = None) -> Inbound | None:
    """Handle one message (`parsed`: the parse of `raw` made ahead, in a worker). Returns its row, or None
    when the same message was already taken in."""
    s = ctx.session
    seen = s.execute(
        select(Inbound).where(Inbound.agency == ctx.agency.id, Inbound.mailbox == mailbox,
                              Inbound.uidvalidity == uidvalidity, Inbound.uid == uid)
    ).scalar_one_or_none()
    if seen is not None:
        return None
    prepared = prepare(ctx, raw, parsed)
    if parsed is None or prepared is not raw:
        # Parsed here only when no parse was made ahead, or preparing blanked a password that the parse
        # made ahead holds: what is stored and handled is the prepared text.
        parsed = parse(whole(prepared), ctx.parse_options)
    raw = prepared
    msg = parsed.message
    digest = sha256(raw)
    message_id = (msg.message_id if msg is not None and msg.message_id else None) or synthetic_message_id(digest)
    message_id = message_id[:990]
    if s.execute(select(Inbound.id).where(Inbound.message_id == message_id)).first() is not None:
        # The same Message-ID again (a copy in another folder, a re-delivery): never handled twice.
        audit(ctx, None, "mail.duplicate", message_id=message_id, uid=uid)
        return None
    now = ctx.now()
    row = Inbound(
        agency=ctx.agency.id,
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=uid,
        message_id=message_id,
        sha256=digest,
        sender=msg.from_addr if msg is not None else None,
        subject=(msg.subject or "")[:500] if msg is not None else None,
        kind=parsed.kind,
        status="received",
        received_at=now,
        attempts=1,
    )
    s.add(row)
    # The handler is chosen before the row is written, so that it is one INSERT, not an INSERT and an
    # UPDATE (each flush costs the ORM about 1 ms: bench/backlog.py).
    handler = handler_for(ctx, parsed)
    row.handler = handler.name
    store_inbound_raw(s, row, raw)  # an IntegrityError: another process took it meanwhile (scale-out)
    run_handler(ctx, parsed, row, handler)
    return row


def run_handler(ctx: Ctx, parsed: ParseResult, row: Inbound, handler: Handler | None = None) -> None:
    s = ctx.session
    if handler is None:
        handler = handler_for(ctx, parsed)
        row.handler = handler.name
    # A rollback of the savepoint drops its audit rows and what the transaction had read (workflows.store,
    # TxState.forget).
    state = tx_state(s)
    state.queued = []
    savepoint = s.begin_nested()
    try:
        status = handler.execute(ctx, parsed, row)
        queued, state.queued = state.queued or [], None
        charge_unverified(ctx, parsed, row, queued)
        # Written with the handler's rows, in the savepoint's one flush.
        row.status = status
        row.handled_at = ctx.now()
        savepoint.commit()
        return
    except Refusal as refusal:
        request_id = row.request_id  # the handler tied it to a request; the rollback must not lose that
        savepoint.rollback()
        state.queued = None  # the handler's mail went with its savepoint
        row.request_id = request_id
        row.status = record_refusal(ctx, parsed, row, refusal)
        row.error = refusal.reason
    except Exception as exc:  # the per-message boundary: only here is a bare Exception caught
        savepoint.rollback()
        state.queued = None
        row.status = "quarantined"
        row.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        log.exception("message %s quarantined", row.message_id)
        audit(ctx, None, "mail.quarantined", message_id=row.message_id, reason=f"{type(exc).__name__}: {exc}",
              handler=handler.name)
    row.handled_at = ctx.now()


def retry_inbound(ctx: Ctx, row: Inbound) -> str:
    """Run a kept message through parsing and its handler again (after a fix or a config change)."""
    row.attempts += 1
    row.error = None
    parsed = parse(row.raw, ctx.parse_options)
    row.kind = parsed.kind
    if parsed.kind == "unreadable":
        row.status = "quarantined"
        row.error = parsed.reason
    else:
        run_handler(ctx, parsed, row)
    audit(ctx, None, "mail.retried", message_id=row.message_id, status=row.status, attempt=row.attempts)
    return row.status
