"""The generic SOP engine: moves a request through the steps of its agency's SOP definition.

Entering a step does what its kind says (mail the actor with a single-use reply token, notify, wait for
the requester, run an automatic action, or close the request); an outcome (approve, reject, revise,
problem, ok, error, ...) leads where the SOP says. Everything happens in the caller's transaction and
writes its mail to the outbox, so a crash anywhere loses nothing and does nothing twice.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from subdomaind.parsers.model import Attachment, ParseOptions
from subdomaind.workflows.mailer import (
    MailAttachment,
    Mailer,
    Rendered,
    format_deadline,
    format_tanggal,
    letter_files,
    new_token,
    openable_files,
    token_hash,
)
from subdomaind.workflows.mailto import answer_links
from subdomaind.workflows.provision import (
    DnsError,
    DnsStateUnknown,
    GuardedDnsBackend,
    HostingBackend,
    HostingError,
    NameInUse,
    PlanError,
    PlannedRecord,
    RolledBack,
    generate_password,
    make_username,
    plan_records,
    records_from_json,
    records_to_json,
)
from subdomaind.workflows.secretbox import SealedValueError, SecretBox
from subdomaind.workflows.settings import AgencySettings, Settings
from subdomaind.workflows.signing import LetterSigner, SigningError
from subdomaind.workflows.sop import Sop, Step
from subdomaind.workflows.store import (
    Account,
    Counter,
    Decision,
    Delegation,
    Inbound,
    InboundRaw,
    LetterRecord,
    PendingSecret,
    Request,
    StepRun,
    pending_audit,
    raw_in_memory,
    tx_state,
)
from subdomaind.workflows.worktime import WorkCalendar, calendar_for

log = logging.getLogger("subdomaind.engine")

# Actions that touch the network or are irreversible run from the scheduler pass, never inside the
# transaction of an inbound message, so a slow DNS server cannot hold the mailbox up.
DEFERRED_ACTIONS = frozenset({"provision", "recheck_dns"})

DECISION_WORDS = {
    "approve": "SETUJU",
    "reject": "TOLAK",
    "revise": "PERBAIKI",
    "problem": "KENDALA",
    "confirm": "BERHASIL",
    "cancel": "BATAL",
}


class ActionFailed(Exception):
    """An automatic step could not be done; the request goes where the SOP's on.error says."""


@dataclass
class Services:
    """The outside world the engine acts on, passed in (never globals)."""

    dns: GuardedDnsBackend
    hosting: HostingBackend
    # How DKIM public keys are looked up (dkimpy's dnsfunc); None = the system resolver.
    dkim_txt: Callable[..., bytes | None] | None = None
    # Signs every letter PDF (workflows/signing.py); None only when no certificate is configured.
    signer: LetterSigner | None = None


@dataclass
class Ctx:
    session: Session
    config: Settings
    agency: AgencySettings
    sop: Sop
    mailer: Mailer
    services: Services
    clock: Callable[[], datetime]
    parse_options: ParseOptions = field(default_factory=ParseOptions)
    # The agency's working time (Mutu Baku deadlines in the step mails); built from the config when not given.
    calendar: WorkCalendar | None = None
    # Seals the PIC password at rest (`[secrets] key_file`); without it nothing is provisioned.
    box: SecretBox | None = None

    def now(self) -> datetime:
        return self.clock()

    def work_calendar(self) -> WorkCalendar:
        if self.calendar is None:
            self.calendar = calendar_for(self.agency)
        return self.calendar

    def person(self, address: str, role: str | None, *, acting: bool = False) -> dict[str, str]:
        """Who an official is, as a mail names them: name (from `names` in the config) and jabatan (the SOP
        role's title, "Plt./Plh." for an acting official); never a bare mailbox address."""
        jabatan = self.role_title(role) if role else "Pejabat"
        if acting:
            jabatan = f"Plt./Plh. {jabatan}"
        name = self.agency.names.get(address.lower(), "")
        return {"name": name, "jabatan": jabatan, "who": f"{name}, {jabatan}" if name else jabatan}

    def role_title(self, role: str | None) -> str:
        if role is None:
            return "Sistem"
        return self.sop.roles[role].title

    def addresses(self, role: str) -> list[str]:
        return list(self.agency.actors.get(role, []))

    def step_recipients(self, role: str) -> list[str]:
        """The official and any acting official (Plt/Plh): the delegate must see what they may decide."""
        return self.addresses(role) + sorted(delegates_of(self, role) - set(self.addresses(role)))


def delegates_of(ctx: Ctx, role: str) -> set[str]:
    """Acting officials for a role: from config, and those the Kepala Dinas registered by mail."""
    # Asked once per transaction and role (every step mail asks); the delegation handler forgets it.
    cache = tx_state(ctx.session).delegates
    if role not in cache:
        cache[role] = frozenset(ctx.session.execute(
            select(Delegation.address).where(
                Delegation.agency == ctx.agency.id, Delegation.role == role, Delegation.revoked_at.is_(None),
                or_(Delegation.until.is_(None), Delegation.until >= ctx.now()))
        ).scalars())
    return set(ctx.agency.delegates.get(role, [])) | cache[role]


def audit(
    ctx: Ctx,
    req: Request | None,
    event: str,
    *,
    actor: str = "subdomaind",
    message_id: str | None = None,
    **detail: Any,
) -> None:
    pending_audit(ctx.session).append({
        "agency": ctx.agency.id,
        "request_id": req.id if req is not None else None,
        "at": ctx.now(),
        "actor": actor,
        "event": event,
        "detail": detail,
        "message_id": message_id,
    })
    # One line per event, with its ticket and Message-ID (journald / --log-format json).
    log.info("%s %s %s", event, req.ticket if req is not None else "-", message_id or "-",
             extra={"ticket": req.ticket if req is not None else None, "event": event, "message_id": message_id})


