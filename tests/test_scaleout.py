"""Scale-out on PostgreSQL: three daemon processes over forty agencies, one killed mid-run.

Each mailbox is worked by one process at a time (leases: advisory locks on one connection per process,
shared evenly, taken over when a process dies) and outbox rows are claimed with FOR UPDATE SKIP LOCKED.
Each process holds 25-42 % of the agencies; a killed process's agencies are held again within 30 s; the
survivors stop on SIGTERM within the unit's TimeoutStopSec. Every request must finish exactly once: one
ticket per letter, one final letter per request (a re-send after the kill carries the same Message-ID).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from tests.devkit.devservers import Bind, Dovecot, Postgres, SmtpRelay
from tests.devkit.localoffice import SUBDOMAIND, UNVOUCHED, Office, parse_mail, reply_to, write_config

pytestmark = pytest.mark.servers
AGENCIES = 40
PROCESSES = 3
TAKEOVER_SECONDS = 30
STOP_SECONDS = 30  # systemd/subdomaind.service TimeoutStopSec

LEASES = text(
    "SELECT a.pid, count(l.pid) AS held FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid"
    " AND l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
    " WHERE a.application_name = 'subdomaind-leases' AND a.datname = current_database() GROUP BY a.pid")


def leases(engine: Engine) -> dict[int, int]:
    """Agencies held by each daemon process's lease connection."""
    with engine.connect() as c:
        return {int(r.pid): int(r.held) for r in c.execute(LEASES)}


def wait_for(engine: Engine, ok: Callable[[dict[int, int]], bool], seconds: float) -> tuple[dict[int, int], float]:
    start = time.monotonic()
    held = leases(engine)
    while not ok(held) and time.monotonic() - start < seconds:
        time.sleep(0.5)
        held = leases(engine)
    return held, time.monotonic() - start


def test_three_processes_forty_agencies_one_killed(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind,
                                                  postgres: Postgres) -> None:
    url = postgres.create_database(f"scale_{secrets.token_hex(4)}")
    base = Path(tempfile.mkdtemp(prefix="scaleout-"))
    offices = [Office.create(base / f"ag{i}", dovecot, smtp_relay, bind, agency_id=f"ag{i}", database_url=url,
                             auth=UNVOUCHED)
               for i in range(AGENCIES)]
    data = dict(offices[0].data)
    data["agency"] = [o.data["agency"][0] for o in offices]
    config = write_config(base / "all.toml", data)
    procs = [subprocess.Popen([str(SUBDOMAIND), "--config", str(config), "run"],
                              stdout=(base / f"d{n}.log").open("wb"), stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) for n in range(PROCESSES)]
    labels = {}
    engine = create_engine(url)
    try:
        # Shared evenly: each process between 25 % and 42 % of the agencies, all of them held.
        def balanced(held: dict[int, int]) -> bool:
            return (len(held) == PROCESSES and sum(held.values()) == AGENCIES
                    and all(0.25 * AGENCIES <= n <= 0.42 * AGENCIES for n in held.values()))
        held, _t = wait_for(engine, balanced, 90)
        assert balanced(held), (held, (base / "d0.log").read_text(errors="replace")[-3000:])
        for i, o in enumerate(offices):
            labels[i] = f"so{i}{secrets.token_hex(3)}"
            o.send_request(labels[i])
        answered: set[str] = set()
        confirmed: set[str] = set()
        killed = False
        takeover = None
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            for o in offices:
                for user in o.officials.values():
                    for raw in user.messages():
                        m = parse_mail(raw)
                        mid = str(m["Message-ID"])
                        if "Mohon keputusan" in str(m["Subject"]) and mid not in answered:
                            answered.add(mid)
                            o.send(reply_to(raw, user.address, "SETUJU"), user.address)
                for raw in o.requester.messages():
                    m = parse_mail(raw)
                    mid = str(m["Message-ID"])
                    if "telah aktif" in str(m["Subject"]) and mid not in confirmed:
                        confirmed.add(mid)
                        o.send(reply_to(raw, o.requester.address, "BERHASIL"), o.requester.address)
            if not killed and len(answered) >= AGENCIES:
                procs[0].send_signal(signal.SIGKILL)  # mid-run, without warning
                killed = True
                # The survivors hold every agency again, evenly, within the bound.
                held, takeover = wait_for(
                    engine, lambda h: len(h) == PROCESSES - 1 and sum(h.values()) == AGENCIES, TAKEOVER_SECONDS + 5)
                assert takeover <= TAKEOVER_SECONDS and sum(held.values()) == AGENCIES, (held, takeover)
            try:
                with engine.connect() as c:
                    done = c.execute(text("SELECT count(*) FROM requests WHERE status = 'done'")).scalar_one()
            except ProgrammingError:
                done = 0  # the daemons have not created the schema yet
            if done == AGENCIES:
                break
            time.sleep(0.3)
        with engine.connect() as c:
            rows = c.execute(text("SELECT agency, ticket, status, source_message_id FROM requests")).all()
            finals = c.execute(text("SELECT request_id, message_id FROM outbox WHERE purpose = 'final'")).all()
        logs = "\n".join((base / f"d{n}.log").read_text(errors="replace")[-3000:] for n in range(PROCESSES))
        assert killed and takeover is not None
        # SIGTERM: each survivor stops within TimeoutStopSec, whatever the number of agencies.
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        began = time.monotonic()
        for p in procs[1:]:
            assert p.wait(timeout=STOP_SECONDS + 5) == 0, logs
        assert time.monotonic() - began <= STOP_SECONDS, logs
        assert len(rows) == AGENCIES, logs
        assert all(r.status == "done" for r in rows), (rows, logs)
        assert len({r.source_message_id for r in rows}) == AGENCIES  # one ticket per letter
        assert len(finals) == AGENCIES and len({f.request_id for f in finals}) == AGENCIES
        for i, o in enumerate(offices):
            got = [parse_mail(r) for r in o.requester.messages()]
            final_ids = {str(m["Message-ID"]) for m in got if "telah aktif" in str(m["Subject"])}
            assert len(final_ids) == 1, (i, final_ids)  # any re-send carried the same Message-ID
            assert o.bind.addresses(labels[i]) == ["203.0.113.10"]
    finally:
        engine.dispose()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
