"""Send what the outbox holds through SMTP (smtplib), with retries, backoff and the same Message-ID.

`Transport` is the interface (one method: send raw bytes to recipients); `SmtpTransport` the real one.
`drain` claims due rows, sends each, and records the result in its own short transaction: a crash between
send and record re-sends the same bytes, so the recipient sees one Message-ID twice at worst, never two
different mails. A sensitive row (the PIC's password) is sealed at rest, opened only to be sent, and
scrubbed once sent. A row that waits for another (`after_id`, status "waiting") is released when that one is
sent, and fails with it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from daemon.config import SmtpConfig
from daemon.mailbox import tls_context
from workflows.secretbox import SealedValueError, SecretBox
from workflows.store import Outbox, PendingSecret, purge_freed_secrets

log = logging.getLogger("subdomaind.outbox")

MAX_BACKOFF = timedelta(hours=1)


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool, unreachable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unreachable = unreachable  # the server did not answer at all (not a refusal of this mail)


class NotTried(SendError):
    """A mail of a batch not begun because the server had just proved unreachable."""


class Transport(Protocol):
    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None: ...


class SmtpTransport:
    """Up to `connections` SMTP connections kept open across mails (and passes), one per sender thread;
    each reconnected on error.

    A new connection and TLS context per mail cost ~35 ms each (the CA store alone ~22 ms); a morning's
    backlog sends hundreds of mails. `send_many` keeps several mails in flight at once: the server's answer
    to one mail (its own delivery, about 5 ms on loopback) no longer holds up the next. The stdlib's
    smtplib on a few threads, not aiosmtplib: over bench/backlog.py's 2,900 mails the sending threads
    spent 3.0 s of CPU against aiosmtplib's 3.8 s, on the process whose CPU sets the daemon's pace.
    """

    IDLE_CLOSE_SECONDS = 60.0

    def __init__(self, cfg: SmtpConfig, password: str | None, helo_name: str | None = None) -> None:
        self.cfg = cfg
        self.password = password
        self.helo_name = cfg.helo_name or helo_name or "localhost"
        self._tls = tls_context(str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls != "none" else None
        self._idle: list[tuple[smtplib.SMTP, float]] = []  # open connections not in use, with their last use
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        # local_hostname given: smtplib would otherwise look up our own host name on every connection.
        client: smtplib.SMTP
        if cfg.tls == "implicit":
            client = smtplib.SMTP_SSL(cfg.host, cfg.port, local_hostname=self.helo_name,
                                      timeout=cfg.timeout_seconds, context=self._tls)
        else:
            client = smtplib.SMTP(cfg.host, cfg.port, local_hostname=self.helo_name, timeout=cfg.timeout_seconds)
            if cfg.tls == "starttls":
                client.starttls(context=self._tls)  # refused or not offered: an error, never plain text
        if cfg.user:
            client.login(cfg.user, self.password or "")
        return client

    def _take(self) -> smtplib.SMTP:
        with self._lock:
            while self._idle:
                client, used = self._idle.pop()
                if time.monotonic() - used < self.IDLE_CLOSE_SECONDS:
                    return client
                _close(client)
        return self._connect()

    def _give_back(self, client: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append((client, time.monotonic()))

    def _send_one(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> SendError | None:
        """One mail on a pooled connection; our verdict: None, or permanent (5xx), retry (4xx), unreachable."""
        client: smtplib.SMTP | None = None
        try:
            client = self._take()
            try:
                client.sendmail(mail_from, list(rcpts), raw)
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                # The server closed our idle connection: once more on a fresh one.
                _close(client)
                client = self._connect()
                client.sendmail(mail_from, list(rcpts), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            # 4xx (greylisting, a relay's temporary check) is tried again; only all-5xx is final. smtplib
            # has reset the transaction: the connection goes on.
            if client is not None:
                self._give_back(client)
            codes = [code for code, _text in exc.recipients.values()]
            return SendError(f"penerima ditolak: {exc.recipients}", permanent=all(500 <= c < 600 for c in codes))
        except smtplib.SMTPResponseException as exc:
            # After any other error the connection's state is unknown: the next mail starts on a new one.
            _close(client)
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            return SendError(f"SMTP {exc.smtp_code}: {text}", permanent=500 <= exc.smtp_code < 600)
        except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            _close(client)
            return SendError(f"SMTP tidak dapat dihubungi: {exc}", permanent=False, unreachable=True)
        self._give_back(client)
        return None

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        error = self.send_many([(mail_from, rcpts, raw)])[0]
        if error is not None:
            raise error

    def send_many(self, mails: Sequence[tuple[str, Sequence[str], bytes]]) -> list[SendError | None]:
        """Send each mail; its error or None, in order. After the server proved unreachable the mails not
        yet begun are not tried (NotTried): they would wait out the same timeout."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.cfg.connections, thread_name_prefix="smtp")
        down = threading.Event()

        def one(mail: tuple[str, Sequence[str], bytes]) -> SendError | None:
            if down.is_set():
                return NotTried("server SMTP tidak dapat dihubungi", permanent=False, unreachable=True)
            error = self._send_one(*mail)
            if error is not None and error.unreachable:
                down.set()
            return error

        if len(mails) == 1:
            return [one(mails[0])]
        return list(self._threads.map(one, mails))

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        with self._lock:
            idle, self._idle = self._idle, []
        for client, _used in idle:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                _close(client)


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(OSError):
            client.close()


