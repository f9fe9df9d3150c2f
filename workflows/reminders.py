"""Remind whoever holds an open step past its Mutu Baku, and escalate an official's step at twice that time.

For each open approval or wait_requester step of the agency: past its deadline (working time, see
`workflows.worktime`) the step's actor gets a reminder; past twice its time the superior of the actor's role
(`Role.superior` in the SOP) is told too. A requester's wait is never escalated to officials. Each kind of
mail goes out at most once per step per local calendar day, and only during office hours (so a deadline
that passes at closing is reminded at the next opening, never on a weekend or holiday); every mail is
audited and written to the outbox in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from subdomaind.workflows.engine import Ctx, audit, requester_addresses, step_context
from subdomaind.workflows.mailer import format_deadline, format_tanggal, new_token, token_hash
from subdomaind.workflows.store import Outbox, Request, StepRun
from subdomaind.workflows.worktime import WorkCalendar

REMINDED_KINDS = ("approval", "wait_requester")
# How a missing field is named to the requester (the labels of the form in the incomplete mail).
FIELD_LABELS = {
    "subdomain": "Nama Sub Domain",
    "unit": "Unit Kerja",
    "pic_name": "Nama Penanggung Jawab",
    "pic_email": "Surel Penanggung Jawab",
    "pic_phone": "Nomor HP Penanggung Jawab",
    "purpose": "Keperluan",
}


def format_duration(minutes: float, day_minutes: int) -> str:
    """Working time as people say it: "1 hari 2 jam", "3 jam 5 menit", "10 menit" (a day = one office day)."""
    total = max(0, round(minutes))
    days, rest = divmod(total, day_minutes) if day_minutes > 0 else (0, total)
    hours, mins = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} hari")
    if hours:
        parts.append(f"{hours} jam")
    if mins and not days:
        parts.append(f"{mins} menit")
    return " ".join(parts) or "0 menit"


def _same_local_day(calendar: WorkCalendar, a: datetime | None, b: datetime) -> bool:
    return a is not None and calendar.local(a).date() == calendar.local(b).date()


def due_reminders(ctx: Ctx, calendar: WorkCalendar, now: datetime | None = None) -> int:
    """Queue the reminders and escalations now due for this agency; returns how many mails were queued."""
    now = now or ctx.now()
    if not calendar.is_working_time(now):
        return 0
    runs = ctx.session.execute(
        select(StepRun)
        .join(Request, Request.id == StepRun.request_id)
        .where(
            Request.agency == ctx.agency.id,
            Request.status == "open",
            StepRun.status == "open",
            StepRun.kind.in_(REMINDED_KINDS),
        )
        .order_by(StepRun.id)
    ).scalars().all()
    queued = 0
    for run in runs:
        step = ctx.sop.steps.get(run.key)
        if step is None or step.time is None or step.actor is None:
            continue
        due = calendar.deadline(run.opened_at, step.time)
        if now <= due:
            continue
        req = run.request
        role = ctx.sop.roles[step.actor]
        remind = not _same_local_day(calendar, run.reminded_at, now)
        escalate_at = None if role.requester or role.superior is None else calendar.deadline(
            run.opened_at, step.time, factor=2)
        escalate = (escalate_at is not None and now > escalate_at
                    and not _same_local_day(calendar, run.escalated_at, now))
        if not (remind or escalate):
            continue  # the common case on every pass: nothing new today
        token = None
        if remind and run.kind == "approval" and ctx.addresses(step.actor):
            # The reminder's one-tap links open a new mail (no In-Reply-To): its own token names the step.
            token = new_token()
            run.reminder_token_hash = token_hash(token)
        data = _context(ctx, calendar, req, run, due, now, token=token)
        if remind:
            to = requester_addresses(req) if role.requester else ctx.addresses(step.actor)
            if to:
                ctx.mailer.queue(
                    ctx.session,
                    to=to,
                    template="reminder",
                    context={**data, "to_requester": role.requester},
                    purpose=f"reminder.{run.key}",
                    request_id=req.id,
                    ticket=req.ticket,
                    token=token,
                    # Threaded under the step mail: a reply to the reminder finds the step by References.
                    in_reply_to=_thread_parent(ctx, req, run, to),
                )
                run.reminded_at = now
                queued += 1
                audit(ctx, req, "step.reminded", step=run.key, role=step.actor, to=sorted(to),
                      deadline=due.isoformat(), overdue_minutes=round(calendar.working_minutes(due, now)))
            else:
                run.reminded_at = now  # audited once a day, not on every pass
                audit(ctx, req, "step.reminder_unaddressed", step=run.key, role=step.actor)
        if not escalate or escalate_at is None or role.superior is None:
            continue
        superior = ctx.sop.roles[role.superior]
        to = ctx.addresses(superior.key)
        if not to:
            run.escalated_at = now  # audited once a day, not on every pass
            audit(ctx, req, "step.escalation_unaddressed", step=run.key, role=step.actor, superior=superior.key)
            continue
        ctx.mailer.queue(
            ctx.session,
            to=to,
            template="escalation",
            context={**data, "superior_title": superior.title, "official": _official(ctx, step.actor),
                     "escalate_at": format_deadline(calendar.local(escalate_at))},
            purpose=f"escalation.{run.key}",
            request_id=req.id,
            ticket=req.ticket,
        )
        run.escalated_at = now
        queued += 1
        audit(ctx, req, "step.escalated", step=run.key, role=step.actor, superior=superior.key, to=sorted(to),
              deadline=escalate_at.isoformat(), overdue_minutes=round(calendar.working_minutes(due, now)))
    return queued


def _official(ctx: Ctx, role: str) -> str:
    """Who holds a step, by name and jabatan (never by mailbox address)."""
    whos = list(dict.fromkeys(ctx.person(a, role)["who"] for a in ctx.addresses(role)))
    return "; ".join(whos) or ctx.role_title(role)


def _thread_parent(ctx: Ctx, req: Request, run: StepRun, to: list[str]) -> str | None:
    """The mail a reminder answers: the step's own mail, else (a silent wait) our last mail to the same people."""
    if run.mail_message_id:
        return run.mail_message_id
    rows = ctx.session.execute(
        select(Outbox.message_id, Outbox.rcpts, Outbox.purpose).where(Outbox.request_id == req.id)
        .order_by(Outbox.id.desc())
    ).all()
    wanted = {a.lower() for a in to}
    for message_id, rcpts, purpose in rows:
        if purpose.startswith(("reminder.", "escalation.", "digest")):
            continue
        if wanted & {str(a).lower() for a in rcpts or []}:
            return str(message_id)
    return None


def _context(ctx: Ctx, calendar: WorkCalendar, req: Request, run: StepRun, due: datetime,
             now: datetime, token: str | None = None) -> dict[str, Any]:
    step = ctx.sop.step(run.key)
    assert step.time is not None
    data = step_context(ctx, req, step, run, token=token)
    data.update(
        opened=format_tanggal(calendar.local(run.opened_at), with_time=True),
        deadline=format_deadline(calendar.local(due)),
        overdue=format_duration(calendar.working_minutes(due, now), calendar.day_minutes),
        elapsed=format_duration(calendar.working_minutes(run.opened_at, now), calendar.day_minutes),
        field_labels=FIELD_LABELS,
    )
    return data
