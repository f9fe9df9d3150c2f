"""What the STATUS and ANTREAN answers say: one request's timeline, and the steps waiting on one official.

`who_is` names a person as every answer and the monthly report write them: name and jabatan (from
`[agency] names` and the SOP's role titles). `request_status` is the timeline of one request (the steps
done and by whom, the step it waits at, since when, its Mutu Baku deadline); `waiting_on_roles` is the
queue of the roles one official holds, overdue first, as the daily digest orders it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from subdomaind.workflows.digest import KIND_LABELS, ZONE_LABELS, queue_items
from subdomaind.workflows.engine import DECISION_WORDS, Ctx, delegates_of
from subdomaind.workflows.mailer import format_tanggal
from subdomaind.workflows.mailto import answer_links
from subdomaind.workflows.reminders import format_duration
from subdomaind.workflows.settings import AgencySettings
from subdomaind.workflows.sop import Sop
from subdomaind.workflows.store import Decision, Outbox, Request, StepRun
from subdomaind.workflows.worktime import WorkCalendar

# What became of a step, as the timeline says it (StepRun.outcome).
OUTCOME_WORDS = {
    "approve": "disetujui",
    "reject": "ditolak",
    "revise": "dikembalikan untuk diperbaiki",
    "ok": "selesai",
    "complete": "lengkap",
    "incomplete": "belum lengkap",
    "error": "terkendala",
    "problem": "kendala dilaporkan",
    "confirm": "dikonfirmasi berhasil",
}
# The requester's side of a wait step.
REQUESTER_WORDS = {"ok": "Dilengkapi", "confirm": "Dikonfirmasi berhasil", "problem": "Kendala dilaporkan"}
STATUS_LABELS = {"open": "Sedang diproses", "done": "Selesai", "rejected": "Ditolak"}
AUTOMATIC = "Sistem (otomatis)"


def roles_of(ctx: Ctx, address: str) -> dict[str, bool]:
    """The SOP roles `address` holds now: role -> True when as an acting official (Plt/Plh) only."""
    out: dict[str, bool] = {}
    for role in sorted(ctx.sop.actor_roles()):
        if address in ctx.agency.actors.get(role, []):
            out[role] = False
        elif address in delegates_of(ctx, role):
            out[role] = True
    return out


def person_label(agency: AgencySettings, sop: Sop, address: str, role: str | None, *, acting: bool = False,
                 address_if_unnamed: bool = False) -> str:
    """"Drs. Budi Santoso, Kepala Dinas Komunikasi dan Informatika": the name and the jabatan of `role`,
    "Plt./Plh." before an acting official's. Without a name in the config, the jabatan alone (as the step
    mails write it), or the jabatan and the address where people must be told apart (the monthly report)."""
    name = agency.names.get(address.lower())
    if role is None or role not in sop.roles:
        return name or address
    jabatan = f"{'Plt./Plh. ' if acting else ''}{sop.roles[role].title}"
    if name:
        return f"{name}, {jabatan}"
    return f"{jabatan} ({address})" if address_if_unnamed else jabatan


def who_is(ctx: Ctx, address: str, role: str | None = None, *, acting: bool = False) -> str:
    """`Ctx.person` of `address` in `role`, or in the first role the address holds now (the address itself
    for someone who holds none)."""
    if role is None:
        role, acting = next(iter(roles_of(ctx, address).items()), (None, False))
    return ctx.person(address, role, acting=acting)["who"] if role in ctx.sop.roles else address


class _Fmt:
    def __init__(self, ctx: Ctx, calendar: WorkCalendar) -> None:
        self.calendar = calendar
        self.zone = ZONE_LABELS.get(ctx.agency.timezone, ctx.agency.timezone)

    def when(self, dt: datetime | None) -> str:
        return f"{format_tanggal(self.calendar.local(dt), with_time=True)} {self.zone}" if dt is not None else "-"

    def span(self, minutes: float) -> str:
        return format_duration(minutes, self.calendar.day_minutes)


def _waits_on(ctx: Ctx, req: Request, run: StepRun) -> list[str]:
    step = ctx.sop.steps.get(run.key)
    if step is None or step.kind == "action" or not step.actor:
        return [AUTOMATIC]
    if ctx.sop.roles[step.actor].requester:
        return [f"{ctx.sop.roles[step.actor].title} ({req.unit or req.requester})"]
    people = [who_is(ctx, a, step.actor) for a in ctx.agency.actors.get(step.actor, [])]
    people += [who_is(ctx, a, step.actor, acting=True)
               for a in sorted(delegates_of(ctx, step.actor) - set(ctx.agency.actors.get(step.actor, [])))]
    return list(dict.fromkeys(people)) or [ctx.sop.roles[step.actor].title]  # unnamed: one jabatan, once


def _said(ctx: Ctx, req: Request, run: StepRun, decision: Decision | None) -> str:
    """What happened at a finished step and by whom, as one sentence: "Disetujui oleh <name>, <jabatan>"."""
    step = ctx.sop.steps.get(run.key)
    outcome = run.outcome or "ok"
    word = OUTCOME_WORDS.get(outcome, DECISION_WORDS.get(outcome, outcome)).capitalize()
    if decision is not None:
        acting = bool(decision.on_behalf_of)
        return f"{word} oleh {who_is(ctx, decision.actor, decision.on_behalf_of or run.role, acting=acting)}"
    if step is None or step.kind == "action" or not step.actor:
        return f"{word} (proses otomatis)"
    role = ctx.sop.roles[step.actor]
    if step.kind == "notification":
        people = [f"{role.title} ({req.unit or req.requester})"] if role.requester else _waits_on(ctx, req, run)
        return "Diberitahukan kepada " + "; ".join(people)
    if role.requester:
        word = REQUESTER_WORDS.get(outcome, word)
        return f"{word} oleh {role.title} ({req.unit or req.requester})"
    return f"{word} oleh {role.title}"


def request_status(ctx: Ctx, calendar: WorkCalendar, req: Request, now: datetime) -> dict[str, Any]:
    """The timeline of one request as plain data for `templates/mail/status.txt.j2`."""
    fmt = _Fmt(ctx, calendar)
    s = ctx.session
    runs = list(s.execute(select(StepRun).where(StepRun.request_id == req.id).order_by(StepRun.id)).scalars())
    decisions = {
        d.step_id: d for d in s.execute(
            select(Decision).where(Decision.request_id == req.id, Decision.accepted.is_(True),
                                   Decision.decision != "cancel").order_by(Decision.id)
        ).scalars()
    }
    done: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for run in runs:
        step = ctx.sop.steps.get(run.key)
        if step is None or step.kind == "end":
            continue
        base = {"title": step.title, "sop_no": step.sop_no or "-", "kind_label": KIND_LABELS.get(step.kind, step.kind),
                "opened": fmt.when(run.opened_at)}
        if run.status == "done":
            outcome = run.outcome or "ok"
            took = calendar.working_minutes(run.opened_at, run.closed_at) if run.closed_at else 0.0
            done.append({**base, "closed": fmt.when(run.closed_at), "outcome": outcome,
                         "said": _said(ctx, req, run, decisions.get(run.id)), "took": fmt.span(took)})
        elif run.status == "open":
            current = {**base, "waits_on": _waits_on(ctx, req, run), "age": fmt.span(
                calendar.working_minutes(run.opened_at, now)), "mutu": None, "deadline": None, "overdue": False,
                "overdue_by": None}
            if step.time is not None:
                due = calendar.deadline(run.opened_at, step.time)
                current.update(mutu=step.time.text, deadline=fmt.when(due))
                if now > due:
                    current.update(overdue=True, overdue_by=fmt.span(calendar.working_minutes(due, now)))
    for no, item in enumerate(done, start=1):
        item["no"] = no
    return {
        "ticket": req.ticket,
        "fqdn": f"{req.subdomain}.{ctx.agency.zone}" if req.subdomain else "(belum disebutkan)",
        "unit": req.unit or "(belum disebutkan)",
        "received": fmt.when(req.received_at),
        "status": STATUS_LABELS.get(req.status, req.status),
        "closed": fmt.when(req.closed_at) if req.closed_at else None,
        "done": done,
        "current": current if req.status == "open" else None,
    }


def waiting_on_roles(ctx: Ctx, calendar: WorkCalendar, roles: dict[str, bool], now: datetime, *,
                     one_tap: bool = False) -> list[dict[str, Any]]:
    """The open steps waiting on any of `roles`, overdue first, each with how to answer it. With `one_tap`
    (only where our MTA vouches for senders: the link names the step by the ticket in its subject, which
    counts for nobody else), each answer is also a mailto: link to the office mailbox."""
    items = queue_items(ctx.session, ctx.agency, ctx.sop, calendar, now, roles=set(roles))
    for no, item in enumerate(items, start=1):
        step = ctx.sop.steps.get(item["step_key"])
        item["no"] = no
        item["acting"] = roles.get(item["role"] or "", False)
        item["role_title"] = ctx.role_title(item["role"])
        offered = [(DECISION_WORDS[o], t) for o, t in (step.on if step else {}).items() if o in DECISION_WORDS]
        item["answers"] = [word for word, _ in offered]
        then = [{"word": w, "then": ctx.sop.steps[t].title} for w, t in offered]
        item["links"] = answer_links(ctx.agency.address, item["ticket"], item["step_title"], then) if one_tap else []
        # The step mail to answer, by the subject the official will find it under in their mailbox.
        item["step_mail"] = ctx.session.execute(
            select(Outbox.subject).join(Request, Request.id == Outbox.request_id)
            .where(Request.ticket == item["ticket"], Request.agency == ctx.agency.id,
                   Outbox.purpose == f"step.{item['step_key']}").order_by(Outbox.id.desc()).limit(1)
        ).scalar_one_or_none()
    return items
