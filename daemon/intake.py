"""Intake of one mailbox: fetch what is new past the UID checkpoint, parse it (in the parser workers),
ingest it with the checkpoint in the same transaction, then flag it on the server (or move it to
quarantine) and record that it was flagged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import AgencyConfig, LimitsConfig
from subdomaind.daemon.logins import Logins
from subdomaind.daemon.mailbox import FETCH_BYTES, MailSourceError
from subdomaind.daemon.outbox import Sender
from subdomaind.daemon.parsing import Job, Parser
from subdomaind.daemon.runtime import AgencyRuntime, mailbox_state, parse_options_for, purge_if_needed
from subdomaind.parsers.model import ParseOptions, ParseResult
from subdomaind.workflows import inbound
from subdomaind.workflows.engine import Ctx
from subdomaind.workflows.rawmail import RawMail, discard
from subdomaind.workflows.store import QUARANTINE_STATUSES, Inbound, tx_state

log = logging.getLogger("subdomaind.service")

FETCH_BATCH = 25
GROUP_SECONDS = 0.25  # one intake transaction gathers messages for at most this long


@dataclass
class Intake:
    """Takes mail in, one mailbox at a time. `heartbeat` tells the service manager a long backlog is
    progress; what a batch queued is sent by `outbox` (inline, or woken on its own thread)."""

    sessions: sessionmaker[Session]
    parser: Parser
    logins: Logins
    outbox: Sender
    ctx: Callable[[Session, AgencyConfig], Ctx]
    limits: LimitsConfig
    clock: Callable[[], datetime]
    stopping: threading.Event
    heartbeat: Callable[[], None]

    def take_in(self, rt: AgencyRuntime, *, drain_inline: bool = True) -> int:
        """Everything new in the mailbox of `rt`; the number of messages taken in."""
        if not self.logins.connect(rt):
            return 0
        handled = 0
        try:
            uv = rt.source.uidvalidity()
            with self.sessions.begin() as s:
                st = mailbox_state(s, rt)
                if st.uidvalidity != uv:
                    if st.uidvalidity:
                        # The folder was recreated: UIDs restart. Message-ID dedupe keeps this safe.
                        log.warning("UIDVALIDITY of %s changed %s -> %s", rt.agency.id, st.uidvalidity, uv)
                    st.uidvalidity = uv
                    st.last_uid = 0
                last_uid = st.last_uid
            self._finish_pending_marks(rt)
            options = parse_options_for(rt.agency, self.limits)
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
                        self.outbox.drain()
                    else:
                        self.outbox.wake()
            finally:
                discard(fetched)
            with self.sessions.begin() as s:
                st = mailbox_state(s, rt)
                st.last_ok_at = self.clock()
                st.failing_since = None
                st.alerted_at = None
                st.last_error = None
                st.backoff_until = None
                st.mode = rt.source.mode
        except MailSourceError as exc:
            self.logins.failed(rt, exc)
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
        done: list[tuple[int, bool]] = []
        i = 0
        while i < len(items) and not self.stopping.is_set():
            group: list[tuple[int, bool]] = []
            j = i
            try:
                items[i][2].result()  # waited for here, not inside the transaction (the sender waits on it)
                with self.sessions.begin() as s:
                    ctx = self.ctx(s, rt.agency)
                    st = mailbox_state(s, rt)
                    until = time.monotonic() + GROUP_SECONDS
                    while j < len(items):
                        uid, raw, job = items[j]
                        self.heartbeat()  # a long backlog is progress, not a hang
                        row = inbound.ingest(ctx, mailbox=rt.source.folder, uidvalidity=uv, uid=uid, raw=raw,
                                     parsed=job.result())
                        group.append((uid, row is not None and row.status in QUARANTINE_STATUSES))
                        j += 1
                        # A scrubbed password is purged from the WAL right after its own commit; a message
                        # still being parsed is waited for after this commit.
                        if (self.stopping.is_set() or time.monotonic() > until or tx_state(s).purge_secrets
                                or (j < len(items) and not items[j][2].ready())):
                            break
                    # The checkpoint once per group (one UPDATE), in the same transaction as the group.
                    st.last_uid = max(st.last_uid, *(uid for uid, _q in group))
                purge_if_needed(self.sessions, s)
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
        try:
            with self.sessions.begin() as s:
                row = inbound.ingest(self.ctx(s, rt.agency), mailbox=rt.source.folder, uidvalidity=uv, uid=uid, raw=raw,
                             parsed=parsed)
                st = mailbox_state(s, rt)
                st.last_uid = max(st.last_uid, uid)
                quarantined = row is not None and row.status in QUARANTINE_STATUSES
            purge_if_needed(self.sessions, s)
            return quarantined
        except IntegrityError:
            # The same Message-ID was just taken in by another process or mailbox: handled once, there.
            log.info("message uid %s of %s already taken in elsewhere", uid, rt.agency.id)
            with self.sessions.begin() as s:
                st = mailbox_state(s, rt)
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
