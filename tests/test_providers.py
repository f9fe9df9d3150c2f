"""Mail provider presets and quirks: what `provider` sets, Gmail's labels-as-folders (one message seen
under two names is handled once), and IDLE re-issued within RFC 2177's 29 minutes."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from daemon.config import ImapConfig, OAuthConfig, SmtpConfig
from daemon.devservers import Bind, Dovecot, SmtpRelay
from daemon.localoffice import make_config, request_mail
from daemon.service import Daemon
from workflows.db import upgrade
from workflows.store import Inbound, Request, make_engine, make_sessionmaker


@pytest.mark.parametrize(("provider", "imap", "smtp"), [
    ("microsoft365", ("outlook.office365.com", 993, "implicit"), ("smtp.office365.com", 587, "starttls")),
    ("google", ("imap.gmail.com", 993, "implicit"), ("smtp.gmail.com", 587, "starttls")),
])
def test_provider_sets_host_port_and_tls(provider: str, imap: tuple[str, int, str], smtp: tuple[str, int, str]) -> None:
    i = ImapConfig.model_validate({"provider": provider, "user": "layanan@x.go.id", "password_file": "/p"})
    s = SmtpConfig.model_validate({"provider": provider, "user": "layanan@x.go.id", "password_file": "/p"})
    assert (i.host, i.port, i.tls) == imap and (s.host, s.port, s.tls) == smtp


def test_preset_gives_way_to_what_the_file_says() -> None:
    i = ImapConfig.model_validate({"provider": "google", "user": "u", "port": 1993, "processed_folder": "Selesai"})
    assert (i.host, i.port, i.processed_folder) == ("imap.gmail.com", 1993, "Selesai")
    assert ImapConfig.model_validate({"provider": "google", "user": "u"}).processed_folder is None
    z = ImapConfig.model_validate({"provider": "zimbra", "host": "mail.kab.go.id", "user": "u"})
    assert (z.port, z.tls) == (993, "implicit")
    with pytest.raises(ValidationError, match="host"):
        ImapConfig.model_validate({"provider": "zimbra", "user": "u"})  # Zimbra is the office's own server


def test_oauth_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"\[oauth\] table"):
        ImapConfig.model_validate({"provider": "microsoft365", "user": "u", "auth": "oauth2"})
    with pytest.raises(ValidationError, match="client_id"):
        OAuthConfig.model_validate({"provider": "microsoft365"})
    with pytest.raises(ValidationError, match="service_account"):
        OAuthConfig.model_validate({"provider": "microsoft365", "client_id": "x", "flow": "service_account"})
    with pytest.raises(ValidationError, match="token_url"):
        OAuthConfig.model_validate({"provider": "generic", "client_id": "x"})


def test_idle_is_reissued_within_29_minutes() -> None:
    """RFC 2177: a server may drop a client idle 30 minutes; the refresh is bounded below that."""
    assert ImapConfig.model_validate({"host": "h", "user": "u"}).idle_refresh_seconds == 600
    ImapConfig.model_validate({"host": "h", "user": "u", "idle_refresh_seconds": 1740})
    with pytest.raises(ValidationError):
        ImapConfig.model_validate({"host": "h", "user": "u", "idle_refresh_seconds": 1800})


@pytest.fixture
def office_daemon(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> Iterator[tuple[Daemon, Any, Any]]:
    mailbox = dovecot.new_user("layanan")
    base = Path(tempfile.mkdtemp(prefix="gmail-"))
    cfg = make_config(base, imap_port=dovecot.imap_port, imap_user=mailbox.name, imap_password=mailbox.password,
                      mailbox=mailbox.address, smtp_port=smtp_relay.port, dns_port=bind.port, tsig_secret=bind.secret)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    d = Daemon(cfg, sessions)
    yield d, mailbox, sessions
    d.shutdown(flush_seconds=1)


@pytest.mark.servers
def test_a_message_seen_under_two_labels_is_handled_once(office_daemon: tuple[Daemon, Any, Any],
                                                         dovecot: Dovecot) -> None:
    """Gmail shows each label as a folder: a message the office labels again (or moves back to the inbox)
    shows up in INBOX once more, under a new UID. It is the same letter: one request, and the copy is
    flagged done so that it is not fetched again."""
    d, mailbox, sessions = office_daemon
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
