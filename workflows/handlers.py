"""One handler per kind of inbound mail, tried in order (GitLab's `Handler.for`); the first that can, does.

Each handler's `execute` returns the message's final status (handled, answered, ignored, unmatched, quarantined) or
raises a `Refusal`. Order matters: a message the parser refused (over a limit) or could not read comes
first, so no rule after it sees a message without its text; our own mail, bounces and auto-replies are
caught before anything could treat them as a decision or a request, so they can never change state or be
answered (no mail loops).
"""

from __future__ import annotations

import email.parser
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select

from subdomaind.parsers.model import MANDATORY_FIELDS, ParseResult, RequestFields
from subdomaind.workflows.answers import request_status, roles_of, waiting_on_roles, who_is
from subdomaind.workflows.engine import (
    Ctx,
    alert_staff,
    apply_decision,
    audit,
    cancel_decision,
    delegates_of,
    finish_step,
    form_attachments,
    letter_siblings_waiting,
    open_letter_requests,
    open_request,
    requester_addresses,
)
from subdomaind.workflows.errors import (
    AlreadyRequested,
    DecisionNotOffered,
    DecisionUnclear,
    NotParty,
    NotStepActor,
    NotVouched,
    RequesterCannotApprove,
    RequestMismatch,
    StepNotOpen,
    TokenExpired,
    TooLarge,
    TooLateToCancel,
)
from subdomaind.workflows.mailer import LOOP_HEADER, token_hash
from subdomaind.workflows.notices import first_notice_today, record_refusal
from subdomaind.workflows.store import Delegation, Inbound, Outbox, Request, StepRun, raw_head, tx_state
from subdomaind.workflows.vouch import AuthPolicy, vouched
from subdomaind.workflows.worktime import calendar_for

_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# How much of a refused message is read for its sender: a header block longer than this is not a letter.
HEADER_BLOCK_MAX = 65536
_REQUEST_WORDS = re.compile(r"\b(sub[\s-]?domain|subdomain|hosting)\b", re.IGNORECASE)


class Handler(Protocol):
    name: str

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool: ...
    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str: ...


@dataclass(frozen=True)
class StepMatch:
    run: StepRun
    request: Request
    via: str  # "token" | "message-id" | "subject"
    # For a token match: the ticket that the thread or the subject names when it is another request's, or
    # "" when neither names any request. None: they agree with the token.
    named: str | None = None


def _thread_requests(ctx: Ctx, parsed: ParseResult) -> set[int]:
    """The requests that our mails named in In-Reply-To/References belong to (RFC 5322 section 3.6.4)."""
    msg = parsed.message
    mids = [m for m in (msg.in_reply_to, *msg.references) if m] if msg is not None else []
    if not mids:
        return set()
    s = ctx.session
    found = set(s.execute(select(Outbox.request_id).where(Outbox.message_id.in_(mids),
                                                          Outbox.request_id.is_not(None))).scalars())
    found |= set(s.execute(select(StepRun.request_id).where(StepRun.mail_message_id.in_(mids))).scalars())
    return {r for r in found if r is not None}


def _named_elsewhere(ctx: Ctx, parsed: ParseResult, req: Request) -> str | None:
    """Whether the thread and the subject ticket agree with the request a token names.

    A mail client that autocompletes the plus-address of another request's step mail sends a token for
    the wrong request; the thread and the ticket the official wrote are what they meant. So a token
    counts only when the thread or the ticket names its request, and neither names another."""
    thread = _thread_requests(ctx, parsed)
    other = sorted(thread - {req.id})
    if other:
        row = ctx.session.get(Request, other[0])
        return row.ticket if row is not None else ""
    if parsed.ticket and parsed.ticket.upper() != (req.ticket or "").upper():
        return parsed.ticket.upper()
    if not thread and not parsed.ticket:
        return ""  # names no request at all: the token alone may be an autocompleted address
    return None


