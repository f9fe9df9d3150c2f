"""One pass from bytes to store (workflows/inbound.py): prepare, parse once, store, handle. A message is
parsed once, an over-limit one too (its rule reads the stored header block, not a second parse); a
message over a limit is a handler like the others, answered in Indonesian with its refusal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import lazyload

from subdomaind.daemon.config import parse_config
from subdomaind.daemon.parsing import InlineParser
from subdomaind.daemon.service import Daemon
from subdomaind.parsers import classify
from subdomaind.workflows import inbound
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.engine import Services
from subdomaind.workflows.handlers import HANDLERS, OverLimitHandler, UnreadableHandler, answerable_sender
from subdomaind.workflows.provision import PASSWORD_LENGTH, NoHosting
from subdomaind.workflows.rawmail import Spooled
from subdomaind.workflows.store import (
    Audit,
    Inbound,
    Outbox,
    Request,
    make_engine,
    make_sessionmaker,
    raw_head,
    raw_in_memory,
)
from tests.devkit.localoffice import MAILBOX, REQUEST_BODY, UNVOUCHED, config_data, request_mail
from tests.test_engine_unit import DictDns, ListSource, ListTransport

UNIT = "dinkes@example.org"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message `parsers.parse` reads, in order."""
    seen: list[bytes] = []
    real = classify.parse

    def counting(raw: bytes, options: Any = None) -> Any:
        seen.append(bytes(raw))
        return real(raw, options)

    monkeypatch.setattr(classify, "parse", counting)
    return seen


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Daemon, ListSource, ListTransport, Any]]:
    # A 50 kB attachment limit: the over-limit letters below are small to make.
    cfg = parse_config({**config_data(tmp_path, auth=UNVOUCHED), "limits": {"max_attachment_bytes": 50_000}})
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(cfg.db_url))
    sessions = make_sessionmaker(make_engine(cfg.db_url))
    src, tr = ListSource(), ListTransport()
    d = Daemon(cfg, sessions, transport=tr, sources={"trenggalek": src}, parser=InlineParser(),
               services={"trenggalek": Services(dns=DictDns(), hosting=NoHosting())})
    yield d, src, tr, sessions
    d.shutdown(flush_seconds=0)


def _too_large(sender: str = UNIT, size: int = 200_000, **headers: str) -> bytes:
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = sender, MAILBOX, "Permohonan sub domain dinkes"
    for name, value in headers.items():
        del big[name.replace("_", "-")]
        big[name.replace("_", "-")] = value
    big.set_content("Terlampir surat permohonan hasil pindai.")
    big.add_attachment(b"%PDF-1.4 " + b"x" * size, maintype="application", subtype="pdf", filename="surat.pdf")
    return big.as_bytes()


def test_a_request_is_parsed_once(world, parses: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    d, src, _tr, sessions = world
    letter = request_mail("dinsos@example.org")
    src.add(letter)
    d.run_once()
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().subdomain == "dinsos"
    assert parses == [letter]


def test_over_limit_is_parsed_once_and_answered_by_its_handler(world, parses: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, sessions = world
    src.add(_too_large())
    d.run_once()
    assert len(parses) == 1
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert (row.handler, row.status, row.sender) == ("over_limit", "answered", UNIT)
        assert "terlalu besar" in (row.error or "") and len(row.raw) > 200_000
        assert s.execute(select(Request)).first() is None
    with sessions() as s:
        # A letter stored from its file (over 1 MB) is not in memory: its header block is read alone.
        row = s.execute(select(Inbound).options(lazyload(Inbound.blob))).scalar_one()
        assert raw_head(s, row, 64) == _too_large()[:64] and raw_in_memory(row) is None
    answers = tr.to(UNIT)
    assert len(answers) == 1
    body = answers[0].get_body(preferencelist=("plain",)).get_content()
    assert "melebihi batas" in body
    # The same sender again that day: kept in quarantine with its reason, not answered twice.
    src.add(_too_large(Subject="lagi"))
    d.run_once()
    with sessions() as s:
        second = s.execute(select(Inbound).order_by(Inbound.id.desc())).scalars().first()
        assert second is not None and second.status == "quarantined" and "terlalu besar" in (second.error or "")
    assert len(tr.to(UNIT)) == 1 and len(parses) == 2


def test_over_limit_from_a_machine_is_kept_unanswered(world, parses: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, sessions = world
    src.add(_too_large("robot@example.org", Auto_Submitted="auto-generated"))
    d.run_once()
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert (row.handler, row.status) == ("over_limit", "quarantined")
        assert "mail.quarantined" in set(s.execute(select(Audit.event)).scalars())
    assert tr.to("robot@example.org") == [] and len(parses) == 1


def test_unreadable_rules_come_first() -> None:
    assert isinstance(HANDLERS[0], OverLimitHandler) and isinstance(HANDLERS[1], UnreadableHandler)
    assert answerable_sender(b"From: Budi <Budi@Example.org>\r\n\r\n") == "budi@example.org"
    assert answerable_sender(b"From: MAILER-DAEMON@example.org\r\n\r\n") is None
    assert answerable_sender(b"From: a@example.org\r\nX-Subdomaind-Loop: 1\r\n\r\n") is None
    assert answerable_sender(b"Subject: no sender\r\n\r\n") is None


def test_prepare_blanks_an_issued_password_before_the_stored_parse(world, parses: list[bytes],  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`prepare` is the step before the parse that is stored and handled: a letter quoting a password we
    issued is stored and parsed with it blanked; any other letter is returned as it is (the same object,
    so the parse made ahead is used)."""
    d, src, _tr, sessions = world
    password = "Kq7Xm2Tz9Wp4Rb6Nc8Vd"[:PASSWORD_LENGTH]
    issued = {hashlib.sha256(password.encode()).hexdigest()}
    monkeypatch.setattr(inbound, "_issued", lambda _ctx, digests: issued & set(digests))
    plain = request_mail("dinsos@example.org")
    with sessions() as s:
        assert inbound.prepare(d.ctx(s, d.config.agencies[0]), plain) is plain
    quoting = request_mail("dinsos@example.org", "jdih",
                           body=REQUEST_BODY.format(label="jdih", pic="dinsos@example.org")
                           + f"\n> Kata sandi: {password}\n")
    src.add(quoting)
    d.run_once()
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert password.encode() not in row.raw and b"*" * PASSWORD_LENGTH in row.raw
        req = s.execute(select(Request)).scalar_one()
        assert password not in str(req.fields)
    # The parse made ahead found it; the prepared bytes are what the handler saw.
    assert len(parses) == 2 and password.encode() not in parses[-1]


def test_over_limit_letter_in_a_file_is_answered_from_its_stored_header_block(  # type: ignore[no-untyped-def]
        world, parses: list[bytes], tmp_path: Path) -> None:
    """A large letter comes as a file and is stored from it, never whole in memory (workflows/rawmail.py);
    its over-limit answer reads the stored header block only."""
    d, _src, _tr, sessions = world
    path = tmp_path / "fetch-1.eml"
    path.write_bytes(_too_large(size=2_000_000))
    with sessions.begin() as s:
        row = inbound.ingest(d.ctx(s, d.config.agencies[0]), mailbox="INBOX", uidvalidity=1, uid=1,
                             raw=Spooled(path, path.stat().st_size))
        assert row is not None and (row.handler, row.status, row.sender) == ("over_limit", "answered", UNIT)
        assert raw_in_memory(row) is None
        notice = s.execute(select(Outbox).where(Outbox.purpose == "refusal.too_large")).scalar_one()
        assert notice.rcpts == [UNIT]
    assert len(parses) == 1