def next_number(ctx: Ctx, name: str) -> tuple[int, int]:
    """The next value of a per-agency, per-year sequence (tickets, letter numbers), row-locked."""
    year = ctx.now().astimezone(_tz(ctx)).year
    stmt = select(Counter).where(Counter.agency == ctx.agency.id, Counter.name == name, Counter.year == year)
    row = ctx.session.execute(stmt.with_for_update()).scalar_one_or_none()
    if row is None:
        row = Counter(agency=ctx.agency.id, name=name, year=year, last=0)
        ctx.session.add(row)
    row.last += 1  # written with the caller's next flush; the row is locked (or the database, on SQLite)
    return year, row.last


def _tz(ctx: Ctx) -> Any:
    return ZoneInfo(ctx.agency.timezone)


def summary(ctx: Ctx, req: Request) -> dict[str, Any]:
    """What every mail about a request shows: the request as a clerk would read it."""
    f = req.fields or {}
    # A request opened in this transaction has no decisions yet: no query (and no flush) for its mails.
    opened_now = req.id in tx_state(ctx.session).opened
    history: list[dict[str, Any]] = []
    if not opened_now:
        rows = ctx.session.execute(
            select(Decision, StepRun.role, StepRun.key).outerjoin(StepRun, StepRun.id == Decision.step_id)
            .where(Decision.request_id == req.id, Decision.accepted.is_(True)).order_by(Decision.id)
        ).all()
        for d, role, key in rows:
            # The official by name and jabatan: the role of the step decided, "Plt./Plh." for a delegate.
            person = ctx.person(d.actor, d.on_behalf_of or role, acting=bool(d.on_behalf_of))
            history.append({
                "at": format_tanggal(d.at.astimezone(_tz(ctx)), with_time=True),
                "actor": d.actor,
                **person,
                "role": person["who"],
                "step_title": ctx.sop.steps[key].title if key in ctx.sop.steps else "",
                "decision": DECISION_WORDS.get(d.decision, d.decision.upper()),
                "note": d.note,
            })
    return {
        "ticket": req.ticket,
        "zone": ctx.agency.zone,
        "fqdn": f"{req.subdomain}.{ctx.agency.zone}" if req.subdomain else None,
        "subdomain": req.subdomain,
        "unit": req.unit,
        "requester": req.requester,
        "fields": f,
        "received": format_tanggal(req.received_at.astimezone(_tz(ctx)), with_time=True),
        "history": history,
        "sop_title": ctx.sop.title,
    }


def open_request(
    ctx: Ctx,
    *,
    requester: str,
    fields: dict[str, Any],
    source_message_id: str | None,
    inbound: Inbound | None,
    attachments: Sequence[Attachment] | None = None,
    ack: bool = True,
    start: bool = True,
) -> Request:
    """Open a request; `attachments` are the letter's files as the parser read them (when at hand, the
    step mails attach them without parsing the letter again)."""
    now = ctx.now()
    year, seq = next_number(ctx, "ticket")
    ticket = f"{ctx.agency.ticket_prefix}/{year}/{seq:04d}"
    req = Request(
        agency=ctx.agency.id,
        ticket=ticket,
        status="open",
        step=None,
        subdomain=fields.get("subdomain"),
        unit=fields.get("unit"),
        requester=requester,
        fields=fields,
        source_message_id=source_message_id,
        received_at=inbound.received_at if inbound is not None else now,
        updated_at=now,
        closed_at=None,
    )
    ctx.session.add(req)
    ctx.session.flush()
    tx_state(ctx.session).opened.add(req.id)
    if inbound is not None:
        inbound.request_id = req.id
        # The letter is at hand: the step mails attach it without reading it back (_original_attachment).
        # One stored from its file is not: that query checks its size without reading it.
        held = raw_in_memory(inbound) if source_message_id else None
        if held is not None and source_message_id:
            state = tx_state(ctx.session)
            state.original_attachment[source_message_id] = held if len(held) <= ORIGINAL_ATTACH_LIMIT else None
            files = openable_files(attachments) if attachments is not None and len(held) <= ORIGINAL_ATTACH_LIMIT \
                else None
            if files is not None:
                state.original_files[source_message_id] = files
    audit(ctx, req, "request.received", actor=requester, message_id=source_message_id,
          subdomain=req.subdomain, unit=req.unit, source=fields.get("source"))
    if ack:
        ctx.mailer.queue(
            ctx.session,
            to=[requester],
            template="ack",
            context=summary(ctx, req),
            purpose="ack",
            request_id=req.id,
            ticket=ticket,
            in_reply_to=source_message_id,
        )
    if start:
        enter_step(ctx, req, ctx.sop.start)
    return req


def letter_siblings_waiting(ctx: Ctx, req: Request) -> list[tuple[Request, StepRun]]:
    """The other open requests opened from the same letter that wait for the requester, with their steps."""
    if not req.source_message_id:
        return []
    # Autoflush on: the first name's waiting step may have been added in this very transaction.
    rows = ctx.session.execute(
        select(Request, StepRun).join(StepRun, StepRun.request_id == Request.id).where(
            Request.agency == ctx.agency.id, Request.source_message_id == req.source_message_id,
            Request.id != req.id, Request.status == "open", StepRun.status == "open",
            StepRun.kind == "wait_requester")
    ).all()
    return [(r, run) for r, run in rows]


def letter_sibling_waiting(ctx: Ctx, req: Request) -> StepRun | None:
    """Another request from the same letter already asking the requester for the same gaps (its own
    name's problems aside), or None."""

    def gaps(r: Request) -> tuple[list[str], list[str]]:
        check = (r.fields or {}).get("check") or {}
        return (sorted(check.get("missing") or []),
                sorted(p.get("reason", "") for p in check.get("problems") or [] if p.get("field") != "subdomain"))

    if any(p.get("field") == "subdomain" for p in ((req.fields or {}).get("check") or {}).get("problems") or []):
        return None  # this name has a problem of its own: its own mail says so
    for other, run in letter_siblings_waiting(ctx, req):
        if run.mail_message_id and gaps(other) == gaps(req):
            return run
    return None


