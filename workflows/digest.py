"""The daily digest: what the queue of one agency looks like now, for staff and for each official.

`build_digest` reads the store into a plain dict (open requests with who they wait on and how their working
time stands against the Mutu Baku, overdue first; what is new, finished and rejected since the last digest;
inbound mail in quarantine or unmatched; failures; the month's figures). `render_digest` turns it into the
subject, plain text and HTML (`templates/mail/digest.*.j2`); `send_digest` queues one mail to the agency's
digest recipients and one per role with something waiting ("Menunggu Anda"). `digest_due` says when the
next one is due, so the daemon can send it once per working day.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from subdomaind.workflows.engine import DECISION_WORDS, Ctx, audit, requester_addresses
from subdomaind.workflows.mailer import CAP_NOTE, Mailer, format_tanggal, one_line
from subdomaind.workflows.reminders import format_duration
from subdomaind.workflows.settings import AgencySettings
from subdomaind.workflows.sop import Sop, Step
from subdomaind.workflows.store import Audit, Decision, Inbound, MailboxState, Outbox, Request, StepRun
from subdomaind.workflows.worktime import WorkCalendar

_BULAN = (
    "Januari", "Februari", "Maret", "April", "Mei", "Juni",
    "Juli", "Agustus", "September", "Oktober", "November", "Desember",
)
ZONE_LABELS = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}
KIND_LABELS = {
    "approval": "Keputusan pejabat",
    "wait_requester": "Menunggu pemohon",
    "action": "Proses otomatis",
    "notification": "Pemberitahuan",
    "end": "Selesai",
}
# The outcome that moves a step along its main path, by kind.
_MAIN_OUTCOMES = ("approve", "ok", "complete", "confirm")
FAILURE_EVENTS = ("action.failed", "mail.bounced", "staff.alerted")
FAILURE_LABELS = {
    "action.failed": "Proses otomatis gagal",
    "mail.bounced": "Surel ditolak server penerima",
    "staff.alerted": "Peringatan kepada staf",
}
INBOUND_LABELS = {"quarantined": "Karantina", "unmatched": "Tidak cocok"}
PURPOSE_LABELS = {
    "ack": "tanda terima",
    "final": "surat balasan",
    "credentials": "kata sandi untuk penanggung jawab",
    "form": "formulir",
    "rejection": "surat penolakan",
    "alert": "peringatan staf",
    "digest": "ringkasan harian",
    "status": "jawaban STATUS",
    "antrean": "jawaban ANTREAN",
    "report": "laporan bulanan",
}
_REASON_LIMIT = 300
DEFAULT_DIGEST_TIME = time(7, 0)
# Open requests shown as full cards in the HTML part, then one line each, then only counted: Gmail clips
# a message whose HTML passes about 102 KB. The plain-text part always lists everything.
HTML_FULL_CARDS = 10
HTML_COMPACT_ROWS = 40
CAPPED_LISTED = 50  # held mail listed one by one; past that, a count


def _first_line(text: str | None, limit: int = _REASON_LIMIT) -> str:
    if not text:
        return "-"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return one_line(line, limit) or "-"


class _Fmt:
    """Dates and working time as the digest writes them, in the agency's time zone."""

    def __init__(self, agency: AgencySettings, calendar: WorkCalendar) -> None:
        self.calendar = calendar
        self.zone = ZONE_LABELS.get(agency.timezone, agency.timezone)

    def when(self, dt: datetime | None) -> str:
        if dt is None:
            return "-"
        return f"{format_tanggal(self.calendar.local(dt), with_time=True)} {self.zone}"

    def span(self, minutes: float) -> str:
        return format_duration(minutes, self.calendar.day_minutes)


def _purpose_label(purpose: str) -> str:
    head, _, step = purpose.partition(".")
    base = {"step": "permohonan keputusan", "notify": "pemberitahuan", "echo": "konfirmasi keputusan",
            "reminder": "pengingat", "escalation": "eskalasi", "refusal": "pemberitahuan penolakan balasan"}
    label = PURPOSE_LABELS.get(purpose) or base.get(head) or purpose
    return f"{label} ({step})" if step and head in base else label


def _next_step(sop: Sop, step: Step) -> dict[str, str] | None:
    for outcome in _MAIN_OUTCOMES:
        target = step.on.get(outcome)
        if target:
            nxt = sop.steps[target]
            if nxt.kind == "end":
                who = "-"
            elif nxt.actor:
                who = sop.roles[nxt.actor].title
            else:
                who = "otomatis"
            return {"title": nxt.title, "who": who, "sop_no": nxt.sop_no or "-",
                    "word": DECISION_WORDS.get(outcome, "")}
    return None


