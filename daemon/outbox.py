"""Send what the outbox holds through SMTP (aiosmtplib), with retries, backoff and the same Message-ID.

`Transport` is the interface (one method: send raw bytes to recipients); `SmtpTransport` the real one.
`drain` claims due rows, sends each, and records the result in its own short transaction: a crash between
send and record re-sends the same bytes, so the recipient sees one Message-ID twice at worst, never two
different mails. A sensitive row (the PIC's password) is sealed at rest, opened only to be sent, and
scrubbed once sent. A row that waits for another (`after_id`, status "waiting") is released when that one is
sent, and fails with it. `Sender` is the daemon's outbox job: `drain` within a time budget, on a thread of
its own while the daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import aiosmtplib
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from subdomaind.daemon.backoff import Backoff
from subdomaind.daemon.config import SmtpConfig
from subdomaind.daemon.mailbox import tls_context
from subdomaind.daemon.oauth import LazyTokens, OAuthError, TokenSource, b64, sasl_initial
from subdomaind.workflows.secretbox import SealedValueError, SecretBox
from subdomaind.workflows.store import Outbox, PendingSecret, purge_freed_secrets

log = logging.getLogger("subdomaind.outbox")

MAX_BACKOFF = timedelta(hours=1)
DRAIN_BUDGET_SECONDS = 20.0  # one pass of the daemon's sender: a hanging SMTP server holds up nothing longer


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
    """Up to `connections` SMTP connections (aiosmtplib), all driven by one asyncio event loop, kept open
    across mails and passes and each reconnected on error.

    A new connection and TLS context per mail cost ~35 ms each (the CA store alone ~22 ms); a morning's
    backlog sends hundreds of mails. `send_many` keeps several mails in flight at once on the one loop: the
    server's answer to one mail (its own delivery, about 5 ms on loopback) no longer holds up the next.
    The loop belongs to the transport and runs only inside `send_many` (on whichever thread calls it, one
    at a time), so the pooled connections outlive each call.
    """

    IDLE_CLOSE_SECONDS = 60.0

    def __init__(self, cfg: SmtpConfig, password: str | None, helo_name: str | None = None,
                 tokens: TokenSource | None = None) -> None:
        self.cfg = cfg
        self.password = password
        self.helo_name = cfg.helo_name or helo_name or "localhost"
        self._tls = tls_context(str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls != "none" else None
        if tokens is None and cfg.auth == "oauth2" and cfg.oauth is not None and cfg.user:
            tokens = LazyTokens(cfg.oauth, cfg.user)
        self.tokens = tokens  # OAuth 2.0 access tokens when cfg.auth is "oauth2"
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # open connections not in use, with their last use
        self._loop: asyncio.AbstractEventLoop | None = None
        self._call = threading.Lock()  # the loop runs on one thread at a time

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        # local_hostname given: no lookup of our own host name on every connection. STARTTLS refused or not
        # offered is an error, never plain text.
        client = aiosmtplib.SMTP(hostname=cfg.host, port=cfg.port, local_hostname=self.helo_name,
                                 timeout=cfg.timeout_seconds, use_tls=cfg.tls == "implicit",
                                 start_tls=cfg.tls == "starttls", tls_context=self._tls)
        await client.connect()
        try:
            if cfg.user and cfg.auth == "oauth2":
                await self._oauth_login(client)
            elif cfg.user:
                await client.login(cfg.user, self.password or "")
        except BaseException:
            client.close()
            raise
        return client

    async def _oauth_login(self, client: aiosmtplib.SMTP) -> None:
        """SASL XOAUTH2 or OAUTHBEARER (RFC 7628) with the current token; a refused token is dropped and a
        fresh one tried once more (RFC 4954: the server answers 535 and the session goes on)."""
        cfg = self.cfg
        if self.tokens is None or cfg.oauth is None or not cfg.user:
            raise LoginRefused("auth = oauth2 tanpa sumber token")
        mechanism = cfg.oauth.mechanism
        for attempt in (1, 2):
            try:
                token = await asyncio.to_thread(self.tokens.token)  # may ask the token endpoint
            except OAuthError as exc:
                raise LoginRefused(str(exc)) from exc
            initial = b64(sasl_initial(mechanism, cfg.user, token, cfg.host, cfg.port)).encode()
            reply = await client.execute_command(b"AUTH", mechanism.upper().encode(), initial)
            if reply.code == 334:  # the error challenge (RFC 7628 3.2.2): an empty line gets the final reply
                reply = await client.execute_command(b"")
            if reply.code == 235:
                return
            self.tokens.invalidate()
            if attempt == 2:
                raise LoginRefused(f"SMTP {reply.code}: {reply.message}")

    async def _take(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, used = self._idle.pop()
            if time.monotonic() - used < self.IDLE_CLOSE_SECONDS and client.is_connected:
                return client
            await _quit(client)
        return await self._connect()

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        self._idle.append((client, time.monotonic()))

    async def _send_one(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> SendError | None:
        """One mail on a pooled connection; our verdict: None, or permanent (5xx), retry (4xx), unreachable."""
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._take()
            try:
                await client.sendmail(mail_from, list(rcpts), raw)
            except aiosmtplib.SMTPServerDisconnected:
                # The server closed our idle connection: once more on a fresh one.
                client.close()
                client = await self._connect()
                await client.sendmail(mail_from, list(rcpts), raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # 4xx (greylisting, a relay's temporary check) is tried again; only all-5xx is final. The client
            # has reset the transaction (RSET): the connection goes on.
            if client is not None:
                self._give_back(client)
            refused = {r.recipient: (r.code, r.message) for r in exc.recipients}
            return SendError(f"penerima ditolak: {refused}",
                             permanent=all(500 <= r.code < 600 for r in exc.recipients))
        except LoginRefused as exc:
            # Not this mail's fault: the login itself was refused. The pass ends and the mail waits.
            return SendError(f"login SMTP ditolak: {exc}. Periksa kata sandi atau izin OAuth "
                             "(token dicabut? jalankan `subdomaind oauth login`).",
                             permanent=False, unreachable=True)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return SendError(f"login SMTP ditolak ({exc.code} {exc.message}). Periksa kata sandi.",
                             permanent=False, unreachable=True)
        except aiosmtplib.SMTPResponseException as exc:
            # After any other error the connection's state is unknown: the next mail starts on a new one.
            _drop(client)
            return SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600)
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            _drop(client)
            return SendError(f"SMTP tidak dapat dihubungi: {exc}", permanent=False, unreachable=True)
        self._give_back(client)
        return None

    async def _send_all(self, mails: Sequence[tuple[str, Sequence[str], bytes]]) -> list[SendError | None]:
        slots = asyncio.Semaphore(self.cfg.connections)
        down = False

        async def one(mail: tuple[str, Sequence[str], bytes]) -> SendError | None:
            nonlocal down
            async with slots:
                if down:
                    return NotTried("server SMTP tidak dapat dihubungi", permanent=False, unreachable=True)
                error = await self._send_one(*mail)
                if error is not None and error.unreachable:
                    down = True
                return error

        return list(await asyncio.gather(*(one(m) for m in mails)))

    def _run(self, work: Any) -> Any:
        with self._call:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(work)

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        error = self.send_many([(mail_from, rcpts, raw)])[0]
        if error is not None:
            raise error

    def send_many(self, mails: Sequence[tuple[str, Sequence[str], bytes]]) -> list[SendError | None]:
        """Send each mail, up to `connections` at once; its error or None, in order. After the server proved
        unreachable the mails not yet begun are not tried (NotTried): they would wait out the same timeout."""
        return list(self._run(self._send_all(mails)))

    def try_login(self) -> BaseException | None:
        """Connect, log in (password or OAuth) and QUIT, as the outbox does: None when that worked, else the
        error (`LoginRefused`, aiosmtplib's, OSError). `check-config --connect` words it."""

        async def probe() -> None:
            client = await self._connect()
            await _quit(client)

        try:
            self._run(probe())
        except (LoginRefused, TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            return exc
        finally:
            self.close()
        return None

    def check_login(self) -> str | None:
        """`try_login`'s outcome in plain words, or None."""
        exc = self.try_login()
        if exc is None:
            return None
        if isinstance(exc, LoginRefused):
            return f"login SMTP ditolak: {exc}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return f"login SMTP ditolak ({exc.code} {exc.message}): periksa kata sandi"
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return f"SMTP {self.cfg.host}:{self.cfg.port} menjawab {exc.code} {exc.message}"
        return f"SMTP {self.cfg.host}:{self.cfg.port} tidak dapat dihubungi: {exc}"

    def close(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        idle, self._idle = self._idle, []

        async def quit_all() -> None:
            await asyncio.gather(*(_quit(client) for client, _used in idle))

        try:
            self._run(quit_all())
        finally:
            with self._call:
                self._loop.close()
                self._loop = None


class LoginRefused(Exception):
    """The SMTP server refused our OAuth login (after one fresh token), or no token could be had; the text
    says why in plain words."""


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (OSError, aiosmtplib.SMTPException):
        _drop(client)


def _drop(client: aiosmtplib.SMTP | None) -> None:
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
    return Backoff(base, cap, jitter=(0.8, 1.2)).after(attempts)


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
                out.scrubbed = _scrub(s, row)  # the password lived only for this one mail
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
    per_minute: int | None = None,
) -> dict[str, int]:
    """Send due outbox rows, `chunk` at a time; returns counts {"sent", "retry", "failed"}.

    With `per_minute`, no more mails go out than that in any 60 s, counted from the sent rows in the
    database, so every process sharing it keeps to the one rate toward the office MTA; the rest waits.

    Each chunk is claimed in one transaction that records the attempt (and the next retry time) before
    anything is sent, so no other process sees those rows due meanwhile, and a database that cannot record
    the outcome afterwards delays the re-send instead of repeating it every pass. The chunk is sent outside
    any transaction, then every outcome recorded in one more. A crash in between re-sends at most one chunk,
    each mail with its own Message-ID again. A server that proved unreachable ends the pass. A sealed row
    is opened with `box` in memory only; one that does not open fails at once (it never would).
    """
    counts = {"sent": 0, "retry": 0, "failed": 0}
    scrubbed = False
    pg = sessions.kw["bind"].dialect.name == "postgresql"
    while counts["sent"] + counts["retry"] + counts["failed"] < limit:
        if (deadline is not None and time.monotonic() > deadline) or (stopping is not None and stopping.is_set()):
            break
        take = chunk
        if per_minute is not None:
            with sessions() as s:
                recent = s.execute(select(func.count()).select_from(Outbox).where(
                    Outbox.sent_at.is_not(None), Outbox.sent_at > clock() - timedelta(seconds=60))).scalar_one()
            take = min(chunk, per_minute - int(recent))
            if take <= 0:
                break  # the rate toward the MTA is used up for this minute
        # 1. Claim a chunk and record the attempt, committed before the send.
        with sessions.begin() as s:
            q = (select(Outbox).where(Outbox.status == "queued", Outbox.next_attempt_at <= clock())
                 .order_by(Outbox.id).limit(take))
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


@dataclass
class Sender:
    """The daemon's outbox job: `drain` sends what is due within a time budget; `start` runs it on a thread
    of its own, woken by `wake` after each batch of intake and every second for retries that come due.

    A configuration reload replaces its transport, key and SMTP settings."""

    sessions: sessionmaker[Session]
    transport: Transport
    clock: Callable[[], datetime]
    smtp: SmtpConfig
    box: SecretBox
    stopping: threading.Event
    thread: threading.Thread | None = None
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def drain(self) -> int:
        """Send what is due, within a time budget and the stop flag: a hanging SMTP server must hold up
        neither intake nor SIGTERM."""
        return self._drain(time.monotonic() + DRAIN_BUDGET_SECONDS, self.stopping)["sent"]

    def _drain(self, deadline: float, stopping: threading.Event | None) -> dict[str, int]:
        smtp = self.smtp
        return drain(self.sessions, self.transport, self.clock, deadline=deadline, stopping=stopping,
                     retry_base=smtp.retry_base_seconds, retry_max=smtp.retry_max_seconds, box=self.box,
                     per_minute=smtp.max_per_minute)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> threading.Thread:
        """The outbox on its own thread: mail goes out while intake goes on (on SQLite too: every
        transaction takes the write lock at BEGIN, see workflows/store.py, so the two wait for each other
        for a few milliseconds instead of failing)."""
        self.thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self.thread.start()
        return self.thread

    def _loop(self) -> None:
        """On its own thread, so intake never waits behind SMTP and sending overlaps parsing. After a pass
        that sent something it looks again at once (a pass stops at its row limit)."""
        sent = 0
        while not (self.stopping.is_set() or self._stop.is_set()):
            if not sent:
                self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self.stopping.is_set() or self._stop.is_set():
                break
            try:
                sent = self.drain()
            except Exception:  # the sender's boundary: a bad row or a database hiccup must not stop it
                log.exception("outbox pass failed")
                sent = 0

    def stop(self, flush_seconds: float) -> None:
        """End the thread (it holds the transport, which is not shared between threads), then one last
        flush within `flush_seconds`; what could not be sent stays queued for the next start."""
        self._stop.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(timeout=DRAIN_BUDGET_SECONDS + 5)
        try:
            self._drain(time.monotonic() + flush_seconds, None)
        except Exception:  # noqa: BLE001 - what could not be sent stays queued for the next start
            log.exception("final outbox flush failed")

    def close(self) -> None:
        closer = getattr(self.transport, "close", None)
        if closer is not None:
            try:
                closer()
            except Exception:  # noqa: BLE001 - the SMTP connection is dropped either way
                log.debug("SMTP close failed", exc_info=True)