def match_step(ctx: Ctx, parsed: ParseResult) -> StepMatch | None:
    """The step mail this reply answers: by token, else by In-Reply-To/References, else by the ticket tag."""
    msg = parsed.message
    if msg is None:
        return None
    s = ctx.session
    if parsed.token:
        digest = token_hash(parsed.token)
        run = s.execute(select(StepRun).where(
            or_(StepRun.token_hash == digest, StepRun.reminder_token_hash == digest))).scalars().first()
        if run is not None:
            req = s.get(Request, run.request_id)
            if req is not None and req.agency == ctx.agency.id:
                return StepMatch(run, req, "token", _named_elsewhere(ctx, parsed, req))
    for mid in (msg.in_reply_to, *reversed(msg.references)):
        if not mid:
            continue
        run = s.execute(select(StepRun).where(StepRun.mail_message_id == mid)).scalars().first()
        if run is None:
            # A reply to our echo of a decision (BATAL) names the decided step by the echo's purpose,
            # for clients that do not carry the whole References chain.
            out = s.execute(select(Outbox).where(Outbox.message_id == mid)).scalar_one_or_none()
            if out is not None and out.request_id is not None and out.purpose.startswith("echo."):
                run = s.execute(
                    select(StepRun).where(StepRun.request_id == out.request_id,
                                          StepRun.key == out.purpose.removeprefix("echo."))
                    .order_by(StepRun.id.desc())
                ).scalars().first()
        if run is not None:
            req = s.get(Request, run.request_id)
            if req is not None and req.agency == ctx.agency.id:
                ticket = (parsed.ticket or "").upper()
                return StepMatch(run, req, "message-id",
                                 ticket if ticket and ticket != (req.ticket or "").upper() else None)
    if parsed.ticket:
        req = s.execute(
            select(Request).where(Request.agency == ctx.agency.id, Request.ticket == parsed.ticket)
        ).scalar_one_or_none()
        if req is not None:
            sender = msg.from_addr or ""
            open_runs = s.execute(
                select(StepRun).where(StepRun.request_id == req.id, StepRun.status == "open")
                .order_by(StepRun.id.desc())
            ).scalars().all()
            # Last resort: the tag alone names the request; the step is the open one
            # this sender may decide. Anyone else gets no match here, so the tag grants nothing.
            for run in open_runs:
                if run.role and sender in _allowed(ctx, run.role):
                    return StepMatch(run, req, "subject")
    return None


def match_request(ctx: Ctx, parsed: ParseResult) -> Request | None:
    """The request any of our mails in this thread belongs to (for the requester's own replies)."""
    m = match_step(ctx, parsed)
    if m is not None:
        return m.request
    msg = parsed.message
    if msg is None:
        return None
    for mid in (msg.in_reply_to, *msg.references):
        if not mid:
            continue
        rid = ctx.session.execute(select(Outbox.request_id).where(Outbox.message_id == mid)).scalar_one_or_none()
        if rid is not None:
            req = ctx.session.get(Request, rid)
            if req is not None and req.agency == ctx.agency.id:
                return req
    return None


def _allowed(ctx: Ctx, role: str) -> set[str]:
    return set(ctx.agency.actors.get(role, [])) | delegates_of(ctx, role)


def answerable_sender(header_block: bytes) -> str | None:
    """Whom to tell that a message the parser refused is not taken, from its header block alone: None for
    no readable From, a machine or ourselves (RFC 3834: never answer an automatic mail)."""
    try:
        headers = email.parser.BytesHeaderParser().parsebytes(header_block)
    except Exception:  # noqa: BLE001 - no readable headers: nobody to answer
        return None
    if str(headers.get("Auto-Submitted", "no")).lower() != "no" or headers.get(LOOP_HEADER):
        return None
    sender = email.utils.parseaddr(str(headers.get("From", "")))[1].lower()
    if "@" not in sender or sender.split("@")[0] in ("mailer-daemon", "postmaster"):
        return None
    return sender


class OverLimitHandler:
    """A message over a configured limit (size, parts, nesting): the parser refused to read it. It is kept
    in quarantine with the reason, and its sender is told in Indonesian to send it smaller (`TooLarge`, at
    most once a day). Only its header block is read, for the sender's address: the parse said the rest
    costs too much.

    The refusal is answered here rather than raised: nothing is undone, and a raised refusal rolls the
    savepoint back, after which the row (with the whole letter, the one too large to read) is read again."""

    name = "over_limit"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.over_limit

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        status = UnreadableHandler().execute(ctx, parsed, inbound)
        sender = answerable_sender(raw_head(ctx.session, inbound, HEADER_BLOCK_MAX))
        if sender is None:
            return status
        inbound.sender = sender
        # Told already today: the message stays in quarantine with its reason (never dropped silently).
        return record_refusal(ctx, parsed, inbound, TooLarge(parsed.reason or ""))


