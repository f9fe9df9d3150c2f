"""Soak: `kill -9` of the real daemon at 20 random moments while a backlog of requests and officials'
replies flows through it, restarting it each time.

Afterwards every request has exactly one ticket and went the whole way to the reply letter; every step
mail that should exist was sent and reached its official; a mail delivered twice carried the same
Message-ID both times (it is the same outbox row, re-sent after a crash between send and record); no
message was left unhandled in the mailbox and none was quarantined because of a crash.

Run with `make soak` (`pytest -m slow`); `make test` skips it. `SOAK_SEED=<n>` replays a run's kill
moments; `SOAK_KILLS` and `SOAK_REQUESTS` change its size.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from subdomaind.workflows.store import (
    Decision,
    Inbound,
    MailboxState,
    Outbox,
    Request,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tests.devkit.devservers import Bind, Dovecot, MailUser, Postgres, SmtpRelay
from tests.devkit.localoffice import SUBDOMAIND, UNVOUCHED, Office, parse_mail, reply_to

pytestmark = [pytest.mark.slow, pytest.mark.servers]

KILLS = int(os.environ.get("SOAK_KILLS", "20"))
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "8"))
DONE_FLAG = b"$SubdomaindDone"
# The approval steps of the Trenggalek SOP a request meets on its way to the reply letter.
APPROVALS = [("disposisi", "kadis"), ("disposisi_kabid", "kabid"), ("periksa", "kasi"),
             ("paraf_kasi", "kasi"), ("naik_kabid", "kabid"), ("naik_kadis", "kadis")]
# Every mail a request causes on that way, exactly once each.
PURPOSES = {"ack", "notify.terima", "final",
            *(f"step.{s}" for s, _ in APPROVALS), *(f"echo.{s}" for s, _ in APPROVALS)}


@pytest.fixture(autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("soak test: run with `make soak` (pytest -m slow)")


class Officials(threading.Thread):
    """The officials: each answers SETUJU to every step mail it gets, once per Message-ID (a mail client
    shows a re-sent copy with the same Message-ID as the same mail)."""

    def __init__(self, office: Office) -> None:
        super().__init__(name="officials", daemon=True)
        self.office = office
        self.stop = threading.Event()
        self.answered: dict[str, str] = {}  # step mail Message-ID -> role
        self.copies: Counter[str] = Counter()  # step mail Message-ID -> copies seen
        self.errors: list[str] = []
        self._last_uid: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.is_set():
            for role, user in self.office.officials.items():
                try:
                    self._answer(role, user)
                except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it at the end
                    self.errors.append(f"{role}: {type(exc).__name__}: {exc}")
            self.stop.wait(0.2)

    def _answer(self, role: str, user: MailUser) -> None:
        with user.imap() as c:
            c.select_folder("INBOX", readonly=True)
            uids = [u for u in c.search(["UID", f"{self._last_uid[role] + 1}:*"]) if u > self._last_uid[role]]
            if not uids:
                return
            data = c.fetch(uids, [b"BODY.PEEK[]"])
        for uid in sorted(uids):
            raw = bytes(data[uid][b"BODY[]"])
            self._last_uid[role] = uid
            msg = parse_mail(raw)
            if "Mohon keputusan" not in str(msg["Subject"]):
                continue
            mid = str(msg["Message-ID"]).strip()
            self.copies[mid] += 1
            if mid in self.answered:
                continue
            self.answered[mid] = role
            self.office.send(reply_to(raw, user.address, "SETUJU"), user.address)


def sent_requests(office: Office, labels: list[str]) -> dict[str, str]:
    """Send the backlog; label -> the letter's Message-ID."""
    out = {}
    for lb in labels:
        raw = office.send_request(lb)
        out[lb] = str(parse_mail(raw)["Message-ID"]).strip()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def office(request: pytest.FixtureRequest, tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay,
           bind: Bind) -> Iterator[Office]:
    url = None
    if request.param == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"soak_{secrets.token_hex(4)}")
    o = Office.create(tmp_path / "office", dovecot, smtp_relay, bind, database_url=url, auth=UNVOUCHED,
                      workflow={"daily_cap_per_address": 10000})
    yield o
    if o.proc is not None and o.proc.poll() is None:
        o.proc.kill()
        o.proc.wait(10)