def _queue_item(
    sop: Sop, agency: AgencySettings, fmt: _Fmt, req: Request, run: StepRun | None, now: datetime,
) -> dict[str, Any]:
    cal = fmt.calendar
    key = run.key if run is not None else (req.step or "")
    step = sop.steps.get(key)
    fqdn = f"{req.subdomain}.{agency.zone}" if req.subdomain else None
    item: dict[str, Any] = {
        "ticket": req.ticket,
        "unit": req.unit or "(belum disebutkan)",
        "subdomain": req.subdomain,
        "fqdn": fqdn or "(belum disebutkan)",
        "received": fmt.when(req.received_at),
        "request_age": fmt.span(cal.working_minutes(req.received_at, now)),
        "step_key": key,
        "step_title": step.title if step else key or "-",
        "sop_no": (step.sop_no if step else None) or "-",
        "kind": step.kind if step else "-",
        "kind_label": KIND_LABELS.get(step.kind, step.kind) if step else "-",
        "role": run.role if run is not None else None,
        "waits_on": {"title": "-", "addresses": [], "delegates": []},
        "opened": "-",
        "age": "-",
        "age_minutes": 0.0,
        "mutu": None,
        "deadline": None,
        "deadline_at": None,
        "overdue": False,
        "overdue_by": None,
        "overdue_minutes": 0.0,
        "next": _next_step(sop, step) if step else None,
        "problem": None,
        "scheduled": None,
    }
    if step is None or run is None:
        return item
    if step.kind == "wait_requester":
        item["waits_on"] = {"title": sop.roles[step.actor].title if step.actor else "Pemohon",
                            "addresses": requester_addresses(req), "delegates": []}
    elif step.actor:
        item["waits_on"] = {"title": sop.roles[step.actor].title,
                            "addresses": list(agency.actors.get(step.actor, [])),
                            "delegates": list(agency.delegates.get(step.actor, []))}
    else:
        item["waits_on"] = {"title": "Sistem (otomatis)", "addresses": [], "delegates": []}
    if run.last_error:
        item["problem"] = _first_line(run.last_error)
    if step.kind == "action" and run.due_at is not None and run.due_at > now:
        item["scheduled"] = fmt.when(run.due_at)
    age = cal.working_minutes(run.opened_at, now)
    item.update(opened=fmt.when(run.opened_at), age=fmt.span(age), age_minutes=age)
    if step.time is not None:
        due = cal.deadline(run.opened_at, step.time)
        item.update(mutu=step.time.text, deadline=fmt.when(due), deadline_at=due)
        if now > due:
            late = cal.working_minutes(due, now)
            item.update(overdue=True, overdue_minutes=late, overdue_by=fmt.span(late))
    return item


def _sort_key(item: dict[str, Any]) -> tuple[int, float, datetime | None, str]:
    if item["overdue"]:
        return (0, -item["overdue_minutes"], None, item["ticket"])
    if item["deadline_at"] is not None:
        return (1, 0.0, item["deadline_at"], item["ticket"])
    return (2, 0.0, None, item["ticket"])


def _request_row(fmt: _Fmt, agency: AgencySettings, req: Request, *, at: datetime | None) -> dict[str, Any]:
    status = {"open": "Diproses", "done": "Selesai", "rejected": "Ditolak"}.get(req.status, req.status)
    return {
        "ticket": req.ticket,
        "unit": req.unit or "(belum disebutkan)",
        "fqdn": f"{req.subdomain}.{agency.zone}" if req.subdomain else "(belum disebutkan)",
        "at": fmt.when(at),
        "status": status,
        "requester": req.requester,
    }


