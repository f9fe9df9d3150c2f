"""Intake against real Dovecot and a real SMTP relay: TLS, quarantine, checkpoints, duplicates, recovery."""

from __future__ import annotations

import email
import email.policy
import tempfile
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from subdomaind.daemon.config import ImapConfig, SmtpConfig
from subdomaind.daemon.mailbox import ImapSource, MailSourceError
from subdomaind.daemon.outbox import SendError, SmtpTransport
from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.rawmail import Spooled
from subdomaind.workflows.store import Audit, Inbound, MailboxState, Request, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, MailUser, SmtpRelay
from tests.devkit.localoffice import UNVOUCHED, make_config, request_mail

pytestmark = pytest.mark.servers


def _note(text: str) -> bytes:
    m = EmailMessage()
    m["From"] = "a@example.org"
    m["To"] = "b@example.org"
    m["Subject"] = text
    m.set_content(text)
    return m.as_bytes()


def test_imap_starttls_verifies_the_server(dovecot_tls: Dovecot) -> None:
    user = dovecot_tls.new_user("tls")
    dovecot_tls.append(user.name, _note("halo"))
    cfg = ImapConfig(host="127.0.0.1", port=dovecot_tls.imap_port, user=user.name, tls="starttls",
                     ca_file=dovecot_tls.ca_file, password_env="UNUSED")
    src = ImapSource(cfg, user.password)
    src.connect()
    try:
        assert [uid for uid, _ in src.fetch_new(0, 10)] == [1]
    finally:
        src.close()
    # Without the test CA the certificate cannot be verified: refused, never silently accepted.
    unverified = ImapSource(cfg.model_copy(update={"ca_file": None}), user.password)
    with pytest.raises(MailSourceError):
        unverified.connect()


def test_large_message_is_fetched_in_pieces_into_a_spool_file(dovecot: Dovecot, tmp_path: Path) -> None:
    """A message over PIECE_BYTES comes in 1 MB partial fetches (RFC 3501 6.4.5) into a file under the
    spool directory, which the daemon never reads whole (workflows/rawmail.py): byte for byte what the
    server holds, readable by nobody else, and gone when discarded."""
    import os

    from subdomaind.daemon.mailbox import PIECE_BYTES

    user = dovecot.new_user("besar")
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@example.org", "b@example.org", "lampiran besar"
    m.set_content("lihat lampiran")
    m.add_attachment(os.urandom(2 * PIECE_BYTES + 12345), maintype="application", subtype="pdf", filename="x.pdf")
    small = _note("kecil")
    dovecot.append(user.name, small)
    dovecot.append(user.name, m.as_bytes())
    cfg = ImapConfig(host="127.0.0.1", port=dovecot.imap_port, user=user.name, tls="none", password_env="UNUSED")
    src = ImapSource(cfg, user.password, tmp_path / "spool")
    src.connect()
    try:
        (uid1, got1), (uid2, got2) = src.fetch_new(0, 10)
        stored = user.messages()
    finally:
        src.close()
    assert (uid1, uid2) == (1, 2) and len(got2) > 2 * PIECE_BYTES
    assert isinstance(got1, bytes) and isinstance(got2, Spooled)
    assert [got1, got2.read()] == stored and len(got2) == len(stored[1])
    assert list((tmp_path / "spool").iterdir()) == [got2.path]
    assert got2.path.name.startswith("fetch-") and got2.path.stat().st_mode & 0o777 == 0o600
    got2.discard()
    assert list((tmp_path / "spool").iterdir()) == []


def test_smtp_starttls_verifies_the_server(smtp_relay_tls: SmtpRelay, unique_user: MailUser) -> None:
    cfg = SmtpConfig(host="127.0.0.1", port=smtp_relay_tls.port, tls="starttls", ca_file=smtp_relay_tls.ca_file)
    SmtpTransport(cfg, None).send("layanan@trenggalekkab.go.id", [unique_user.address], _note("lewat TLS"))
    assert any(b"lewat TLS" in raw for raw in unique_user.messages())
    with pytest.raises(SendError):
        SmtpTransport(cfg.model_copy(update={"ca_file": None}), None).send(
            "layanan@trenggalekkab.go.id", [unique_user.address], _note("tanpa CA"))


