"""The engine's logic with in-memory stand-ins for IMAP, SMTP and DNS (pure logic; the real-server
path is covered by tests/test_e2e.py)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.localoffice import ACTORS, MAILBOX, make_config, reply_to, request_mail
from daemon.service import Daemon
from workflows.db import upgrade
from workflows.engine import Services
from workflows.provision import NoHosting, PlannedRecord
from workflows.store import Audit, Outbox, PendingSecret, Request, make_engine, make_sessionmaker


class ListSource:
    folder = "INBOX"
    mode = "polling"

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.marked: dict[int, bool] = {}

    def add(self, raw: bytes) -> None:
        self.messages.append(raw)

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def uidvalidity(self) -> int:
        return 1

    def fetch_new(self, last_uid: int, limit: int) -> list[tuple[int, bytes]]:
        return [(i + 1, m) for i, m in enumerate(self.messages) if i + 1 > last_uid][:limit]

    def mark_handled(self, uid: int, *, quarantine: bool) -> None:
        self.marked[uid] = quarantine

    def wait(self, timeout: float) -> bool:
        return False


class ListTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        self.sent.append((mail_from, list(rcpts), raw))

    def to(self, addr: str) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
                for _, rcpts, raw in self.sent if addr in rcpts]


class DictDns:
    zone = "trenggalekkab.go.id"

    def __init__(self) -> None:
        self.records: dict[str, PlannedRecord] = {}

    def existing(self, name: str) -> list[str]:
        r = self.records.get(name)
        return [r.line(self.zone)] if r else []

    def add(self, record: PlannedRecord) -> None:
        from workflows.provision import NameInUse
        if record.name in self.records:
            raise NameInUse(record.name)
        self.records[record.name] = record

    def remove(self, record: PlannedRecord) -> None:
        self.records.pop(record.name, None)

    def serving(self, record: PlannedRecord) -> dict[str, bool]:
        return {"fake": record.name in self.records}

    def name_servers(self) -> list[str]:
        return ["ns1.trenggalekkab.go.id", "ns2.trenggalekkab.go.id"]


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path)
    engine = make_engine(cfg.db_url)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    src, tr, dns_ = ListSource(), ListTransport(), DictDns()
    d = Daemon(cfg, sessions, transport=tr, sources={"trenggalek": src},
               services={"trenggalek": Services(dns=dns_, hosting=NoHosting())})
    return d, src, tr, dns_, sessions


def last_to(tr: ListTransport, addr: str) -> bytes:
    return [raw for _, rcpts, raw in tr.sent if addr in rcpts][-1]


def approve(d, src, tr, role: str, word: str = "SETUJU") -> None:  # type: ignore[no-untyped-def]
    addr = ACTORS[role][0]
    src.add(reply_to(last_to(tr, addr), addr, word))
    d.run_once()


def test_happy_path_reaches_final_reply(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.ticket.startswith("SD/")
    for role in ("kadis", "kabid", "kasi"):
        approve(d, src, tr, role)
    assert "dinsos" in dns_.records
    for role in ("kasi", "kabid", "kadis"):
        approve(d, src, tr, role)
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "konfigurasi"
    # The unit's IT admin answers the reply letter: first a KENDALA, then BERHASIL.
    src.add(reply_to(last_to(tr, "dinsos@example.org"), "dinsos@example.org",
                     "KENDALA\nServer kami 203.0.113.99 belum bisa diakses."))
    d.run_once()
    kasi_mails = tr.to(ACTORS["kasi"][0])
    assert any("KENDALA" in str(m["Subject"]) for m in kasi_mails)
    result = [m for m in tr.to("dinsos@example.org") if "pemeriksaan ulang" in str(m["Subject"])][-1]
    body = result.get_body(preferencelist=("plain",)).get_content()
    assert "BERBEDA" in body and "dilayani" in body
    src.add(reply_to(last_to(tr, "dinsos@example.org"), "dinsos@example.org", "BERHASIL, terima kasih."))
    d.run_once()
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.status == "done", [a.event for a in s.execute(select(Audit)).scalars()]
        assert s.execute(select(PendingSecret)).first() is None
        final = s.execute(select(Outbox).where(Outbox.purpose == "final")).scalar_one()
        assert final.raw is None and final.status == "sent"
    final_mail = [m for m in tr.to("dinsos@example.org") if "telah aktif" in str(m["Subject"])][-1]
    text = final_mail.get_body(preferencelist=("plain",)).get_content()
    assert "dinsos.trenggalekkab.go.id" in text and "203.0.113.10" in text
    assert "ns1.trenggalekkab.go.id" in text and "Kata sandi" in text


def test_tolak_sends_rejection_with_note(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    approve(d, src, tr, "kadis", "TOLAK\nNama tidak sesuai nomenklatur")
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().status == "rejected"
    rej = [m for m in tr.to("dinsos@example.org") if "dapat dipenuhi" in str(m["Subject"])]
    assert rej and "Nama tidak sesuai nomenklatur" in rej[0].get_body(preferencelist=("plain",)).get_content()


def test_stranger_reply_changes_nothing(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    src.add(reply_to(last_to(tr, ACTORS["kadis"][0]), "penyusup@example.net", "SETUJU"))
    n_before = len(tr.sent)
    d.run_once()
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "disposisi"
        assert s.execute(select(Audit).where(Audit.event == "mail.refused")).scalars().all()
    assert len(tr.sent) == n_before  # an unknown outsider is never answered
    assert MAILBOX


def test_batal_inside_the_undo_window_cancels_before_dns(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    d.config = d.config.model_copy(update={"workflow": d.config.workflow.model_copy(
        update={"undo_window_minutes": 10})})
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    for role in ("kadis", "kabid", "kasi"):
        approve(d, src, tr, role)
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "buat"
    echo = [raw for _, rcpts, raw in tr.sent if ACTORS["kasi"][0] in rcpts and b"Dicatat" in raw][-1]
    src.add(reply_to(echo, ACTORS["kasi"][0], "BATAL"))
    d.run_once()
    assert dns_.records == {}
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "periksa"
        assert s.execute(select(Audit).where(Audit.event == "decision.cancelled")).scalar_one()


def test_minta_formulir_is_answered_with_the_form_once_a_day(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    for _ in range(2):
        src.add(request_mail("dinkes@example.org", body="Dengan hormat, kami mohon dikirimkan formulir "
                             "pengajuan sub domain.\n\nTerima kasih."))
    d.run_once()
    answers = tr.to("dinkes@example.org")
    assert len(answers) == 1
    names = {p.get_filename() for p in answers[0].iter_attachments()}
    assert {"formulir-pengajuan-sub-domain.pdf", "formulir-pengajuan-sub-domain.docx"} <= names
    with sessions() as s:
        assert s.execute(select(Request)).first() is None
