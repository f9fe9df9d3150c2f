"""Benchmark the monthly report: building it from a month of requests, drawing it, and what it leaves in the
daemon's memory.

    .venv/bin/python bench/report.py                  # 1,000 requests with 3 decisions each
    .venv/bin/python bench/report.py --requests 300   # quicker

One SQLite database holds a month (November 2026) of finished requests, each with three approval steps
decided by the Kadis, the Kabid and the Kasi. Timed: `build_report` (the queries and the working-time
arithmetic), then the mail's HTML and the two charts and the PDF, drawn as the daemon draws them (in a
fresh child process). The resident set of this process is read before and after: drawing in the child
must leave it where it was (matplotlib alone would add about 90 MB).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from subdomaind.workflows.db import upgrade  # noqa: E402
from subdomaind.workflows.report import build_report, render_report  # noqa: E402
from subdomaind.workflows.sop import load_sop  # noqa: E402
from subdomaind.workflows.store import Decision, StepRun, make_engine, make_sessionmaker  # noqa: E402
from subdomaind.workflows.worktime import WorkCalendar  # noqa: E402
from tests.devkit.localoffice import make_config  # noqa: E402
from tests.test_reminders import seed_request, wib  # noqa: E402

STEPS = (("disposisi", "kadis"), ("disposisi_kabid", "kabid"), ("periksa", "kasi"))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    cfg = make_config(tmp / "cfg")
    engine = make_engine(f"sqlite:///{tmp / 'report.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        for i in range(args.requests):
            t0 = wib(2026, 11, 2 + i % 27, 8, 0)
            req, _ = seed_request(s, ticket=f"SD/2026/{i + 1:05d}", step="selesai", kind="end", role=None,
                                  status="done", opened=t0 + timedelta(hours=5), received=t0,
                                  closed=t0 + timedelta(hours=5), subdomain=f"unit{i}", step_status="done")
            for k, (key, role) in enumerate(STEPS):
                run = StepRun(request_id=req.id, key=key, kind="approval", role=role, status="done",
                              opened_at=t0 + timedelta(hours=k),
                              closed_at=t0 + timedelta(hours=k, minutes=rng.randint(5, 90)), outcome="approve",
                              attempts=0)
                s.add(run)
                s.flush()
                s.add(Decision(request_id=req.id, step_id=run.id, decision="approve",
                               actor=f"{role}@trenggalekkab.go.id", accepted=True, rules=[], at=run.closed_at))
    agency = cfg.agencies[0]
    sop = load_sop(agency.sop)
    before = rss_mb()
    t0 = time.perf_counter()
    with sessions() as s:
        report = build_report(s, agency, sop, WorkCalendar("Asia/Jakarta"), wib(2026, 11, 1).date(),
                              wib(2026, 12, 1, 8, 0))
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    rendered, attachments = render_report(report, agency)
    drawn = time.perf_counter() - t1
    after = rss_mb()
    print(f"requests {report.received}, step visits {sum(st.wait.count for st in report.steps)}")
    print(f"build_report        {built:6.2f} s")
    print(f"HTML, charts, PDF   {drawn:6.2f} s (in a child process)")
    print(f"mail size           {len(rendered.html or '') // 1024} KB HTML, "
          f"{sum(len(a.data) for a in attachments) // 1024} KB attachments")
    print(f"RSS of this process {before:6.1f} MB before, {after:6.1f} MB after")
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
