"""Benchmark the idle cost: one intake cycle with nothing new on a 100,000-message mailbox vs an empty one.

    .venv/bin/python bench/idle.py                   # 100,000 messages, about 1 minute
    .venv/bin/python bench/idle.py --messages 20000  # quicker

Two offices on the same real Dovecot: one whose INBOX holds 100,000 small messages, one whose INBOX is
empty. The messages are written straight into the user's Maildir `cur/` (the fastest way Dovecot accepts:
files named as Dovecot names them, with the size in the name, owned by the mail user), then Dovecot indexes
them at the first SELECT. The daemon has already checkpointed past them: its `MailboxState` (UIDVALIDITY,
last UID) is set in its database to the mailbox's highest UID, as after having taken them all in. Both
daemons are in-process `Daemon`s, connected once; then `Daemon.intake` (one cycle: checkpoint read,
pending-marks check, UID SEARCH, checkpoint write) and `Daemon.run_once` (intake, due steps, outbox) are
timed alternately on the two, many times; the medians are compared.

Target: median cycle on 100,000 messages <= 1.2 x the empty mailbox's.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (installs the loopback guard first)

RATIO_TARGET = 1.2
CYCLES = 300

SMALL = (
    "From: Arsip <arsip@trenggalekkab.go.id>\r\nTo: layanan@trenggalekkab.go.id\r\n"
    "Subject: Arsip surat {i}\r\nDate: Tue, 10 Nov 2026 09:15:00 +0700\r\n"
    "Message-ID: <arsip-{i}@mail.trenggalekkab.go.id>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nSurat arsip nomor {i}.\r\n"
)


def fill_maildir(srv: common.Servers, user: common.MailUser, count: int) -> tuple[float, float]:
    """Write `count` messages into the user's Maildir; (seconds to write, seconds for Dovecot to index)."""
    with user.imap() as client:  # the first login creates the Maildir
        client.select_folder("INBOX")
    maildir = srv.dovecot.mail_dir / user.name / "Maildir"
    cur = maildir / "cur"
    pw = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    start = time.perf_counter()
    stamp = int(time.time()) - 86400
    for i in range(count):
        data = SMALL.format(i=i).encode()
        # Dovecot's own naming: <time>.M<usec>P<pid>.<host>,S=<size>,W=<rfc822 size>:2,<flags> (Seen).
        path = cur / f"{stamp}.M{i}P{os.getpid()}.bench,S={len(data)},W={len(data)}:2,S"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
        finally:
            os.close(fd)
    written = time.perf_counter() - start
    start = time.perf_counter()
    with user.imap() as client:
        info = client.select_folder("INBOX", readonly=True)
        exists = int(info[b"EXISTS"])
    indexed = time.perf_counter() - start
    if exists != count:
        raise RuntimeError(f"Dovecot sees {exists} messages, {count} written")
    return written, indexed


def checkpoint_past_everything(daemon: Any, user: common.MailUser) -> int:
    """Set the daemon's checkpoint to the mailbox's highest UID, as after taking every message in."""
    from subdomaind.workflows.store import MailboxState

    with user.imap() as client:
        info = client.select_folder("INBOX", readonly=True)
        uidvalidity = int(info[b"UIDVALIDITY"])
        last_uid = int(info[b"UIDNEXT"]) - 1
    rt = next(iter(daemon.runtimes.values()))
    with daemon.sessions.begin() as s:
        st = s.get(MailboxState, (rt.agency.id, rt.source.folder))
        if st is None:
            st = MailboxState(agency=rt.agency.id, mailbox=rt.source.folder, uidvalidity=0, last_uid=0)
            s.add(st)
        st.uidvalidity, st.last_uid = uidvalidity, last_uid
    return last_uid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--cycles", type=int, default=CYCLES)
    ap.add_argument("--preload", metavar="FILE", help="run this Python file first (a what-if monkeypatch)")
    args = ap.parse_args()
    if args.preload:
        import runpy

        runpy.run_path(args.preload)

    with common.servers() as srv:
        big_office = common.make_office(srv, "big")
        empty_office = common.make_office(srv, "empty")
        written, indexed = fill_maildir(srv, big_office.mailbox, args.messages)
        daemons = {"big": common.in_process_daemon(big_office), "empty": common.in_process_daemon(empty_office)}
        last = {"big": checkpoint_past_everything(daemons["big"], big_office.mailbox),
                "empty": checkpoint_past_everything(daemons["empty"], empty_office.mailbox)}
        runtimes = {k: next(iter(d.runtimes.values())) for k, d in daemons.items()}
        timings: dict[str, dict[str, list[float]]] = {k: {"intake": [], "run_once": []} for k in daemons}
        for k, d in daemons.items():  # connect and warm up: the steady state is what counts
            for _ in range(5):
                assert d.intake(runtimes[k]) == 0 and d.run_once()["messages"] == 0
        for _ in range(args.cycles):
            for k, d in daemons.items():
                t = time.perf_counter()
                handled = d.intake(runtimes[k])
                timings[k]["intake"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                totals = d.run_once()
                timings[k]["run_once"].append((time.perf_counter() - t) * 1000)
                if handled or totals["messages"]:
                    raise RuntimeError(f"{k}: the daemon took in mail although it had checkpointed past it all")
        for d in daemons.values():
            d.shutdown(flush_seconds=0)

    med = {k: {m: common.median(v) for m, v in t.items()} for k, t in timings.items()}
    ratio = med["big"]["intake"] / med["empty"]["intake"]
    ratio_once = med["big"]["run_once"] / med["empty"]["run_once"]
    ok = ratio <= RATIO_TARGET
    print(f"({args.messages} messages written into Maildir in {written:.1f} s, indexed by Dovecot in {indexed:.1f} s; "
          f"last UID {last['big']} vs {last['empty']}; {args.cycles} cycles each, alternating; "
          f"run_once median {med['big']['run_once']:.2f} ms vs {med['empty']['run_once']:.2f} ms = {ratio_once:.2f}x; "
          f"intake p90 {common.percentile(timings['big']['intake'], 90):.2f} ms vs "
          f"{common.percentile(timings['empty']['intake'], 90):.2f} ms; load average {common.loadavg()})",
          file=sys.stderr)
    print(f"idle intake cycle, {args.messages:,} messages vs empty mailbox: {med['big']['intake']:.2f} ms vs "
          f"{med['empty']['intake']:.2f} ms = {ratio:.2f}x   target <= {RATIO_TARGET}x   {common.verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
