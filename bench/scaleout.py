"""Scale-out on PostgreSQL: throughput of two daemon processes against one, on a two-agency backlog.

Each run gets a fresh database and fresh mailboxes holding the same backlog (request letters with the
form in the body) for two agencies; the real `subdomaind run` processes work it until every message is
handled and every resulting mail accepted by the SMTP server. Prints one summary line with the ratio and
the target (two processes at least as fast as one: each mailbox is worked by one process, so two agencies
can use both cores) and exits non-zero when the target is missed.

    .venv/bin/python bench/scaleout.py [--per-agency 150]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.exc import ProgrammingError  # noqa: E402

from tests.devkit import netguard  # noqa: E402
from tests.devkit.devservers import Bind, Dovecot, Postgres, SmtpRelay  # noqa: E402
from tests.devkit.localoffice import SUBDOMAIND, UNVOUCHED, Office, request_mail, write_config  # noqa: E402

ZONE_RECORDS = "ns1 IN A 192.0.2.1\nns2 IN A 192.0.2.2\n"


def run(processes: int, per_agency: int, base: Path, dovecot: Dovecot, relay: SmtpRelay, bind: Bind,
        pg: Postgres) -> float:
    """Messages per second for `processes` daemons on a fresh two-agency backlog."""
    url = pg.create_database(f"bench_{processes}_{secrets.token_hex(3)}")
    offices = [Office.create(base / f"p{processes}a{i}", dovecot, relay, bind, agency_id=f"ag{i}",
                             database_url=url, workflow={"daily_cap_per_address": 100000}, auth=UNVOUCHED)
               for i in range(2)]
    data = dict(offices[0].data)
    data["agency"] = [o.data["agency"][0] for o in offices]
    config = write_config(base / f"p{processes}.toml", data)
    for i, o in enumerate(offices):
        for n in range(per_agency):
            dovecot.append(o.mailbox.name, request_mail(o.requester.address, f"b{i}x{n}{secrets.token_hex(2)}",
                                                        to=o.mailbox.address))
    total = 2 * per_agency
    engine = create_engine(url)
    started = time.monotonic()
    procs = [subprocess.Popen([str(SUBDOMAIND), "--config", str(config), "run"], stdout=subprocess.DEVNULL,
                              stderr=(base / f"p{processes}-{n}.log").open("wb"), env=dict(os.environ))
             for n in range(processes)]
    try:
        deadline = started + 240
        while time.monotonic() < deadline:
            try:
                with engine.connect() as c:
                    handled = c.execute(text("SELECT count(*) FROM inbound WHERE status <> 'received'")).scalar_one()
                    waiting = c.execute(text("SELECT count(*) FROM outbox WHERE status = 'queued'")).scalar_one()
            except ProgrammingError:
                handled, waiting = 0, 1  # the schema is being created
            if handled >= total and waiting == 0:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{processes} process(es): backlog not done within 240 s")
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        engine.dispose()
    return total / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-agency", type=int, default=150)
    args = ap.parse_args()
    netguard.guard_this_process_and_children()  # 127.0.0.1 only, here and in the daemons started
    base = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    base.chmod(0o755)
    with Dovecot(base, "trenggalekkab.go.id") as dovecot, Bind(base, "trenggalekkab.go.id", ZONE_RECORDS) as bind, \
            Postgres(base) as pg:
        relay = SmtpRelay(dovecot.host, dovecot.lmtp_port, base=base)
        relay.start()
        try:
            one = run(1, args.per_agency, base, dovecot, relay, bind, pg)
            two = run(2, args.per_agency, base, dovecot, relay, bind, pg)
        finally:
            relay.stop()
    ratio = two / one
    ok = ratio >= 1.0
    print(f"scale-out on PostgreSQL, 2 agencies x {args.per_agency} letters: 1 process {one:.1f} msg/s, "
          f"2 processes {two:.1f} msg/s, ratio {ratio:.2f}x   target >= 1.00x   {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