def send_all(transport: Transport, mails: Sequence[tuple[str, Sequence[str], bytes]]) -> list[SendError | None]:
    """Several mails through any transport: at once where it can (`send_many`), else one by one."""
    many = getattr(transport, "send_many", None)
    if many is not None:
        return list(many(mails))
    results: list[SendError | None] = []
    for i, (mail_from, rcpts, raw) in enumerate(mails):
        try:
            transport.send(mail_from, rcpts, raw)
            results.append(None)
        except SendError as exc:
            results.append(exc)
            if exc.unreachable and not exc.permanent:
                results += [NotTried(str(exc), permanent=False, unreachable=True)] * (len(mails) - i - 1)
                break
    return results


def backoff(attempts: int, base: float = 30.0, cap: float = MAX_BACKOFF.total_seconds()) -> timedelta:
    """30 s, 1 min, 2 min ... capped at an hour, with jitter so a recovering server is not stampeded."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))


def _scrub(s: Session, row: Outbox) -> bool:
    """Drop a sensitive mail's bytes and the request's pending password; the caller purges the WAL."""
    row.raw = None
    if row.request_id is not None:
        s.execute(delete(PendingSecret).where(PendingSecret.request_id == row.request_id))
    return True


def _fail_waiters(s: Session, after_id: int, clock: Callable[[], datetime]) -> bool:
    """The mail they waited for will never go: neither do they (a credential mail without its letter)."""
    scrubbed = False
    for row in s.execute(select(Outbox).where(Outbox.after_id == after_id, Outbox.status == "waiting")).scalars():
        row.status = "failed"
        row.last_error = f"surel {after_id} yang harus terkirim lebih dulu gagal dikirim"
        log.warning("outbox %s not sent: the mail it waited for failed", row.message_id)
        if row.sensitive:
            scrubbed = _scrub(s, row)
    return scrubbed


class _Claim(NamedTuple):
    """A row claimed for sending: what the send needs, without the ORM object (sent outside any session)."""

    id: int
    mail_from: str
    rcpts: list[str]
    raw: bytes
    message_id: str
    sensitive: bool


@dataclass
class _Outcome:
    counts: dict[str, int]
    scrubbed: bool = False
    down: bool = False


@retry(retry=retry_if_exception_type(OperationalError), wait=wait_exponential(multiplier=0.5, max=10),
       stop=stop_after_delay(120), reraise=True,
       before_sleep=lambda state: log.warning("recording sent mail waits for the database: %s",
                                              state.outcome.exception() if state.outcome else "?"))
def _record(sessions: sessionmaker[Session], clock: Callable[[], datetime],
            claimed: Sequence[_Claim],
            results: Sequence[SendError | None]) -> _Outcome:
    """What became of each claimed mail, in one transaction (all of it again if it has to be retried)."""
    out = _Outcome(counts={"sent": 0, "retry": 0, "failed": 0})
    with sessions.begin() as s:
        # The mails that went out, in one statement (loading each row back would read its bytes too).
        plain = [c.id for c, error in zip(claimed, results, strict=True) if error is None and not c.sensitive]
        if plain:
            s.execute(update(Outbox).where(Outbox.id.in_(plain))
                      .values(status="sent", sent_at=clock(), last_error=None))
        sent = [c.id for c, error in zip(claimed, results, strict=True) if error is None]
        if sent:
            # What waited for these (the PIC's credentials for the letter) may go now: next in this pass.
            s.execute(update(Outbox).where(Outbox.after_id.in_(sent), Outbox.status == "waiting")
                      .values(status="queued", next_attempt_at=clock()))
        for c, error in zip(claimed, results, strict=True):
            message_id = c.message_id
            if error is None:
                out.counts["sent"] += 1
                log.info("sent %s to %d recipient(s)", message_id, len(c.rcpts))
                if not c.sensitive:
                    continue
            row = s.get(Outbox, c.id)
            if row is None:
                continue
            if isinstance(error, NotTried):
                row.attempts -= 1  # never begun: waits for the server without counting as a try
                continue
            if error is None:
                row.status = "sent"
                row.sent_at = clock()
                row.last_error = None
                out.scrubbed = _scrub(s, row)  # the password lived only for this one mail (issue 5)
                continue
            row.last_error = str(error)[:2000]
            if error.permanent:
                row.status = "failed"
                out.counts["failed"] += 1
                log.warning("outbox %s failed permanently: %s", message_id, error)
                if row.sensitive:
                    out.scrubbed = _scrub(s, row)  # an undeliverable mail keeps no password: staff issue anew
                out.scrubbed = _fail_waiters(s, c.id, clock) or out.scrubbed
                continue
            out.counts["retry"] += 1
            out.down = out.down or error.unreachable
            log.info("outbox %s retry %d: %s", message_id, row.attempts, error)
    return out


def drain(
    sessions: sessionmaker[Session],
    transport: Transport,
    clock: Callable[[], datetime],
    *,
    limit: int = 200,
    chunk: int = 20,
    deadline: float | None = None,
    stopping: Any = None,
    retry_base: float = 30.0,
    retry_max: float = MAX_BACKOFF.total_seconds(),
    box: SecretBox | None = None,
) -> dict[str, int]:
    """Send due outbox rows, `chunk` at a time; returns counts {"sent", "retry", "failed"}.

    Each chunk is claimed in one transaction that records the attempt (and the next retry time) before
    anything is sent, so no other process sees those rows due meanwhile, and a database that cannot record
    the outcome afterwards delays the re-send instead of repeating it every pass. The chunk is sent outside
    any transaction, then every outcome recorded in one more. A crash in between re-sends at most one chunk,
    each mail with its own Message-ID again. A server that proved unreachable ends the pass. A sealed row
    is opened with `box` in memory only; one that does not open fails at once (it never would).
    """
    import time

    counts = {"sent": 0, "retry": 0, "failed": 0}
    scrubbed = False
    pg = sessions.kw["bind"].dialect.name == "postgresql"
    while counts["sent"] + counts["retry"] + counts["failed"] < limit:
        if (deadline is not None and time.monotonic() > deadline) or (stopping is not None and stopping.is_set()):
            break
        # 1. Claim a chunk and record the attempt, committed before the send.
        with sessions.begin() as s:
            q = (select(Outbox).where(Outbox.status == "queued", Outbox.next_attempt_at <= clock())
                 .order_by(Outbox.id).limit(chunk))
            if pg:
                q = q.with_for_update(skip_locked=True, of=Outbox)  # not the joined bytes (outer join)
            claimed: list[_Claim] = []
            unopened = 0
            for due in s.execute(q).scalars():
                raw = due.raw
                if raw is None:
                    continue
                due.attempts += 1
                due.next_attempt_at = clock() + backoff(due.attempts, retry_base, retry_max)
                if due.sensitive:
                    try:
                        if box is None:
                            raise SealedValueError("no key to open it")
                        raw = box.open(raw, due.message_id)
                    except SealedValueError as exc:
                        log.error("outbox %s cannot be opened with [secrets] key_file: %s", due.message_id, exc)
                        due.status, due.last_error = "failed", f"tidak dapat dibuka dengan kunci rahasia: {exc}"
                        scrubbed = _scrub(s, due) or scrubbed
                        scrubbed = _fail_waiters(s, due.id, clock) or scrubbed
                        counts["failed"] += 1
                        unopened += 1
                        continue
                claimed.append(_Claim(due.id, due.mail_from, list(due.rcpts), raw, due.message_id, due.sensitive))
        if not claimed:
            if unopened:
                continue  # rows that failed to open were skipped: look again past them
            break
        # 2. Send, outside any transaction.
        results = send_all(transport, [(c.mail_from, c.rcpts, c.raw) for c in claimed])
        # 3. Record the outcomes. A mail that went out must be recorded as sent, or it is sent again once its
        #    retry time comes: a database busy beyond busy_timeout is waited out (tenacity), not given up.
        outcome = _record(sessions, clock, claimed, results)
        scrubbed = scrubbed or outcome.scrubbed
        down = outcome.down
        for k in counts:
            counts[k] += outcome.counts[k]
        if down:
            break  # the server itself is unreachable: the rest waits for the next pass
    if scrubbed:
        purge_freed_secrets(sessions.kw["bind"])
    return counts
