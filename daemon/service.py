"""The long-running process: intake from each agency's mailbox, due automatic steps, and the outbox.

One pass (`run_once`) takes new mail in (each message in its own transaction with the UID checkpoint and
everything it causes, then flagged on the server), runs automatic steps whose time has come, and sends
what the outbox holds. `run` repeats passes, woken by an IDLE watcher per mailbox (RFC 2177) or by its
poll interval, until SIGTERM; it then finishes the message in hand and flushes the outbox within a bound.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.backoff import Backoff
from daemon.config import AgencyConfig, Config, LimitsConfig
from daemon.leases import AllLeases, Leases, PgLeases, agency_key
from daemon.mailbox import FETCH_BYTES, ImapSource, MailSource, MailSourceError
from daemon.oauth import LazyTokens, TokenSource
from daemon.outbox import SmtpTransport, Transport, drain
from daemon.parsing import Job, Parser, make_parser, release_large_blocks
from parsers.model import Limits, ParseOptions, ParseResult
from workflows.digest import digest_due, send_digest
from workflows.engine import Ctx, Services, due_actions, run_action
from workflows.mailer import Mailer
from workflows.provision import CommandHosting, HostingBackend, NoHosting, Rfc2136Dns
from workflows.rawmail import RawMail, discard, remove_stale
from workflows.reminders import due_reminders
from workflows.secretbox import SecretBox, SecretKeyError
from workflows.signing import load_signer
from workflows.sop import Sop, load_sop
from workflows.store import QUARANTINE_STATUSES, Inbound, MailboxState, StepRun, utcnow, writer_sessions
from workflows.worktime import WorkCalendar, calendar_for

log = logging.getLogger("subdomaind.service")

FETCH_BATCH = 25
GROUP_SECONDS = 0.25  # one intake transaction gathers messages for at most this long
_DAEMON_LIMITS = {"parse_workers", "parse_timeout_seconds"}  # the daemon's, not the parser's (parsers.model.Limits)
DRAIN_BUDGET_SECONDS = 20.0
# Automatic steps coming due by the clock, reminders and digests are looked for every poll interval, and
# at least this often, in every agency; a mailbox that IDLE reports changed is handled at once, alone.
CHORES_SECONDS = 60.0


def sd_notify(message: str) -> None:
    """systemd's notify protocol (sd_notify(3)) without a library: one datagram to $NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(message.encode("ascii"))
    except OSError:
        log.debug("sd_notify failed", exc_info=True)


def official_addresses(agency: AgencyConfig) -> frozenset[str]:
    """The officials and acting officials of the configuration."""
    return frozenset(a for addrs in (*agency.actors.values(), *agency.delegates.values()) for a in addrs)


def parse_options_for(agency: AgencyConfig, limits: LimitsConfig | None = None) -> ParseOptions:
    base = ParseOptions()
    reserved = frozenset(base.reserved_names | {n.lower() for n in agency.reserved_names})
    words = {k: tuple(v) for k, v in agency.vocabulary.model_dump().items() if v is not None}
    return ParseOptions(zone=agency.zone, reserved_names=reserved, mailbox_address=agency.address,
                        ticket_prefix=agency.ticket_prefix, vocabulary=replace(base.vocabulary, **words),
                        limits=Limits(**limits.model_dump(exclude=_DAEMON_LIMITS)) if limits is not None
                        else base.limits)


def build_services(config: Config, agency: AgencyConfig) -> Services:
    from daemon.validate import read_tsig

    d = agency.dns
    key = read_tsig(d)  # a bare secret or a pasted tsig-keygen stanza (its algorithm wins)
    dns_backend = Rfc2136Dns(zone=agency.zone, primary=d.primary, port=d.port, key_name=d.tsig_key_name,
                             secret=key.secret, algorithm=key.algorithm,
                             verify_servers=d.verify_servers or None,
                             reserved=parse_options_for(agency).reserved_names)
    hosting: HostingBackend
    if config.hosting.backend == "command":
        hosting = CommandHosting(config.hosting.argv, secret_via=config.hosting.secret_via,
                                 timeout=config.hosting.timeout_seconds)
    else:
        hosting = NoHosting()
    # No certificate configured: letters go out unsigned (check-config warns); a broken one stops the start.
    signer = load_signer(agency.letter.signing, location=agency.letter.city)
    if signer is None:
        log.warning("agency %s: no signing certificate; letters go out unsigned", agency.id)
    elif (left := signer.not_after - utcnow()).days < 30:
        log.warning("agency %s: the letter signing certificate expires in %d day(s) (%s)", agency.id,
                    max(left.days, 0), signer.describe())
    return Services(dns=dns_backend, hosting=hosting, signer=signer)


