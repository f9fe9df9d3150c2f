"""Scale-out on PostgreSQL: three daemon processes over four agencies, one killed mid-run.

Each mailbox is worked by one process at a time (advisory locks, taken over when a process dies) and
outbox rows are claimed with FOR UPDATE SKIP LOCKED. Every request must finish exactly once: one ticket
per letter, one final letter per request (a re-send after the kill carries the same Message-ID).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from daemon.devservers import Bind, Dovecot, Postgres, SmtpRelay
from daemon.localoffice import SUBDOMAIND, UNVOUCHED, Office, parse_mail, reply_to, write_config

pytestmark = pytest.mark.servers
AGENCIES = 4
PROCESSES = 3


def test_three_processes_four_agencies_one_killed(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind,
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
    try:
        for i, o in enumerate(offices):
            labels[i] = f"so{i}{secrets.token_hex(3)}"
            o.send_request(labels[i])
        answered: set[str] = set()
        confirmed: set[str] = set()
        killed = False
        deadline = time.monotonic() + 150
        engine = create_engine(url)
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
            if not killed and len(answered) >= AGENCIES * 2:
                procs[0].send_signal(signal.SIGKILL)  # mid-run, without warning
                killed = True
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
        assert killed
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
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