def queue_items(
    session: Session,
    agency: AgencySettings,
    sop: Sop,
    calendar: WorkCalendar,
    now: datetime,
    roles: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The open requests with the step each waits at, overdue first; with `roles`, only those waiting on them."""
    fmt = _Fmt(agency, calendar)
    open_reqs = list(session.execute(
        select(Request).where(Request.agency == agency.id, Request.status == "open").order_by(Request.id)
    ).scalars())
    runs: dict[int, StepRun] = {}
    if open_reqs:
        for run in session.execute(
            select(StepRun).where(StepRun.request_id.in_([r.id for r in open_reqs]), StepRun.status == "open")
            .order_by(StepRun.id)
        ).scalars():
            runs[run.request_id] = run  # the latest open step of each request
    items = (_queue_item(sop, agency, fmt, r, runs.get(r.id), now) for r in open_reqs)
    return sorted((it for it in items if roles is None or it["role"] in roles), key=_sort_key)


def build_digest(
    session: Session,
    agency: AgencySettings,
    sop: Sop,
    calendar: WorkCalendar,
    now: datetime,
    since: datetime,
    role: str | None = None,
) -> dict[str, Any]:
    """The digest's content as plain data; with `role`, that role's waiting steps come first."""
    fmt = _Fmt(agency, calendar)
    s = session

    # --- the open queue ---
    queue = queue_items(s, agency, sop, calendar, now)
    for i, item in enumerate(queue, start=1):
        item["no"] = i
    waiting_you = [dict(it) for it in queue if role is not None and it["role"] == role]
    for i, item in enumerate(waiting_you, start=1):
        item["no"] = i

    # --- since the last digest ---
    new = [
        _request_row(fmt, agency, r, at=r.received_at)
        for r in s.execute(
            select(Request).where(Request.agency == agency.id, Request.received_at >= since,
                                  Request.received_at <= now).order_by(Request.received_at, Request.id)
        ).scalars()
    ]
    finished = []
    for r in s.execute(
        select(Request).where(Request.agency == agency.id, Request.status == "done", Request.closed_at >= since,
                              Request.closed_at <= now).order_by(Request.closed_at, Request.id)
    ).scalars():
        row = _request_row(fmt, agency, r, at=r.closed_at)
        assert r.closed_at is not None
        row["took"] = fmt.span(calendar.working_minutes(r.received_at, r.closed_at))
        finished.append(row)
    rejected = []
    for r in s.execute(
        select(Request).where(Request.agency == agency.id, Request.status == "rejected",
                              Request.closed_at >= since, Request.closed_at <= now)
        .order_by(Request.closed_at, Request.id)
    ).scalars():
        row = _request_row(fmt, agency, r, at=r.closed_at)
        last = s.execute(
            select(Decision).where(Decision.request_id == r.id, Decision.accepted.is_(True),
                                   Decision.decision == "reject").order_by(Decision.id.desc())
        ).scalars().first()
        row["reason"] = one_line(last.note, _REASON_LIMIT) if last is not None and last.note else "-"
        row["by"] = last.actor if last is not None else "-"
        rejected.append(row)

    # --- inbound mail that needs a person ---
    bad_status = tuple(INBOUND_LABELS)
    inbound = [
        {
            "at": fmt.when(m.received_at),
            "status": m.status,
            "label": INBOUND_LABELS[m.status],
            "sender": m.sender or "(tanpa pengirim)",
            "subject": one_line(m.subject or "(tanpa subjek)", 150),
            "reason": _first_line(m.error),
            "message_id": m.message_id,
        }
        for m in s.execute(
            select(Inbound).where(Inbound.agency == agency.id, Inbound.status.in_(bad_status),
                                  Inbound.received_at >= since).order_by(Inbound.received_at, Inbound.id)
        ).scalars()
    ]
    inbound_older = s.execute(
        select(func.count()).select_from(Inbound).where(
            Inbound.agency == agency.id, Inbound.status.in_(bad_status), Inbound.received_at < since)
    ).scalar_one()

    # --- failures ---
    tickets = {rid: t for rid, t in s.execute(select(Request.id, Request.ticket).where(Request.agency == agency.id))}
    outbox_failures = [
        {
            "ticket": tickets.get(o.request_id, "-") if o.request_id else "-",
            "label": "Surel gagal terkirim" if o.status == "failed" else "Surel tertunda, dicoba ulang",
            "what": _purpose_label(o.purpose),
            "to": ", ".join(o.rcpts),
            "attempts": o.attempts,
            "error": _first_line(o.last_error),
            "status": o.status,
            "at": fmt.when(o.created_at),
        }
        for o in s.execute(
            select(Outbox).where(
                Outbox.agency == agency.id,
                or_(and_(Outbox.status == "queued", Outbox.attempts > 0),
                    and_(Outbox.status == "failed", Outbox.next_attempt_at >= since)),
            ).order_by(Outbox.created_at, Outbox.id)
        ).scalars()
    ]
    # Mail over the daily cap stays held until staff release or drop it (`subdomaind outbox`): every day.
    held = [
        {"id": o.id, "ticket": tickets.get(o.request_id, "-") if o.request_id else "-",
         "what": _purpose_label(o.purpose), "to": ", ".join(o.rcpts), "at": fmt.when(o.created_at),
         "reason": _first_line(o.last_error)}
        for o in s.execute(select(Outbox).where(Outbox.agency == agency.id, Outbox.status == "held",
                                                or_(Outbox.last_error.is_(None),
                                                    ~Outbox.last_error.startswith(CAP_NOTE)))
                           .order_by(Outbox.id)).scalars()
    ]
    # Mail held by the hourly caps on mail caused by unverified senders (the requests are stored, nothing
    # was sent), every day until staff release or drop it: a flood can hold thousands, so the list is
    # bounded and the rest counted.
    held_by_cap = (Outbox.agency == agency.id, Outbox.status == "held", Outbox.last_error.startswith(CAP_NOTE))
    capped = [
        {
            "id": o.id,
            "at": fmt.when(o.created_at),
            "ticket": tickets.get(o.request_id, "-") if o.request_id else "-",
            "what": _purpose_label(o.purpose),
            "to": ", ".join(o.rcpts),
            "sender": (o.last_error or "").rpartition(": ")[2] or "-",
        }
        for o in s.execute(
            select(Outbox).where(*held_by_cap).order_by(Outbox.created_at, Outbox.id).limit(CAPPED_LISTED)
        ).scalars()
    ]
    capped_total = s.execute(select(func.count()).select_from(Outbox).where(*held_by_cap)).scalar_one()
    events = [
        {
            "at": fmt.when(a.at),
            "ticket": tickets.get(a.request_id, "-") if a.request_id else "-",
            "event": a.event,
            "label": FAILURE_LABELS[a.event],
            "detail": _event_detail(a),
        }
        for a in s.execute(
            select(Audit).where(Audit.agency == agency.id, Audit.event.in_(FAILURE_EVENTS), Audit.at >= since,
                                Audit.at <= now).order_by(Audit.at, Audit.id)
        ).scalars()
    ]

    # Failing now, whenever it began: a mailbox that cannot be read, an automatic step that keeps failing.
    for st in s.execute(select(MailboxState).where(MailboxState.agency == agency.id,
                                                   MailboxState.failing_since.is_not(None))).scalars():
        events.insert(0, {"at": fmt.when(st.failing_since), "ticket": "-", "event": "intake.failing",
                          "label": f"Kotak surat {st.mailbox} tidak dapat dibaca",
                          "detail": _first_line(st.last_error or "tanpa keterangan")})
    told = {e["ticket"] for e in events if e["event"] == "action.failed"}
    for run in s.execute(select(StepRun).where(StepRun.status == "open", StepRun.kind == "action",
                                               StepRun.last_error.is_not(None),
                                               StepRun.request_id.in_(list(tickets)))).scalars():
        if tickets.get(run.request_id) in told:
            continue  # already listed by its action.failed event in this period
        events.insert(0, {"at": fmt.when(run.opened_at), "ticket": tickets.get(run.request_id, "-"),
                          "event": "action.failing", "label": "Proses otomatis gagal, dicoba ulang",
                          "detail": _first_line(f"{run.key}: {run.last_error}")})

    # --- the month ---
    local_now = calendar.local(now)
    month_start = local_now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    received_month = s.execute(
        select(func.count()).select_from(Request).where(
            Request.agency == agency.id, Request.received_at >= month_start, Request.received_at <= now)
    ).scalar_one()
    closed_month = list(s.execute(
        select(Request).where(Request.agency == agency.id, Request.status.in_(("done", "rejected")),
                              Request.closed_at >= month_start, Request.closed_at <= now)
    ).scalars())
    done_minutes = [calendar.working_minutes(r.received_at, r.closed_at)
                    for r in closed_month if r.status == "done" and r.closed_at is not None]
    total_days, total_minutes = sop.total()
    sop_minutes = total_days * calendar.day_minutes + total_minutes
    median = statistics.median(done_minutes) if done_minutes else None
    month = {
        "name": f"{_BULAN[local_now.month - 1]} {local_now.year}",
        "received": received_month,
        "finished": len(done_minutes),
        "rejected": sum(1 for r in closed_month if r.status == "rejected"),
        "median": fmt.span(median) if median is not None else "-",
        "median_minutes": median,
        "sop_total": fmt.span(sop_minutes),
        "sop_total_minutes": sop_minutes,
        "within": sum(1 for m in done_minutes if m <= sop_minutes),
        "median_over": median is not None and median > sop_minutes,
    }

    overdue = sum(1 for it in queue if it["overdue"])
    role_info = None
    if role is not None:
        role_info = {"key": role, "title": sop.roles[role].title}
    return {
        "sop_title": sop.title,
        "zone_label": fmt.zone,
        "office_hours": f"{calendar.start:%H.%M}–{calendar.end:%H.%M} {fmt.zone}",
        "today": format_tanggal(local_now),
        "generated": fmt.when(now),
        "since": fmt.when(since),
        "role": role_info,
        "waiting_you": waiting_you,
        "queue": queue,
        "full_cards": HTML_FULL_CARDS,
        "compact_rows": HTML_COMPACT_ROWS,
        "new": new,
        "finished": finished,
        "rejected": rejected,
        "inbound": inbound,
        "inbound_older": inbound_older,
        "outbox_failures": outbox_failures,
        "held": held,
        "events": events,
        "capped": capped,
        "capped_total": capped_total,
        # Said every day while it is so: decisions are then not vouched for by the mail server.
        "auth_unvouched": agency.auth.require == "none",
        "month": month,
        "counts": {
            "open": len(queue),
            "overdue": overdue,
            "waiting_you": len(waiting_you),
            "waiting_you_overdue": sum(1 for it in waiting_you if it["overdue"]),
            "new": len(new),
            "finished": len(finished),
            "rejected": len(rejected),
            "inbound": len(inbound),
            "failures": len(outbox_failures) + len(events),
            "held": len(held),
        },
    }


def _event_detail(a: Audit) -> str:
    d = a.detail or {}
    if a.event == "action.failed":
        text = f"{d.get('step', '-')}: {d.get('error', '-')}"
    elif a.event == "mail.bounced":
        failed = d.get("failed") or []
        text = f"ke {', '.join(map(str, failed)) or '(alamat tidak diketahui)'} ({d.get('status') or 'tanpa kode'})"
    else:
        text = str(d.get("problem", "-"))
    return _first_line(text)


def _mailer(agency: AgencySettings, now: datetime) -> Mailer:
    return Mailer(agency_id=agency.id, agency_name=agency.name, address=agency.address, zone=agency.zone,
                  clock=lambda: now)


def render_digest(data: dict[str, Any], agency: AgencySettings) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of a digest, exactly as `send_digest` queues it."""
    rendered = _mailer(agency, datetime.now(UTC)).render("digest", data)
    assert rendered.html is not None
    return rendered.subject, rendered.text, rendered.html


def send_digest(ctx: Ctx, calendar: WorkCalendar, now: datetime, since: datetime) -> int:
    """Queue the staff digest and one "Menunggu Anda" digest per role with steps waiting; returns mails queued."""
    queued = 0
    if ctx.agency.digest_recipients:
        data = build_digest(ctx.session, ctx.agency, ctx.sop, calendar, now, since)
        to = list(ctx.agency.digest_recipients)
        ctx.mailer.queue(ctx.session, to=to, template="digest", context=data, purpose="digest")
        audit(ctx, None, "digest.sent", to=to, since=since.isoformat(), counts=data["counts"])
        queued += 1
    for role in sorted(ctx.sop.actor_roles()):
        to = _role_recipients(ctx.agency, role)
        if not to:
            continue
        data = build_digest(ctx.session, ctx.agency, ctx.sop, calendar, now, since, role=role)
        if not data["waiting_you"]:
            continue
        ctx.mailer.queue(ctx.session, to=to, template="digest", context=data, purpose=f"digest.{role}")
        audit(ctx, None, "digest.role_sent", role=role, to=to, since=since.isoformat(), counts=data["counts"])
        queued += 1
    return queued


def _role_recipients(agency: AgencySettings, role: str) -> list[str]:
    out: list[str] = []
    for addr in (*agency.actors.get(role, []), *agency.delegates.get(role, [])):
        if addr not in out:
            out.append(addr)
    return out


def digest_due(
    session: Session,
    agency_id: str,
    calendar: WorkCalendar,
    now: datetime,
    at: time = DEFAULT_DIGEST_TIME,
) -> datetime | None:
    """The `since` of the digest due now (the last one's time), or None when none is due.

    One digest per working day, from `at` local time on; the first ever covers the last 24 hours.
    """
    local_now = calendar.local(now)
    if not calendar.is_workday(local_now.date()) or local_now.time() < at:
        return None
    last = session.execute(
        select(Audit.at).where(Audit.agency == agency_id, Audit.event == "digest.sent")
        .order_by(Audit.at.desc()).limit(1)
    ).scalar_one_or_none()
    if last is None:
        return now - timedelta(days=1)
    if calendar.local(last).date() >= local_now.date():
        return None
    return last
