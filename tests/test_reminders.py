"""Reminders and escalations of overdue steps, with a frozen clock, across a weekend and a holiday."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import Config
from subdomaind.parsers.model import RequestFields
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.engine import Ctx, Services
from subdomaind.workflows.mailer import Mailer
from subdomaind.workflows.provision import NoHosting, PlannedRecord
from subdomaind.workflows.reminders import due_reminders, format_duration
from subdomaind.workflows.sop import load_sop
from subdomaind.workflows.store import Audit, Outbox, Request, StepRun, make_engine, make_sessionmaker
from subdomaind.workflows.worktime import WorkCalendar
from tests.devkit.localoffice import ACTORS, make_config

WIB = ZoneInfo("Asia/Jakarta")
CAL = WorkCalendar("Asia/Jakarta")
REQUESTER = "dinsos@example.org"
PIC = "lukman@example.org"


def wib(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=WIB)


class FrozenClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class NoDns:
    zone = "trenggalekkab.go.id"

    def existing(self, name: str) -> list[str]:
        return []

    def add(self, record: PlannedRecord) -> None: ...
    def remove(self, record: PlannedRecord) -> None: ...

    def serving(self, record: PlannedRecord) -> dict[str, bool]:
        return {}

    def name_servers(self) -> list[str]:
        return []


def make_ctx(session: Session, cfg: Config, clock: FrozenClock) -> Ctx:
    agency = cfg.agencies[0]
    return Ctx(
        session=session,
        config=cfg,
        agency=agency,
        sop=load_sop(agency.sop),
        mailer=Mailer(agency_id=agency.id, agency_name=agency.name, address=agency.address, zone=agency.zone,
                      clock=clock),
        services=Services(dns=NoDns(), hosting=NoHosting()),
        clock=clock,
    )


def seed_request(
    s: Session,
    *,
    ticket: str,
    step: str,
    kind: str,
    role: str | None,
    opened: datetime,
    subdomain: str = "dinsos",
    unit: str = "Dinas Sosial Kabupaten Trenggalek",
    status: str = "open",
    received: datetime | None = None,
    closed: datetime | None = None,
    step_status: str = "open",
    **fields: Any,
) -> tuple[Request, StepRun]:
    req = Request(
        agency="trenggalek", ticket=ticket, status=status, step=step, subdomain=subdomain, unit=unit,
        requester=REQUESTER,
        fields={**RequestFields().to_json(), "subdomain": subdomain, "unit": unit, "pic_name": "Lukman Hakim",
                "pic_email": PIC, "purpose": "Situs layanan bantuan sosial", **fields},
        source_message_id=f"<{ticket.replace('/', '.')}@example.org>",
        received_at=received or opened, updated_at=opened, closed_at=closed,
    )
    s.add(req)
    s.flush()
    run = StepRun(request_id=req.id, key=step, kind=kind, role=role, status=step_status, opened_at=opened,
                  mail_message_id=f"<step.{ticket.replace('/', '.')}.{step}@trenggalekkab.go.id>", attempts=0)
    s.add(run)
    s.flush()
    return req, run


@pytest.fixture
def office(tmp_path: Path) -> Iterator[tuple[Config, sessionmaker[Session]]]:
    cfg = make_config(tmp_path / "cfg")
    engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
    upgrade(engine)
    yield cfg, make_sessionmaker(engine)
    engine.dispose()


def run_pass(sessions: sessionmaker[Session], cfg: Config, clock: FrozenClock, at: datetime) -> int:
    clock.now = at
    with sessions.begin() as s:
        return due_reminders(make_ctx(s, cfg, clock), CAL, at)


def mails(sessions: sessionmaker[Session]) -> list[Outbox]:
    with sessions() as s:
        return list(s.execute(select(Outbox).order_by(Outbox.id)).scalars())


def parsed(row: Outbox) -> EmailMessage:
    assert row.raw is not None
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body(row: Outbox) -> str:
    part = parsed(row).get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


def events(sessions: sessionmaker[Session], event: str) -> list[Audit]:
    with sessions() as s:
        return list(s.execute(select(Audit).where(Audit.event == event).order_by(Audit.id)).scalars())


def test_across_17_agustus_reminder_then_escalation(office: tuple[Config, sessionmaker[Session]]) -> None:
    cfg, sessions = office
    clock = FrozenClock(wib(2026, 8, 14, 15, 30))
    with sessions.begin() as s:
        # Kabid's "1 jam" step opened Friday 14 Aug 15.30: 30 min on Friday; Monday 17 Aug is a holiday;
        # due Tuesday 18 Aug 08.00, escalated at 2 jam (09.00).
        seed_request(s, ticket="SD/2026/0001", step="disposisi_kabid", kind="approval", role="kabid",
                     opened=clock.now)
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 15, 10, 0)) == 0  # Saturday
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 17, 10, 0)) == 0  # Hari Kemerdekaan
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 7, 59)) == 0  # working, not yet due
    assert mails(sessions) == []

    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 8, 1)) == 1
    [reminder] = mails(sessions)
    assert reminder.rcpts == ACTORS["kabid"] and reminder.purpose == "reminder.disposisi_kabid"
    msg = parsed(reminder)
    assert "[SD/2026/0001] Pengingat: mohon keputusan" in str(msg["Subject"])
    assert msg["In-Reply-To"] == "<step.SD.2026.0001.disposisi_kabid@trenggalekkab.go.id>"
    text = body(reminder)
    assert "Yth. Kepala Bidang e-Government dan Statistik" in text
    assert "Batas waktu      : Selasa, 18 Agustus 2026 pukul 08.00 WIB" in text
    assert text.startswith("Mohon keputusan Bapak/Ibu: Meneruskan disposisi")
    assert "Lewat batas      : 1 menit" in text
    assert "SETUJU" in text and "TOLAK" in text
    [audit] = events(sessions, "step.reminded")
    assert audit.detail["to"] == ACTORS["kabid"] and audit.detail["step"] == "disposisi_kabid"

    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 8, 30)) == 0  # not twice the same day
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 9, 0)) == 0  # exactly 2x: not yet past
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 9, 1)) == 1  # past 2x: escalation only
    escalation = mails(sessions)[-1]
    assert escalation.rcpts == ACTORS["kadis"] and escalation.purpose == "escalation.disposisi_kabid"
    text = body(escalation)
    assert "Yth. Kepala Dinas Komunikasi dan Informatika" in text
    # The official by jabatan, never by mailbox address.
    assert "Pejabat          : Kepala Bidang e-Government dan Statistik" in text
    assert "kabid@trenggalekkab.go.id" not in text and "tidak perlu dibalas" in text
    assert "CARA MENJAWAB" not in text
    assert "Eskalasi" in str(parsed(escalation)["Subject"])
    assert len(events(sessions, "step.escalated")) == 1

    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 15, 0)) == 0
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 18, 17, 0)) == 0  # after closing
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 19, 6, 0)) == 0  # before opening
    # The next working day: both again, once.
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 19, 7, 30)) == 2
    assert [m.purpose for m in mails(sessions)[-2:]] == ["reminder.disposisi_kabid", "escalation.disposisi_kabid"]
    assert run_pass(sessions, cfg, clock, wib(2026, 8, 19, 11, 0)) == 0
    with sessions() as s:
        run = s.execute(select(StepRun)).scalar_one()
        assert run.reminded_at == wib(2026, 8, 19, 7, 30) and run.escalated_at == wib(2026, 8, 19, 7, 30)


def test_across_a_weekend_top_role_is_never_escalated(office: tuple[Config, sessionmaker[Session]]) -> None:
    cfg, sessions = office
    clock = FrozenClock(wib(2026, 11, 6, 10, 0))
    with sessions.begin() as s:
        # Kadis's "1 hari" from Friday 6 Nov 10.00: due Monday 9 Nov 10.00.
        seed_request(s, ticket="SD/2026/0002", step="disposisi", kind="approval", role="kadis", opened=clock.now)
    for at in (wib(2026, 11, 6, 15, 59), wib(2026, 11, 7, 10, 30), wib(2026, 11, 8, 10, 30),
               wib(2026, 11, 9, 7, 30), wib(2026, 11, 9, 10, 0)):
        assert run_pass(sessions, cfg, clock, at) == 0, at
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 9, 10, 1)) == 1
    assert mails(sessions)[-1].rcpts == ACTORS["kadis"]
    # Past 2x (Tuesday 10.00): Kadis has no superior in the SOP, so only the daily reminder.
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 10, 10, 30)) == 1
    assert [m.purpose for m in mails(sessions)] == ["reminder.disposisi", "reminder.disposisi"]
    assert events(sessions, "step.escalated") == []


def test_requester_wait_reminds_the_requester_and_never_escalates(
    office: tuple[Config, sessionmaker[Session]],
) -> None:
    cfg, sessions = office
    clock = FrozenClock(wib(2026, 11, 9, 9, 0))
    with sessions.begin() as s:
        seed_request(s, ticket="SD/2026/0003", step="lengkapi_awal", kind="wait_requester", role="pemohon",
                     opened=clock.now, check={"missing": ["pic_phone"], "problems": [
                         {"field": "subdomain", "reason": "Nama sub domain 'dinsos' sudah terdaftar di DNS."}]})
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 11, 9, 0)) == 0  # "2 hari": due Wed 09.00
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 11, 9, 1)) == 1
    [m] = mails(sessions)
    assert m.rcpts == sorted([REQUESTER, PIC])
    text = body(m)
    assert "Yth. Bapak/Ibu pengirim permohonan" in text
    assert "Nomor HP Penanggung Jawab: belum diisi." in text and "sudah terdaftar di DNS" in text
    assert "menunggu kelengkapan" in str(parsed(m)["Subject"])
    # Friday 13 Nov, past 2x: the requester hears again; no official ever does.
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 13, 10, 0)) == 1
    officials = {a for addrs in ACTORS.values() for a in addrs}
    assert all(not officials & set(m.rcpts) for m in mails(sessions))
    assert events(sessions, "step.escalated") == []


def test_closed_steps_and_requests_are_left_alone(office: tuple[Config, sessionmaker[Session]]) -> None:
    cfg, sessions = office
    opened = wib(2026, 11, 2, 9, 0)
    with sessions.begin() as s:
        seed_request(s, ticket="SD/2026/0004", step="periksa", kind="approval", role="kasi", opened=opened,
                     step_status="done")
        seed_request(s, ticket="SD/2026/0005", step="periksa", kind="approval", role="kasi", opened=opened,
                     status="rejected", subdomain="lain")
        seed_request(s, ticket="SD/2026/0006", step="buat", kind="action", role=None, opened=opened,
                     subdomain="aksi")
    assert run_pass(sessions, cfg, FrozenClock(opened), wib(2026, 11, 20, 10, 0)) == 0


def test_format_duration() -> None:
    assert format_duration(0, 510) == "0 menit"
    assert format_duration(15, 510) == "15 menit"
    assert format_duration(65, 510) == "1 jam 5 menit"
    assert format_duration(510 + 125, 510) == "1 hari 2 jam"
    assert format_duration(3 * 510, 510) == "3 hari"


def test_silent_wait_after_the_letter_asks_berhasil_or_kendala(office: tuple[Config, sessionmaker[Session]]) -> None:
    cfg, sessions = office
    clock = FrozenClock(wib(2026, 11, 2, 10, 0))
    with sessions.begin() as s:
        # "konfigurasi" (5 hari) sends no mail of its own: the reply letter told the admin how to answer.
        req, run = seed_request(s, ticket="SD/2026/0007", step="konfigurasi", kind="wait_requester", role="pemohon",
                                opened=clock.now)
        run.mail_message_id = None
        s.add(Outbox(agency="trenggalek", request_id=req.id, purpose="final", message_id="<final.0007@x>",
                     mail_from="layanan@trenggalekkab.go.id", rcpts=[REQUESTER, PIC], subject="Sub domain aktif",
                     raw=None, status="sent", attempts=1, next_attempt_at=clock.now, created_at=clock.now))
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 9, 10, 0)) == 0  # due Monday 9 Nov 10.00
    assert run_pass(sessions, cfg, clock, wib(2026, 11, 9, 10, 1)) == 1
    m = [r for r in mails(sessions) if r.purpose.startswith("reminder")][0]
    assert m.rcpts == sorted([REQUESTER, PIC])
    assert parsed(m)["In-Reply-To"] == "<final.0007@x>"
    text = body(m)
    assert "menunggu tanggapan dari Saudara" in text
    assert "BERHASIL" in text and "KENDALA" in text and "belum diisi" not in text
    assert "menunggu tanggapan" in str(parsed(m)["Subject"])