def wait_first_pass(sessions: Any, office: Office, since: Any) -> None:
    """Until the daemon started at `since` finished an intake pass (or 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with sessions() as s:
                st = s.execute(select(MailboxState)).scalars().first()
        except Exception:  # noqa: BLE001 - before the first start's migrations there is no table yet
            st = None
        if st is not None and st.last_ok_at is not None and st.last_ok_at >= since:
            return
        if office.proc is not None and office.proc.poll() is not None:
            return
        time.sleep(0.05)


def start(office: Office) -> subprocess.Popen[bytes]:
    with (office.base / "daemon.log").open("ab") as log:
        office.proc = subprocess.Popen([str(SUBDOMAIND), "--config", str(office.config_path), "run"],
                                       stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return office.proc


def test_kill_9_at_random_moments_loses_and_repeats_nothing(office: Office, smtp_relay: SmtpRelay,
                                                            bind: Bind) -> None:
    seed = int(os.environ.get("SOAK_SEED", str(time.time_ns() % 1_000_000)))
    rnd = random.Random(seed)
    print(f"SOAK_SEED={seed}")
    from subdomaind.daemon.config import load_config

    engine = make_engine(load_config(office.config_path).db_url)
    sessions = make_sessionmaker(engine)
    labels = [f"soak{i}{secrets.token_hex(2)}" for i in range(REQUESTS)]
    officials = Officials(office)
    kills: list[tuple[float, int, int]] = []  # (seconds, messages taken in, mails queued) at each kill
    try:
        start(office)
        officials.start()
        letters = sent_requests(office, labels[: REQUESTS // 2])
        t0 = time.monotonic()
        for n in range(KILLS):
            spawned = utcnow()
            if n % 5 == 4:  # now and then during start-up (config, migrations, mailbox login)
                time.sleep(rnd.uniform(0.1, 1.5))
            else:  # mostly in the middle of work: after its first pass, at a random moment
                wait_first_pass(sessions, office, spawned)
                time.sleep(min(3.0, rnd.expovariate(1 / 1.0)))
            if n == KILLS // 4:  # more letters while replies are flowing
                letters.update(sent_requests(office, labels[REQUESTS // 2:]))
            assert office.proc is not None
            if office.proc.poll() is not None:
                raise AssertionError(f"the daemon died by itself ({office.proc.returncode}):\n{office.log()}")
            office.proc.send_signal(signal.SIGKILL)
            office.proc.wait(10)
            with sessions() as s:
                kills.append((round(time.monotonic() - t0, 2), len(s.execute(select(Inbound.id)).all()),
                              len(s.execute(select(Outbox.id).where(Outbox.status == "queued")).all())))
            start(office)
        # Let it finish the backlog in peace: every request's reply letter sent, the outbox empty.
        deadline = time.monotonic() + 240
        while True:
            with sessions() as s:
                finals = s.execute(select(Outbox).where(Outbox.purpose == "final", Outbox.status == "sent")).all()
                pending = s.execute(select(Outbox.id).where(Outbox.status == "queued")).all()
            if len(finals) >= REQUESTS and not pending:
                break
            if office.proc is None or office.proc.poll() is not None:
                raise AssertionError(f"the daemon died by itself:\n{office.log()}")
            if time.monotonic() > deadline:
                with sessions() as s:
                    stuck = [(r.ticket, r.subdomain, r.step) for r in s.execute(select(Request)).scalars()]
                raise AssertionError(f"backlog not done after the kills ({kills}); requests: {stuck}; "
                                     f"officials: {officials.errors}; log:\n{office.log()}")
            time.sleep(0.5)
        time.sleep(2)  # replies to the last echo mails, if any, taken in
        office.proc.send_signal(signal.SIGTERM)
        assert office.proc.wait(30) == 0
        office.proc = None
    finally:
        officials.stop.set()
        officials.join(10)

    assert officials.errors == [], officials.errors
    with sessions() as s:
        requests = list(s.execute(select(Request)).scalars())
        outbox = list(s.execute(select(Outbox)).scalars())
        inbound = list(s.execute(select(Inbound)).scalars())
        decisions = list(s.execute(select(Decision).where(Decision.accepted.is_(True))).scalars())
    engine.dispose()
    report = f"seed {seed}, kills at (s, taken in, queued): {kills}"

    # Every request exactly one ticket, and each went the whole way.
    by_source = Counter(r.source_message_id for r in requests)
    assert sorted(by_source) == sorted(letters.values()), report
    assert set(by_source.values()) == {1}, report
    assert len({r.ticket for r in requests}) == len(requests) == REQUESTS, report
    for r in requests:
        assert (r.status, r.step) == ("open", "konfigurasi"), (r.ticket, r.status, r.step, report)
        assert r.provisioned is not None, (r.ticket, report)
        assert bind.addresses(r.subdomain or "") == ["203.0.113.10"], (r.subdomain, report)
    per_request = Counter(d.request_id for d in decisions)
    assert set(per_request.values()) == {len(APPROVALS)}, (per_request, report)

    # Every mail that should exist was queued once and sent; nothing else was.
    rows = defaultdict(list)
    for row in outbox:
        rows[(row.request_id, row.purpose)].append(row)
    for r in requests:
        for purpose in PURPOSES:
            assert len(rows[(r.id, purpose)]) == 1, (r.ticket, purpose, len(rows[(r.id, purpose)]), report)
    extra = sorted({purpose for (_rid, purpose) in rows} - PURPOSES)
    assert extra == [], (extra, report)
    assert {row.status for row in outbox} == {"sent"}, report

    # What reached the relay: only those rows; a mail sent twice is the same row (same Message-ID, same
    # bytes), never a second mail with a new id.
    ours = [(rcpts, raw) for frm, rcpts, raw in list(smtp_relay.received) if frm == office.mailbox.address]
    delivered = Counter(str(parse_mail(raw)["Message-ID"]).strip() for _, raw in ours)
    ids = {row.message_id for row in outbox}
    assert set(delivered) == ids, (set(delivered) ^ ids, report)
    by_mail: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for rcpts, raw in ours:
        msg = parse_mail(raw)
        by_mail[(*sorted(rcpts), str(msg["Subject"]))].add(str(msg["Message-ID"]).strip())
    assert all(len(v) == 1 for v in by_mail.values()), ([v for v in by_mail.values() if len(v) > 1], report)
    twice = {m: n for m, n in delivered.items() if n > 1}
    print(f"{len(ours)} deliveries of {len(ids)} mails; sent twice after a crash: {len(twice)}")
    # Every step mail reached its official (at least once), and each was answered once.
    for r in requests:
        for step, role in APPROVALS:
            (row,) = rows[(r.id, f"step.{step}")]
            assert officials.answered.get(row.message_id) == role, (r.ticket, step, report)

    # No message left unhandled, none quarantined.
    expected_in = len(letters) + len(officials.answered)
    assert len(inbound) == expected_in, (len(inbound), expected_in, report)
    assert len({i.message_id for i in inbound}) == len(inbound), report
    assert Counter(i.status for i in inbound) == Counter({"handled": expected_in}), (
        [(i.subject, i.status, (i.error or "")[:200]) for i in inbound if i.status != "handled"], report)
    assert all(i.server_done for i in inbound), report
    with office.mailbox.imap() as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.fetch(c.search("ALL"), [b"FLAGS"])
    assert len(flags) == expected_in, report
    assert all(DONE_FLAG in v[b"FLAGS"] for v in flags.values()), report
    assert office.mailbox.messages("Karantina") == [], report
    log = (office.base / "daemon.log").read_text(errors="replace")
    assert not re.search(r"quarantined", log), report
    print(report)