class UnreadableHandler:
    """A message the parser could not read (or gave up on: a runaway or a crashed parser): kept in
    quarantine with the reason, for staff; never answered, never acted on."""

    name = "unreadable"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.kind == "unreadable"

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        inbound.error = parsed.reason
        audit(ctx, None, "mail.quarantined", message_id=inbound.message_id, reason=parsed.reason)
        return "quarantined"


class OwnMailHandler:
    """Our own mail coming back (loop header, or sent from our own address): never acted on."""

    name = "own_mail"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        msg = parsed.message
        if msg is None:
            return False
        if msg.header(LOOP_HEADER) is not None:
            return True
        own_local, _, own_domain = ctx.agency.address.partition("@")
        sender = msg.from_addr or ""
        local, _, domain = sender.partition("@")
        return domain == own_domain and local.split("+")[0] == own_local

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        audit(ctx, None, "mail.own_ignored", message_id=inbound.message_id)
        return "ignored"


class BounceHandler:
    """A delivery failure: tied to the mail that bounced, staff alerted, never answered."""

    name = "bounce"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.kind == "bounce"

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        b = parsed.bounce
        assert b is not None
        out = None
        if b.original_message_id:
            out = ctx.session.execute(
                select(Outbox).where(Outbox.message_id == b.original_message_id)
            ).scalar_one_or_none()
        req = ctx.session.get(Request, out.request_id) if out is not None and out.request_id else None
        if req is not None:
            inbound.request_id = req.id
        audit(ctx, req, "mail.bounced", message_id=inbound.message_id,
              failed=list(b.failed_recipients), status=b.status, bounced_mail=b.original_message_id)
        # An alert about a bounced alert would loop; staff see those in the digest instead.
        if out is not None and out.purpose != "alert" and not (b.status or "").startswith("4"):
            alert_staff(ctx, req, f"Surel {out.purpose} ke {', '.join(b.failed_recipients) or '?'} "
                                  f"tidak terkirim ({b.status or 'tanpa kode'}): {b.reason}")
        return "handled"


class AutoReplyHandler:
    """Out-of-office and other RFC 3834 auto-replies: recorded, never a decision, never answered."""

    name = "auto_reply"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.kind == "auto_reply"

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        req = match_request(ctx, parsed)
        audit(ctx, req, "mail.auto_reply", actor=inbound.sender or "?", message_id=inbound.message_id,
              reason=parsed.reason)
        return "ignored"