def open_letter_requests(
    ctx: Ctx,
    *,
    requester: str,
    fields: dict[str, Any],
    names: list[str],
    source_message_id: str | None,
    inbound: Inbound | None,
    attachments: Sequence[Attachment] | None = None,
) -> list[Request]:
    """One letter asking for several sub-domains: one request per name, each running its own SOP, all
    linked to the letter (the same source message, and each other's tickets in `letter_tickets`), and one
    acknowledgement that lists them all."""
    # Every ticket exists before any SOP starts: the first step's mails (the incomplete letter) name them.
    opened = [
        open_request(ctx, requester=requester, fields={**fields, "subdomain": name}, ack=False, start=False,
                     source_message_id=source_message_id, inbound=inbound, attachments=attachments)
        for name in names
    ]
    tickets = [r.ticket for r in opened]
    for req in opened:
        req.fields = {**(req.fields or {}), "letter_tickets": tickets}
        audit(ctx, req, "request.letter", actor=requester, message_id=source_message_id, tickets=tickets)
    if inbound is not None:
        inbound.request_id = opened[0].id
    first = summary(ctx, opened[0])
    ctx.mailer.queue(
        ctx.session,
        to=[requester],
        template="ack_letter",
        context={**first, "requests": [summary(ctx, r) for r in opened]},
        purpose="ack",
        request_id=opened[0].id,
        ticket=opened[0].ticket,
        in_reply_to=source_message_id,
    )
    for req in opened:
        enter_step(ctx, req, ctx.sop.start)
    return opened


ORIGINAL_ATTACH_LIMIT = 5 * 1024 * 1024


def _original_attachment(ctx: Ctx, req: Request) -> list[MailAttachment]:
    """The unit's letter for the official: the files it came with, each as itself (a PDF as a PDF, a DOCX as
    a DOCX, which phone mail apps open), not the raw message. A very large letter (a high-resolution scan)
    is not copied into every step mail (it would multiply the daemon's memory and the officials' mailboxes):
    the mail says where it is instead. Read once per transaction (a new request sends it in two mails)."""
    if not req.source_message_id:
        return []
    files = tx_state(ctx.session).original_files
    if req.source_message_id not in files:
        raw = _original_raw(ctx, req)
        files[req.source_message_id] = letter_files(raw, ctx.parse_options.limits) if raw else []
    return list(files[req.source_message_id])


def _too_large(ctx: Ctx, req: Request) -> bool:
    """A letter too large to copy into every step mail: the mail says where it is instead."""
    return bool(req.source_message_id) and _original_raw(ctx, req) is None


def _original_raw(ctx: Ctx, req: Request) -> bytes | None:
    assert req.source_message_id is not None
    cache = tx_state(ctx.session).original_attachment
    if req.source_message_id not in cache:
        # The size is checked in the query: a large letter's bytes are never read.
        cache[req.source_message_id] = ctx.session.execute(
            select(InboundRaw.raw).where(
                InboundRaw.inbound_id == select(Inbound.id).where(
                    Inbound.message_id == req.source_message_id).scalar_subquery(),
                func.length(InboundRaw.raw) <= ORIGINAL_ATTACH_LIMIT)
        ).scalar_one_or_none()
    raw = cache[req.source_message_id]
    return bytes(raw) if raw else None


def step_deadline(ctx: Ctx, step: Step, run: StepRun) -> str | None:
    """The step's Mutu Baku counted in working time from when it opened ("Selasa, 8 Desember 2026 pukul
    16.00 WIB"), or None for a step without a time."""
    if step.time is None or run.opened_at is None:
        return None
    cal = ctx.work_calendar()
    return format_deadline(cal.local(cal.deadline(run.opened_at, step.time)))


def step_context(ctx: Ctx, req: Request, step: Step, run: StepRun, *, token: str | None = None,
                 attachments: list[MailAttachment] | None = None) -> dict[str, Any]:
    """What a step mail shows. With the step's token, the one-tap answer links (RFC 6068 mailto:) to the
    step's reply address; the deadline is the step's Mutu Baku in working time, never the token's expiry."""
    data = summary(ctx, req)
    answers = [
        {"word": DECISION_WORDS[o], "then": ctx.sop.steps[target].title}
        for o, target in step.on.items()
        if o in DECISION_WORDS
    ]
    files = attachments or []
    data.update(
        deadline=step_deadline(ctx, step, run),
        buttons=answer_links(ctx.mailer.reply_address(token), req.ticket, step.title, answers) if token else [],
        reply_address=ctx.mailer.reply_address(token),
        attached=[a.filename for a in files],
        draft_name=next((a.filename for a in files if a.filename.startswith("konsep-surat")), None),
        original_too_large=False,
        step_title=step.title,
        step_key=step.key,
        sop_no=step.sop_no,
        role_title=ctx.role_title(step.actor),
        time=step.time.text if step.time else None,
        answers=answers,
        expires=format_tanggal(run.token_expires_at.astimezone(_tz(ctx))) if run.token_expires_at else None,
        note=run.note,
        # Until the records exist, every approver sees the planned change as a diff.
        dns_diff=None if req.provisioned else _fresh_diff(ctx, req),
    )
    return data


def _fresh_diff(ctx: Ctx, req: Request) -> str | None:
    """The DNS change as it would be made now (the request may have been corrected since it was checked)."""
    if not req.subdomain:
        return None
    try:
        return ctx.services.dns.diff_text(planned_records(ctx, req))
    except Exception:  # noqa: BLE001 - the diff is information for the official; the apply re-checks all
        return (req.fields or {}).get("dns_diff")


