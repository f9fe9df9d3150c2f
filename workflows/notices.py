"""What a sender is told, and how much mail a sender may cause: a refusal's answer (at most one notice per
address and reason a day), and the hourly caps on the mail an unverified sender makes us queue."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select

from subdomaind.parsers.model import ParseResult
from subdomaind.workflows.engine import Ctx, audit, delegates_of
from subdomaind.workflows.errors import Refusal
from subdomaind.workflows.mailer import CAP_NOTE
from subdomaind.workflows.store import Decision, Inbound, NoticeLog, Outbox, Request, SenderMailCount, StepRun, tx_state
from subdomaind.workflows.vouch import AuthPolicy, vouched


def first_notice_today(ctx: Ctx, address: str, reason: str) -> bool:
    """Whether `address` has not yet been told `reason` today; records that it now is (Discourse's rule:
    one notice per sender and reason per day, so a loop or a flood gets one answer, not many)."""
    day = ctx.now().date().isoformat()
    seen = ctx.session.execute(select(NoticeLog.id).where(
        NoticeLog.address == address, NoticeLog.reason == reason, NoticeLog.day == day)).first()
    if seen is not None:
        return False
    ctx.session.add(NoticeLog(address=address, reason=reason, day=day))
    return True


def known_address(ctx: Ctx, address: str | None) -> bool:
    """An official or delegate of this agency, from config or registered by mail and still in force
    (someone we may tell why a reply was refused)."""
    if not address:
        return False
    address = address.lower()
    if any(address in addrs for addrs in (*ctx.agency.actors.values(), *ctx.agency.delegates.values())):
        return True
    return any(address in delegates_of(ctx, role) for role in ctx.sop.roles if not ctx.sop.roles[role].requester)


def record_refusal(ctx: Ctx, parsed: ParseResult, row: Inbound, refusal: Refusal) -> str:
    """Audit a refusal (and the refused decision), then tell the sender why, at most once a day."""
    sender = row.sender or ""
    req_id = row.request_id
    req = ctx.session.get(Request, req_id) if req_id else None
    step_id = None
    if req is not None:
        step_id = ctx.session.execute(
            select(StepRun.id).where(StepRun.request_id == req.id).order_by(StepRun.id.desc())
        ).scalars().first()
    if parsed.reply is not None and req is not None:
        ctx.session.add(
            Decision(request_id=req.id, step_id=step_id, decision=parsed.reply.decision, actor=sender,
                     note=parsed.reply.note, message_id=row.message_id, accepted=False,
                     reason=f"{refusal.code}: {refusal.reason}", rules=list(parsed.reply.rules), at=ctx.now())
        )
    audit(ctx, req, "mail.refused", actor=sender or "?", message_id=row.message_id, code=refusal.code,
          reason=refusal.reason)
    if not refusal.notify or not sender:
        return refusal.unanswered
    # Never an unknown outsider: only officials, delegates and the request's own requester hear why.
    is_requester = req is not None and sender in (req.requester, (req.fields or {}).get("pic_email"))
    official = known_address(ctx, sender)
    # A unit's own letter (duplicate, too large) is answered: units write to us by right.
    if not (official or is_requester or refusal.code in ("duplicate", "too_large")):
        return refusal.unanswered
    # An official hears back on every request they answered: one notice per request, reason and day, so
    # an unclear reply on one request never silences their replies on the others. Anyone else: one notice
    # per address, reason and day, whatever the request (a flood gets one answer).
    key = f"{refusal.code}:{req.id}" if official and req is not None else refusal.code
    if not first_notice_today(ctx, sender, key):
        return refusal.unanswered
    notice = ctx.mailer.queue(
        ctx.session,
        to=[sender],
        template=refusal.template,
        context={"reason": refusal.reason, "sender": sender, **refusal.context},
        purpose=f"refusal.{refusal.code}",
        request_id=req.id if req else None,
        ticket=req.ticket if req else None,
        in_reply_to=row.message_id,
    )
    if tx_state(ctx.session).queued is None:
        # Outside a handler's run (after its rollback): charged here. Inside one, the notice is charged
        # with the rest of the handler's mail (workflows/inbound.run_handler).
        charge_unverified(ctx, parsed, row, [notice])
    return "answered" if notice.status != "held" else refusal.unanswered


def _vouched_official(ctx: Ctx, parsed: ParseResult, row: Inbound, sender: str) -> bool:
    """An official or delegate whose mail the agency's policy vouches for: their mail is bounded per
    request, not by the caps. A forged `From:` naming an official is not vouched for, so it is capped like
    any stranger's (unless the agency wrote `require = "none"`)."""
    if not known_address(ctx, sender) or parsed.message is None:
        return False
    auth = ctx.agency.auth
    ok, _how = vouched(parsed.message, row.raw, AuthPolicy(auth.require, auth.authserv_id), ctx.services.dkim_txt)
    return ok


def charge_unverified(ctx: Ctx, parsed: ParseResult, row: Inbound, queued: list[Outbox]) -> None:
    """Count the mail one message made us queue against its sender's hourly caps, or hold all of it.

    A message from anyone but an official (whose mail the office MTA vouches for) can be forged, so what
    it makes us send (the ack, the "perlu dilengkapi" letter, the official's step mail, notices) is
    bounded per sender address, per sender domain and for the whole agency, per clock hour. The decision
    is for the message as a whole: within every cap, all its mail goes out and is counted; over one, all
    of it is held (status `held`, listed in the digest) and nothing is counted, so the mail sent never
    passes a cap."""
    queued = [o for o in queued if o.status == "queued"]
    sender = (row.sender or "").lower()
    if not queued or _vouched_official(ctx, parsed, row, sender):
        return
    caps = ctx.config.workflow.unverified_mail
    hour = ctx.now().astimezone(UTC).strftime("%Y-%m-%dT%H")
    scopes = (("sender", sender or "?", caps.per_sender_per_hour),
              ("domain", sender.rpartition("@")[2] or "?", caps.per_domain_per_hour),
              ("agency", "*", caps.per_agency_per_hour))
    counters = []
    with ctx.session.no_autoflush:
        for scope, key, cap in scopes:
            counter = ctx.session.get(SenderMailCount, (ctx.agency.id, scope, key[:320], hour))
            if counter is None:
                counter = SenderMailCount(agency=ctx.agency.id, scope=scope, key=key[:320], hour=hour, count=0)
                ctx.session.add(counter)
            counters.append((scope, cap, counter))
    over = [f"{scope} {counter.count}/{cap}" for scope, cap, counter in counters if counter.count + len(queued) > cap]
    if not over:
        for _scope, _cap, counter in counters:
            counter.count += len(queued)
        return
    for out in queued:
        out.status, out.last_error = "held", f"{CAP_NOTE} ({', '.join(over)}): {sender}"
    req_id = row.request_id or next((o.request_id for o in queued if o.request_id), None)
    audit(ctx, ctx.session.get(Request, req_id) if req_id else None, "mail.capped", actor=sender or "?",
          message_id=row.message_id, held=len(queued), caps=over)
