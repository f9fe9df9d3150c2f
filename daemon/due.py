"""Work that comes due by the clock in one agency: automatic steps (each in its own transaction, retried
after the shared backoff when it fails), reminders and escalations past the Mutu Baku, the daily digest
and the monthly report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.backoff import Backoff
from subdomaind.daemon.config import AgencyConfig
from subdomaind.daemon.runtime import AgencyRuntime, purge_if_needed
from subdomaind.workflows.digest import digest_due, send_digest
from subdomaind.workflows.engine import Ctx, alert_staff, due_actions, run_action
from subdomaind.workflows.reminders import due_reminders
from subdomaind.workflows.report import run_scheduled
from subdomaind.workflows.store import Request, StepRun

log = logging.getLogger("subdomaind.service")

# A failed automatic step is tried again after 2 minutes, doubling to an hour.
STEP_BACKOFF = Backoff(base=120.0, cap=3600.0)
REPORT_RETRY_SECONDS = 3600.0  # a failed monthly report is tried again after an hour


@dataclass
class Due:
    """Runs what the clock made due. `heartbeat` tells the service manager each step is progress."""

    sessions: sessionmaker[Session]
    ctx: Callable[[Session, AgencyConfig], Ctx]
    clock: Callable[[], datetime]
    stopping: threading.Event
    heartbeat: Callable[[], None]

    def run_due(self, rt: AgencyRuntime) -> int:
        """The automatic steps whose time has come; how many ran."""
        with self.sessions() as s:
            ids = due_actions(s, rt.agency.id, self.clock())
        done = 0
        for step_id in ids:
            if self.stopping.is_set():
                break
            try:
                with self.sessions.begin() as s:
                    q = select(StepRun).where(StepRun.id == step_id, StepRun.status == "open")
                    if s.get_bind().dialect.name == "postgresql":
                        q = q.with_for_update(skip_locked=True)
                    run = s.execute(q).scalar_one_or_none()
                    if run is None:
                        continue
                    run_action(self.ctx(s, rt.agency), run)
                    done += 1
                purge_if_needed(self.sessions, s)
                self.heartbeat()
            except Exception as exc:  # the per-action boundary: record, back off, keep the loop alive
                log.exception("action step %s failed", step_id)
                with self.sessions.begin() as s:
                    run = s.get(StepRun, step_id)
                    if run is not None:
                        run.attempts += 1
                        run.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                        run.due_at = self.clock() + STEP_BACKOFF.after(run.attempts)
                        if run.attempts == 1:  # staff hear of it once; status and the digest show it after
                            alert_staff(self.ctx(s, rt.agency), s.get(Request, run.request_id),
                                        f"Langkah otomatis {run.key} gagal ({type(exc).__name__}: {exc}); "
                                        f"dicoba ulang berkala. Lihat subdomaind status.")
        return done

    def housekeeping(self, rt: AgencyRuntime) -> None:
        """Reminders and escalations past the Mutu Baku, and the daily digest and the monthly report when
        their time has come."""
        hh, mm = (int(x) for x in rt.agency.digest_time.split(":"))
        try:
            with self.sessions.begin() as s:
                ctx = self.ctx(s, rt.agency)
                now = self.clock()
                due_reminders(ctx, rt.calendar, now)
                since = digest_due(s, rt.agency.id, rt.calendar, now, dtime(hh, mm))
                if since is not None:
                    send_digest(ctx, rt.calendar, now, since)
        except Exception:  # the housekeeping boundary: a bad digest must not stop intake
            log.exception("reminders/digest for %s failed", rt.agency.id)
        now = self.clock()
        this_month = f"{rt.calendar.local(now):%Y-%m}"
        if not rt.agency.monthly_report or rt.report_month == this_month or time.monotonic() < rt.report_retry_at:
            return
        try:  # its own transactions: a failing report must not take the digest with it
            if run_scheduled(self.sessions, lambda s: self.ctx(s, rt.agency), rt.calendar, now, dtime(hh, mm)):
                rt.report_month = this_month
        except Exception:
            log.exception("monthly report for %s failed; tried again in an hour", rt.agency.id)
            rt.report_retry_at = time.monotonic() + REPORT_RETRY_SECONDS