class DecisionReplyHandler:
    """An official's answer to an approval step mail: every check passes, or it is refused."""

    name = "decision"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        if parsed.kind != "reply":
            return False
        # The requester answering our mail to them is the next handler's business, unless they are
        # answering an approval step mail itself (forwarded to them): that is refused here.
        m = match_step(ctx, parsed)
        return m is not None and m.run.kind == "approval"

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        m = match_step(ctx, parsed)
        assert m is not None and parsed.message is not None and parsed.reply is not None
        run, req = m.run, m.request
        inbound.request_id = req.id
        sender = parsed.message.from_addr or ""
        step = ctx.sop.step(run.key)
        ctx_info = {"ticket": req.ticket, "step_title": step.title, "role_title": ctx.role_title(run.role)}
        assert run.role is not None
        auth = ctx.agency.auth
        # Vouching first: a forged sender must not even make us write to the official it impersonates.
        ok, how = vouched(parsed.message, inbound.raw, AuthPolicy(auth.require, auth.authserv_id),
                          ctx.services.dkim_txt)
        if not ok:
            raise NotVouched(how, **ctx_info)
        if m.named is not None:
            # The token (or thread) and what the official wrote name different requests, or the token
            # names nothing they wrote: decide nothing, and say which request the reply was addressed to.
            raise RequestMismatch(
                f"balasan ditujukan ke {req.ticket} tetapi "
                + (f"menyebut {m.named}" if m.named else "tidak menyebut nomor tiket maupun utas surel"),
                named=m.named, **ctx_info)
        if m.via == "subject" and auth.require == "none":
            # The ticket number alone is guessable (SD/2026/0042): without a server vouching for From, a
            # tag-only reply would be From-only authorisation, the hole peers were reported for.
            raise NotStepActor("balasan tanpa token dan tanpa rujukan surel langkah, pengirim tidak terverifikasi",
                               **ctx_info)
        if sender in requester_addresses(req):
            # Checked before the official's own address: nobody decides on their own request.
            raise RequesterCannotApprove(f"pemohon {sender} tidak dapat memutuskan langkah {run.key}", **ctx_info)
        if sender in ctx.agency.actors.get(run.role, []):
            on_behalf_of = None
        elif sender in delegates_of(ctx, run.role):
            on_behalf_of = run.role
        else:
            raise NotStepActor(f"{sender} bukan pejabat langkah {run.key} ({run.role})", **ctx_info)
        decision = parsed.reply.decision
        if decision == "cancel":
            # BATAL answers the decided step (usually through our echo mail): it undoes that decision
            # while what it led to has not happened yet (the undo window).
            if run.status != "done" or not cancel_decision(ctx, run, actor=sender, message_id=inbound.message_id):
                raise TooLateToCancel(f"BATAL untuk langkah {run.key} terlambat atau tidak berlaku", **ctx_info)
            return "handled"
        if run.status != "open":
            raise StepNotOpen(f"langkah {run.key} sudah {run.status} ({run.outcome})", **ctx_info)
        # The step mail is the capability, whether the reply names it by token or by Message-ID: both expire.
        if m.via in ("token", "message-id") and run.token_expires_at is not None and run.token_expires_at < ctx.now():
            raise TokenExpired(f"token langkah {run.key} kedaluwarsa", **ctx_info)
        if decision == "unclear":
            raise DecisionUnclear("balasan tidak memuat keputusan yang jelas",
                                  text=parsed.reply.text[:500], **ctx_info)
        if decision not in step.on:
            raise DecisionNotOffered(f"keputusan {decision} tidak tersedia pada langkah {run.key}",
                                     decision=decision, **ctx_info)
        apply_decision(ctx, run, decision=decision, actor=sender, note=parsed.reply.note,
                       message_id=inbound.message_id, rules=parsed.reply.rules, on_behalf_of=on_behalf_of)
        return "handled"


class RequesterReplyHandler:
    """The requester answering us: a corrected form while we wait for them, else a note on the request."""

    name = "requester_reply"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        if parsed.kind not in ("reply", "request") or parsed.message is None:
            return False
        req = match_request(ctx, parsed)
        return req is not None and _sender(parsed) in requester_addresses(req)

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        req = match_request(ctx, parsed)
        assert req is not None
        inbound.request_id = req.id
        waiting = ctx.session.execute(
            select(StepRun).where(StepRun.request_id == req.id, StepRun.status == "open",
                                  StepRun.kind == "wait_requester")
        ).scalars().first()
        if waiting is None:
            audit(ctx, req, "requester.message", actor=_sender(parsed), message_id=inbound.message_id)
            return "handled"
        step = ctx.sop.step(waiting.key)
        if "problem" in step.on or "confirm" in step.on:
            return self._admin_answer(ctx, parsed, inbound, req, waiting)
        new = parsed.request.to_json() if parsed.request is not None else {}
        req.fields = merge_fields(req.fields or {}, new)
        req.subdomain = req.fields.get("subdomain")
        req.unit = req.fields.get("unit")
        audit(ctx, req, "request.corrected", actor=_sender(parsed), message_id=inbound.message_id,
              fields=sorted(k for k, v in new.items() if v and k in MERGE_KEYS))
        finish_step(ctx, waiting, "ok")
        self._complete_letter_siblings(ctx, parsed, inbound, req, new)
        return "handled"

    def _complete_letter_siblings(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound, req: Request,
                                  new: dict[str, Any]) -> None:
        """One letter asking for several names was asked for its gaps once: the answer completes each of
        its requests still waiting for the requester (every field but the name, which is each one's own)."""
        shared = {k: v for k, v in new.items() if k not in ("subdomain", "subdomains")}
        for sibling, run in letter_siblings_waiting(ctx, req):
            step = ctx.sop.step(run.key)
            if "problem" in step.on or "confirm" in step.on:
                continue
            sibling.fields = merge_fields(sibling.fields or {}, shared)
            sibling.unit = sibling.fields.get("unit")
            audit(ctx, sibling, "request.corrected", actor=_sender(parsed), message_id=inbound.message_id,
                  fields=sorted(k for k, v in shared.items() if v and k in MERGE_KEYS), via=req.ticket)
            finish_step(ctx, run, "ok")


    def _admin_answer(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound, req: Request, waiting: StepRun) -> str:
        """The unit's IT admin after the reply letter: KENDALA (with what fails) or a confirmation."""
        reply = parsed.reply
        decision = reply.decision if reply is not None else "unclear"
        text = (reply.text if reply is not None else "") or ""
        if decision == "unclear" and any(w in text.lower() for w in ctx.parse_options.vocabulary.confirm):
            decision = "confirm"
        outcome = {"problem": "problem", "approve": "confirm", "confirm": "confirm"}.get(decision)
        if outcome is None:
            audit(ctx, req, "requester.message", actor=_sender(parsed), message_id=inbound.message_id)
            return "handled"
        note = (reply.note or reply.text) if reply is not None else None
        audit(ctx, req, f"requester.{outcome}", actor=_sender(parsed), message_id=inbound.message_id, note=note)
        finish_step(ctx, waiting, outcome, note=note)
        return "handled"