def _secret_box(config: Config) -> SecretBox:
    """The key that seals PIC passwords at rest; the configuration check made sure it is there."""
    if config.secrets.key_file is None:
        raise SecretKeyError("secrets.key_file is not set")
    return SecretBox.from_file(config.secrets.key_file)


# After the server refused the login (or throttled us) a mailbox is left alone for a minute, doubling
# to half an hour: a wrong password must not lock the account (Zimbra's lockout, fail2ban) and a throttled
# Microsoft 365 tenant must not be stormed. Other failures (the server down) are retried sooner, from two
# seconds up to about four minutes, jittered so that mailboxes on one server do not come back together.
AUTH_BACKOFF_FIRST = 60.0
AUTH_BACKOFF_MAX = 1800.0
NETWORK_BACKOFF_MAX = 256.0
REFUSED_BACKOFF = Backoff(base=AUTH_BACKOFF_FIRST, cap=AUTH_BACKOFF_MAX)
NETWORK_BACKOFF = Backoff(base=2.0, cap=NETWORK_BACKOFF_MAX, jitter=(0.5, 1.0))
# A failed automatic step is tried again after 2 minutes, doubling to an hour.
STEP_BACKOFF = Backoff(base=120.0, cap=3600.0)


class LoginGate:
    """One backoff per mailbox, shared by intake and the IDLE watcher: one login attempt at a time, none
    before the backoff ends, and the backoff reset by a login that works."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._busy = False
        self.until = 0.0  # monotonic time before which nobody logs in
        self.failures = 0  # failures in a row
        self.refused = 0  # of which refusals and throttling (the long backoff)

    def left(self) -> float:
        return max(0.0, self.until - self._clock())

    def try_begin(self) -> bool:
        """True when this caller may log in now; it then ends with `succeeded` or `failed`."""
        with self._lock:
            if self._busy or self._clock() < self.until:
                return False
            self._busy = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._busy = False
            self.until = 0.0
            self.failures = self.refused = 0

    def release(self) -> None:
        with self._lock:
            self._busy = False

    def failed(self, kind: str) -> float:
        """Record a failure of `kind` ("auth", "throttled", "network"); the seconds to wait."""
        with self._lock:
            self._busy = False
            self.failures += 1
            if kind in ("auth", "throttled"):
                self.refused += 1
                delay = REFUSED_BACKOFF.delay(self.refused)
            else:
                delay = NETWORK_BACKOFF.delay(self.failures)
            self.until = max(self.until, self._clock() + delay)
            return delay

    def restore(self, seconds: float) -> None:
        """A backoff still running when the daemon (re)started: honoured, so a restart is no fresh burst."""
        with self._lock:
            if seconds > 0:
                self.until = self._clock() + min(seconds, AUTH_BACKOFF_MAX)
                self.refused = max(self.refused, 1)


@dataclass
class AgencyRuntime:
    agency: AgencyConfig
    source: MailSource
    services: Services
    calendar: WorkCalendar
    sop: Sop  # loaded once per configuration: a broken file on disk cannot stall the running daemon
    connected: bool = False
    gate: LoginGate = field(default_factory=LoginGate)
    tokens: TokenSource | None = None  # the mailbox's OAuth tokens, shared by intake and the watcher
    restored: bool = False
    # The local month ("2026-12") whose monthly report (of the month before) is settled, and when a
    # failed one may be tried again: so that a pass costs no query, and a failure no retry storm.
    report_month: str | None = None
    report_retry_at: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    lease_changed: threading.Event = field(default_factory=threading.Event)  # wakes its IDLE watcher
    watcher: ImapSource | None = None  # the IDLE connection, cut by `interrupt` on a stop or a lost lease
    idling: bool = False  # its watcher holds IDLE: the poll interval need not look at this mailbox

    @property
    def backoff_until(self) -> float:
        return self.gate.until

    @backoff_until.setter
    def backoff_until(self, value: float) -> None:
        self.gate.until = value

    @property
    def failures(self) -> int:
        return self.gate.failures


class Daemon:
    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        *,
        config_path: str | None = None,
        transport: Transport | None = None,
        sources: dict[str, MailSource] | None = None,
        services: dict[str, Services] | None = None,
        clock: Callable[[], datetime] = utcnow,
        parser: Parser | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        release_large_blocks()
        self.sessions = writer_sessions(sessions)
        self.clock = clock
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._outbox_wake = threading.Event()
        self._sender_stop = threading.Event()
        self._given_transport = transport
        self._given_sources = sources or {}
        self._given_services = services or {}
        self.spool_dir = config.state_dir / "spool"  # large letters on their way in (mailbox.py, parsing.py)
        self.box = _secret_box(config)
        self.transport, self.runtimes = self._build(config)
        self.parser: Parser = parser or make_parser(config.limits.parse_workers, config.limits.parse_timeout_seconds,
                                                    self.spool_dir)
        self.stopping = threading.Event()
        self.ready = False
        self._watchers: list[threading.Thread] = []
        self.leases = self._make_leases()
        self._logins = threading.BoundedSemaphore(config.scale.login_concurrency)

    def _make_leases(self) -> Leases:
        """Which agencies this process works: all on SQLite; on PostgreSQL an even share (daemon/leases.py)."""
        engine = self.sessions.kw["bind"]
        if engine.dialect.name != "postgresql":
            return AllLeases(self.runtimes)
        keys = {aid: agency_key(aid, rt.source.folder) for aid, rt in self.runtimes.items()}
        return PgLeases(engine.url, keys, on_change=self._leases_changed)

    def _leases_changed(self, gained: set[str], lost: set[str]) -> None:
        """From the lease thread: a mailbox gained is looked at now; one lost is let go of (connections too)."""
        for aid in lost:
            rt = self.runtimes.get(aid)
            if rt is not None:
                rt.connected = False
                try:
                    rt.source.close()
                except Exception:  # noqa: BLE001 - the connection is dropped either way
                    log.debug("close failed", exc_info=True)
                rt.lease_changed.set()
                if rt.watcher is not None:
                    rt.watcher.interrupt()
        for aid in gained:
            rt = self.runtimes.get(aid)
            if rt is not None:
                rt.wake.set()
                rt.lease_changed.set()
        if gained:
            self._wake.set()

    def _build(self, config: Config) -> tuple[Transport, dict[str, AgencyRuntime]]:
        smtp_password = config.smtp.read_secret() if config.smtp.user else None
        kept = config.state_dir / "oauth"  # rotated refresh tokens (daemon/oauth.py token_source)
        smtp_tokens = (LazyTokens(config.smtp.oauth, config.smtp.user, kept / "smtp-refresh-token")
                       if config.smtp.oauth and config.smtp.auth == "oauth2" and config.smtp.user else None)
        transport = self._given_transport or SmtpTransport(
            config.smtp, smtp_password, helo_name=config.agencies[0].address.rpartition("@")[2], tokens=smtp_tokens)
        runtimes: dict[str, AgencyRuntime] = {}
        for ag in config.agencies:
            tokens = (LazyTokens(ag.imap.oauth, ag.imap.user, kept / f"{ag.id}-imap-refresh-token")
                      if ag.imap.oauth and ag.imap.auth == "oauth2" else None)
            src = self._given_sources.get(ag.id) or ImapSource(
                ag.imap, "" if tokens else ag.imap.read_secret() or "", self.spool_dir, tokens)
            svc = self._given_services.get(ag.id) or build_services(config, ag)
            runtimes[ag.id] = AgencyRuntime(agency=ag, source=src, services=svc, calendar=calendar_for(ag),
                                            sop=load_sop(ag.sop), tokens=tokens)
        return transport, runtimes

    def reload(self) -> bool:
        """SIGHUP: read the configuration again; a bad one is refused and the running one kept."""
        from daemon.config import ConfigError
        from daemon.validate import load_checked

        if not self.config_path:
            log.warning("reload asked, but the daemon was not started from a configuration file")
            return False
        load_sop.cache_clear()  # SOP files are read again too
        try:
            new = load_checked(self.config_path)
            box = _secret_box(new)
            transport, runtimes = self._build(new)
        except Exception as exc:  # noqa: BLE001 - any bad new config (holiday file, SOP, secrets) is refused
            problems = exc.problems if isinstance(exc, ConfigError) else [f"{type(exc).__name__}: {exc}"]
            log.error("configuration reload refused, keeping the running one: %s", "; ".join(problems))
            return False
        for rt in self.runtimes.values():
            try:
                rt.source.close()
                if rt.services.signer is not None:
                    rt.services.signer.close()  # a PKCS#11 session; the new config opened its own
            except Exception:  # noqa: BLE001 - the old connection is dropped either way
                log.debug("close failed", exc_info=True)
        self.leases.close()
        for aid, rt in runtimes.items():  # the IDLE watchers go on: their state carries over
            old = self.runtimes.get(aid)
            if old is not None:
                rt.idling, rt.watcher, rt.lease_changed = old.idling, old.watcher, old.lease_changed
        self.config, self.transport, self.runtimes, self.box = new, transport, runtimes, box
        self.leases = self._make_leases()
        self.leases.start()
        log.info("configuration reloaded from %s: %d agency(ies)", self.config_path, len(new.agencies))
        return True

    # --- one pass ---------------------------------------------------------------------------------

    def ctx(self, session: Session, agency: AgencyConfig) -> Ctx:
        rt = self.runtimes[agency.id]
        return Ctx(
            session=session,
            config=self.config,
            agency=agency,
            sop=rt.sop,
            mailer=Mailer(agency_id=agency.id, agency_name=agency.name, address=agency.address,
                          zone=agency.zone, clock=self.clock,
                          daily_cap=self.config.workflow.daily_cap_per_address, box=self.box,
                          uncapped=official_addresses(agency)),
            services=rt.services,
            clock=self.clock,
            parse_options=parse_options_for(agency, self.config.limits),
            calendar=rt.calendar,
            box=self.box,
        )

    def run_once(self, *, drain_inline: bool = True, intake: Collection[str] | None = None,
                 chores: Collection[str] | None = None) -> dict[str, int]:
        """One pass: intake in the agencies of `intake` (None: all), then their due automatic steps; the
        reminders and digest of those in `chores` (None: all) too. Only the agencies this process works."""
        totals = {"messages": 0, "actions": 0, "sent": 0}
        self.leases.start()  # once: the first round of leases before the first pass
        for rt in self.runtimes.values():
            if self.stopping.is_set():
                break
            aid = rt.agency.id
            take_in = intake is None or aid in intake
            do_chores = chores is None or aid in chores
            if not (take_in or do_chores):
                continue
            # One process per agency does its work (intake, automatic steps, reminders, digest); the
            # outbox is shared, each row claimed with FOR UPDATE SKIP LOCKED.
            with self.leases.working(aid) as mine:
                if not mine:
                    continue
                if take_in:
                    rt.wake.clear()
                    try:
                        totals["messages"] += self.intake(rt, drain_inline=drain_inline)
                    except BaseException:
                        rt.wake.set()  # not done (the database failed): read again at the next poll
                        raise
                    if self.stopping.is_set():
                        rt.wake.set()
                totals["actions"] += self.run_due(rt)
                if do_chores:
                    self.housekeeping(rt)
        if drain_inline:
            totals["sent"] += self.drain_outbox()
        else:
            self._outbox_wake.set()  # the sender thread of `run` takes it from here
        return totals

    def drain_outbox(self) -> int:
        """Send what is due, within a time budget and the stop flag: a hanging SMTP server must hold up
        neither intake nor SIGTERM."""
        smtp = self.config.smtp
        return drain(self.sessions, self.transport, self.clock, deadline=time.monotonic() + DRAIN_BUDGET_SECONDS,
                     stopping=self.stopping, retry_base=smtp.retry_base_seconds,
                     retry_max=smtp.retry_max_seconds, box=self.box, per_minute=smtp.max_per_minute)["sent"]

    def start_sender(self) -> None:
        """The outbox on its own thread: mail goes out while intake goes on (on SQLite too: every
        transaction takes the write lock at BEGIN, see workflows/store.py, so the two wait for each other
        for a few milliseconds instead of failing)."""
        sender = threading.Thread(target=self._send_loop, name="outbox", daemon=True)
        sender.start()
        self._watchers.append(sender)

    def _send_loop(self) -> None:
        """`run`'s outbox sender: on its own thread, so intake never waits behind SMTP and sending overlaps
        parsing; woken after each batch of intake, and every second for retries that come due. After a
        pass that sent something it looks again at once (a pass stops at its row limit)."""
        sent = 0
        while not (self.stopping.is_set() or self._sender_stop.is_set()):
            if not sent:
                self._outbox_wake.wait(timeout=1.0)
            self._outbox_wake.clear()
            if self.stopping.is_set() or self._sender_stop.is_set():
                break
            try:
                sent = self.drain_outbox()
            except Exception:  # the sender's boundary: a bad row or a database hiccup must not stop it
                log.exception("outbox pass failed")
                sent = 0

    def _connect(self, rt: AgencyRuntime) -> bool:
        if rt.connected:
            return True
        self._restore_backoff(rt)
        if not rt.gate.try_begin():
            return False
        try:
            with self._logins:
                rt.source.connect()
        except MailSourceError as exc:
            self._intake_failed(rt, exc)
            return False
        except BaseException:
            rt.gate.release()
            raise
        rt.gate.succeeded()
        rt.connected = True
        if not self.ready:
            self.ready = True
            sd_notify("READY=1\nSTATUS=mailbox login ok")
        return True

    def _restore_backoff(self, rt: AgencyRuntime) -> None:
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

    def _intake_failed(self, rt: AgencyRuntime, exc: Exception) -> None:
        rt.connected = False
        kind = exc.kind if isinstance(exc, MailSourceError) else "network"
        delay = rt.gate.failed(kind)
        log.warning("intake %s failing: %s; retry in %.0f s", rt.agency.id, exc, delay)
        try:
            rt.source.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not stop the loop
            log.debug("close failed", exc_info=True)
        self._record_failure(rt, exc, delay)

    def _record_failure(self, rt: AgencyRuntime, exc: Exception, delay: float) -> None:
        """The reason in plain words and the backoff's end, where `status` and the digest read them."""
        with self.sessions.begin() as s:
            st = self._state(s, rt)
            st.last_error = str(exc)[:2000]
            st.backoff_until = self.clock() + timedelta(seconds=delay)
            if st.failing_since is None:
                st.failing_since = self.clock()
            limit = timedelta(minutes=self.config.workflow.intake_alert_minutes)
            if st.alerted_at is None and self.clock() - st.failing_since >= limit:
                # One alert per outage, through SMTP (which does not depend on the broken mailbox).
                from workflows.engine import alert_staff

                st.alerted_at = self.clock()
                alert_staff(self.ctx(s, rt.agency), None,
                            f"Kotak surat {rt.agency.imap.user}@{rt.agency.imap.host} tidak dapat dibaca sejak "
                            f"{st.failing_since:%Y-%m-%d %H:%M} UTC: {str(exc)[:300]}")

    def _state(self, s: Session, rt: AgencyRuntime) -> MailboxState:
        st = s.get(MailboxState, (rt.agency.id, rt.source.folder))
        if st is None:
            st = MailboxState(agency=rt.agency.id, mailbox=rt.source.folder, uidvalidity=0, last_uid=0)
            s.add(st)
            s.flush()
        return st

    def owns(self, rt: AgencyRuntime) -> bool:
        """Whether this process works this mailbox now (daemon/leases.py). SQLite: always."""
        self.leases.start()
        return self.leases.owns(rt.agency.id)

    def intake(self, rt: AgencyRuntime, *, drain_inline: bool = True) -> int:
        if not self._connect(rt):
            return 0
        handled = 0
        try:
            uv = rt.source.uidvalidity()
            with self.sessions.begin() as s:
                st = self._state(s, rt)
                if st.uidvalidity != uv:
                    if st.uidvalidity:
                        # The folder was recreated: UIDs restart. Message-ID dedupe keeps this safe.
                        log.warning("UIDVALIDITY of %s changed %s -> %s", rt.agency.id, st.uidvalidity, uv)
                    st.uidvalidity = uv
                    st.last_uid = 0
                last_uid = st.last_uid
            self._finish_pending_marks(rt)
            options = parse_options_for(rt.agency, self.config.limits)
            # The next batch is fetched and handed to the parser workers before this one's mail is sent:
            # parsing overlaps the database and SMTP work of the main loop.
            # Every letter fetched into a file is removed once stored, or, if this intake ends first, when it
            # ends: its UID is not past the checkpoint, so it is fetched again.
            fetched: list[RawMail] = []
            try:
                pending = self._fetch(rt, last_uid, options, fetched)
                while pending and not self.stopping.is_set():
                    # The next batch goes to the parser workers before this one is handled, unless this one
                    # is already large (scanned letters: two batches of them would be waiting at once).
                    ahead = sum(len(raw) for _uid, raw, _job in pending) < FETCH_BYTES // 2
                    following = self._fetch(rt, pending[-1][0], options, fetched) if ahead else []
                    done = self._take_many(rt, uv, pending)
                    handled += len(done)
                    discard([raw for _uid, raw, _job in pending[:len(done)]])
                    self._mark(rt, uv, done)
                    if not ahead and len(done) == len(pending) and not self.stopping.is_set():
                        following = self._fetch(rt, pending[-1][0], options, fetched)
                    pending = following if len(done) == len(pending) else []
                    # What this batch queued goes out while the next one is handled.
                    if drain_inline:
                        self.drain_outbox()
                    else:
                        self._outbox_wake.set()
            finally:
                discard(fetched)
            with self.sessions.begin() as s:
                st = self._state(s, rt)
                st.last_ok_at = self.clock()
                st.failing_since = None
                st.alerted_at = None
                st.last_error = None
                st.backoff_until = None
                st.mode = rt.source.mode
        except MailSourceError as exc:
            self._intake_failed(rt, exc)
        return handled

    def _fetch(self, rt: AgencyRuntime, last_uid: int, options: ParseOptions,
               fetched: list[RawMail]) -> list[tuple[int, RawMail, Job]]:
        batch = rt.source.fetch_new(last_uid, FETCH_BATCH)
        fetched.extend(raw for _uid, raw in batch)
        return [(uid, raw, self.parser.submit(raw, options)) for uid, raw in batch]

    def _take_many(self, rt: AgencyRuntime, uv: int, items: list[tuple[int, RawMail, Job]]) -> list[tuple[int, bool]]:
        """Ingest messages in order, several to a transaction (up to GROUP_SECONDS of work), each with the
        checkpoint; (uid, quarantined) for each one taken. The handlers still run one savepoint per message.

        A transaction costs the ORM and SQLite about 2 ms whatever it holds; a backlog of hundreds of
        letters pays it once per group instead of once per letter. A crash loses nothing: the group's
        messages are not past the checkpoint and no mail of theirs was queued, so they are taken again.
        """
        from sqlalchemy.exc import IntegrityError

        from workflows.inbound import ingest

        done: list[tuple[int, bool]] = []
        i = 0
        while i < len(items) and not self.stopping.is_set():
            group: list[tuple[int, bool]] = []
            j = i
            try:
                items[i][2].result()  # waited for here, not inside the transaction (the sender waits on it)
                with self.sessions.begin() as s:
                    ctx = self.ctx(s, rt.agency)
                    st = self._state(s, rt)
                    until = time.monotonic() + GROUP_SECONDS
                    while j < len(items):
                        uid, raw, job = items[j]
                        sd_notify("WATCHDOG=1")  # a long backlog is progress, not a hang
                        row = ingest(ctx, mailbox=rt.source.folder, uidvalidity=uv, uid=uid, raw=raw,
                                     parsed=job.result())
                        group.append((uid, row is not None and row.status in QUARANTINE_STATUSES))
                        j += 1
                        # A scrubbed password is purged from the WAL right after its own commit; a message
                        # still being parsed is waited for after this commit.
                        if (self.stopping.is_set() or time.monotonic() > until or s.info.get("purge_secrets")
                                or (j < len(items) and not items[j][2].ready())):
                            break
                    # The checkpoint once per group (one UPDATE), in the same transaction as the group.
                    st.last_uid = max(st.last_uid, *(uid for uid, _q in group))
                self._purge_if_needed(s)
                done += group
                i = j
            except IntegrityError:
                # One of them was taken in by another process meanwhile: this group again, one at a time.
                for uid, raw, job in items[i:j + 1]:
                    done.append((uid, self._take(rt, uv, uid, raw, job.result())))
                i = j + 1
        return done

    def _take(self, rt: AgencyRuntime, uv: int, uid: int, raw: RawMail, parsed: ParseResult) -> bool:
        """Ingest one message with its checkpoint in one transaction; True when it goes to quarantine."""
        from sqlalchemy.exc import IntegrityError

        from workflows.inbound import ingest

        try:
            with self.sessions.begin() as s:
                row = ingest(self.ctx(s, rt.agency), mailbox=rt.source.folder, uidvalidity=uv, uid=uid, raw=raw,
                             parsed=parsed)
                st = self._state(s, rt)
                st.last_uid = max(st.last_uid, uid)
                quarantined = row is not None and row.status in QUARANTINE_STATUSES
            self._purge_if_needed(s)
            return quarantined
        except IntegrityError:
            # The same Message-ID was just taken in by another process or mailbox: handled once, there.
            log.info("message uid %s of %s already taken in elsewhere", uid, rt.agency.id)
            with self.sessions.begin() as s:
                st = self._state(s, rt)
                st.last_uid = max(st.last_uid, uid)
            return False

    def _finish_pending_marks(self, rt: AgencyRuntime) -> None:
        """Flag on the server what was committed before a crash or a lost connection but not yet flagged."""
        with self.sessions() as s:
            rows = s.execute(
                select(Inbound.uid, Inbound.status).where(
                    Inbound.agency == rt.agency.id, Inbound.mailbox == rt.source.folder,
                    Inbound.uidvalidity == rt.source.uidvalidity(), Inbound.server_done.is_(False))
            ).all()
        self._mark(rt, rt.source.uidvalidity(), [(uid, status in QUARANTINE_STATUSES) for uid, status in rows])

    def _mark(self, rt: AgencyRuntime, uv: int, done: list[tuple[int, bool]]) -> None:
        """Flag (or move to quarantine) on the IMAP server what was committed, then record that it was."""
        if not done:
            return
        for quarantined in (False, True):
            uids = [uid for uid, q in done if q is quarantined]
            if uids:
                rt.source.mark_handled(uids, quarantine=quarantined)
        with self.sessions.begin() as s:
            s.query(Inbound).filter(
                Inbound.agency == rt.agency.id, Inbound.mailbox == rt.source.folder,
                Inbound.uidvalidity == uv, Inbound.uid.in_([uid for uid, _q in done]),
            ).update({Inbound.server_done: True}, synchronize_session=False)

    def _purge_if_needed(self, s: Session) -> None:
        """After a transaction that scrubbed a password (a rejection), push it out of the WAL too."""
        if s.info.pop("purge_secrets", False):
            from workflows.store import purge_freed_secrets

            purge_freed_secrets(self.sessions.kw["bind"])

    def run_due(self, rt: AgencyRuntime) -> int:
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
                self._purge_if_needed(s)
                sd_notify("WATCHDOG=1")
            except Exception as exc:  # the per-action boundary: record, back off, keep the loop alive
                log.exception("action step %s failed", step_id)
                with self.sessions.begin() as s:
                    run = s.get(StepRun, step_id)
                    if run is not None:
                        run.attempts += 1
                        run.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                        run.due_at = self.clock() + STEP_BACKOFF.after(run.attempts)
                        if run.attempts == 1:  # staff hear of it once; status and the digest show it after
                            from workflows.engine import alert_staff
                            from workflows.store import Request

                            alert_staff(self.ctx(s, rt.agency), s.get(Request, run.request_id),
                                        f"Langkah otomatis {run.key} gagal ({type(exc).__name__}: {exc}); "
                                        f"dicoba ulang berkala. Lihat subdomaind status.")
        return done

    def housekeeping(self, rt: AgencyRuntime) -> None:
        """Reminders and escalations past the Mutu Baku, and the daily digest and the monthly report when
        their time has come."""
        from datetime import time as dtime

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
            from workflows.report import run_scheduled

            if run_scheduled(self.sessions, lambda s: self.ctx(s, rt.agency), rt.calendar, now, dtime(hh, mm)):
                rt.report_month = this_month
        except Exception:
            log.exception("monthly report for %s failed; tried again in an hour", rt.agency.id)
            rt.report_retry_at = time.monotonic() + 3600

    # --- the loop ---------------------------------------------------------------------------------

    # The watcher of a mailbox outlives a configuration reload: it reaches the agency's current runtime.
    def _wake_agency(self, aid: str) -> None:
        rt = self.runtimes.get(aid)
        if rt is not None:
            rt.wake.set()
        self._wake.set()

    def _idling(self, aid: str, on: bool) -> None:
        rt = self.runtimes.get(aid)
        if rt is not None:
            rt.idling = on

    def _watch(self, rt: AgencyRuntime) -> None:
        """A second connection per mailbox this process works, that only IDLEs and wakes the main loop for
        this mailbox when new mail arrives. One IDLE is held until the server reports mail, re-issued every
        `idle_refresh_seconds` (below the 29 minutes of RFC 2177) on the same connection; a stop or a lease
        gone elsewhere cuts the connection (`ImapSource.interrupt`)."""
        if not rt.agency.imap.idle:
            return
        src = ImapSource(rt.agency.imap, "" if rt.tokens else rt.agency.imap.read_secret() or "", self.spool_dir,
                         rt.tokens)
        aid = rt.agency.id
        while not self.stopping.is_set():
            if not self.leases.owns(aid):
                rt.lease_changed.wait()
                rt.lease_changed.clear()
                continue
            # The watcher logs in only when the mailbox's shared backoff allows, and one login at a time
            # with intake: a wrong password costs one attempt per backoff step, not one per connection.
            self._restore_backoff(rt)
            if not rt.gate.try_begin():
                self.stopping.wait(min(5.0, max(0.2, rt.gate.left())))
                continue
            rt.watcher = src
            holding = True  # this watcher's login attempt holds the gate until it ends
            try:
                try:
                    with self._logins:
                        src.connect()
                except MailSourceError:
                    raise  # the attempt ends in gate.failed below
                except BaseException:
                    rt.gate.release()
                    raise
                rt.gate.succeeded()
                holding = False
                if src.mode != "idle":
                    return
                self._idling(aid, True)
                # Mail may have arrived while we were away: let the main loop look at once.
                self._wake_agency(aid)
                while not self.stopping.is_set() and self.leases.owns(aid):
                    # New mail, or IDLE re-issued: the mailbox is read then too, a safety net for a
                    # notification lost on the way (one read per mailbox per idle_refresh_seconds).
                    src.wait(rt.agency.imap.idle_refresh_seconds)
                    self._wake_agency(aid)
            except MailSourceError as exc:
                if self.stopping.is_set() or not self.leases.owns(aid):
                    if holding:
                        rt.gate.release()
                    continue
                delay = rt.gate.failed(exc.kind)
                log.info("IDLE watcher %s: %s; retry in %.0f s", aid, exc, delay)
                self._idling(aid, False)
                self._wake_agency(aid)  # polled meanwhile, and the main loop's wait follows the new backoff
                if exc.kind != "network":
                    self._record_failure(rt, exc, delay)
            finally:
                self._idling(aid, False)
                rt.watcher = None
                src.close()

    def connect_all(self) -> None:
        """Log in to every mailbox this process works, `scale.login_concurrency` at a time."""
        todo = [rt for rt in self.runtimes.values() if self.leases.owns(rt.agency.id) and not rt.connected]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(self.config.scale.login_concurrency, thread_name_prefix="login") as pool:
            list(pool.map(self._connect, todo))

    def _warn_size(self) -> None:
        """Said at start too: a descriptor limit below what this many agencies need. The unit sets
        LimitNOFILE=; the daemon does not raise its own limit (its seccomp filter denies @resources)."""
        from daemon.validate import warnings

        for w in warnings(self.config):
            log.warning("%s", w)

    def run(self, *, max_passes: int | None = None) -> None:
        self._install_signals()
        self._warn_size()
        self.leases.start()
        for rt in self.runtimes.values():
            if isinstance(rt.source, ImapSource):
                t = threading.Thread(target=self._watch, args=(rt,), name=f"idle-{rt.agency.id}", daemon=True)
                t.start()
                self._watchers.append(t)
        self.start_sender()
        self._metrics = self._serve_metrics()
        remove_stale(self.spool_dir)
        self.parser.warm()
        self.connect_all()
        passes = 0
        next_poll = next_chores = 0.0
        while not self.stopping.is_set():
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
                next_poll = next_chores = 0.0
            now = time.monotonic()
            poll = min(rt.agency.imap.poll_seconds for rt in self.runtimes.values())
            # A mailbox is read when its watcher says it changed, when its backoff after a failure ends,
            # and, where no watcher holds IDLE for it, every poll interval; the first pass reads them all.
            due_poll = now >= next_poll
            intake = None if not passes else {
                aid for aid, rt in self.runtimes.items()
                if rt.wake.is_set() or (due_poll and not rt.idling)
                or (not rt.connected and 0 < rt.backoff_until <= now)}
            chores: set[str] | None = None if now >= next_chores else set()
            if due_poll:
                next_poll = now + poll
            if chores is None:
                next_chores = now + min(poll, CHORES_SECONDS)
            try:
                if intake is None or intake or chores is None:
                    self.run_once(drain_inline=False, intake=intake, chores=chores)
            except Exception:  # the loop boundary: a bug in one pass must not stop the daemon
                log.exception("pass failed")
            sd_notify("WATCHDOG=1")
            passes += 1
            if max_passes is not None and passes >= max_passes:
                break
            # A mailbox that failed is retried when its backoff ends, not a whole poll interval later.
            now = time.monotonic()
            retry_in = [rt.backoff_until - now for aid, rt in self.runtimes.items()
                        if not rt.connected and rt.backoff_until > now and self.leases.owns(aid)]
            self._wake.wait(timeout=max(0.05, min([next_poll - now, next_chores - now, *retry_in])))
        self.shutdown()

    def _serve_metrics(self) -> Any:
        from daemon.metrics import serve

        try:
            return serve(self.config, self.sessions)
        except (OSError, OverflowError, ValueError) as exc:  # port taken or bad: the work matters more
            log.error("metrics not served on %s: %s", self.config.metrics.listen, getattr(exc, "strerror", None) or exc)
            return None

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: finishing the current message, then stopping", signum)
            self.stopping.set()
            self._wake.set()

        def _hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGHUP, _hup)

    def shutdown(self, flush_seconds: float = 10.0) -> None:
        sd_notify("STOPPING=1")
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
            self._metrics = None
        self._sender_stop.set()
        self._outbox_wake.set()
        for t in self._watchers:
            if t.name == "outbox":
                t.join(timeout=DRAIN_BUDGET_SECONDS + 5)  # the transport is not shared between threads
        try:
            drain(self.sessions, self.transport, self.clock, deadline=time.monotonic() + flush_seconds,
                  retry_base=self.config.smtp.retry_base_seconds, retry_max=self.config.smtp.retry_max_seconds,
                  box=self.box, per_minute=self.config.smtp.max_per_minute)
        except Exception:  # noqa: BLE001 - what could not be sent stays queued for the next start
            log.exception("final outbox flush failed")
        for rt in self.runtimes.values():
            try:
                rt.source.close()
            except Exception:  # noqa: BLE001
                log.debug("close failed", exc_info=True)
        self.parser.close()
        closer = getattr(self.transport, "close", None)
        if closer is not None:
            try:
                closer()
            except Exception:  # noqa: BLE001 - the SMTP connection is dropped either way
                log.debug("SMTP close failed", exc_info=True)
        for rt in self.runtimes.values():
            rt.lease_changed.set()
            if rt.watcher is not None:
                rt.watcher.interrupt()
        # One bound for all of them, whatever the number of mailboxes (TimeoutStopSec).
        end = time.monotonic() + 3
        for t in self._watchers:
            t.join(timeout=max(0.0, end - time.monotonic()))
        self.leases.close()  # its connection closes: the other processes take these agencies at once