def enter_step(ctx: Ctx, req: Request, key: str, *, note: str | None = None) -> StepRun:
    step = ctx.sop.step(key)
    now = ctx.now()
    run = StepRun(
        request_id=req.id,
        key=key,
        kind=step.kind,
        role=step.actor,
        status="open",
        opened_at=now,
        note=note,
        attempts=0,
    )
    ctx.session.add(run)
    req.step = key
    req.updated_at = now
    # No flush here: the next query flushes, and fewer, larger flushes let the ORM batch the inserts.
    audit(ctx, req, "step.entered", step=key, kind=step.kind, role=step.actor)

    if step.kind == "end":
        run.status = "done"
        run.closed_at = now
        run.outcome = step.outcome
        req.status = step.outcome or "done"
        req.closed_at = now
        audit(ctx, req, "request.closed", outcome=req.status)
    elif step.kind == "notification":
        assert step.actor is not None
        to_requester = ctx.sop.roles[step.actor].requester
        files = [] if to_requester else _original_attachment(ctx, req)
        ctx.mailer.queue(
            ctx.session,
            to=requester_addresses(req) if to_requester else ctx.addresses(step.actor),
            template=step.template or "notify",
            context={**step_context(ctx, req, step, run, attachments=files),
                     "original_too_large": not to_requester and _too_large(ctx, req)},
            purpose=f"notify.{key}",
            request_id=req.id,
            ticket=req.ticket,
            attachments=files,
        )
        finish_step(ctx, run, "ok", note=note)
    elif step.kind == "wait_requester" and step.silent:
        pass  # the previous mail (the reply letter) already told the requester how to answer
    elif step.kind in ("approval", "wait_requester"):
        token = new_token()
        run.token_hash = token_hash(token)
        run.token_expires_at = now + timedelta(days=ctx.config.workflow.token_days)
        if step.kind == "approval":
            assert step.actor is not None
            to = ctx.step_recipients(step.actor)
            template = step.template or "approval"
            attachments = _original_attachment(ctx, req)
            if req.letter_number and req.provisioned:
                # The draft reply letter goes up for approval; the password is never in a draft.
                from subdomaind.workflows.letters import build_letter  # reportlab (heavy) with the first letter

                draft = build_letter("final", {**letter_context(ctx, req), "draft": True}, agency_id=ctx.agency.id)
                record = _open_reply_record(ctx, req)
                slug = req.ticket.replace("/", "-")
                attachments.append(MailAttachment(f"konsep-surat-balasan-{slug}.pdf", "application/pdf",
                                                  draft.to_pdf(ctx.services.signer,
                                                               doc_id=record.doc_id if record else "")))
            in_reply_to = None
        elif (step.template or "incomplete") == "incomplete":
            if letter_sibling_waiting(ctx, req) is not None:
                # One letter, several names, the same gaps: asked once, in the mail of the first name; the
                # answer completes every request of the letter (RequesterReplyHandler).
                audit(ctx, req, "request.incomplete_asked_once", step=key)
                return run
            # Incomplete: the letter naming each gap, with the form to fill in again, by the step's Mutu
            # Baku (the SOP's time for the unit's letter); the reply token's expiry is no deadline.
            out = queue_letter(ctx, req, "incomplete", {**letter_context(ctx, req),
                                                        "deadline": step_deadline(ctx, step, run)},
                               purpose=f"step.{key}", to=requester_addresses(req), token=token,
                               extra=form_attachments(ctx))
            run.mail_message_id = out.message_id
            return run
        else:
            to = requester_addresses(req)
            template = step.template or "incomplete"
            attachments = []
            in_reply_to = req.source_message_id
        out = ctx.mailer.queue(
            ctx.session,
            to=to,
            template=template,
            context={**step_context(ctx, req, step, run, token=token if step.kind == "approval" else None,
                                    attachments=attachments),
                     "original_too_large": step.kind == "approval" and _too_large(ctx, req)},
            purpose=f"step.{key}",
            request_id=req.id,
            ticket=req.ticket,
            token=token,
            attachments=attachments,
            in_reply_to=in_reply_to,
        )
        run.mail_message_id = out.message_id
    elif step.kind == "action":
        delay = ctx.config.workflow.undo_window_minutes if step.irreversible else 0.0
        run.due_at = now + timedelta(minutes=delay)
        if step.action not in DEFERRED_ACTIONS and run.due_at <= now:
            run_action(ctx, run)
    return run


def requester_addresses(req: Request) -> list[str]:
    addrs = [req.requester]
    pic = (req.fields or {}).get("pic_email")
    if pic and pic not in addrs:
        addrs.append(pic)
    return addrs


def finish_step(ctx: Ctx, run: StepRun, outcome: str, *, note: str | None = None) -> StepRun | None:
    req = ctx.session.get(Request, run.request_id)
    assert req is not None
    step = ctx.sop.step(run.key)
    run.status = "done"
    run.closed_at = ctx.now()
    run.outcome = outcome
    target = step.on.get(outcome)
    if target is None:
        # Validated SOPs give every decision offered a target; an action without on.error stays here.
        run.status = "open"
        run.closed_at = None
        audit(ctx, req, "step.stuck", step=run.key, outcome=outcome)
        alert_staff(ctx, req, f"Langkah {step.title} berhenti: hasil {outcome!r} tidak diatur SOP.")
        return None
    return enter_step(ctx, req, target, note=note)


def alert_staff(ctx: Ctx, req: Request | None, problem: str) -> None:
    ctx.mailer.queue(
        ctx.session,
        to=list(ctx.agency.digest_recipients),
        template="staff_alert",
        context={"ticket": req.ticket if req else None, "problem": problem,
                 "subdomain": req.subdomain if req else None},
        purpose="alert",
        request_id=req.id if req else None,
        ticket=req.ticket if req else None,
    )
    audit(ctx, req, "staff.alerted", problem=problem)


def reissue_step(ctx: Ctx, req: Request, *, by: str) -> StepRun | None:
    """Staff send the open step's mail again with a fresh token (after it expired or went astray)."""
    run = ctx.session.execute(
        select(StepRun).where(StepRun.request_id == req.id, StepRun.status == "open",
                              StepRun.kind.in_(("approval", "wait_requester"))).order_by(StepRun.id.desc())
    ).scalars().first()
    if run is None:
        return None
    run.status = "cancelled"
    run.closed_at = ctx.now()
    audit(ctx, req, "step.reissued", actor=by, step=run.key)
    return enter_step(ctx, req, run.key, note=run.note or "Surel permintaan keputusan dikirim ulang oleh staf.")


