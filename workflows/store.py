"""The database: SQLAlchemy 2 models for requests, steps, decisions, audit, inbound mail and the outbox.

All state lives here, keyed by request. SQLite (WAL) by default, PostgreSQL when configured; the same
models and migrations serve both. Schema changes go through Alembic (`workflows/migrations`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from subdomaind.workflows.rawmail import RawMail, pieces, whole

log = logging.getLogger("subdomaind.store")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive values; we re-attach UTC on the way out)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = (UniqueConstraint("agency", "ticket"), Index("ix_requests_open", "agency", "status"),
                      # Three columns, so SQLite's planner (no statistics) prefers it to ix_requests_open for
                      # the per-message label checks; with two it took ix_requests_open and walked every open
                      # request (migration 0006).
                      Index("ix_requests_label", "agency", "subdomain", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    ticket: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | rejected
    step: Mapped[str | None] = mapped_column(String(64))
    subdomain: Mapped[str | None] = mapped_column(String(63))
    unit: Mapped[str | None] = mapped_column(String(255))
    requester: Mapped[str] = mapped_column(String(320))  # the address that sent the letter
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the canonical record, JSON
    source_message_id: Mapped[str | None] = mapped_column(String(998))
    received_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    # Set once the DNS record exists: what we created, so a later rollback removes only that.
    provisioned: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    letter_number: Mapped[str | None] = mapped_column(String(64))

    steps: Mapped[list[StepRun]] = relationship(back_populates="request", order_by="StepRun.id")


class StepRun(Base):
    """One visit of a request to one SOP step (a step can be visited again after PERBAIKI)."""

    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_open", "status", "due_at"), Index("ix_steps_request", "request_id", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"))
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | cancelled
    opened_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]  # for actions: not before (the undo window)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_expires_at: Mapped[datetime | None]
    # The latest reminder's own token (its one-tap links cannot thread to the step mail); same expiry.
    reminder_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    mail_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    outcome: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    reminded_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]

    request: Mapped[Request] = relationship(back_populates="steps")


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_request", "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id"))
    decision: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(320))
    on_behalf_of: Mapped[str | None] = mapped_column(String(64))  # the role a delegate answered for
    note: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(998))
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    rules: Mapped[list[Any]] = mapped_column(default=list)
    at: Mapped[datetime]


class Audit(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_request", "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(320))  # an address, a role, or "subdomaind"
    event: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message_id: Mapped[str | None] = mapped_column(String(998))


_TX_KEY = "subdomaind.tx"


@dataclass
class TxState:
    """What one transaction remembers beside its rows: audit rows to write at commit, what it read once and
    reuses (acting officials, the unit's letter, mail counts), and what the caller does after it.

    Every field is cleared in one place (`_end_of_transaction`, `_end_of_savepoint`): a cache must not
    outlive the rows it was read from, nor survive a rollback that undid them. `purge_secrets` alone
    outlives a commit: it tells the caller to purge the database's side files (`take_purge_secrets`)."""

    # The audit rows not yet written (workflows.engine.audit adds to it; written at commit).
    audit_rows: list[dict[str, Any]] = field(default_factory=list)
    # Acting officials per role (workflows.engine.delegates_of); the delegation handler empties it.
    delegates: dict[str, frozenset[str]] = field(default_factory=dict)
    # Requests opened in this transaction: they have no decisions to read back yet.
    opened: set[int] = field(default_factory=set)
    # The unit's letter per Message-ID: its raw bytes (None: too large to attach) and its files (each a
    # workflows.mailer.MailAttachment), read once and attached to the step mails.
    original_attachment: dict[str, bytes | None] = field(default_factory=dict)
    original_files: dict[str, list[Any]] = field(default_factory=dict)
    # The per-recipient daily counters (workflows.mailer), by (agency, address, day).
    mail_counts: dict[tuple[str, str, str], MailCount] = field(default_factory=dict)
    # While a handler runs: the mail it queues (charged against the unverified-sender caps).
    queued: list[Outbox] | None = None
    # A secret was deleted: after commit, the caller purges the WAL (`purge_freed_secrets`).
    purge_secrets: bool = False
    committed: bool = False
    # Each savepoint and the lengths of `audit_rows` and `queued` when it began.
    savepoints: dict[Any, tuple[int, int]] = field(default_factory=dict)

    def mark(self) -> tuple[int, int]:
        return len(self.audit_rows), len(self.queued or ())

    def forget(self, mark: tuple[int, int]) -> None:
        """A savepoint rolled back: what was read may come from rows it undid, and the audit rows and mail
        written since its `mark` are gone with it."""
        self.delegates.clear()
        self.opened.clear()
        self.original_attachment.clear()
        self.original_files.clear()
        self.mail_counts.clear()
        del self.audit_rows[mark[0]:]
        if self.queued is not None:
            del self.queued[mark[1]:]


def tx_state(session: Session) -> TxState:
    """The state of `session`'s current transaction."""
    state: TxState | None = session.info.get(_TX_KEY)
    if state is None:
        state = session.info[_TX_KEY] = TxState()
    return state


def pending_audit(session: Session) -> list[dict[str, Any]]:
    """The audit rows of this transaction not yet written (workflows.engine.audit adds to it)."""
    return tx_state(session).audit_rows


def take_purge_secrets(session: Session) -> bool:
    """Whether the transaction just committed deleted a secret (then the caller purges); asking clears it."""
    state: TxState | None = session.info.get(_TX_KEY)
    if state is None or not state.purge_secrets:
        return False
    state.purge_secrets = False
    return True


@event.listens_for(Session, "before_commit")
def _write_audit(session: Session) -> None:
    """Audit rows go in at commit, in one executemany: as ORM objects each was an INSERT ... RETURNING of
    its own (SQLite cannot batch RETURNING in order), five per request, a tenth of the intake's cost
    (bench/backlog.py). Nothing reads them back within the transaction that writes them."""
    if session.in_nested_transaction():
        return  # a savepoint: its rows go with the transaction around it
    state: TxState | None = session.info.get(_TX_KEY)
    if state is not None and state.audit_rows:
        rows, state.audit_rows = state.audit_rows, []
        table = Base.metadata.tables["audit"]  # the table: Core's executemany, not the ORM's bulk INSERT
        session.execute(insert(table), rows)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    state: TxState | None = session.info.get(_TX_KEY)
    if state is not None:
        state.committed = True


@event.listens_for(Session, "after_transaction_create")
def _begin_savepoint(session: Session, transaction: Any) -> None:
    if transaction.nested:
        state = tx_state(session)
        state.savepoints[transaction] = state.mark()


@event.listens_for(Session, "after_soft_rollback")
def _end_of_savepoint(session: Session, previous_transaction: Any) -> None:
    state: TxState | None = session.info.get(_TX_KEY)
    if state is not None and previous_transaction.nested:
        state.forget(state.savepoints.pop(previous_transaction, state.mark()))


@event.listens_for(Session, "after_transaction_end")
def _end_of_transaction(session: Session, transaction: Any) -> None:
    """The whole transaction is over (committed or rolled back): its state goes, audit rows not written
    with it included (they were rolled back)."""
    if transaction.parent is not None:
        return
    state: TxState | None = session.info.pop(_TX_KEY, None)
    if state is not None and state.committed and state.purge_secrets:
        session.info[_TX_KEY] = TxState(purge_secrets=True)


# The statuses of a message that goes to the IMAP quarantine folder and waits for staff.
QUARANTINE_STATUSES = ("quarantined", "unmatched")


class Inbound(Base):
    __tablename__ = "inbound"
    __table_args__ = (
        UniqueConstraint("agency", "mailbox", "uidvalidity", "uid"),
        Index("ix_inbound_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    mailbox: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(Integer)
    uid: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    blob: Mapped[InboundRaw | None] = relationship(cascade="all, delete-orphan", lazy="joined")
    sender: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(String(16))
    # handled | answered | ignored | quarantined | unmatched | dropped
    status: Mapped[str] = mapped_column(String(16))
    handler: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    received_at: Mapped[datetime]
    handled_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    server_done: Mapped[bool] = mapped_column(Boolean, default=False)  # flagged/moved on the IMAP server

    @property
    def raw(self) -> bytes:
        """The message as it came (kept in `inbound_raw`)."""
        return self.blob.raw if self.blob is not None else b""

    @raw.setter
    def raw(self, value: bytes) -> None:
        if self.blob is None:
            self.blob = InboundRaw(raw=value)
        else:
            self.blob.raw = value


# A letter at least this large is written into SQLite through incremental blob I/O (sqlite3_blob_write)
# in pieces (workflows/rawmail.py). Bound as one value, SQLite copies it (SQLITE_TRANSIENT) and builds the
# record around another copy: a 27 MB scan cost the daemon 54 MB more than the letter itself
# (bench/backlog.py --memory).
BLOB_STREAM_MIN = 1 << 20


def store_inbound_raw(session: Session, row: Inbound, raw: RawMail) -> None:
    """Give `row` its bytes, and flush it. On SQLite a large letter is written in pieces (from its file,
    when it came as one), after the row holds a zeroblob of its size (which SQLite stores without building
    it in memory)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    if not sqlite or len(raw) < BLOB_STREAM_MIN:
        row.raw = whole(raw)
        session.flush()
        return
    row.blob = InboundRaw(raw=func.zeroblob(len(raw)))
    session.flush()
    dbapi = session.connection().connection.driver_connection
    assert dbapi is not None
    with dbapi.blobopen("inbound_raw", "raw", row.id) as blob:  # inbound_id is the table's rowid
        for piece in pieces(raw):
            blob.write(piece)
    if isinstance(raw, bytes):
        set_committed_value(row.blob, "raw", raw)  # what the row holds, without reading 27 MB back
    # From a file, it stays unloaded: read from the database if a handler asks (a reply's DKIM check).


def raw_in_memory(row: Inbound) -> bytes | None:
    """The row's bytes when this session holds them already, else None; never a read of the database (a
    letter stored from its file stays there: workflows/rawmail.py)."""
    blob = inspect(row).attrs.blob.loaded_value
    if not isinstance(blob, InboundRaw):
        return None
    value = inspect(blob).attrs.raw.loaded_value
    return value if isinstance(value, bytes) else None


def raw_head(session: Session, row: Inbound, n: int) -> bytes:
    """The first `n` bytes of the row's message (its header block), without reading the rest: a message
    over the size limit is exactly the one not to read whole."""
    held = raw_in_memory(row)
    if held is not None:
        return held[:n]
    found = session.execute(select(func.substr(InboundRaw.raw, 1, n)).where(InboundRaw.inbound_id == row.id))
    return bytes(found.scalar_one_or_none() or b"")


class InboundRaw(Base):
    """A message's bytes, apart from its row: written once. SQLite rewrites a whole record on any UPDATE,
    so a 27 MB letter inside `inbound` was copied again (in memory and in the WAL) each time its status
    changed (371 MB peak for five scanned letters)."""

    __tablename__ = "inbound_raw"

    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound.id", ondelete="CASCADE"), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class Outbox(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"), Index("ix_outbox_after", "after_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    purpose: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpts: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text)
    blob: Mapped[OutboxRaw | None] = relationship(cascade="all, delete-orphan", lazy="joined")
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)  # sealed at rest, scrubbed once sent
    # queued | sent | failed | held (over the daily cap) | waiting (for `after_id`) | dropped (by staff)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # A mail that must not leave before another one did (the PIC's credentials after the letter): it waits
    # with status "waiting" until that row is sent, and fails with it.
    after_id: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    @property
    def raw(self) -> bytes | None:
        """The mail's bytes (kept in `outbox_raw`); None once scrubbed."""
        return self.blob.raw if self.blob is not None else None

    @raw.setter
    def raw(self, value: bytes | None) -> None:
        if value is None:
            self.blob = None  # delete-orphan: the row goes, and secure_delete zeroes its pages
        elif self.blob is None:
            self.blob = OutboxRaw(raw=value)
        else:
            self.blob.raw = value


class OutboxRaw(Base):
    """A queued mail's bytes, apart from its row: the claim and the record of each attempt update the row,
    and SQLite would copy the bytes (the original letter attached) again with every update."""

    __tablename__ = "outbox_raw"

    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class MailboxState(Base):
    """Where intake stands in one IMAP folder: never re-read the whole mailbox (DESIGN flow 1)."""

    __tablename__ = "mailbox_state"

    agency: Mapped[str] = mapped_column(String(32), primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(Integer, default=0)
    last_uid: Mapped[int] = mapped_column(Integer, default=0)
    mode: Mapped[str | None] = mapped_column(String(16))  # idle | polling
    last_ok_at: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)  # in plain words, as the operator reads it
    alerted_at: Mapped[datetime | None]
    # A refused or throttled login: nobody logs in to this mailbox before this time (daemon/service.py).
    backoff_until: Mapped[datetime | None]


class Counter(Base):
    """Per-agency, per-year sequences: ticket numbers and letter numbers."""

    __tablename__ = "counters"

    agency: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class LetterRecord(Base):
    """The agency's register of outgoing letters (agenda surat keluar): one row per number, no gaps in a year.

    A number is taken in the transaction that records the letter, so a rolled-back letter gives its number
    back. The final letter's number is taken when its draft is made (status "konsep"); whichever reply
    letter then goes out for the request (the final one, or a rejection) is issued under it ("terkirim").
    """

    __tablename__ = "letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    year: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    number: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # final | rejection | incomplete
    status: Mapped[str] = mapped_column(String(16))  # konsep | terkirim
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    doc_id: Mapped[str] = mapped_column(String(32), unique=True)  # what the QR code's verification URL names
    hal: Mapped[str | None] = mapped_column(String(255))
    addressee: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    issued_at: Mapped[datetime | None]
    content_sha256: Mapped[str | None] = mapped_column(String(64))  # the PDF before signing (the QR's hash)
    pdf_sha256: Mapped[str | None] = mapped_column(String(64))  # the PDF as sent
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("agency", "year", "seq"),)


class Account(Base):
    """The hosting/DNS account made for a request; the password is never stored here."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"))
    username: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    # SHA-256 of the password (~115 bits of entropy, so unsalted is safe): lets intake blank it out of a
    # reply that quotes the letter, without keeping the password itself.
    secret_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    __table_args__ = (UniqueConstraint("agency", "username"),)


class PendingSecret(Base):
    """A password between its creation and the credential mail that delivers it, sealed with the key of
    `[secrets] key_file` (workflows/secretbox.py); deleted when that mail is queued (sealed too)."""

    __tablename__ = "pending_secrets"

    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class MailCount(Base):
    """Mail sent to one address per agency and day: the daily cap's counter, the last fence against a mail loop."""

    __tablename__ = "mail_counts"

    agency: Mapped[str] = mapped_column(String(32), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class SenderMailCount(Base):
    """Mail sent in one clock hour because of messages from unverified senders: per sender address
    (`scope` "sender"), per sender domain ("domain") and for the whole agency ("agency", key "*")."""

    __tablename__ = "sender_mail_counts"

    agency: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    hour: Mapped[str] = mapped_column(String(13), primary_key=True)  # "2026-12-06T07", UTC
    count: Mapped[int] = mapped_column(Integer, default=0)


class Delegation(Base):
    """An acting official (Plt/Plh) registered by the Kepala Dinas by mail, valid until a date."""

    __tablename__ = "delegations"

    id: Mapped[int] = mapped_column(primary_key=True)
    agency: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(8))  # Plt | Plh
    until: Mapped[datetime | None]
    registered_by: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str | None] = mapped_column(String(998))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class NoticeLog(Base):
    """Refusal notices sent, so a sender hears of one reason at most once a day (Discourse's rule)."""

    __tablename__ = "notices"
    __table_args__ = (UniqueConstraint("address", "reason", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(64))
    day: Mapped[str] = mapped_column(String(10))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT (SQLAlchemy docs, "Serializable isolation /
    # Savepoints / Transactional DDL"): let SQLAlchemy emit BEGIN itself.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets status/show read while the daemon writes; busy_timeout rides out short write locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # Deleted and overwritten content is zeroed, so a scrubbed password leaves no copy in free pages.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")


def writer_sessions(sessions: sessionmaker[Any]) -> sessionmaker[Any]:
    """The daemon's sessions. On SQLite each transaction takes the write lock at BEGIN (IMMEDIATE) and
    waits for it (busy_timeout): a deferred transaction that reads first and writes second fails at once
    with SQLITE_BUSY_SNAPSHOT when another of our connections (the outbox sender thread) committed in
    between, and no waiting can fix that. Readers elsewhere (`status`, `show`) keep plain BEGIN and, with
    WAL, never wait for the daemon."""
    bind = sessions.kw["bind"]
    if bind.dialect.name != "sqlite":
        return sessions
    return sessionmaker(bind.execution_options(sqlite_immediate=True), expire_on_commit=False)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """The engine for `url`; `readonly` (status, show: a read-only SQLite URI) leaves the journal mode alone,
    since setting it is a write."""
    # hide_parameters: a database error must not write a row's values (a password) into the log.
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_reader_pragmas if readonly else _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


def purge_freed_secrets(engine: Engine) -> None:
    """After a password was scrubbed: push old page images out of the database's side files.

    SQLite keeps pre-update pages in the WAL until a checkpoint; TRUNCATE copies the (securely deleted)
    pages home and empties the WAL. PostgreSQL keeps dead tuples until VACUUM reuses their space; we
    vacuum the two tables that held it (their bytes stay on disk until overwritten - see docs/SECURITY.md).
    """
    if engine.dialect.name == "sqlite":
        # On the raw connection (autocommit): inside a transaction the checkpoint could not truncate.
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cur.close()
            if busy and busy[0]:
                log.warning("WAL checkpoint busy; the scrubbed page images leave the WAL at the next one")
        finally:
            raw.close()
    elif engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM outbox, outbox_raw, pending_secrets")
