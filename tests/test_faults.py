"""Fault injection against the real servers with the real daemon: what breaks, and what must not.

Each test runs `subdomaind run` as a subprocess, breaks one thing under it -- Dovecot, the SMTP relay,
BIND, PostgreSQL, a signal, the configuration, a full disk -- and then checks the promises of the README:
no letter lost, nothing handled twice, a retried mail keeps its Message-ID, nothing half-made, and the
daemon keeps going. Where a fault has to land at an exact point, the daemon is the same entry point with
one function wrapped (a small launcher script, for SIGTERM inside a message's transaction) or runs in
process (BIND dying between two DNS calls of one action).

A test marked xfail(strict=True, raises=BugReproduced) reproduces a daemon bug named in its reason: only
the check that shows the bug raises BugReproduced; anything else failing in it is a real failure.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.workflows.store import (
    Account,
    Inbound,
    MailboxState,
    Outbox,
    PendingSecret,
    Request,
    StepRun,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tests.devkit.devservers import Bind, Dovecot, MailUser, Postgres, SmtpRelay
from tests.devkit.localoffice import SUBDOMAIND, UNVOUCHED, Office, parse_mail, request_mail, write_config

pytestmark = pytest.mark.servers

DONE_FLAG = b"$SubdomaindDone"


# --- helpers ----------------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    """A condition was not reached in time."""


class DaemonDied(AssertionError):
    """The daemon process exited while the test waited on it."""


class BugReproduced(AssertionError):
    """The check that exposes a known daemon bug failed (the only failure an xfail test accepts)."""


class Harness:
    """One office on the session servers, its daemon process, and a window on its database."""

    def __init__(self, office: Office) -> None:
        self.office = office
        self._engine: Any = None
        self._sessions: sessionmaker[Session] | None = None
        self.log_path = office.base / "daemon.log"
        self.launcher: Path | None = None
        self.answered: set[str] = set()

    # the daemon process

    def start(self, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`subdomaind run` (or the launcher, when one was written) in the background, logging to daemon.log."""
        o = self.office
        log = self.log_path.open("ab")
        argv = [str(SUBDOMAIND), "--config", str(o.config_path), "run"]
        if self.launcher is not None:
            argv = [sys.executable, str(self.launcher), "--config", str(o.config_path), "run"]
        o.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log.close()
        return o.proc

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.office.proc is not None, "the daemon is not running"
        return self.office.proc

    def alive(self) -> bool:
        return self.office.proc is not None and self.office.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        proc = self.proc
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            self.office.proc = None
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.office.proc is not None and self.office.proc.poll() is None:
            self.office.proc.kill()
            self.office.proc.wait(10)
        self.office.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since(self, mark: int) -> str:
        return self.log()[mark:]

    def wait_log(self, pattern: str, *, since: int = 0, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_since(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise WaitTimeout(f"log has no {pattern!r} within {timeout}s:\n{self.log_since(since)[-4000:]}")
            if self.office.proc is not None and self.office.proc.poll() is not None:
                raise DaemonDied(f"daemon exited {self.office.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    # the database

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            from subdomaind.daemon.config import load_config

            self._engine = make_engine(load_config(self.office.config_path).db_url)
            self._sessions = make_sessionmaker(self._engine)
        return self._sessions

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None

    def rows(self, model: Any, *where: Any) -> list[Any]:
        with self.sessions() as s:
            return list(s.execute(select(model).where(*where)).scalars())

    def requests(self) -> list[Request]:
        return self.rows(Request)

    def request(self, label: str) -> Request:
        found = self.rows(Request, Request.subdomain == label)
        assert len(found) == 1, f"{len(found)} requests for {label}"
        return found[0]

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the first intake pass went through (mailbox login ok, checkpoint written)."""
        self.wait(lambda: any(st.last_ok_at is not None for st in self.rows(MailboxState)), timeout,
                  "the first intake pass")

    def wait(self, cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition", *,
             bug: bool = False) -> None:
        """Until `cond()`; on timeout WaitTimeout, or BugReproduced with `bug=True`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable in a fault test
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise (BugReproduced if bug else WaitTimeout)(
                    f"{what} not reached within {timeout}s; daemon log:\n{self.log()[-5000:]}")
            if self.office.proc is not None and self.office.proc.poll() is not None:
                raise DaemonDied(f"daemon exited {self.office.proc.returncode}:\n{self.log()[-5000:]}")
            time.sleep(0.1)

    # the office's mail

    def deliver_request(self, label: str) -> bytes:
        """A request letter straight into the office mailbox over LMTP (works while the SMTP relay is down)."""
        o = self.office
        raw = request_mail(o.requester.address, label, to=o.mailbox.address)
        o.dovecot.deliver(o.mailbox.address, raw, mail_from=o.requester.address)
        return raw

    def inbox_flags(self) -> dict[int, tuple[bytes, ...]]:
        with self.office.mailbox.imap() as c:
            c.select_folder("INBOX", readonly=True)
            return {uid: tuple(v[b"FLAGS"]) for uid, v in c.fetch(c.search("ALL"), [b"FLAGS"]).items()}

    def decide(self, role: str, lb: str, word: str, timeout: float = 30.0) -> bytes:
        """As `role`'s official: answer the next unanswered step mail about sub-domain `lb`."""
        from tests.devkit.localoffice import reply_to

        user = self.office.officials[role]

        def match(m: Any) -> bool:
            subject = str(m["Subject"])
            return "Mohon keputusan" in subject and lb in subject and str(m["Message-ID"]) not in self.answered

        raw = self.office.wait_mail(user, match, timeout=timeout)
        self.answered.add(str(parse_mail(raw)["Message-ID"]))
        self.office.send(reply_to(raw, user.address, word), user.address)
        return raw

    def ours(self, relay: SmtpRelay) -> list[bytes]:
        """What the relay accepted from this office's mailbox address."""
        return [raw for frm, _rcpts, raw in list(relay.received) if frm == self.office.mailbox.address]


def subjects(user: MailUser, folder: str = "INBOX") -> list[str]:
    return [str(parse_mail(raw)["Subject"]) for raw in user.messages(folder)]


def message_ids(raws: list[bytes]) -> list[str]:
    return [str(email.message_from_bytes(r, policy=email.policy.default)["Message-ID"]).strip() for r in raws]


def acks(user: MailUser) -> list[str]:
    """Tickets of the acknowledgements in `user`'s INBOX, in arrival order."""
    out = []
    for s in subjects(user):
        if "diterima" in s:
            m = re.search(r"\[([A-Z]+/\d{4}/\d{4})\]", s)
            assert m, s
            out.append(m.group(1))
    return out


def restart_dovecot(dovecot: Dovecot) -> None:
    """Restart Dovecot the way `systemctl restart dovecot` does: every client session is dropped.

    `Dovecot.restart()` alone leaves the old `imap` worker processes running (orphaned, still serving their
    connections), so a client never notices. With `shutdown_clients = yes` (Dovecot's default) a real
    restart ends them: here the workers of this instance are signalled by pid, as the master would.
    """
    title = f"dovecot-subdomaind-dovecot-{dovecot.imap_port}/imap".encode()
    dovecot.stop()
    for pid in imap_workers(title):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while imap_workers(title) and time.monotonic() < deadline:
        time.sleep(0.02)
    dovecot.start()


def imap_workers(title: bytes) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0 == title:
                pids.append(int(entry.name))
    return pids


def label(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def set_imap(data: dict[str, Any], **imap: Any) -> None:
    data["agency"][0]["imap"].update(imap)


@pytest.fixture
def harness(tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> Iterator[Callable[..., Harness]]:
    """Factory: `harness(**Office.create kwargs, edit=fn(data))` -> a Harness (daemon not started)."""
    made: list[Harness] = []

    def make(*, edit: Callable[[dict[str, Any]], None] | None = None, base: Path | None = None,
             **kwargs: Any) -> Harness:
        b = base or tmp_path / f"office{len(made)}"
        o = Office.create(b, dovecot, smtp_relay, bind, **{"auth": UNVOUCHED, **kwargs})
        if edit is not None:
            edit(o.data)
            write_config(o.config_path, o.data)
        h = Harness(o)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.alive():
            with contextlib.suppress(Exception):
                h.terminate(timeout=20)
        h.kill()
        h.dispose()


# --- 1. Dovecot restarted mid-IDLE --------------------------------------------------------------------


def test_dovecot_restart_mid_idle_loses_and_repeats_nothing(harness: Callable[..., Harness], dovecot: Dovecot) -> None:
    """Dovecot goes away under the IDLE watcher and the intake connection, while a batch is being taken in.

    Every message (sent before, while the daemon is reconnecting, and after) becomes exactly one request
    with one acknowledgement, every one ends flagged on the server, and intake reports healthy again.
    """
    h = harness()
    o = h.office
    h.start()
    h.wait_ready()
    before = [label("pra") for _ in range(4)]
    for lb in before:
        o.send_request(lb)
    # Restart as soon as the batch is being taken in: some messages are committed, some not yet flagged,
    # some not yet fetched.
    h.wait(lambda: len(h.rows(Inbound)) >= 1, 20, "the first message of the batch")
    mark = len(h.log())
    restart_dovecot(dovecot)
    during = [label("saat") for _ in range(3)]
    for lb in during:  # the daemon is still backing off / reconnecting
        o.send_request(lb)
    h.wait_log(r"intake \S+ failing", since=mark)  # the fault was seen, not slept through
    h.wait(lambda: len(h.rows(Inbound)) == len(before) + len(during), 25, "intake after the restart")
    after = [label("pasca") for _ in range(2)]
    for lb in after:
        o.send_request(lb)
    labels = before + during + after
    h.wait(lambda: len(h.rows(Inbound)) == len(labels), 20, "intake of the later mail")
    h.wait(lambda: all(r.server_done for r in h.rows(Inbound)), 20, "every message flagged on the server")
    # One acknowledgement queued per request (delivery itself is test_smtp_*'s business: the relay here
    # delivers into the same Dovecot, so it answers 451 while Dovecot restarts).
    h.wait(lambda: len(h.rows(Outbox, Outbox.purpose == "ack", Outbox.status != "queued")) == len(labels), 20,
           "every acknowledgement handed to SMTP")

    reqs = h.requests()
    assert sorted(r.subdomain or "" for r in reqs) == sorted(labels)
    assert len({r.ticket for r in reqs}) == len(labels)
    inbound = h.rows(Inbound)
    assert len({i.message_id for i in inbound}) == len(inbound) == len(labels)
    assert {i.status for i in inbound} == {"handled"}, [(i.subject, i.status, i.error) for i in inbound]
    ack_rows = h.rows(Outbox, Outbox.purpose == "ack")
    assert sorted(r.request_id for r in ack_rows) == sorted(r.id for r in reqs)  # one ack per request
    sent = Counter(message_ids(h.ours(o.relay)))
    assert all(n == 1 for n in sent.values()), [m for m, n in sent.items() if n > 1]
    flags = h.inbox_flags()
    assert len(flags) == len(labels) and all(DONE_FLAG in f for f in flags.values()), flags
    assert o.mailbox.messages("Karantina") == []
    st = h.rows(MailboxState)[0]
    h.wait(lambda: h.rows(MailboxState)[0].failing_since is None, 10, "intake healthy again")
    assert st.uidvalidity and h.alive()


IDLE_DROPS_EXISTS = (
    "daemon/mailbox.py ImapSource.wait: `c.idle_done()` returns the untagged responses that came with the end "
    "of IDLE (Dovecot often sends EXISTS only then) and they are thrown away, so about half of new mails "
    "never wake intake and wait for the poll interval"
)
NO_WAKE_AFTER_RECONNECT = (
    "daemon/service.py: after the IDLE watcher reconnects nothing wakes the main loop (mail that came while "
    "it was away is not signalled), and after an intake failure Daemon.run sleeps the whole poll interval "
    "instead of until backoff_until"
)


def test_idle_wakes_intake_for_every_new_message(harness: Callable[..., Harness]) -> None:
    """With a long poll interval only IDLE makes intake prompt: every new message within seconds."""
    h = harness(edit=lambda d: set_imap(d, poll_seconds=120))
    o = h.office
    h.start()
    h.wait_ready()
    for n in range(1, 7):  # six in a row: each one that is missed waits the whole poll interval
        time.sleep(0.3 + (0.37 * n) % 1.0)  # land at different points of the watcher's 1 s IDLE cycle
        o.send_request(label("idle"))
        h.wait(lambda n=n: len(h.rows(Inbound)) == n, 6, f"message {n} taken in through IDLE", bug=True)


def test_intake_resumes_promptly_after_dovecot_restart(harness: Callable[..., Harness], dovecot: Dovecot) -> None:
    """Dovecot restarts under the IDLE watcher; the watcher is back within seconds. Mail that came while
    it was away must be taken then, not at the next poll (two polls, in fact: the first finds the intake
    connection dead)."""
    h = harness(edit=lambda d: set_imap(d, poll_seconds=120))
    o = h.office
    h.start()
    h.wait_ready()
    time.sleep(1.5)  # the watcher is IDLE-ing
    mark = len(h.log())
    restart_dovecot(dovecot)
    o.send_request(label("b"))  # arrives while nobody is IDLE-ing
    h.wait_log(r"IDLE watcher \S+:", since=mark, timeout=10)  # the watcher saw the restart
    h.wait(lambda: len(h.rows(Inbound)) == 1, 6, "intake of the mail sent right after the restart", bug=True)


# --- 2. the SMTP relay down ----------------------------------------------------------------------------


def due_now(h: Harness) -> int:
    """Make every queued outbox row due now (instead of waiting out the 30 s first backoff)."""
    with h.sessions.begin() as s:
        return s.execute(update(Outbox).where(Outbox.status == "queued")
                         .values(next_attempt_at=utcnow() - timedelta(seconds=1))).rowcount


def test_smtp_relay_down_then_back_every_mail_once_same_message_id(
    harness: Callable[..., Harness], smtp_relay: SmtpRelay
) -> None:
    """The relay is down while the daemon has to send the acknowledgement and the step mails. The daemon
    keeps taking mail in, keeps the mail queued with its error, and once the relay is back sends each
    mail exactly once, with the Message-ID (and bytes) it had queued."""
    h = harness()
    o = h.office
    smtp_relay.stop()
    h.start()
    h.wait_ready()
    first = label("smtp")
    h.deliver_request(first)  # LMTP straight into Dovecot: SMTP is down
    # A failed attempt recorded for each (attempts alone is counted when the row is claimed, before the send).
    h.wait(lambda: len(h.rows(Outbox)) >= 3 and all(r.attempts >= 1 and r.last_error for r in h.rows(Outbox)), 20,
           "a first failed attempt for each queued mail")
    queued = {r.message_id: r for r in h.rows(Outbox)}
    assert {r.purpose for r in queued.values()} >= {"ack", "notify.terima", "step.disposisi"}
    for r in queued.values():
        assert r.status == "queued" and r.sent_at is None, (r.purpose, r.status, r.last_error)
        assert "SMTP tidak dapat dihubungi" in (r.last_error or ""), r.last_error
        # Backed off (smtp.retry_base_seconds = 1, jittered 0.8-1.2 s), not hammering: the next try was put
        # past the last one, and there were no more tries than the time allows. (Not "> now": the row is
        # due again a second after each try, and may sit due for up to the sender's one-second wake.)
        assert r.next_attempt_at >= r.created_at + timedelta(seconds=0.8)
        assert r.attempts <= 2 + (utcnow() - r.created_at).total_seconds() / 0.8
        assert message_ids([r.raw])[0] == r.message_id
    # Intake carries on meanwhile: a second request is taken in and queues its own mail.
    second = label("smtp")
    h.deliver_request(second)
    h.wait(lambda: len(h.requests()) == 2, 15, "intake while SMTP is down")
    status = o.cli("status", "--json").stdout
    assert '"failing": ' in status and '"failing": 0' not in status, status
    assert h.alive()

    smtp_relay.start()
    due_now(h)
    h.wait(lambda: not h.rows(Outbox, Outbox.status != "sent"), 20, "the outbox drained")
    rows = h.rows(Outbox)
    delivered = Counter(message_ids(h.ours(smtp_relay)))
    assert delivered == Counter({r.message_id: 1 for r in rows}), delivered
    for r in rows:
        if r.message_id in queued:
            assert r.attempts >= 2  # failed, then sent: the same row, the same Message-ID
            sent_raw = next(raw for raw in h.ours(smtp_relay) if message_ids([raw])[0] == r.message_id)
            assert sent_raw.replace(b"\r\n", b"\n") == queued[r.message_id].raw.replace(b"\r\n", b"\n")
    assert sorted(acks(o.requester)) == sorted(r.ticket for r in h.requests())
    assert h.alive()


def test_smtp_down_two_minutes_backs_off_keeps_taking_mail_then_sends_each_once(
    harness: Callable[..., Harness], smtp_relay: SmtpRelay
) -> None:
    """The SMTP server is down for two minutes of wall time, letters arriving meanwhile. The
    daemon keeps taking them in, backs off (retry_base 1 s doubling to retry_max 10 s here: at most about
    sixteen tries per mail in two minutes, where a try per second would be 120), and once the server is
    back it sends every mail exactly once, on its own, without anyone nudging the queue."""
    h = harness()
    smtp_relay.stop()
    down_since = time.monotonic()
    h.start()
    h.wait_ready()
    h.deliver_request(label("lama"))
    h.wait(lambda: len(h.rows(Outbox)) >= 3, 20, "the first letter's mails queued")
    time.sleep(60)
    h.deliver_request(label("lama"))  # a letter in the middle of the outage
    h.wait(lambda: len(h.requests()) == 2, 20, "intake during the outage")
    time.sleep(max(0.0, 120 - (time.monotonic() - down_since)))
    rows = h.rows(Outbox)
    assert rows and all(r.status == "queued" and r.sent_at is None for r in rows)
    assert max(r.attempts for r in rows) <= 20, [r.attempts for r in rows]
    assert h.alive()

    smtp_relay.start()
    h.wait(lambda: not h.rows(Outbox, Outbox.status != "sent"), 30, "the outbox drained after the outage")
    rows = h.rows(Outbox)
    assert Counter(message_ids(h.ours(smtp_relay))) == Counter({r.message_id: 1 for r in rows})
    assert len(rows) == 6  # two letters: acknowledgement, notification, step mail each
    assert h.alive()


class GreylistingRelay:
    """An SMTP server on loopback that answers RCPT with 451 the first time it sees a recipient (as
    greylisting does), accepts it afterwards, and keeps what it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from tests.devkit.devservers import free_port

        self.seen: set[str] = set()
        self.received: list[bytes] = []
        self.port = free_port()
        relay = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                                  options: list[str]) -> str:
                if address not in relay.seen:
                    relay.seen.add(address)
                    return "451 4.7.1 Greylisted, please try again later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                relay.received.append(envelope.original_content or envelope.content)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, server_hostname="localhost",
                                     decode_data=False, ready_timeout=10)

    def __enter__(self) -> GreylistingRelay:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def test_smtp_temporary_rcpt_refusal_is_retried_not_failed(harness: Callable[..., Harness]) -> None:
    with GreylistingRelay() as grey:
        h = harness(edit=lambda d: d["smtp"].update(port=grey.port))
        h.start()
        h.wait_ready()
        h.deliver_request(label("grey"))
        h.wait(lambda: len(h.rows(Outbox)) >= 3 and all(r.attempts >= 1 for r in h.rows(Outbox)), 20,
               "a first attempt for each mail")
        rows = h.rows(Outbox)
        if {r.status for r in rows} != {"queued"}:
            raise BugReproduced(str([(r.purpose, r.status, r.last_error) for r in rows]))
        due_now(h)
        h.wait(lambda: not h.rows(Outbox, Outbox.status != "sent"), 15, "the retry accepted")
        assert sorted(message_ids(grey.received)) == sorted(r.message_id for r in h.rows(Outbox))


DRAIN_UNBOUNDED = (
    "daemon/outbox.py drain: a send that hangs (SMTP host unreachable, no greeting) costs smtp.timeout_seconds "
    "per queued row, and the pass keeps trying every due row: intake waits the whole drain, and after SIGTERM "
    "Daemon.run_once's drain (no deadline, no look at `stopping`) runs to the end before the 10 s flush bound "
    "even starts"
)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP port on loopback that completes the handshake (the listen backlog) and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_smtp_hanging_holds_up_neither_intake_nor_shutdown(harness: Callable[..., Harness]) -> None:
    """The SMTP host stops answering (TCP accepted, no greeting). Intake must go on and SIGTERM must stop the
    daemon within its flush bound (10 s) plus one send timeout; every mail stays queued for later."""
    timeout = 1.5
    with black_hole() as port:
        h = harness(edit=lambda d: d["smtp"].update(port=port, timeout_seconds=timeout))
        for _ in range(5):  # a small morning backlog: 5 requests, 15 mails to send (22 s of timeouts)
            h.deliver_request(label("hang"))
        h.start()
        h.wait(lambda: len(h.rows(Inbound)) == 5, 20, "the backlog taken in")
        time.sleep(0.3)  # the pass is in the outbox now, each mail waiting for a greeting
        h.deliver_request(label("late"))
        try:
            h.wait(lambda: len(h.rows(Inbound)) == 6, 2 * timeout, "intake while SMTP hangs")
            intake_held = None
        except WaitTimeout:
            intake_held = f"a new message waited more than {2 * timeout:.0f} s behind the outbox"
        bound = 10 + timeout + 2
        proc = h.proc
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = proc.wait(bound)
        except subprocess.TimeoutExpired:
            rc = None
            proc.kill()
            proc.wait(10)
        took = time.monotonic() - t0
        h.office.proc = None
        slow_stop = None if rc is not None else f"SIGTERM: still running after {took:.1f} s (bound {bound:.1f} s)"
        assert rc in (0, None), h.log()[-3000:]
        rows = h.rows(Outbox)
        assert rows and {r.status for r in rows} == {"queued"}, [(r.purpose, r.status) for r in rows]
        problems = [p for p in (intake_held, slow_stop) if p]
        if problems:
            raise BugReproduced("; ".join(problems))


# --- 3. BIND down during provisioning -----------------------------------------------------------------


def step_mail(step_title_part: str) -> Callable[[Any], bool]:
    return lambda m: "Mohon keputusan" in str(m["Subject"]) and step_title_part in str(m["Subject"])


def test_bind_down_at_provisioning_fails_cleanly_and_setuju_retries(harness: Callable[..., Harness], bind: Bind) -> None:
    """BIND is down when the Kasi's SETUJU starts provisioning: staff are alerted with the reason, the
    request waits at `cek_teknis` with nothing made (no record, account or password), and once BIND is back
    the Kasi's SETUJU at `cek_teknis` provisions it and the request goes on."""
    h = harness()
    o = h.office
    h.start()
    h.wait_ready()
    lb = label("dns")
    o.send_request(lb)
    o.decide("kadis", "SETUJU")
    o.decide("kabid", "SETUJU")
    bind.stop()
    o.decide("kasi", "SETUJU")  # periksa -> buat: provisioning runs now, against a dead primary
    alert = o.wait_mail(o.staff, lambda m: "Perlu tindakan staf" in str(m["Subject"]) and lb in str(m["Subject"]))
    assert "tidak dapat dihubungi" in body(alert), body(alert)
    o.wait_mail(o.officials["kasi"], step_mail("Memeriksa kendala"))
    req = h.request(lb)
    assert req.step == "cek_teknis" and req.status == "open" and req.provisioned is None
    assert h.rows(Account, Account.request_id == req.id) == []
    assert h.rows(PendingSecret, PendingSecret.request_id == req.id) == []
    buat = h.rows(StepRun, StepRun.request_id == req.id, StepRun.key == "buat")
    assert [(b.status, b.outcome) for b in buat] == [("done", "error")]
    assert "tidak dapat dihubungi" in (buat[0].last_error or "")
    bind.start()
    assert bind.addresses(lb) == []  # nothing half-made
    o.decide("kasi", "SETUJU")  # cek_teknis: try again
    h.wait(lambda: h.request(lb).step == "paraf_kasi", 30, "provisioning after BIND is back")
    req = h.request(lb)
    assert req.provisioned and req.provisioned["value"] == "203.0.113.10"
    assert bind.addresses(lb) == ["203.0.113.10"]
    assert len(h.rows(Account, Account.request_id == req.id)) == 1
    assert h.alive()


def body(raw: bytes) -> str:
    from tests.devkit.localoffice import body_text

    return " ".join(body_text(raw).split())


@pytest.mark.parametrize("answer", ["SETUJU", "TOLAK"])
def test_bind_dies_mid_provisioning_then_the_kasi_decides(
    dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind, tmp_path: Path, answer: str
) -> None:
    """BIND dies right after it applied the update, before the record is verified. The request waits at
    `cek_teknis`, staff are told the record was made and left in place; once BIND is back, SETUJU verifies
    it again and goes on (no second record), TOLAK removes it (nothing orphaned). In process: the fault has
    to land between two DNS calls of one action."""
    from subdomaind.daemon.config import load_config
    from subdomaind.daemon.service import Daemon, build_services
    from subdomaind.workflows.db import upgrade

    o = Office.create(tmp_path / "office", dovecot, smtp_relay, bind, auth=UNVOUCHED)
    cfg = load_config(o.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    services = build_services(cfg, cfg.agencies[0])
    dns_backend: Any = services.dns
    for name in ("apply", "add"):  # whichever the engine sends its update with
        real = getattr(dns_backend, name)

        def then_die(records: Any, _real: Any = real) -> None:
            _real(records)  # the update is applied on the primary ...
            bind.stop()  # ... and the primary dies before anything is verified

        setattr(dns_backend, name, then_die)
    d = Daemon(cfg, make_sessionmaker(engine), services={cfg.agencies[0].id: services})
    o.pump = d.run_once
    sessions = make_sessionmaker(engine)
    try:
        lb = label("mid")
        o.send_request(lb)
        for role in ("kadis", "kabid", "kasi"):
            o.decide(role, "SETUJU")
        o.wait_mail(o.officials["kasi"], step_mail("Memeriksa kendala"))
        alert = o.wait_mail(o.staff, lambda m: "Perlu tindakan staf" in str(m["Subject"]) and lb in str(m["Subject"]))
        assert "rekaman" in body(alert).lower(), body(alert)  # the record is named as made, and left
        with sessions() as s:
            req = s.execute(select(Request)).scalar_one()
            assert req.step == "cek_teknis" and req.provisioned is None
        bind.start()
        assert bind.addresses(lb) == ["203.0.113.10"]  # the fault landed where intended: the record is there
        if answer == "SETUJU":
            o.decide("kasi", "SETUJU")
            o.wait_until(lambda: sessions().execute(select(Request.step)).scalar_one() == "paraf_kasi")
            assert bind.addresses(lb) == ["203.0.113.10"]
            with sessions() as s:
                assert s.execute(select(Request)).scalar_one().provisioned is not None
                assert len(s.execute(select(Account)).all()) == 1
        else:
            o.decide("kasi", "TOLAK\nDibatalkan karena gangguan DNS.")
            o.wait_mail(o.requester, lambda m: "dapat dipenuhi" in str(m["Subject"]))
            assert bind.addresses(lb) == []  # removed, not orphaned
    finally:
        if not bind.running:
            bind.start()
        d.shutdown(flush_seconds=2)
        engine.dispose()


# --- 4. PostgreSQL restarted under the daemon ---------------------------------------------------------


def test_postgres_restart_under_the_daemon(harness: Callable[..., Harness], postgres: Postgres, bind: Bind) -> None:
    """PostgreSQL restarts while the daemon works on it (a decision being taken in, mail being sent). The
    daemon keeps running, takes new mail in, and carries a request through to the reply letter."""
    url = postgres.create_database(f"faults_{secrets.token_hex(4)}")
    h = harness(database_url=url)
    o = h.office
    h.start()
    h.wait_ready()
    lb = label("pg")
    o.send_request(lb)
    h.decide("kadis", lb, "SETUJU")
    postgres.restart()  # while that reply is being taken in and its mail sent
    other = label("pg")
    o.send_request(other)
    for role in ("kabid", "kasi", "kasi", "kabid", "kadis"):
        h.decide(role, lb, "SETUJU")
    final = o.wait_mail(o.requester, lambda m: "telah aktif" in str(m["Subject"]), timeout=30)
    assert f"{lb}.trenggalekkab.go.id" in body(final)
    assert bind.addresses(lb) == ["203.0.113.10"]
    reqs = h.requests()
    assert sorted(r.subdomain or "" for r in reqs) == sorted([lb, other])
    inbound = h.rows(Inbound)
    assert len({i.message_id for i in inbound}) == len(inbound)
    assert not [i for i in inbound if i.status == "quarantined"]
    assert h.alive()
    rc, _took = h.terminate()
    assert rc == 0


# --- 5. SIGTERM while a message is being handled ------------------------------------------------------

LAUNCHER = '''
"""`subdomaind` with one fault hook: each message is held HOLD seconds inside its transaction (after the
handler ran, before the commit), with a marker file written, so a test can signal it exactly then."""
import os
import sys
import time
from pathlib import Path

import subdomaind.workflows.inbound as inbound

_real = inbound.ingest


def ingest(ctx, **kw):
    row = _real(ctx, **kw)
    Path(os.environ["FAULT_MARKS"], f"uid-{kw['uid']}").write_text("")
    time.sleep(float(os.environ.get("FAULT_HOLD", "2")))
    return row


inbound.ingest = ingest
from subdomaind.daemon.cli import main  # noqa: E402

if __name__ == "__main__":  # the parser workers' forkserver imports this file again
    sys.exit(main(sys.argv[1:]))
'''


def write_launcher(h: Harness) -> Path:
    path = h.office.base / "launcher.py"
    path.write_text(textwrap.dedent(LAUNCHER))
    h.launcher = path
    return path


def test_sigterm_mid_message_finishes_it_and_exits_zero(harness: Callable[..., Harness], smtp_relay: SmtpRelay) -> None:
    """SIGTERM lands while a message is inside its transaction: that message is committed and flagged,
    its mail is flushed, the process exits 0 within the bound, and the restarted daemon takes the rest
    without handling anything twice."""
    h = harness()
    o = h.office
    labels = [label("term") for _ in range(4)]
    for lb in labels:
        h.deliver_request(lb)
    marks = o.base / "marks"
    marks.mkdir()
    write_launcher(h)
    h.start(env={"FAULT_MARKS": str(marks), "FAULT_HOLD": "2"})
    h.wait(lambda: (marks / "uid-1").exists(), 30, "the first message in hand")
    rc, took = h.terminate(timeout=30)
    assert rc == 0, h.log()[-3000:]
    assert took < 10 + 2 + 3, f"SIGTERM took {took:.1f} s"
    assert "finishing the current message" in h.log()
    assert not (marks / "uid-2").exists()  # it stopped after the message in hand
    inbound = h.rows(Inbound)
    assert [(i.uid, i.status, i.server_done) for i in inbound] == [(1, "handled", True)]
    assert len(h.requests()) == 1
    flags = h.inbox_flags()
    assert DONE_FLAG in flags[1] and not any(DONE_FLAG in f for uid, f in flags.items() if uid != 1)
    assert {r.status for r in h.rows(Outbox)} == {"sent"}  # the final flush sent what the message caused

    h.launcher = None
    h.start()
    h.wait(lambda: len(h.rows(Inbound)) == len(labels), 30, "the rest taken in after the restart")
    h.wait(lambda: not h.rows(Outbox, Outbox.status != "sent"), 20, "the outbox drained")
    reqs = h.requests()
    assert sorted(r.subdomain or "" for r in reqs) == sorted(labels)
    assert len({r.ticket for r in reqs}) == len(labels)
    delivered = Counter(message_ids(h.ours(smtp_relay)))
    assert delivered == Counter({r.message_id: 1 for r in h.rows(Outbox)})
    assert len(h.rows(Outbox, Outbox.purpose == "ack")) == len(labels)
    assert all(DONE_FLAG in f for f in h.inbox_flags().values())
    rc, _ = h.terminate()
    assert rc == 0


# --- 6. SIGHUP ----------------------------------------------------------------------------------------


def hup(h: Harness) -> int:
    mark = len(h.log())
    h.proc.send_signal(signal.SIGHUP)
    return mark


def test_sighup_good_config_is_reloaded_and_followed(harness: Callable[..., Harness], dovecot: Dovecot) -> None:
    """A Plt for the Kadis is added to the config and SIGHUP sent: the log says the config was reloaded,
    and the Plt's SETUJU, refused before, now counts for the Kadis."""
    plt = dovecot.new_user("pltkadis")
    h = harness()
    o = h.office
    h.start()
    h.wait_ready()
    lb = label("hup")
    o.send_request(lb)
    kadis_mail = o.wait_mail(o.officials["kadis"], step_mail(""))
    from tests.devkit.localoffice import reply_to

    o.send(reply_to(kadis_mail, plt.address, "SETUJU"), plt.address)
    h.wait(lambda: any(i.sender == plt.address for i in h.rows(Inbound)), 20, "the Plt's first answer")
    assert h.request(lb).step == "disposisi"  # refused: not (yet) an actor or delegate
    o.data["agency"][0]["delegates"] = {"kadis": [plt.address]}
    write_config(o.config_path, o.data)
    mark = hup(h)
    h.wait_log(r"configuration reloaded from", since=mark)
    o.send(reply_to(kadis_mail, plt.address, "SETUJU, atas nama Kepala Dinas."), plt.address)
    h.wait(lambda: h.request(lb).step == "disposisi_kabid", 20, "the Plt's answer after the reload")
    from subdomaind.workflows.store import Decision

    accepted = h.rows(Decision, Decision.accepted.is_(True))
    assert [(d.actor, d.on_behalf_of) for d in accepted] == [(plt.address, "kadis")]
    assert h.alive()


def test_sighup_bad_config_is_refused_and_the_old_one_kept(harness: Callable[..., Harness]) -> None:
    """Three broken configs, one SIGHUP each: a TOML syntax error, an unknown key, a value the SOP cannot
    work with. Each time the log says the reload was refused and why; the daemon keeps running on the old
    config (the next request is acknowledged and the old Kadis's decision counts)."""
    h = harness()
    o = h.office
    h.start()
    h.wait_ready()
    good = o.config_path.read_text()
    no_kabid = {**o.data, "agency": [{**o.data["agency"][0],
                                     "actors": {k: v for k, v in o.data["agency"][0]["actors"].items()
                                                if k != "kabid"}}]}
    import tomli_w

    cases = [
        (good + "\n[smtp\nport = 25\n", r"not valid TOML"),
        (good.replace("[smtp]\n", "[smtp]\nretry_after = 5\n", 1), r"smtp\.retry_after: Extra inputs are not permitted"),
        (tomli_w.dumps(no_kabid), r"actors\.kabid: the SOP 'trenggalek' needs an address"),
    ]
    for text, why in cases:
        o.config_path.write_text(text)
        mark = hup(h)
        line = h.wait_log(r"configuration reload refused, keeping the running one: (.*)", since=mark)
        assert re.search(why, line.group(1)), line.group(0)
        assert "configuration reloaded" not in h.log_since(mark)
    lb = label("old")
    o.send_request(lb)
    h.wait(lambda: len(acks(o.requester)) == 1, 20, "a request handled on the old config")
    o.decide("kadis", "SETUJU")  # the old actors still count
    h.wait(lambda: h.request(lb).step == "disposisi_kabid", 20, "the Kadis's decision")
    assert h.alive()


@pytest.mark.parametrize("bad", ["not_utf8", "tsig_not_base64"])
def test_sighup_unreadable_config_is_refused_not_fatal(harness: Callable[..., Harness], bad: str) -> None:
    """Broken in ways the config checker does not see -- a file saved in Windows-1252, a TSIG secret that
    is not base64 -- SIGHUP is refused with the reason, never kills the daemon, and the old config works.
    (Regression: until c7cee79 Daemon.reload caught only ConfigError/OSError and these killed it.)"""
    h = harness()
    o = h.office
    h.start()
    h.wait_ready()
    if bad == "not_utf8":  # saved by an editor in Windows-1252
        o.config_path.write_bytes(o.config_path.read_bytes().replace(b"Kabupaten Trenggalek",
                                                                     b"Kabupaten Trenggalek \x96 Jawa Timur"))
        why = "simpan berkas sebagai UTF-8"
    else:
        Path(o.data["agency"][0]["dns"]["tsig_secret_file"]).write_text("bukan base64!\n")
        why = "TSIG"
    mark = hup(h)
    line = h.wait_log(r"configuration reload refused, keeping the running one: (.*)", since=mark, timeout=10)
    assert why in line.group(1), line.group(0)
    lb = label("old")
    o.send_request(lb)
    h.wait(lambda: len(acks(o.requester)) == 1, 20, "a request handled on the old config")
    assert h.alive()


# --- 7. the state directory's disk full ---------------------------------------------------------------


@pytest.fixture
def small_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs where the office's state directory (and its SQLite database) will be."""
    state = tmp_path / "office0" / "state"
    state.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(state)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the state directory: {proc.stderr.strip() or proc.returncode}")
    try:
        yield state
    finally:
        if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it.

    The SQLite WAL is truncated first: a WAL that already has room takes small commits without growing, and
    the disk would only be "full" for the database now and then.
    """
    db = directory / "subdomaind.db"
    if db.exists():
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
            for _ in range(100):
                if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                    break
                time.sleep(0.02)
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC
                    raise
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    break
    return filler


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_state_disk_full_then_space_returns(small_state_dir: Path, harness: Callable[..., Harness]) -> None:
    """The state directory fills up: intake fails with the reason in the log, the database stays intact,
    the message stays in the mailbox (checkpoint not advanced), and once space returns it is handled."""
    h = harness()
    o = h.office
    assert o.config_path.parent / "state" == small_state_dir
    h.start()
    h.wait_ready()
    lb = label("penuh")
    o.send_request(lb)
    h.wait(lambda: len(acks(o.requester)) == 1, 20, "a request before the disk fills")
    h.wait(lambda: not h.rows(Outbox, Outbox.status == "queued"), 20, "its mail sent")
    filler = fill(small_state_dir)
    mark = len(h.log())
    later = [label("penuh") for _ in range(2)]
    for x in later:
        o.send_request(x)
    h.wait_log(r"database or disk is full", since=mark, timeout=20)
    time.sleep(1.5)  # a few more passes against the full disk
    assert h.alive()
    db = small_state_dir / "subdomaind.db"
    assert integrity(db) == "ok"
    assert len(h.requests()) == 1  # nothing half-stored
    flags = h.inbox_flags()
    assert len(flags) == 3 and sum(DONE_FLAG in f for f in flags.values()) == 1  # the two wait on the server
    filler.unlink()
    h.wait(lambda: len(h.requests()) == 3, 20, "intake after space returns")
    h.wait(lambda: len(set(acks(o.requester))) == 3, 20, "their acknowledgements")
    assert sorted(r.subdomain or "" for r in h.requests()) == sorted([lb, *later])
    assert all(DONE_FLAG in f for f in h.inbox_flags().values())
    rc, _ = h.terminate()
    assert rc == 0
    h.dispose()
    assert integrity(db) == "ok"