# --- decisions ------------------------------------------------------------------------------------

def apply_decision(
    ctx: Ctx,
    run: StepRun,
    *,
    decision: str,
    actor: str,
    note: str | None,
    message_id: str | None,
    rules: tuple[str, ...] = (),
    on_behalf_of: str | None = None,
) -> None:
    """Record an accepted decision, echo it to the official, and move the request on."""
    req = ctx.session.get(Request, run.request_id)
    assert req is not None
    ctx.session.add(
        Decision(
            request_id=req.id,
            step_id=run.id,
            decision=decision,
            actor=actor,
            on_behalf_of=on_behalf_of,
            note=note,
            message_id=message_id,
            accepted=True,
            reason=None,
            rules=list(rules),
            at=ctx.now(),
        )
    )
    audit(ctx, req, "decision.accepted", actor=actor, message_id=message_id, step=run.key,
          decision=decision, note=note, delegate_for=on_behalf_of)
    step = ctx.sop.step(run.key)
    nxt_key = step.on[decision]
    ctx.mailer.queue(
        ctx.session,
        to=[actor],
        template="echo",
        context={**summary(ctx, req), "decision": DECISION_WORDS.get(decision, decision.upper()),
                 "actor": actor, "note": note, "step_title": step.title,
                 "who": ctx.person(actor, on_behalf_of or run.role, acting=bool(on_behalf_of))["who"],
                 "next_title": ctx.sop.steps[nxt_key].title},
        purpose=f"echo.{run.key}",
        request_id=req.id,
        ticket=req.ticket,
        in_reply_to=message_id,
        # The step mail first: a BATAL answered to this echo threads back to the decided step.
        references=[run.mail_message_id] if run.mail_message_id else [],
    )
    finish_step(ctx, run, decision, note=note)


def cancel_decision(ctx: Ctx, run: StepRun, *, actor: str, message_id: str | None) -> bool:
    """BATAL: undo the decision taken at `run` while what it led to has not happened yet.

    Allowed while the step right after it is still open and undecided: an approval nobody has answered
    yet, or an irreversible action still inside its undo window. The decided step is then asked again.
    """
    req = ctx.session.get(Request, run.request_id)
    assert req is not None
    nxt = ctx.session.execute(
        select(StepRun).where(StepRun.request_id == req.id, StepRun.id > run.id).order_by(StepRun.id)
    ).scalars().first()
    if nxt is None or nxt.status != "open":
        return False
    if nxt.kind == "action" and (nxt.due_at is None or nxt.due_at <= ctx.now()):
        return False
    if nxt.kind == "approval" and ctx.session.execute(
        select(Decision.id).where(Decision.step_id == nxt.id, Decision.accepted.is_(True))
    ).first() is not None:
        return False
    nxt.status = "cancelled"
    nxt.closed_at = ctx.now()
    ctx.session.add(Decision(request_id=req.id, step_id=run.id, decision="cancel", actor=actor, on_behalf_of=None,
                             note=None, message_id=message_id, accepted=True, reason=None, rules=[], at=ctx.now()))
    audit(ctx, req, "decision.cancelled", actor=actor, message_id=message_id, step=run.key, cancelled=nxt.key)
    step = ctx.sop.step(run.key)
    ctx.mailer.queue(
        ctx.session,
        to=[actor],
        template="cancelled",
        context={**summary(ctx, req), "actor": actor, "step_title": step.title,
                 "cancelled_title": ctx.sop.steps[nxt.key].title},
        purpose=f"cancelled.{run.key}",
        request_id=req.id,
        ticket=req.ticket,
        in_reply_to=message_id,
    )
    enter_step(ctx, req, run.key, note="Keputusan sebelumnya dibatalkan (BATAL); mohon keputusan ulang.")
    return True


# --- automatic actions ----------------------------------------------------------------------------

def run_action(ctx: Ctx, run: StepRun) -> None:
    step = ctx.sop.step(run.key)
    req = ctx.session.get(Request, run.request_id)
    assert req is not None and step.action is not None
    run.attempts += 1
    try:
        outcome = ACTIONS[step.action](ctx, req, run)
    except (ActionFailed, SigningError) as exc:  # a letter that cannot be signed waits, as a failed action
        run.last_error = str(exc)
        audit(ctx, req, "action.failed", step=run.key, action=step.action, error=str(exc))
        alert_staff(ctx, req, f"{step.title}: {exc}")
        outcome = "error"
    audit(ctx, req, "action.done", step=run.key, action=step.action, outcome=outcome)
    finish_step(ctx, run, outcome, note=run.last_error if outcome == "error" and run.last_error else run.note)


def _check_completeness(ctx: Ctx, req: Request, run: StepRun) -> str:
    f = req.fields or {}
    missing = list(f.get("missing", []))
    problems = [dict(p) for p in f.get("problems", [])]
    label = req.subdomain
    if label:
        # No autoflush: every request but this one's pending rows (steps, mails, audit) is written already.
        with ctx.session.no_autoflush:
            dup = ctx.session.execute(
                select(Request.ticket).where(
                    Request.agency == ctx.agency.id,
                    Request.subdomain == label,
                    Request.status.in_(("open", "done")),
                    Request.id != req.id,
                )
            ).scalars().first()
        if dup:
            problems.append({"field": "subdomain",
                             "reason": f"Nama sub domain '{label}' sudah diajukan dengan tiket {dup}."})
        else:
            try:
                existing = ctx.services.dns.existing(label)
            except (DnsError, OSError, Exception) as exc:  # noqa: BLE001 - any DNS failure: ask staff, keep going
                log.warning("DNS check for %s failed: %s", label, exc)
                existing = []
            if existing:
                problems.append({"field": "subdomain",
                                 "reason": f"Nama sub domain '{label}.{ctx.agency.zone}' sudah terdaftar di DNS."})
        try:
            plan = planned_records(ctx, req)
        except PlanError as exc:
            problems.append({"field": exc.field, "reason": str(exc)})
        else:
            # The dry run for the approval mails (never raises); the real check is repeated when applying.
            f = {**f, "dns_plan": records_to_json(plan), "dns_diff": ctx.services.dns.diff_text(plan)}
    f = {**f, "check": {"missing": missing, "problems": problems}}
    req.fields = f
    if missing or problems:
        audit(ctx, req, "request.incomplete", missing=missing, problems=problems)
        return "incomplete"
    return "complete"


