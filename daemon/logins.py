"""Mailbox logins: each under its mailbox's gate (daemon/gate.py), the backoff of the previous run
restored, a failing mailbox recorded where `status` and the digest read it, with one alert to the staff per
outage. All mailboxes share a bound on logins in flight (`scale.login_concurrency`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import AgencyConfig
from subdomaind.daemon.mailbox import MailSourceError
from subdomaind.daemon.runtime import AgencyRuntime, mailbox_state
from subdomaind.workflows.engine import Ctx, alert_staff
from subdomaind.workflows.store import MailboxState

log = logging.getLogger("subdomaind.service")


@dataclass
class Logins:
    """Logs the mailboxes in under their gates, and records why one cannot be read.

    `ctx` gives the workflow context for the staff alert; `on_login` is called after every login that
    works (the process tells systemd it is ready after the first)."""

    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]
    ctx: Callable[[Session, AgencyConfig], Ctx]
    concurrency: int
    alert_after: timedelta  # a mailbox failing this long gets one alert to the staff
    on_login: Callable[[], None]
    slots: threading.BoundedSemaphore = field(init=False)  # logins in flight, all mailboxes together

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.concurrency)

    def connect(self, rt: AgencyRuntime) -> bool:
        """Log intake's connection in, unless already in or the gate says wait; True when it is in."""
        if rt.connected:
            return True
        self.restore_backoff(rt)
        if not rt.gate.try_begin():
            return False
        try:
            with self.slots:
                rt.source.connect()
        except MailSourceError as exc:
            self.failed(rt, exc)
            return False
        except BaseException:
            rt.gate.release()
            raise
        rt.gate.succeeded()
        rt.connected = True
        self.on_login()
        return True

    def connect_all(self, runtimes: Iterable[AgencyRuntime], owns: Callable[[str], bool]) -> None:
        """Log in to every mailbox this process works, `concurrency` at a time."""
        todo = [rt for rt in runtimes if owns(rt.agency.id) and not rt.connected]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="login") as pool:
            list(pool.map(self.connect, todo))

    def restore_backoff(self, rt: AgencyRuntime) -> None:
        """Once per runtime: a login backoff recorded by the previous run still holds."""
        if rt.restored:
            return
        rt.restored = True
        with self.sessions() as s:
            st = s.get(MailboxState, (rt.agency.id, rt.source.folder))
            until = st.backoff_until if st is not None else None
        if until is not None:
            left = (until - self.clock()).total_seconds()
            if left > 0:
                rt.gate.restore(left)
                log.warning("mailbox %s: the login backoff of the previous run holds for %.0f s more",
                            rt.agency.id, left)

    def failed(self, rt: AgencyRuntime, exc: Exception) -> None:
        """Intake's connection failed: dropped, backed off, and recorded."""
        rt.connected = False
        kind = exc.kind if isinstance(exc, MailSourceError) else "network"
        delay = rt.gate.failed(kind)
        log.warning("intake %s failing: %s; retry in %.0f s", rt.agency.id, exc, delay)
        try:
            rt.source.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not stop the loop
            log.debug("close failed", exc_info=True)
        self.record_failure(rt, exc, delay)

    def record_failure(self, rt: AgencyRuntime, exc: Exception, delay: float) -> None:
        """The reason in plain words and the backoff's end, where `status` and the digest read them."""
        with self.sessions.begin() as s:
            st = mailbox_state(s, rt)
            st.last_error = str(exc)[:2000]
            st.backoff_until = self.clock() + timedelta(seconds=delay)
            if st.failing_since is None:
                st.failing_since = self.clock()
            if st.alerted_at is None and self.clock() - st.failing_since >= self.alert_after:
                # One alert per outage, through SMTP (which does not depend on the broken mailbox).
                st.alerted_at = self.clock()
                alert_staff(self.ctx(s, rt.agency), None,
                            f"Kotak surat {rt.agency.imap.user}@{rt.agency.imap.host} tidak dapat dibaca sejak "
                            f"{st.failing_since:%Y-%m-%d %H:%M} UTC: {str(exc)[:300]}")