_DELEGATION_RE = re.compile(
    r"^\s*(?P<cmd>PLT|PLH|CABUT)\s+(?P<role>[a-z_]+)\s+(?P<addr>[^\s@]+@[^\s@]+)"
    r"(?:\s+sampai\s+(?P<until>\d{4}-\d{2}-\d{2}))?", re.IGNORECASE)


class DelegationHandler:
    """The Kepala Dinas registers an acting official by mail: "PLT kabid nama@… sampai 2026-12-31",
    "PLH …", or "CABUT kabid nama@…". Only the head of the SOP (the role with no superior) may, and only
    when the mail is vouched for as decisions are."""

    name = "delegation"

    def _command(self, parsed: ParseResult) -> re.Match[str] | None:
        msg = parsed.message
        if msg is None:
            return None
        text = parsed.reply.text if parsed.reply is not None else (msg.text or "")
        first = next((line for line in text.splitlines() if line.strip()), "")
        return _DELEGATION_RE.match(first) or _DELEGATION_RE.match(msg.subject or "")

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        heads = [r.key for r in ctx.sop.roles.values() if not r.superior and not r.requester]
        sender = parsed.message.from_addr if parsed.message else None
        return (self._command(parsed) is not None
                and any(sender in ctx.agency.actors.get(h, []) for h in heads))

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        m = self._command(parsed)
        assert m is not None and parsed.message is not None
        sender = parsed.message.from_addr or ""
        ctx_info = {"ticket": None, "step_title": "pendaftaran Plt/Plh", "role_title": "Kepala Dinas"}
        auth = ctx.agency.auth
        if auth.require == "none":
            # A mail naming an acting official carries no token: only a server-vouched sender may do it.
            raise NotVouched("pendaftaran Plt/Plh melalui surel memerlukan verifikasi pengirim (auth.require)",
                             **ctx_info)
        ok, how = vouched(parsed.message, inbound.raw, AuthPolicy(auth.require, auth.authserv_id),
                          ctx.services.dkim_txt)
        if not ok:
            raise NotVouched(how, **ctx_info)
        role, addr, cmd = m.group("role").lower(), m.group("addr").lower(), m.group("cmd").upper()
        if role not in ctx.sop.roles or ctx.sop.roles[role].requester:
            raise DecisionNotOffered(f"peran {role!r} tidak ada dalam SOP", decision=cmd, **ctx_info)
        tx_state(ctx.session).delegates.clear()  # engine.delegates_of asks again after this change
        if cmd == "CABUT":
            rows = ctx.session.execute(select(Delegation).where(
                Delegation.agency == ctx.agency.id, Delegation.role == role, Delegation.address == addr,
                Delegation.revoked_at.is_(None))).scalars().all()
            for row in rows:
                row.revoked_at = ctx.now()
        else:
            until = None
            if m.group("until"):
                day = datetime.strptime(m.group("until"), "%Y-%m-%d").date()
                until = datetime.combine(day, time(23, 59), ZoneInfo(ctx.agency.timezone))
            ctx.session.add(Delegation(agency=ctx.agency.id, role=role, address=addr, kind=cmd.title(), until=until,
                                       registered_by=sender, message_id=inbound.message_id, created_at=ctx.now()))
        audit(ctx, None, f"delegation.{cmd.lower()}", actor=sender, message_id=inbound.message_id, role=role,
              address=addr, until=m.group("until"))
        ctx.mailer.queue(
            ctx.session, to=sorted({sender, addr}), template="delegation",
            context={"cmd": cmd, "role_title": ctx.role_title(role), "address": addr, "until": m.group("until"),
                     "by": sender},
            purpose="delegation", in_reply_to=inbound.message_id,
        )
        return "handled"


