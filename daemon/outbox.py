"""Send what the outbox holds through SMTP (aiosmtplib), with retries, backoff and the same Message-ID.

`Transport` is the interface (one method: send raw bytes to recipients); `SmtpTransport` the real one.
`drain` claims due rows, sends each, and records the result in its own short transaction: a crash between
send and record re-sends the same bytes, so the recipient sees one Message-ID twice at worst, never two
different mails. A sensitive row (the PIC's password) is scrubbed once sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiosmtplib
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import SmtpConfig
from daemon.mailbox import tls_context
from workflows.store import Outbox, PendingSecret, purge_freed_secrets

log = logging.getLogger("subdomaind.outbox")

MAX_BACKOFF = timedelta(hours=1)


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool, unreachable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unreachable = unreachable  # the server did not answer at all (not a refusal of this mail)


class Transport(Protocol):
    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None: ...


class SmtpTransport:
    """One SMTP connection kept open across mails (and passes), on its own event loop; reconnected on error.

    A new connection, TLS context and event loop per mail cost ~35 ms each (the CA store alone ~22 ms);
    a morning's backlog sends hundreds of mails.
    """

    IDLE_CLOSE_SECONDS = 60.0

    def __init__(self, cfg: SmtpConfig, password: str | None, helo_name: str | None = None) -> None:
        self.cfg = cfg
        self.password = password
        self.helo_name = cfg.helo_name or helo_name or "localhost"
        self._tls = tls_context(str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls != "none" else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        # local_hostname given: aiosmtplib would otherwise resolve our own host name on every connection.
        client = aiosmtplib.SMTP(hostname=cfg.host, port=cfg.port, timeout=cfg.timeout_seconds,
                                 use_tls=cfg.tls == "implicit", start_tls=cfg.tls == "starttls",
                                 tls_context=self._tls, local_hostname=self.helo_name)
        await client.connect()
        if cfg.user:
            await client.login(cfg.user, self.password or "")
        return client

    async def _send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        if self._client is not None and (not self._client.is_connected
                                         or time.monotonic() - self._last_used > self.IDLE_CLOSE_SECONDS):
            await self._drop()
        if self._client is None:
            self._client = await self._connect()
        try:
            await self._client.sendmail(mail_from, list(rcpts), raw)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            # The server closed our idle connection: once more on a fresh one.
            await self._drop()
            self._client = await self._connect()
            await self._client.sendmail(mail_from, list(rcpts), raw)
        self._last_used = time.monotonic()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.quit()
            except Exception:  # noqa: BLE001 - a dead connection is dropped either way
                client.close()

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._send(mail_from, rcpts, raw))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # 4xx (greylisting, a relay's temporary check) is tried again; only all-5xx is final.
            codes = [getattr(r, "code", 550) for r in exc.recipients]
            raise SendError(f"penerima ditolak: {exc}", permanent=all(500 <= c < 600 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            self._reset()
            raise SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self._reset()
            raise SendError(f"SMTP tidak dapat dihubungi: {exc}", permanent=False, unreachable=True) from exc

    def _reset(self) -> None:
        """After an error the connection's state is unknown: start the next mail on a new one."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.run_until_complete(self._drop())
            finally:
                self._loop.close()


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


def drain(
    sessions: sessionmaker[Session],
    transport: Transport,
    clock: Callable[[], datetime],
    *,
    limit: int = 100,
    deadline: float | None = None,
    stopping: Any = None,
    retry_base: float = 30.0,
    retry_max: float = MAX_BACKOFF.total_seconds(),
) -> dict[str, int]:
    """Send due outbox rows; returns counts {"sent", "retry", "failed"}.

    Each attempt is recorded (with its next retry time) before the send, so a database that cannot record
    "sent" afterwards delays the re-send instead of repeating it every pass. A transient SMTP failure stops
    the batch (the server is down: the other rows would wait out the same timeout).
    """
    import time

    counts = {"sent": 0, "retry": 0, "failed": 0}
    scrubbed = False
    with sessions() as s:
        now = clock()
        stmt = (
            select(Outbox.id)
            .where(Outbox.status == "queued", Outbox.next_attempt_at <= now)
            .order_by(Outbox.id)
            .limit(limit)
        )
        if s.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        ids = list(s.execute(stmt).scalars())
    for row_id in ids:
        if deadline is not None and time.monotonic() > deadline:
            break
        if stopping is not None and stopping.is_set():
            break
        # 1. Claim the row and record the attempt (its next retry time pushed ahead), committed before
        #    the send: no other process sees it due meanwhile, and a database that cannot record the
        #    outcome afterwards delays the re-send instead of repeating it every pass.
        with sessions.begin() as s:
            q = select(Outbox).where(Outbox.id == row_id, Outbox.status == "queued")
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            row = s.execute(q).scalar_one_or_none()
            if row is None or row.raw is None:
                continue
            row.attempts += 1
            row.next_attempt_at = clock() + backoff(row.attempts, retry_base, retry_max)
            mail_from, rcpts, raw, message_id = row.mail_from, list(row.rcpts), row.raw, row.message_id
        # 2. Send, outside any transaction.
        error: SendError | None = None
        try:
            transport.send(mail_from, rcpts, raw)
        except SendError as exc:
            error = exc
        # 3. Record the outcome.
        with sessions.begin() as s:
            row = s.get(Outbox, row_id)
            if row is None:
                continue
            if error is None:
                row.status = "sent"
                row.sent_at = clock()
                row.last_error = None
                counts["sent"] += 1
                if row.sensitive:
                    scrubbed = _scrub(s, row)  # the password lived only for this one mail (issue 5)
                log.info("sent %s (%s) to %d recipient(s)", message_id, row.purpose, len(rcpts))
                continue
            row.last_error = str(error)[:2000]
            if error.permanent:
                row.status = "failed"
                counts["failed"] += 1
                log.warning("outbox %s failed permanently: %s", message_id, error)
                if row.sensitive:
                    scrubbed = _scrub(s, row)  # an undeliverable letter keeps no password: staff issue anew
                continue
            counts["retry"] += 1
            log.info("outbox %s retry %d: %s", message_id, row.attempts, error)
        if error is not None and not error.permanent and error.unreachable:
            break  # the server itself is unreachable: the rest of the batch waits for the next pass
    if scrubbed:
        purge_freed_secrets(sessions.kw["bind"])
    return counts
