"""How often a sender is told something: one notice per address and reason per day."""

from __future__ import annotations

from sqlalchemy import select

from workflows.engine import Ctx
from workflows.store import NoticeLog


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