def planned_records(ctx: Ctx, req: Request) -> list[PlannedRecord]:
    """The request's DNS records (A/AAAA, CNAME or NS delegation + glue); raises PlanError in Indonesian."""
    return plan_records(label=req.subdomain or "", zone=ctx.agency.zone, fields=req.fields or {},
                        hosting_ip=ctx.agency.dns.hosting_ip, ttl=ctx.agency.dns.ttl,
                        reserved=ctx.parse_options.reserved_names)


def dns_records_of(req: Request) -> list[PlannedRecord]:
    """The records this request put into the zone: provisioned, or applied but not (yet) verified."""
    return records_from_json(req.provisioned or (req.fields or {}).get("dns") or [])


def _remove_dns(ctx: Ctx, req: Request, records: list[PlannedRecord], event: str) -> None:
    """Remove exactly the request's records; a failure alerts staff instead of raising."""
    lines = [r.line(ctx.agency.zone) for r in records]
    try:
        removed = ctx.services.dns.remove(records)
    except DnsError as exc:
        audit(ctx, req, "dns.remove_failed", records=lines, error=str(exc))
        alert_staff(ctx, req, f"Rekaman DNS {'; '.join(lines)} gagal dihapus: {exc}")
        return
    req.fields = {k: v for k, v in (req.fields or {}).items() if k != "dns"}
    audit(ctx, req, event, records=[r.line(ctx.agency.zone) for r in removed])


def _provision(ctx: Ctx, req: Request, run: StepRun) -> str:
    if req.provisioned:
        return "ok"  # done before a crash; never twice
    if not req.subdomain:
        raise ActionFailed("permohonan tidak memuat nama sub domain")
    if ctx.box is None:  # the password would have nowhere safe to wait: make nothing
        raise ActionFailed("kunci enkripsi kata sandi ([secrets] key_file) tidak tersedia")
    try:
        records = planned_records(ctx, req)
    except PlanError as exc:
        raise ActionFailed(str(exc)) from exc
    zone = ctx.agency.zone
    lines = [r.line(zone) for r in records]
    dns_ = ctx.services.dns
    try:
        try:
            dns_.apply(records)  # one atomic update; nothing existing is ever replaced
            audit(ctx, req, "dns.applied", records=lines)
        except NameInUse as exc:
            # Ours from an earlier attempt (a lagging server, a crash after the update) or someone else's.
            if not dns_.holds(records):
                found = "; ".join(line for found in exc.existing.values() for line in found)
                raise ActionFailed(f"nama {req.subdomain}.{zone} sudah dipakai di DNS: {found or exc}") from None
            audit(ctx, req, "dns.already_present", records=lines)
            if "dns" not in (req.fields or {}):
                # The zone has them, the database did not know: the process died between the update and
                # its commit. Recorded as applied from here on; staff are told once.
                alert_staff(ctx, req, f"Rekaman DNS {'; '.join(lines)} sudah ada di zona dari percobaan "
                                      f"sebelumnya yang terhenti (mis. daemon dimatikan paksa); kini dicatat "
                                      f"sebagai diterapkan dan permohonan dilanjutkan.")
    except RolledBack as exc:
        audit(ctx, req, "dns.rolled_back", records=lines, error=str(exc))
        raise ActionFailed(str(exc)) from exc
    except DnsStateUnknown as exc:
        req.fields = {**(req.fields or {}), "dns": records_to_json(records)}  # maybe there: TOLAK removes them
        audit(ctx, req, "dns.state_unknown", records=lines, error=str(exc))
        raise ActionFailed(str(exc)) from exc
    except DnsError as exc:  # guard, TSIG, REFUSED, unreachable: nothing was applied
        raise ActionFailed(str(exc)) from exc
    # The records are in the zone from here on: a later rejection must find them, and any failure below
    # either keeps them recorded (a lagging server) or removes them again, never leaves them unrecorded.
    req.fields = {**(req.fields or {}), "dns": records_to_json(records)}
    try:
        return _after_dns(ctx, req, records, lines)
    except ActionFailed:
        raise
    except Exception as exc:  # a bug or a backend error of a kind nobody expected: the zone must not drift
        log.exception("provisioning %s failed after the DNS update", req.ticket)
        _remove_dns(ctx, req, records, "dns.rolled_back")
        raise ActionFailed(f"galat tak terduga setelah rekaman DNS dibuat ({type(exc).__name__}: {exc}); "
                           f"rekaman DNS dibatalkan agar zona dan catatan tetap sama") from exc


