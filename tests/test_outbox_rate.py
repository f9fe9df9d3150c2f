"""The outbox keeps to `[smtp] max_per_minute` toward the office MTA, counted from what went out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from subdomaind.daemon.config import load_config
from subdomaind.daemon.outbox import SmtpTransport, drain
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.mailer import Mailer
from subdomaind.workflows.store import Outbox, make_engine, make_sessionmaker
from tests.devkit.devservers import Dovecot, SmtpRelay
from tests.devkit.localoffice import config_data, write_config


def test_outbox_sends_no_more_than_max_per_minute(tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay) -> None:
    office, unit = dovecot.new_user("layanan"), dovecot.new_user("unit")
    cfg = load_config(write_config(tmp_path / "c.toml", config_data(
        tmp_path, imap_port=dovecot.imap_port, imap_user=office.name, imap_password=office.password,
        mailbox=office.address, smtp_port=smtp_relay.port)))
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    now = [datetime.now(UTC)]
    mailer = Mailer(agency_id="trenggalek", agency_name="Diskominfo", address=office.address,
                    zone="trenggalekkab.go.id", clock=lambda: now[0], daily_cap=100)
    with sessions.begin() as s:
        for n in range(7):
            mailer.queue(s, to=[unit.address], template="staff_alert", purpose="ack", ticket=f"SD/2026/000{n}",
                         context={"ticket": f"SD/2026/000{n}", "problem": f"uji {n}", "subdomain": "dinsos"})
    transport = SmtpTransport(cfg.smtp, None)
    try:
        first = drain(sessions, transport, lambda: now[0], per_minute=3)
        again = drain(sessions, transport, lambda: now[0], per_minute=3)  # the same minute: nothing more
        now[0] += timedelta(seconds=61)
        later = drain(sessions, transport, lambda: now[0], per_minute=3)
        rest = drain(sessions, transport, lambda: now[0])  # no limit: the rest at once
    finally:
        transport.close()
    assert (first["sent"], again["sent"], later["sent"], rest["sent"]) == (3, 0, 3, 1)
    with sessions() as s:
        assert all(o.status == "sent" for o in s.execute(select(Outbox)).scalars())
    assert len(unit.messages()) == 7  # each one delivered, once
