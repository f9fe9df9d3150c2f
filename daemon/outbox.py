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
from sqlalchemy import delete, select, update
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


class NotTried(SendError):
    """A mail of a batch not begun because the server had just proved unreachable."""


class Transport(Protocol):
    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None: ...


class SmtpTransport:
    """Up to `connections` SMTP connections kept open across mails (and passes), on one private event loop;
    each reconnected on error.

    A new connection, TLS context and event loop per mail cost ~35 ms each (the CA store alone ~22 ms);
    a morning's backlog sends hundreds of mails. `send_many` keeps several mails in flight at once: the
    server's answer to one mail (its own delivery, about 5 ms on loopback) no longer holds up the next.
    """

    IDLE_CLOSE_SECONDS = 60.0

    def __init__(self, cfg: SmtpConfig, password: str | None, helo_name: str | None = None) -> None:
        self.cfg = cfg
        self.password = password
        self.helo_name = cfg.helo_name or helo_name or "localhost"
        self._tls = tls_context(str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls != "none" else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: list[aiosmtplib.SMTP | None] = [None] * cfg.connections
        self._last_used = [0.0] * cfg.connections

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

    async def _send(self, slot: int, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        client = self._clients[slot]
        if client is not None and (not client.is_connected
                                   or time.monotonic() - self._last_used[slot] > self.IDLE_CLOSE_SECONDS):
            await self._drop(slot)
            client = None
        if client is None:
            client = self._clients[slot] = await self._connect()
        try:
            await client.sendmail(mail_from, list(rcpts), raw)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            # The server closed our idle connection: once more on a fresh one.
            await self._drop(slot)
            client = self._clients[slot] = await self._connect()
            await client.sendmail(mail_from, list(rcpts), raw)
        self._last_used[slot] = time.monotonic()

    async def _drop(self, slot: int) -> None:
        client, self._clients[slot] = self._clients[slot], None
        if client is not None:
            try:
                await client.quit()
            except Exception:  # noqa: BLE001 - a dead connection is dropped either way
                client.close()

    def _error(self, slot: int, exc: BaseException) -> SendError:
        """Our verdict on a failed mail: permanent (5xx), to retry (4xx), or the server unreachable."""
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            # 4xx (greylisting, a relay's temporary check) is tried again; only all-5xx is final.
            codes = [getattr(r, "code", 550) for r in exc.recipients]
            return SendError(f"penerima ditolak: {exc}", permanent=all(500 <= c < 600 for c in codes))
        # After any other error the connection's state is unknown: the next mail starts on a new one.
        client, self._clients[slot] = self._clients[slot], None
        if client is not None:
            client.close()
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600)
        return SendError(f"SMTP tidak dapat dihubungi: {exc}", permanent=False, unreachable=True)

    def _run(self, coro: Any) -> Any:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        error = self.send_many([(mail_from, rcpts, raw)])[0]
        if error is not None:
            raise error

    def send_many(self, mails: Sequence[tuple[str, Sequence[str], bytes]]) -> list[SendError | None]:
        """Send each mail; its error or None, in order. After the server proved unreachable the mails not
        yet begun are not tried (their result is that same error): they would wait out the same timeout."""
        results: list[SendError | None] = [None] * len(mails)
        todo = list(range(len(mails)))[::-1]
        down: list[SendError] = []

        async def worker(slot: int) -> None:
            while todo and not down:
                i = todo.pop()
                mail_from, rcpts, raw = mails[i]
                try:
                    await self._send(slot, mail_from, rcpts, raw)
                except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    error = results[i] = self._error(slot, exc)
                    if error.unreachable:
                        down.append(error)

        async def run_all() -> None:
            await asyncio.gather(*(worker(slot) for slot in range(min(len(self._clients), len(mails)))))

        self._run(run_all())
        for i in todo:
            results[i] = NotTried(str(down[0]), permanent=False, unreachable=True)
        return results

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            async def drop_all() -> None:  # gather() wants a running loop: inside a coroutine
                await asyncio.gather(*(self._drop(slot) for slot in range(len(self._clients))))

            try:
                self._loop.run_until_complete(drop_all())
            finally:
                self._loop.close()


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
) -> dict[str, int]:
    """Send due outbox rows, `chunk` at a time; returns counts {"sent", "retry", "failed"}.

    Each chunk is claimed in one transaction that records the attempt (and the next retry time) before
    anything is sent, so no other process sees those rows due meanwhile, and a database that cannot record
    the outcome afterwards delays the re-send instead of repeating it every pass. The chunk is sent outside
    any transaction, then every outcome recorded in one more. A crash in between re-sends at most one chunk,
    each mail with its own Message-ID again. A server that proved unreachable ends the pass.
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
            claimed: list[tuple[int, str, list[str], bytes, str, bool]] = []
            for due in s.execute(q).scalars():
                if due.raw is None:
                    continue
                due.attempts += 1
                due.next_attempt_at = clock() + backoff(due.attempts, retry_base, retry_max)
                claimed.append((due.id, due.mail_from, list(due.rcpts), due.raw, due.message_id, due.sensitive))
        if not claimed:
            break
        # 2. Send, outside any transaction.
        results = send_all(transport, [(frm, rcpts, raw) for _id, frm, rcpts, raw, _mid, _sens in claimed])
        # 3. Record the outcomes.
        down = False
        with sessions.begin() as s:
            # The mails that went out, in one statement (loading each row back would read its bytes too).
            plain = [c[0] for c, error in zip(claimed, results, strict=True) if error is None and not c[5]]
            if plain:
                s.execute(update(Outbox).where(Outbox.id.in_(plain))
                          .values(status="sent", sent_at=clock(), last_error=None))
            for (row_id, _frm, rcpts, _raw, message_id, sensitive), error in zip(claimed, results, strict=True):
                if error is None:
                    counts["sent"] += 1
                    log.info("sent %s to %d recipient(s)", message_id, len(rcpts))
                    if not sensitive:
                        continue
                row = s.get(Outbox, row_id)
                if row is None:
                    continue
                if isinstance(error, NotTried):
                    row.attempts -= 1  # never begun: waits for the server without counting as a try
                    continue
                if error is None:
                    row.status = "sent"
                    row.sent_at = clock()
                    row.last_error = None
                    scrubbed = _scrub(s, row)  # the password lived only for this one mail (issue 5)
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
                down = down or error.unreachable
                log.info("outbox %s retry %d: %s", message_id, row.attempts, error)
        if down:
            break  # the server itself is unreachable: the rest waits for the next pass
    if scrubbed:
        purge_freed_secrets(sessions.kw["bind"])
    return counts