def _after_dns(ctx: Ctx, req: Request, records: list[PlannedRecord], lines: list[str]) -> str:
    """Verification, the hosting account and the record of what was made, once the zone holds the records."""
    assert req.subdomain is not None
    zone = ctx.agency.zone
    dns_ = ctx.services.dns
    wait = ctx.agency.dns.verify_timeout_seconds
    state = dns_.wait_served(records, wait)
    lagging = [server for server, ok in state.items() if not ok]
    if lagging:
        # Keep the records (the primary serves them); staff check the server, SETUJU re-checks, TOLAK removes.
        audit(ctx, req, "dns.lagging", records=lines, servers=lagging)
        raise ActionFailed(f"rekaman DNS sudah dibuat tetapi belum dilayani oleh {', '.join(lagging)} setelah "
                           f"{wait:.0f} detik; rekaman dibiarkan. Periksa server tersebut, lalu SETUJU untuk "
                           f"memeriksa ulang atau TOLAK untuk membatalkan (rekaman akan dihapus).")
    taken = set(ctx.session.execute(select(Account.username).where(Account.agency == ctx.agency.id)).scalars())
    username = make_username(ctx.agency.username_pattern, req.subdomain, (req.fields or {}).get("pic_name"), taken)
    password = generate_password()
    address = next((r.value for r in records if r.rdtype in ("A", "AAAA") and r.name == req.subdomain),
                   ctx.agency.dns.hosting_ip)
    try:
        result = ctx.services.hosting.create(username=username, password=password, fqdn=f"{req.subdomain}.{zone}",
                                             ip=address, subdomain=req.subdomain)
    except HostingError as exc:
        _remove_dns(ctx, req, records, "dns.rolled_back")  # the request cannot complete: leave nothing behind
        raise ActionFailed(str(exc)) from exc
    now = ctx.now()
    ctx.session.add(Account(agency=ctx.agency.id, request_id=req.id, username=username,
                            backend=ctx.services.hosting.name, created_at=now,
                            secret_hash=hashlib.sha256(password.encode()).hexdigest()))
    existing_secret = ctx.session.get(PendingSecret, req.id)
    if existing_secret is not None:
        ctx.session.delete(existing_secret)
        ctx.session.flush()
    assert ctx.box is not None  # checked before anything was made
    ctx.session.add(PendingSecret(request_id=req.id, value=ctx.box.seal_text(password, pending_where(req.id)),
                                  created_at=now))
    try:
        ns = list(ctx.agency.dns.name_servers) or ctx.services.dns.name_servers()
    except (DnsError, OSError, Exception):  # noqa: BLE001 - name servers are informative only
        ns = list(ctx.agency.dns.name_servers)
    first = records[0]
    req.provisioned = {
        "records": records_to_json(records),
        "record": "\n".join(lines),
        "name": first.name,
        "rdtype": first.rdtype,
        "value": first.value,
        "ttl": first.ttl,
        "name_servers": ns,
        "username": username,
        "served": state,
        "hosting": result,
    }
    audit(ctx, req, "provisioned", records=lines, username=username, served=state)
    return "ok"


def _draft_letter(ctx: Ctx, req: Request, run: StepRun) -> str:
    if not req.letter_number:
        req.letter_number = register_letter(ctx, req, "final", status="konsep").number
    audit(ctx, req, "letter.drafted", number=req.letter_number)
    return "ok"


def register_letter(ctx: Ctx, req: Request | None, kind: str, *, status: str) -> LetterRecord:
    """The next number of the agency's letter register, recorded in the caller's transaction (so a letter
    that is rolled back gives its number back and a year's numbers have no gaps)."""
    year, seq = next_number(ctx, "letter")
    record = LetterRecord(agency=ctx.agency.id, year=year, seq=seq, kind=kind, status=status,
                          number=ctx.agency.letter.number_pattern.format(seq=seq, year=year),
                          request_id=req.id if req is not None else None, doc_id=secrets.token_hex(8),
                          created_at=ctx.now(), signed=False)
    ctx.session.add(record)
    return record


def _open_reply_record(ctx: Ctx, req: Request) -> LetterRecord | None:
    """The request's reply letter number taken with its draft and not yet issued."""
    return ctx.session.execute(
        select(LetterRecord).where(LetterRecord.request_id == req.id, LetterRecord.status == "konsep")
        .order_by(LetterRecord.id.desc())
    ).scalars().first()


def letter_context(ctx: Ctx, req: Request) -> dict[str, Any]:
    """What a letter about `req` may print. Never the password: it goes to the PIC alone, in its own
    mail after the letter (`_send_letter`)."""
    data = summary(ctx, req)
    p = req.provisioned or {}
    data.update(
        letter=ctx.agency.letter,
        letter_number=req.letter_number,
        letter_date=format_tanggal(ctx.now().astimezone(_tz(ctx))),
        ip=p.get("value"),
        rdtype=p.get("rdtype"),
        name_servers=p.get("name_servers", []),
        username=p.get("username"),
        record=p.get("record"),
    )
    return data


def queue_letter(ctx: Ctx, req: Request, kind: str, letter_ctx: dict[str, Any], *, purpose: str,
                 to: list[str], sensitive: bool = False, token: str | None = None,
                 extra: list[MailAttachment] | None = None) -> Any:
    """A letter (Tata Naskah Dinas) as the mail itself, text and HTML, with its signed PDF attached.

    Its number comes from the register in this transaction: a reply letter (final or rejection) takes the
    number its draft reserved, if any; any other letter takes the next one. Lampiran counts `extra`.
    """
    # reportlab (heavy) loads with the first letter, not with the engine
    from subdomaind.workflows.letters import build_letter, lampiran_text

    # A savepoint: a letter that cannot be signed leaves neither a number nor a register row behind.
    with ctx.session.begin_nested():
        record = _open_reply_record(ctx, req) if kind in ("final", "rejection") else None
        if record is None:
            record = register_letter(ctx, req, kind, status="terkirim")
        record.kind, record.status = kind, "terkirim"
        if kind in ("final", "rejection"):
            req.letter_number = record.number
        letter_ctx = {**letter_ctx, "letter_number": record.number, "lampiran": lampiran_text(len(extra or [])),
                      "electronic": ctx.services.signer is not None}
        letter = build_letter(kind, letter_ctx, agency_id=ctx.agency.id)
        pdf = letter.render_pdf(ctx.services.signer, doc_id=record.doc_id)
        record.hal, record.addressee = letter.hal[:255], letter.addressee[:255]
        record.issued_at = ctx.now()
        record.content_sha256, record.pdf_sha256 = pdf.content_sha256, hashlib.sha256(pdf.data).hexdigest()
        record.signed = pdf.signed
    slug = req.ticket.replace("/", "-")
    attachments = [MailAttachment(f"surat-{kind}-{slug}.pdf", "application/pdf", pdf.data), *(extra or [])]
    return ctx.mailer.queue_rendered(
        ctx.session,
        rendered=Rendered(subject=letter.subject, text=letter.to_text(), html=letter.to_html()),
        to=to, purpose=purpose, request_id=req.id, ticket=req.ticket, token=token,
        in_reply_to=req.source_message_id, attachments=attachments, sensitive=sensitive,
    )


