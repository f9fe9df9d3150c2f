"""Benchmark a backlog: 1,000 mixed messages already in the office mailbox, until every one is handled and
every mail it causes is accepted by the SMTP server. Real Dovecot, BIND 9 and SMTP relay on 127.0.0.1.

    .venv/bin/python bench/backlog.py               # SQLite, 1,000 messages (2-4 minutes; at most 5)
    .venv/bin/python bench/backlog.py --run         # the same through the real `subdomaind run` process
    .venv/bin/python bench/backlog.py --postgres    # on PostgreSQL 15 (no rate target: reported only)
    .venv/bin/python bench/backlog.py --memory      # peak RSS: 200 messages plus five with 20 MB attachments
    .venv/bin/python bench/backlog.py --deliver     # the SMTP server also delivers each mail into Dovecot
    .venv/bin/python bench/backlog.py --preload FILE  # the same with a what-if monkeypatch run in the daemon

The mix: 70 % requests with the form in the body, 20 % with the form only in an attached 2-page PDF, 10 %
SETUJU replies from the Kepala Dinas to open step mails. The replies are real: first that many requests
are sent through the daemon and their step mails collected from the SMTP server; each reply answers one.
The whole mix is APPENDed before the clock starts; `undo_window_minutes = 0`, every sub-domain label is
unique and the per-address daily cap is raised.

The daemon runs in a child process of this script (so its memory is its own and the SMTP relay, which
lives in this process, does not share its interpreter lock): the in-process `Daemon`, built from the
config file as `subdomaind run` builds it, calling `run_once()` back to back until a pass finds nothing to
do. During that run the SMTP relay accepts and keeps each mail without passing it on to Dovecot, as an
MTA queues a mail and answers (with --deliver it answers only once Dovecot's LMTP has stored it, which
costs the same two cores 11-17 ms per message). The clock runs from the first `run_once()` until the SMTP
relay has accepted every expected mail (3 per request: acknowledgement, notification to the Sekretaris,
step mail to the Kepala Dinas; 2 per reply: the echo and the Kabid's step mail), checked against the
outbox rows marked sent.

With --run the daemon is the real `subdomaind run` subprocess instead (IDLE, its outbox sender thread, the
production poll interval of 30 s); its clock starts with the process, so start-up is included.

Targets: >= 50 messages/s on SQLite, and >= 0.5 x the rate of `parsers.parse` alone on the same messages
(measured here, in this process, before the run). With --memory: the daemon's peak RSS < 200 MB (VmHWM of
the daemon process and its parser worker, added; the summed RSS sampled every 10 ms is printed too; the
20 MB letters are scanned PDFs stored as JPEG, so that no parser bug about Flate streams is hit, see
docs/PERFORMANCE.md). The measured run stops at 200 s so that the bench ends within
5 minutes; whatever was not done by then makes it INCOMPLETE (and failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (installs the loopback guard first)

RATE_TARGET = 50.0  # messages per second, SQLite
RATIO_TARGET = 0.5  # of the parse-only rate
RSS_TARGET_MB = 200.0
CHILD_TIMEOUT = 200.0  # seconds for the measured run; the whole bench stays under 5 minutes
BIG = 20 * 1024 * 1024


# --- the daemon, in the child process --------------------------------------------------------------------


def child(config_path: str, profile: str | None, preload: str | None) -> int:
    """Build the daemon, say READY, wait for GO, run passes until one does nothing; print one JSON line."""
    import resource
    import runpy

    if preload:
        runpy.run_path(preload)  # a what-if change (monkeypatch) to measure before editing the daemon

    from sqlalchemy import func, select

    from subdomaind.daemon.config import load_config
    from subdomaind.daemon.service import Daemon
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.store import Outbox, make_engine, make_sessionmaker

    cfg = load_config(config_path)
    if not cfg.limits.parse_workers:
        import subdomaind.parsers.pdf  # noqa: F401  (warm, as in a daemon that has been running)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    daemon = Daemon(cfg, make_sessionmaker(engine))
    daemon.parser.warm()  # as `subdomaind run` does before its first pass
    # Where the run starts from: what the imports and the warm-up hold before the first message.
    ready_mb = [common.status_mb(pid, "VmRSS") for pid in (os.getpid(), *common.descendants(os.getpid()))]
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 2
    prof: Any = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    # At the time limit the daemon stops as on SIGTERM: it finishes the message in hand and the pass ends.
    limit = threading.Timer(CHILD_TIMEOUT, daemon.stopping.set)
    limit.daemon = True
    limit.start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    workers0 = common.worker_cpu(daemon)
    start = time.monotonic()
    passes, totals = 0, {"messages": 0, "actions": 0, "sent": 0}
    # As `run` does: the outbox on its own thread, passes back to back while they find work.
    daemon.start_sender()
    while True:
        done = daemon.run_once(drain_inline=False)
        passes += 1
        for k, v in done.items():
            totals[k] += v
        if not any(done.values()) or daemon.stopping.is_set():
            break
    while not daemon.stopping.is_set():  # the sender's last mails
        with daemon.sessions() as s:
            if not s.execute(select(func.count()).select_from(Outbox).where(Outbox.status == "queued")).scalar_one():
                break
        time.sleep(0.02)
    seconds = time.monotonic() - start
    workers_cpu = common.worker_cpu(daemon) - workers0
    limit.cancel()
    timed_out = daemon.stopping.is_set()
    daemon.stopping.clear()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    with daemon.sessions() as s:
        queued = s.execute(select(func.count()).select_from(Outbox).where(Outbox.status == "queued")).scalar_one()
    # The parser worker processes, each its own peak; read before shutdown ends them.
    others = {pid: common.vm_hwm_mb(pid) for pid in common.descendants(os.getpid())}
    daemon.shutdown(flush_seconds=1)
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's RSS at fork (Linux keeps the
    # pre-exec high-water mark), so it would count this bench's own memory.
    peak = common.vm_hwm_mb(os.getpid())
    result = {"seconds": seconds, "cpu": cpu, "workers_cpu": workers_cpu, "passes": passes, **totals, "queued": queued,
              "peak_rss_mb": peak, "children_peak_rss_mb": sorted(others.values(), reverse=True),
              "ready_rss_mb": ready_mb, "timed_out": timed_out}
    print(json.dumps(result), flush=True)
    return 0


def run_daemon(office: common.Office, relay: common.TimedRelay, expect_sent: int,
               profile: str | None = None, preload: str | None = None, sample: bool = False) -> dict[str, Any]:
    """Run the child daemon over what the mailbox holds; the seconds until the relay has every mail. With
    `sample`, the summed RSS of the daemon's processes is sampled."""
    argv = [sys.executable, __file__, "--child", str(office.config_path)]
    if profile:
        argv += ["--profile", profile]
    if preload:
        argv += ["--preload", preload]
    log = (office.base / "daemon.log").open("ab")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"daemon child did not start: {line!r}\n{office.log()}")
        base = relay.count()
        t0 = time.monotonic()
        # A daemon stuck inside one message never reaches the time limit's check: kill it a bit later.
        killer = threading.Timer(CHILD_TIMEOUT + 30, proc.kill)
        killer.daemon = True
        killer.start()
        sampler = common.TreeSampler(proc.pid)
        with common.ServersCpu(lambda: proc.pid) as servers, sampler if sample else contextlib.nullcontext():
            proc.stdin.write("GO\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            # The last mails are accepted before the child's run_once returns: counted with the servers.
        result = {"passes": "?", "cpu": float("nan"), "messages": 0, "queued": -1, "peak_rss_mb": float("nan"),
                  "killed": not line, "timed_out": not line}
        result.update(json.loads(line or "{}"))
        result["sampled_peak_rss_mb"] = sampler.peak if sample else float("nan")
        result["servers_cpu"] = servers.seconds
        killer.cancel()
        got_all = relay.wait_count(base + expect_sent, timeout=10)
        # The last mail is accepted before run_once returns; the relay's own timestamps say when.
        with relay._cond:
            stamps = relay.accepted_at[base:]
        t_end = max(stamps) if stamps else time.monotonic()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result["relay_received"] = relay.count() - base
    result["all_received"] = got_all
    result["wall"] = max(t_end - t0, 1e-9)
    return result


def run_real_daemon(office: common.Office, relay: common.TimedRelay, expect_sent: int, n_messages: int,
                    preload: str | None) -> dict[str, Any]:
    """The same backlog through the real `subdomaind run` process (clock from its start, start-up included)."""
    base = relay.count()
    t0 = time.monotonic()
    proc = common.start_daemon(office, preload)
    try:
        done = relay.wait_count(base + expect_sent, timeout=CHILD_TIMEOUT)
        with relay._cond:
            stamps = relay.accepted_at[base:]
        peak = common.vm_hwm_mb(proc.pid)
    finally:
        code = common.stop_daemon(proc)
    wall = (max(stamps) if stamps else time.monotonic()) - t0
    counts = db_counts(office)
    taken = counts.get("in_handled", 0) - n_messages  # less the open requests of step 1
    return {"wall": wall, "relay_received": len(stamps), "all_received": done, "messages": taken, "cpu": float("nan"),
            "passes": "?", "queued": counts.get("out_queued", 0), "peak_rss_mb": peak, "timed_out": not done,
            "exit": code}


# --- the bench ------------------------------------------------------------------------------------------


def parse_rate(raws: list[bytes], options: Any) -> float:
    from subdomaind.parsers import parse

    for raw in raws[:20]:  # warm imports and caches, as a running daemon has them
        parse(raw, options)
    start = time.perf_counter()
    for raw in raws:
        parse(raw, options)
    return len(raws) / (time.perf_counter() - start)


def db_counts(office: common.Office) -> dict[str, int]:
    from sqlalchemy import func, select

    from subdomaind.daemon.config import load_config
    from subdomaind.workflows.store import Inbound, Outbox, make_engine

    cfg = load_config(office.config_path)
    engine = make_engine(cfg.db_url)
    with engine.connect() as conn:
        inbound = dict(conn.execute(select(Inbound.status, func.count()).group_by(Inbound.status)).all())
        outbox = dict(conn.execute(select(Outbox.status, func.count()).group_by(Outbox.status)).all())
    engine.dispose()
    return {**{f"in_{k}": v for k, v in inbound.items()}, **{f"out_{k}": v for k, v in outbox.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, help="default 1000; 200 with --memory (the big ones set the peak)")
    ap.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite (no target)")
    ap.add_argument("--memory", action="store_true", help="add 20 MB attachments; report the daemon's peak RSS")
    ap.add_argument("--big", type=int, default=5, help="with --memory: how many 20 MB messages")
    ap.add_argument("--run", action="store_true",
                    help="measure the real `subdomaind run` process instead of run_once() in a child")
    ap.add_argument("--poll", type=float, default=30.0,
                    help="with --run: the IMAP poll interval (default 30 s, the production default)")
    ap.add_argument("--deliver", action="store_true",
                    help="the SMTP server also delivers every mail into Dovecot over LMTP (as the tests' relay)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the daemon child into FILE")
    ap.add_argument("--preload", metavar="FILE",
                    help="run this Python file in the daemon child first (to measure a change as a monkeypatch)")
    ap.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.profile, args.preload)

    from subdomaind.daemon.service import parse_options_for
    from tests.devkit.localoffice import reply_to

    total = args.messages or (200 if args.memory else 1000)
    n_reply = total // 10
    n_pdf = total * 2 // 10
    n_body = total - n_reply - n_pdf
    rng = random.Random(1042)
    with common.servers(postgres=args.postgres) as srv:
        url = common.postgres_url(srv, "backlog") if args.postgres else None
        office = common.make_office(srv, "backlog", database_url=url)
        units = [srv.dovecot.new_user("opd") for _ in range(8)]
        kadis = office.officials["kadis"]

        # 1. Open requests whose step mails the replies answer (not timed).
        seed = [common.body_request(i, units[i % len(units)].address, f"buka{i}") for i in range(n_reply)]
        common.append_many(office.mailbox, seed)
        before = srv.relay.count()
        prep = run_daemon(office, srv.relay, 3 * n_reply, preload=args.preload)
        with srv.relay._cond:
            new = srv.relay.received[before:]
        steps = [raw for _f, rcpts, raw in new if kadis.address in rcpts and b"Mohon keputusan" in raw]
        if len(steps) != n_reply:
            print(f"setup failed: {len(steps)} step mails for {n_reply} open requests ({prep})", file=sys.stderr)
            return 2

        # 2. The mix, in the mailbox before the clock starts.
        t = time.perf_counter()
        mix: list[bytes] = [common.body_request(i, units[i % len(units)].address, f"b{i}") for i in range(n_body)]
        mix += [common.pdf_request(i, units[i % len(units)].address, f"p{i}") for i in range(n_pdf)]
        if args.memory:
            mix += [common.body_request_with_scan(i, units[i % len(units)].address, f"scan{i}", BIG)
                    for i in range(args.big)]
        mix += [reply_to(raw, kadis.address, "SETUJU\n\nSilakan diproses.") for raw in steps]
        rng.shuffle(mix)
        gen_s = time.perf_counter() - t
        options = parse_options_for(common.load_agency(office))
        rate_parse = parse_rate(mix, options) if not args.memory else float("nan")
        append_s = common.append_many(office.mailbox, mix)
        n_req = n_body + n_pdf + (args.big if args.memory else 0)
        expect = 3 * n_req + 2 * n_reply
        srv.relay.keep_raw = False
        # The SMTP server accepts each mail and keeps its envelope; passing it on into Dovecot (the test
        # relay's other job) is not the daemon's work, and costs the same two cores 5 ms a mail.
        srv.relay.deliver = args.deliver

        # 3. The measured run.
        if args.run:
            office.data["agency"][0]["imap"]["poll_seconds"] = args.poll
            common.write_config(office.config_path, office.data)
            res = run_real_daemon(office, srv.relay, expect, n_reply, args.preload)
        else:
            res = run_daemon(office, srv.relay, expect, profile=args.profile, preload=args.preload,
                             sample=args.memory)
        counts = db_counts(office)
        if res["relay_received"] != expect:  # what the daemon said about it (mail sent twice, or missing)
            said = [ln for ln in office.log().splitlines()
                    if any(w in ln for w in ("WARNING", "ERROR", "failed", "locked", "Traceback"))]
            print("daemon log, warnings and errors:\n" + "\n".join(said[-40:]), file=sys.stderr)

    n = len(mix)
    # Messages the measured run took in (the open requests of step 1 were handled before it).
    taken = res.get("messages", 0)
    rate = taken / res["wall"]
    ratio = rate / rate_parse
    handled = counts.get("in_handled", 0)
    sent_ok = counts.get("out_sent", 0) == 3 * n_reply + expect and res["relay_received"] == expect
    complete = handled == n + n_reply and sent_ok and res.get("queued") == 0 and not res.get("timed_out")
    db = "PostgreSQL" if args.postgres else "SQLite"
    note = "" if complete else "   (INCOMPLETE: not every message/mail went through"
    note += f" in the {CHILD_TIMEOUT:.0f} s limit)" if res.get("timed_out") else (")" if note else "")
    if res.get("killed"):
        note = "   (INCOMPLETE: the daemon hung inside one message and was killed)"
    big = f", {args.big} x 20 MB" if args.memory else ""
    detail = (f"({n} msgs: {n_body} body, {n_pdf} PDF, {n_reply} replies{big}; {res['wall']:.1f} s, "
              f"{res['passes']} passes, daemon CPU {1000 * res['cpu'] / n:.1f} ms/msg "
              f"+ parser workers {1000 * res.get('workers_cpu', float('nan')) / n:.1f} ms/msg; "
              f"{'SMTP relay and Dovecot' if args.deliver else 'SMTP server and Dovecot IMAP'} "
              f"{1000 * res.get('servers_cpu', float('nan')) / n:.1f} ms/msg; "
              f"{'the real subdomaind run, poll ' + str(args.poll) + ' s; ' if args.run else ''}"
              f"load average {common.loadavg()}; "
              f"{res['relay_received']}/{expect} mails accepted; inbound {counts}; "
              f"generated in {gen_s:.1f} s, APPENDed in {append_s:.1f} s)")
    print(detail, file=sys.stderr)
    if args.memory:
        main_peak = float(res["peak_rss_mb"])
        children = [float(x) for x in res.get("children_peak_rss_mb", [])]
        # Summed peaks: an upper bound (the peaks need not coincide, and the processes share library pages).
        peak = main_peak + sum(children)
        ok = peak < RSS_TARGET_MB and complete
        parts = " + ".join(f"{x:.1f}" for x in [main_peak, *children])
        print(f"backlog peak RSS of the daemon, its parser processes included ({db}, {args.big} x 20 MB "
              f"attachments among {n} messages): {peak:.1f} MB, each process's peak added ({parts}); "
              f"{res.get('sampled_peak_rss_mb', float('nan')):.1f} MB at the worst moment (sampled every 10 ms); "
              f"{' + '.join(f'{x:.1f}' for x in res.get('ready_rss_mb', []))} MB before the first message"
              f"   target < {RSS_TARGET_MB:.0f} MB   {common.verdict(ok)}{note}")
        return 0 if ok else 1
    ok_rate = rate >= RATE_TARGET or args.postgres
    ok_ratio = ratio >= RATIO_TARGET
    ok = ok_rate and ok_ratio and complete
    target = f"target >= {RATE_TARGET:.0f}" if not args.postgres else "no target"
    how = "subdomaind run, start-up included" if args.run else "in-process Daemon.run_once in a child"
    print(f"backlog messages/s ({db}, {how}): {rate:.1f}   {target}; "
          f"parse-only {rate_parse:.1f}/s, ratio {ratio:.2f}   target >= {RATIO_TARGET}   {common.verdict(ok)}"
          f"{note}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