_SUBJECT_PREFIX = re.compile(r"^\s*((re|balas|bls|aw|sv|fw|fwd|tr)\s*:\s*)+", re.IGNORECASE)
_STATUS_RE = re.compile(r"^\s*STATUS(?:\s+(?P<ticket>[A-Z]{1,6}/\d{4}/\d{4,6}))?\s*[.!?]?\s*$", re.IGNORECASE)
_QUEUE_RE = re.compile(r"^\s*ANTR[EI]AN\s*[.!?]?\s*$", re.IGNORECASE)
# Requests one STATUS without a ticket answers for (the sender's own, newest first).
STATUS_MAX_REQUESTS = 10


def _command(parsed: ParseResult, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """A one-word command as the first line the sender wrote (not the quoted mail), or as the subject."""
    msg = parsed.message
    if msg is None:
        return None
    text = parsed.reply.text if parsed.reply is not None else (msg.text or "")
    first = next((line for line in text.splitlines() if line.strip()), "")
    subject = _SUBJECT_PREFIX.sub("", msg.subject or "")
    return pattern.match(first) or pattern.match(subject)


class StatusHandler:
    """STATUS: the timeline of a request, for anyone who takes part in it (its requester, an official or
    an acting one). Named by a reply to any of the request's mails or by "STATUS SD/2026/0042"; a requester
    sees only their own requests (all open ones when no ticket is named). The answer goes to the From
    address alone, so a forged From learns nothing: it only makes us write to the real party, under the
    daily cap. Anyone else gets nothing."""

    name = "status"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.kind in ("reply", "request", "unrelated") and _command(parsed, _STATUS_RE) is not None

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        m = _command(parsed, _STATUS_RE)
        assert m is not None
        sender = _sender(parsed)
        if not _PLAIN_ADDRESS.match(sender):
            raise NotParty(f"alamat pengirim tidak sah: {sender[:100]!r}")
        official = bool(roles_of(ctx, sender))
        named = (m.group("ticket") or "").upper() or None
        reqs: list[Request] = []
        if named is not None:
            req = ctx.session.execute(
                select(Request).where(Request.agency == ctx.agency.id, Request.ticket == named)).scalar_one_or_none()
            reqs = [req] if req is not None else []
        else:
            req = match_request(ctx, parsed)
            if req is None and parsed.ticket:
                req = ctx.session.execute(select(Request).where(
                    Request.agency == ctx.agency.id, Request.ticket == parsed.ticket)).scalar_one_or_none()
            if req is not None:
                reqs = [req]
            elif not official:
                reqs = [r for r in ctx.session.execute(
                    select(Request).where(Request.agency == ctx.agency.id, Request.status == "open")
                    .order_by(Request.id.desc())).scalars() if sender in requester_addresses(r)][:STATUS_MAX_REQUESTS]
        # The requester sees only their own; an official or acting official any of this agency's.
        reqs = [r for r in reqs if official or sender in requester_addresses(r)]
        if not reqs:
            raise NotParty(f"{sender} tidak terlibat dalam permohonan {named or parsed.ticket or '(tanpa tiket)'}")
        calendar = calendar_for(ctx.agency)
        now = ctx.now()
        statuses = [request_status(ctx, calendar, r, now) for r in reqs]
        one = reqs[0] if len(reqs) == 1 else None
        if one is not None:
            inbound.request_id = one.id
        audit(ctx, one, "status.answered", actor=sender, message_id=inbound.message_id,
              tickets=[r.ticket for r in reqs])
        ctx.mailer.queue(ctx.session, to=[sender], template="status",
                         context={"statuses": statuses, "official": official},
                         purpose="status", request_id=one.id if one else None, ticket=one.ticket if one else None,
                         in_reply_to=inbound.message_id)
        return "answered"


class QueueHandler:
    """ANTREAN: the steps waiting on an official (or an acting one while the delegation lasts), overdue
    first. The sender is checked as for a decision: vouched for by our MTA where the agency asks for it,
    else the mail must answer one of that official's step mails (its token or Message-ID). A forged or
    unknown ANTREAN gets nothing."""

    name = "queue"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return parsed.kind in ("reply", "request", "unrelated") and _command(parsed, _QUEUE_RE) is not None

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        assert parsed.message is not None
        sender = _sender(parsed)
        roles = roles_of(ctx, sender) if _PLAIN_ADDRESS.match(sender) else {}
        if not roles:
            raise NotParty(f"{sender[:100]} tidak memegang peran dalam SOP")
        auth = ctx.agency.auth
        ctx_info = {"ticket": None, "step_title": "ANTREAN", "role_title": ctx.role_title(next(iter(roles)))}
        ok, how = vouched(parsed.message, inbound.raw, AuthPolicy(auth.require, auth.authserv_id),
                          ctx.services.dkim_txt)
        if not ok:
            raise NotVouched(how, **ctx_info)
        if auth.require == "none":
            # No server vouches for From: only the step mail itself (its token or Message-ID, which only
            # its recipients know, and which expire) shows the sender is the official.
            m = match_step(ctx, parsed)
            if (m is None or m.via == "subject" or m.run.role not in roles
                    or (m.run.token_expires_at is not None and m.run.token_expires_at < ctx.now())):
                raise NotVouched("ANTREAN tanpa token langkah yang berlaku dan pengirim tidak terverifikasi",
                                 **ctx_info)
        calendar = calendar_for(ctx.agency)
        items = waiting_on_roles(ctx, calendar, roles, ctx.now(), one_tap=auth.require != "none")
        audit(ctx, None, "queue.answered", actor=sender, message_id=inbound.message_id, roles=sorted(roles),
              tickets=[it["ticket"] for it in items])
        ctx.mailer.queue(
            ctx.session, to=[sender], template="antrean",
            context={"items": items, "who": who_is(ctx, sender), "tag_replies": auth.require != "none",
                     "overdue": sum(1 for it in items if it["overdue"])},
            purpose="antrean", in_reply_to=inbound.message_id)
        return "answered"


MERGE_KEYS = (
    "subdomain", "unit", "pic_name", "pic_nip", "pic_position", "pic_email", "pic_phone", "purpose",
    "service", "target_ip", "target_cname", "nameservers", "letter_number", "letter_date", "letter_subject",
    "unit_head",
)


def merge_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The corrected record: new values win; a field's old problem stays only if it was not given again."""
    merged = dict(old)
    given = {k for k in MERGE_KEYS if new.get(k)}
    for k in given:
        merged[k] = new[k]
    old_problems = [p for p in old.get("problems", []) or [] if isinstance(p, dict) and p.get("field") not in given]
    new_problems = [p for p in new.get("problems", []) or [] if isinstance(p, dict)]
    merged["problems"] = old_problems + new_problems
    merged["missing"] = [f for f in MANDATORY_FIELDS if not merged.get(f)]
    origins = dict(old.get("origins", {}) or {})
    origins.update(new.get("origins", {}) or {})
    merged["origins"] = origins
    for stale in ("check", "dns_plan", "dns_diff"):  # computed again from the corrected values
        merged.pop(stale, None)
    return merged


def _sender(parsed: ParseResult) -> str:
    msg = parsed.message
    assert msg is not None
    return (msg.from_addr or "").lower()


_FORM_ASK = re.compile(r"\b(minta|mohon|meminta|permintaan|butuh|perlu)\b[^\n]{0,40}\bformulir\b", re.IGNORECASE)


class FormRequestHandler:
    """"Minta formulir": someone asks for the request form; answered with the PDF and DOCX form."""

    name = "form_request"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        msg = parsed.message
        if msg is None or parsed.kind not in ("request", "unrelated"):
            return False
        if parsed.request is not None and parsed.request.subdomain:
            return False  # a filled-in request that mentions the form is a request
        return bool(_FORM_ASK.search(f"{msg.subject or ''}\n{(msg.text or '')[:1000]}"))

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        sender = _sender(parsed)
        if not _PLAIN_ADDRESS.match(sender):
            inbound.error = f"alamat pengirim tidak sah: {sender[:100]!r}"
            return "unmatched"
        first = first_notice_today(ctx, sender, "form")
        audit(ctx, None, "form.requested", actor=sender, message_id=inbound.message_id, answered=first)
        if not first:
            return "handled"  # once a day is enough; never a loop
        ctx.mailer.queue(ctx.session, to=[sender], template="form", context={"sender": sender, "zone": ctx.agency.zone},
                         purpose="form", in_reply_to=inbound.message_id, attachments=form_attachments(ctx))
        return "answered"


class NewRequestHandler:
    """A new request letter: a ticket, an acknowledgement, and the SOP's first step."""

    name = "new_request"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        if parsed.kind == "request":
            return True
        # A letter with no recognisable form ("Mohon dibuatkan sub domain ...") is still a request:
        # the requester is told what is missing instead of hearing nothing.
        msg = parsed.message
        return (
            parsed.kind == "unrelated"
            and msg is not None
            and bool(_REQUEST_WORDS.search(f"{msg.subject or ''} {(msg.text or '')[:3000]}"))
        )

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        msg = parsed.message
        assert msg is not None
        requester = (msg.forwarded_from or msg.from_addr or "").lower()
        if not _PLAIN_ADDRESS.match(requester):
            # One plain address or nothing: an encoded From that decodes to a list must not become our
            # recipient list.
            inbound.error = f"alamat pengirim tidak sah: {requester[:100]!r}"
            audit(ctx, None, "mail.bad_sender", message_id=inbound.message_id, sender=requester[:200])
            return "unmatched"
        if parsed.request is not None:
            fields = parsed.request.to_json()
        else:
            fields = RequestFields(missing=MANDATORY_FIELDS).to_json()
        # A letter may ask for several names ("sub domain ppid dan jdih"): one request each.
        names = [n for n in fields.get("subdomains") or [] if n] or [fields.get("subdomain")]
        fresh: list[str | None] = []
        dup = None
        for label in names:
            same = ctx.session.execute(
                select(Request).where(Request.agency == ctx.agency.id, Request.subdomain == label,
                                      Request.status == "open", Request.requester == requester)
            ).scalars().first() if label else None
            if same is None:
                fresh.append(label)
            dup = dup or same
        if dup is not None and not fresh:
            inbound.request_id = dup.id
            raise AlreadyRequested(f"permohonan {dup.subdomain} sudah ada ({dup.ticket})", ticket=dup.ticket,
                                   subdomain=dup.subdomain or "")
        files = msg.attachments
        if len(fresh) > 1:
            open_letter_requests(ctx, requester=requester, fields=fields, names=[str(n) for n in fresh],
                                 source_message_id=inbound.message_id, inbound=inbound, attachments=files)
            return "handled"
        open_request(ctx, requester=requester, fields={**fields, "subdomain": fresh[0]},
                     source_message_id=inbound.message_id, inbound=inbound, attachments=files)
        return "handled"


class UnmatchedHandler:
    """Everything else: kept, listed in the digest's "unmatched" list, never opening a request."""

    name = "unmatched"

    def can_handle(self, ctx: Ctx, parsed: ParseResult) -> bool:
        return True

    def execute(self, ctx: Ctx, parsed: ParseResult, inbound: Inbound) -> str:
        inbound.error = parsed.reason or "balasan tidak dapat dicocokkan dengan langkah mana pun"
        audit(ctx, None, "mail.unmatched", actor=inbound.sender or "?", message_id=inbound.message_id,
              kind=parsed.kind, reason=inbound.error)
        return "unmatched"


HANDLERS: tuple[Handler, ...] = (
    # What the parser could not read is nothing else: no rule below sees a message without its text.
    OverLimitHandler(),
    UnreadableHandler(),
    OwnMailHandler(),
    BounceHandler(),
    AutoReplyHandler(),
    # Before decisions and the requester's replies: "STATUS" answering a step mail asks, it decides nothing.
    StatusHandler(),
    QueueHandler(),
    DecisionReplyHandler(),
    RequesterReplyHandler(),
    DelegationHandler(),
    FormRequestHandler(),
    NewRequestHandler(),
    UnmatchedHandler(),
)


def handler_for(ctx: Ctx, parsed: ParseResult) -> Handler:
    for handler in HANDLERS:
        if handler.can_handle(ctx, parsed):
            return handler
    raise AssertionError("UnmatchedHandler takes everything")