def form_attachments(ctx: Ctx) -> list[MailAttachment]:
    """The agency's fillable request form, PDF and DOCX, for a unit that must (re)fill it."""
    # python-docx and reportlab (heavy) only when a form is sent
    from subdomaind.workflows.forms import form_docx, form_pdf

    ag = ctx.agency
    return [
        MailAttachment("formulir-pengajuan-sub-domain.pdf", "application/pdf",
                       form_pdf(ag.name, ag.zone, ag.letter)),
        MailAttachment("formulir-pengajuan-sub-domain.docx",
                       "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                       form_docx(ag.name, ag.zone, ag.letter)),
    ]


def pic_address(req: Request) -> str:
    """Where the credentials go: the PIC named in the form, else the address that sent the letter."""
    return str((req.fields or {}).get("pic_email") or req.requester)


def _send_letter(ctx: Ctx, req: Request, run: StepRun) -> str:
    """The reply letter (no password in it) to the unit, then the PIC's credential mail, which the outbox
    holds back (status "waiting") until the letter is sent (daemon/outbox.py)."""
    secret = ctx.session.get(PendingSecret, req.id)
    password = None
    if secret is not None:
        if ctx.box is None:
            raise ActionFailed("kunci enkripsi kata sandi ([secrets] key_file) tidak tersedia")
        try:
            password = ctx.box.open_text(secret.value, pending_where(req.id))
        except SealedValueError as exc:
            raise ActionFailed("kata sandi akun tidak dapat dibuka dengan kunci [secrets] key_file yang "
                               "sekarang; buat akun ulang dan kirim kata sandi baru kepada penanggung "
                               "jawab") from exc
    letter = queue_letter(ctx, req, "final", letter_context(ctx, req), purpose="final", to=requester_addresses(req))
    audit(ctx, req, "letter.sent", number=req.letter_number)
    if secret is not None and password is not None:
        ctx.session.flush()  # the letter's row id, which the credential mail waits for
        pic = pic_address(req)
        ctx.mailer.queue(ctx.session, to=[pic], template="credentials",
                         context={**summary(ctx, req), "letter_number": req.letter_number,
                                  "username": (req.provisioned or {}).get("username"), "password": password},
                         purpose="credentials", request_id=req.id, ticket=req.ticket, sensitive=True,
                         after=letter, in_reply_to=req.source_message_id)
        # From here the password lives only in the credential mail, sealed, until it is sent.
        ctx.session.delete(secret)
        audit(ctx, req, "credentials.queued", to=pic)
    return "ok"


def pending_where(request_id: int) -> str:
    """The associated data a pending password is sealed with: it opens on its own row only."""
    return f"pending:{request_id}"


def _send_rejection(ctx: Ctx, req: Request, run: StepRun) -> str:
    last = ctx.session.execute(
        select(Decision).where(Decision.request_id == req.id, Decision.accepted.is_(True))
        .order_by(Decision.id.desc())
    ).scalars().first()
    records = dns_records_of(req)
    if records:
        _remove_dns(ctx, req, records, "dns.removed")
    if req.provisioned:
        secret = ctx.session.get(PendingSecret, req.id)
        if secret is not None:
            ctx.session.delete(secret)
            tx_state(ctx.session).purge_secrets = True  # the caller purges the WAL after commit
    by = ctx.role_title(ctx.sop.steps[_step_key(ctx, last)].actor) if last else None
    queue_letter(ctx, req, "rejection", {**letter_context(ctx, req), "by": by,
                                         "note": last.note if last else None},
                 purpose="rejection", to=requester_addresses(req))
    audit(ctx, req, "rejection.sent")
    return "ok"


def _step_key(ctx: Ctx, decision: Decision | None) -> str:
    if decision is None or decision.step_id is None:
        return ctx.sop.start
    run = ctx.session.get(StepRun, decision.step_id)
    return run.key if run is not None else ctx.sop.start


def _recheck_dns(ctx: Ctx, req: Request, run: StepRun) -> str:
    """After a KENDALA: ask every authoritative server again, and compare with what the admin says."""
    p = req.provisioned or {}
    if not p:
        run.note = "Sub domain belum pernah dibuat oleh sistem; tidak ada rekaman untuk diperiksa."
        return "error"
    records = records_from_json(p)
    record = records[0]
    state = ctx.services.dns.serving(records)
    lines = [f"Rekaman {'; '.join(r.line(ctx.agency.zone) for r in records)}:"]
    lines += [f"- {server}: {'dilayani' if ok else 'TIDAK dilayani'}" for server, ok in state.items()]
    complaint = run.note or ""
    for token in re.findall(r"[0-9a-fA-F:.]{7,45}", complaint):
        try:
            stated = ipaddress.ip_address(token.strip("."))
        except ValueError:
            continue
        same = str(stated) == record.value
        lines.append(f"- alamat yang disebut admin ({stated}) {'sama dengan' if same else 'BERBEDA dari'} "
                     f"alamat pada rekaman ({record.value})")
    run.note = "\n".join(lines)
    audit(ctx, req, "dns.rechecked", served=state, complaint=complaint[:500])
    return "ok" if state and all(state.values()) else "error"


def _close(ctx: Ctx, req: Request, run: StepRun) -> str:
    return "ok"


ACTIONS: dict[str, Callable[[Ctx, Request, StepRun], str]] = {
    "check_completeness": _check_completeness,
    "provision": _provision,
    "draft_letter": _draft_letter,
    "send_letter": _send_letter,
    "send_rejection": _send_rejection,
    "recheck_dns": _recheck_dns,
    "close": _close,
}


def due_actions(session: Session, agency_id: str, now: datetime) -> list[int]:
    """Ids of open action steps of this agency whose time has come."""
    return list(
        session.execute(
            select(StepRun.id)
            .join(Request, Request.id == StepRun.request_id)
            .where(Request.agency == agency_id, StepRun.kind == "action", StepRun.status == "open",
                   StepRun.due_at <= now)
            .order_by(StepRun.id)
        ).scalars()
    )
