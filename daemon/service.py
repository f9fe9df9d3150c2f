"""The long-running process: a thin loop over the daemon's jobs, and what belongs to the process itself.

The jobs, each in its own module and given its collaborators: intake (daemon/intake.py), automatic steps,
reminders, the digest and the report (daemon/due.py), the outbox (daemon/outbox.py `Sender`), mailbox
logins (daemon/logins.py) with their IDLE watchers (daemon/watch.py), and the leases that say which
mailboxes this process works (daemon/leases.py). What every agency holds is built in daemon/runtime.py.

One pass (`run_once`) takes new mail in (each message in its own transaction with the UID checkpoint and
everything it causes, then flagged on the server), runs automatic steps whose time has come, and sends
what the outbox holds. `run` repeats passes, woken by an IDLE watcher per mailbox (RFC 2177) or by its
poll interval, until SIGTERM; it then finishes the message in hand and flushes the outbox within a bound.
SIGHUP reloads the configuration; systemd hears READY, WATCHDOG and STOPPING (sd_notify(3)).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import AgencyConfig, Config, ConfigError
from subdomaind.daemon.due import Due
from subdomaind.daemon.gate import AUTH_BACKOFF_MAX, LoginGate
from subdomaind.daemon.intake import FETCH_BATCH, GROUP_SECONDS, Intake
from subdomaind.daemon.leases import Leases, follow, leases_for
from subdomaind.daemon.logins import Logins
from subdomaind.daemon.mailbox import ImapSource, MailSource
from subdomaind.daemon.metrics import serve
from subdomaind.daemon.outbox import DRAIN_BUDGET_SECONDS, Sender, Transport
from subdomaind.daemon.parsing import Parser, make_parser, release_large_blocks
from subdomaind.daemon.runtime import (
    AgencyRuntime,
    build,
    build_services,
    make_ctx,
    official_addresses,
    parse_options_for,
    secret_box,
)
from subdomaind.daemon.validate import load_checked, warnings
from subdomaind.daemon.watch import Watcher
from subdomaind.workflows.engine import Ctx, Services
from subdomaind.workflows.rawmail import remove_stale
from subdomaind.workflows.secretbox import SecretBox
from subdomaind.workflows.sop import load_sop
from subdomaind.workflows.store import utcnow, writer_sessions

__all__ = ["AUTH_BACKOFF_MAX", "CHORES_SECONDS", "DRAIN_BUDGET_SECONDS", "FETCH_BATCH", "GROUP_SECONDS",
           "AgencyRuntime", "Daemon", "LoginGate", "build_services", "official_addresses", "parse_options_for",
           "sd_notify"]

log = logging.getLogger("subdomaind.service")

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


def _watchdog() -> None:
    sd_notify("WATCHDOG=1")


class Daemon:
    """Builds the jobs from the configuration and their collaborators (those given win: tests and benches
    pass their own transport, mail sources and services), and runs them pass after pass."""

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
        self._config = config
        self.config_path = config_path
        release_large_blocks()
        self.sessions = writer_sessions(sessions)
        self.clock = clock
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.stopping = threading.Event()
        self.ready = False
        self._watchers: list[threading.Thread] = []
        self._given_transport = transport
        self._given_sources = sources or {}
        self._given_services = services or {}
        self.spool_dir = config.state_dir / "spool"  # large letters on their way in (mailbox.py, parsing.py)
        self._box = secret_box(config)
        transport, self.runtimes = self._build(config)
        self.sender = Sender(sessions=self.sessions, transport=transport, clock=clock, smtp=config.smtp,
                             box=self._box, stopping=self.stopping)
        self.logins = Logins(sessions=self.sessions, clock=clock, ctx=self.ctx,
                             concurrency=config.scale.login_concurrency,
                             alert_after=timedelta(minutes=config.workflow.intake_alert_minutes),
                             on_login=self._logged_in)
        parser = parser or make_parser(config.limits.parse_workers, config.limits.parse_timeout_seconds,
                                       self.spool_dir)
        self.intake_runner = Intake(
            sessions=self.sessions, parser=parser,
            logins=self.logins, outbox=self.sender, ctx=self.ctx, limits=config.limits, clock=clock,
            stopping=self.stopping, heartbeat=_watchdog)
        self.due_runner = Due(sessions=self.sessions, ctx=self.ctx, clock=clock, stopping=self.stopping,
                              heartbeat=_watchdog)
        self.leases = self._make_leases()

    # What a reload, a test or a tool replaces on a running daemon reaches the jobs that use it.

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        self.sender.smtp = config.smtp
        self.intake_runner.limits = config.limits
        self.logins.concurrency = config.scale.login_concurrency
        self.logins.alert_after = timedelta(minutes=config.workflow.intake_alert_minutes)

    @property
    def parser(self) -> Parser:
        return self.intake_runner.parser

    @parser.setter
    def parser(self, parser: Parser) -> None:
        self.intake_runner.parser = parser

    @property
    def box(self) -> SecretBox:
        return self._box

    @box.setter
    def box(self, box: SecretBox) -> None:
        self._box = box
        self.sender.box = box

    @property
    def transport(self) -> Transport:
        return self.sender.transport

    def _build(self, config: Config) -> tuple[Transport, dict[str, AgencyRuntime]]:
        return build(config, self.spool_dir, transport=self._given_transport, sources=self._given_sources,
                     services=self._given_services)

    def _make_leases(self) -> Leases:
        """Which agencies this process works: all on SQLite; on PostgreSQL an even share (daemon/leases.py)."""
        return leases_for(self.sessions.kw["bind"], self.runtimes, self._leases_changed)

    def _leases_changed(self, gained: set[str], lost: set[str]) -> None:
        follow(self.runtimes, gained, lost)
        if gained:
            self._wake.set()

    def _logged_in(self) -> None:
        if not self.ready:
            self.ready = True
            sd_notify("READY=1\nSTATUS=mailbox login ok")

    def reload(self) -> bool:
        """SIGHUP: read the configuration again; a bad one is refused and the running one kept."""
        if not self.config_path:
            log.warning("reload asked, but the daemon was not started from a configuration file")
            return False
        load_sop.cache_clear()  # SOP files are read again too
        try:
            new = load_checked(self.config_path)
            box = secret_box(new)
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
        self.config, self.runtimes, self.box, self.sender.transport = new, runtimes, box, transport
        self.leases = self._make_leases()
        self.leases.start()
        log.info("configuration reloaded from %s: %d agency(ies)", self.config_path, len(new.agencies))
        return True

    # --- one pass ---------------------------------------------------------------------------------

    def ctx(self, session: Session, agency: AgencyConfig) -> Ctx:
        return make_ctx(session, self.config, self.runtimes[agency.id], clock=self.clock, box=self.box)

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
            self.sender.wake()  # the sender thread of `run` takes it from here
        return totals

    def intake(self, rt: AgencyRuntime, *, drain_inline: bool = True) -> int:
        return self.intake_runner.take_in(rt, drain_inline=drain_inline)

    def run_due(self, rt: AgencyRuntime) -> int:
        return self.due_runner.run_due(rt)

    def housekeeping(self, rt: AgencyRuntime) -> None:
        self.due_runner.housekeeping(rt)

    def drain_outbox(self) -> int:
        return self.sender.drain()

    def start_sender(self) -> None:
        self._watchers.append(self.sender.start())

    def connect_all(self) -> None:
        self.logins.connect_all(self.runtimes.values(), self.leases.owns)

    def owns(self, rt: AgencyRuntime) -> bool:
        """Whether this process works this mailbox now (daemon/leases.py). SQLite: always."""
        self.leases.start()
        return self.leases.owns(rt.agency.id)

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

    def _owns(self, aid: str) -> bool:
        return self.leases.owns(aid)

    def _warn_size(self) -> None:
        """Said at start too: a descriptor limit below what this many agencies need. The unit sets
        LimitNOFILE=; the daemon does not raise its own limit (its seccomp filter denies @resources)."""
        for w in warnings(self.config):
            log.warning("%s", w)

    def run(self, *, max_passes: int | None = None) -> None:
        self._install_signals()
        self._warn_size()
        self.leases.start()
        for rt in self.runtimes.values():
            if isinstance(rt.source, ImapSource):
                watcher = Watcher(rt=rt, spool_dir=self.spool_dir, logins=self.logins, stopping=self.stopping,
                                  owns=self._owns, wake=self._wake_agency, idling=self._idling)
                t = threading.Thread(target=watcher.watch, name=f"idle-{rt.agency.id}", daemon=True)
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
        self.sender.stop(flush_seconds)
        for rt in self.runtimes.values():
            try:
                rt.source.close()
            except Exception:  # noqa: BLE001
                log.debug("close failed", exc_info=True)
        self.parser.close()
        self.sender.close()
        for rt in self.runtimes.values():
            rt.lease_changed.set()
            if rt.watcher is not None:
                rt.watcher.interrupt()
        # One bound for all of them, whatever the number of mailboxes (TimeoutStopSec).
        end = time.monotonic() + 3
        for t in self._watchers:
            t.join(timeout=max(0.0, end - time.monotonic()))
        self.leases.close()  # its connection closes: the other processes take these agencies at once