@pytest.fixture
def daemon_on(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind):  # type: ignore[no-untyped-def]
    mailbox = dovecot.new_user("layanan")
    base = Path(tempfile.mkdtemp(prefix="intake-"))
    cfg = make_config(base, imap_port=dovecot.imap_port, imap_user=mailbox.name, imap_password=mailbox.password,
                      mailbox=mailbox.address, smtp_port=smtp_relay.port, dns_port=bind.port,
                      tsig_secret=bind.secret, auth=UNVOUCHED)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    d = Daemon(cfg, sessions)
    yield d, mailbox, sessions
    d.shutdown(flush_seconds=1)


def test_unreadable_message_is_quarantined_and_the_next_is_handled(daemon_on, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    d, mailbox, sessions = daemon_on
    dovecot.append(mailbox.name, b"\x00\x01 bukan surel sama sekali \xff\xfe")
    dovecot.append(mailbox.name, request_mail("dinsos@trenggalekkab.go.id", "dinsosq", to=mailbox.address))
    d.run_once()
    with sessions() as s:
        rows = s.execute(select(Inbound).order_by(Inbound.uid)).scalars().all()
        assert [r.status for r in rows] == ["quarantined", "handled"]
        assert rows[0].error and b"bukan surel" in rows[0].raw  # Dovecot stores NUL as 0x80
        assert s.execute(select(Request)).scalar_one().subdomain == "dinsosq"
        assert s.execute(select(MailboxState)).scalar_one().last_uid == 2
    assert len(dovecot.messages(mailbox.name, "Karantina")) == 1
    inbox = mailbox.imap()
    inbox.select_folder("INBOX")
    assert inbox.search(["KEYWORD", "$SubdomaindDone"]) == [2]
    inbox.logout()
    # A second pass re-reads nothing: the checkpoint holds, and nothing is handled twice.
    d.run_once()
    with sessions() as s:
        assert len(s.execute(select(Inbound)).scalars().all()) == 2


def test_large_letter_goes_from_its_spool_file_into_the_database(daemon_on, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    """A letter over PIECE_BYTES is fetched into a file, parsed by a worker from that file and stored from
    it in pieces (workflows/rawmail.py): handled as any other, stored byte for byte, its file then gone."""
    import hashlib
    import os

    from subdomaind.daemon.mailbox import PIECE_BYTES

    d, mailbox, sessions = daemon_on
    msg = email.message_from_bytes(request_mail("dinsos@trenggalekkab.go.id", "dinsosbesar", to=mailbox.address),
                                   policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(os.urandom(PIECE_BYTES * 2 + 777), maintype="application", subtype="pdf",
                       filename="pindaian_surat.pdf")
    dovecot.append(mailbox.name, msg.as_bytes())
    [stored] = dovecot.messages(mailbox.name)
    d.run_once()
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert row.status == "handled" and row.sha256 == hashlib.sha256(stored).hexdigest()
        assert row.raw == stored
        assert s.execute(select(Request)).scalar_one().subdomain == "dinsosbesar"
    assert list(d.spool_dir.iterdir()) == []


def test_same_message_id_twice_is_handled_once(daemon_on, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    d, mailbox, sessions = daemon_on
    raw = request_mail("dinsos@trenggalekkab.go.id", "dinsosd", to=mailbox.address)
    dovecot.append(mailbox.name, raw)
    dovecot.append(mailbox.name, raw)
    d.run_once()
    with sessions() as s:
        assert len(s.execute(select(Request)).scalars().all()) == 1
        assert s.execute(select(Audit).where(Audit.event == "mail.duplicate")).scalars().first() is not None


def test_mark_lost_after_commit_is_finished_on_the_next_pass(daemon_on, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    d, mailbox, sessions = daemon_on
    dovecot.append(mailbox.name, request_mail("dinsos@trenggalekkab.go.id", "dinsosm", to=mailbox.address))
    rt = d.runtimes["trenggalek"]
    real_mark = rt.source.mark_handled
    calls = {"n": 0}

    def failing_mark(uids: list[int], *, quarantine: bool) -> None:
        calls["n"] += 1
        raise MailSourceError("koneksi terputus")

    rt.source.mark_handled = failing_mark  # type: ignore[method-assign]
    d.run_once()
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert row.status == "handled" and row.server_done is False
    rt.source.mark_handled = real_mark  # type: ignore[method-assign]
    rt.backoff_until = 0
    d.run_once()
    with sessions() as s:
        assert s.execute(select(Inbound)).scalar_one().server_done is True
        assert len(s.execute(select(Request)).scalars().all()) == 1
    assert calls["n"] == 1


def test_over_limit_mail_is_answered_in_indonesian_and_kept(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    mailbox = dovecot.new_user("layanan")
    unit = dovecot.new_user("dinkes")
    base = Path(tempfile.mkdtemp(prefix="limit-"))
    from subdomaind.daemon.config import parse_config
    from tests.devkit.localoffice import config_data

    data = config_data(base, imap_port=dovecot.imap_port, imap_user=mailbox.name, imap_password=mailbox.password,
                       mailbox=mailbox.address, smtp_port=smtp_relay.port, dns_port=bind.port,
                       tsig_secret=bind.secret, auth=UNVOUCHED)
    data["limits"] = {"max_attachment_bytes": 50_000}
    cfg = parse_config(data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = unit.address, mailbox.address, "Permohonan sub domain dinkes"
    big.set_content("Terlampir surat permohonan hasil pindai.")
    big.add_attachment(b"%PDF-1.4 " + b"x" * 200_000, maintype="application", subtype="pdf", filename="surat.pdf")
    dovecot.append(mailbox.name, big.as_bytes())
    d = Daemon(cfg, sessions)
    d.run_once()
    d.shutdown(flush_seconds=2)
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert row.status == "answered" and "terlalu besar" in (row.error or "") and len(row.raw) > 200_000
        assert s.execute(select(Request)).first() is None
    answers = unit.messages()
    assert len(answers) == 1 and b"melebihi batas" in answers[0].replace(b"=\r\n", b"").replace(b"=\n", b"")


def test_intake_failing_alerts_staff_once_and_status_shows_it(dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                              bind: Bind) -> None:
    from datetime import timedelta

    from subdomaind.daemon.cli import status_data
    from tests.devkit.devservers import free_port

    staff = dovecot.new_user("staf")
    base = Path(tempfile.mkdtemp(prefix="down-"))
    from subdomaind.daemon.config import parse_config
    from tests.devkit.localoffice import config_data

    data = config_data(base, imap_port=free_port(), smtp_port=smtp_relay.port, dns_port=bind.port,
                       tsig_secret=bind.secret, staff=[staff.address], workflow={"intake_alert_minutes": 1})
    data["agency"][0]["imap"]["idle"] = False
    cfg = parse_config(data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    now = [datetime.now(UTC)]
    d = Daemon(cfg, sessions, clock=lambda: now[0])
    rt = d.runtimes["trenggalek"]
    for minutes in (0, 2, 5):  # nothing listens on that port: intake fails for five minutes
        now[0] = now[0] + timedelta(minutes=minutes)
        rt.backoff_until = 0
        d.run_once()
    d.shutdown(flush_seconds=2)
    alerts = [m for m in staff.messages() if b"tidak dapat dibaca sejak" in m.replace(b"=\r\n", b"")]
    assert len(alerts) == 1
    intake = status_data(cfg, sessions)["intake"][0]
    assert intake["failing_since"] and intake["last_error"]


def test_a_message_seen_under_two_labels_is_handled_once(daemon_on, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    """Gmail shows each label as a folder: a message the office labels again (or moves back to the inbox)
    shows up in INBOX once more, under a new UID. It is the same letter: one request, and the copy is
    flagged done so that it is not fetched again."""
    d, mailbox, sessions = daemon_on
    raw = request_mail("dinsos@trenggalekkab.go.id", "dinsoslabel", to=mailbox.address)
    dovecot.append(mailbox.name, raw, folder="Archive")  # the label the office filed it under
    dovecot.append(mailbox.name, raw)
    d.run_once()
    dovecot.append(mailbox.name, raw)  # labelled "Inbox" again by someone in the office
    d.run_once()
    with sessions() as s:
        assert len(s.execute(select(Request)).scalars().all()) == 1
        rows = s.execute(select(Inbound)).scalars().all()
        assert len(rows) == 1 and rows[0].uid == 1
    with mailbox.imap() as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.get_flags(c.search("ALL"))
    assert len(flags) == 2 and all(b"$SubdomaindDone" in f for f in flags.values())
    assert len(dovecot.messages(mailbox.name, "Archive")) == 1  # the other label is left alone
