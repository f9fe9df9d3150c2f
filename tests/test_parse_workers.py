"""Parsing in worker processes (daemon/parsing.py): the same answers as parsing in the daemon, and a
runaway or crashing parser costs one quarantined message, never the daemon."""

from __future__ import annotations

import email
import email.policy
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from subdomaind.daemon.parsing import (
    CRASH_REASON,
    RETURN_ATTACHMENT_MAX,
    SPOOL_MIN,
    TIMEOUT_REASON,
    InlineParser,
    ProcessParser,
    parse_for_transport,
)
from subdomaind.parsers import parse
from subdomaind.parsers.model import ParseOptions, ParseResult
from subdomaind.workflows.rawmail import remove_stale
from subdomaind.workflows.store import Inbound, Request
from tests.devkit.localoffice import request_mail
from tests.test_engine_unit import world  # noqa: F401  (fixture)

FIXTURES = Path(__file__).parent / "fixtures" / "emails"


def hostile_task(raw: bytes, options: ParseOptions) -> ParseResult:
    """A parser with the two failures a worker must fence: it never returns, or its process dies."""
    if b"X-Test-Hang: yes" in raw:
        time.sleep(3600)
    if b"X-Test-Crash: yes" in raw:
        os._exit(3)  # as a segfault in a C extension would end it
    return parse_for_transport(raw, options)


def with_header(raw: bytes, header: bytes) -> bytes:
    return header + b"\r\n" + raw


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    p = ProcessParser(1, timeout=3.0, task=hostile_task)
    yield p
    p.close()


def test_worker_gives_the_same_answer_as_parsing_in_process() -> None:
    p = ProcessParser(2, timeout=30.0)
    try:
        names = sorted(FIXTURES.glob("*.eml"))[:40]
        jobs = [(n, p.submit(n.read_bytes(), ParseOptions())) for n in names]
        for name, job in jobs:
            got, want = job.result(), parse(name.read_bytes(), ParseOptions())
            assert (got.kind, got.reason, got.request, got.reply, got.ticket, got.token) == (
                want.kind, want.reason, want.request, want.reply, want.ticket, want.token), name.name
    finally:
        p.close()


def test_large_attachment_bytes_stay_in_the_worker() -> None:
    msg = email.message_from_bytes(request_mail("dinsos@trenggalekkab.go.id", "dinsosbig"),
                                   policy=email.policy.default)
    msg.add_attachment(os.urandom(RETURN_ATTACHMENT_MAX + 1), maintype="application", subtype="octet-stream",
                       filename="scan.bin")
    big = msg.as_bytes()
    got = parse_for_transport(big, ParseOptions())
    assert got.message is not None and got.request is not None
    assert [len(a.data) for a in got.message.attachments] == [0]
    assert got.request == parse(big, ParseOptions()).request


def test_runaway_parser_is_cut_off_and_the_next_message_parses(pool: ProcessParser) -> None:
    hang = pool.submit(with_header(request_mail("a@example.org", "satu"), b"X-Test-Hang: yes"), ParseOptions())
    after = pool.submit(request_mail("b@example.org", "dua"), ParseOptions())
    got = hang.result()
    assert got.kind == "unreadable" and got.reason == TIMEOUT_REASON.format(seconds=3.0)
    nxt = after.result()  # submitted to the pool that was replaced: parsed again on the new one
    assert nxt.kind == "request" and nxt.request is not None and nxt.request.subdomain == "dua"


def test_crashing_parser_quarantines_only_its_message(pool: ProcessParser) -> None:
    crash = pool.submit(with_header(request_mail("a@example.org", "tiga"), b"X-Test-Crash: yes"), ParseOptions())
    after = pool.submit(request_mail("c@example.org", "lima"), ParseOptions())  # queued behind it, not to blame
    got = crash.result()
    # The crash's own reason, not the timeout's: the death was seen as a death, not waited out.
    assert (got.kind, got.reason) == ("unreadable", CRASH_REASON)
    assert after.result().kind == "request"
    assert pool.submit(request_mail("b@example.org", "empat"), ParseOptions()).result().kind == "request"


def test_crash_with_no_worker_to_retry_on_quarantines_never_parses_in_the_daemon(
        pool: ProcessParser, monkeypatch: pytest.MonkeyPatch) -> None:
    pool.warm()
    monkeypatch.setattr("subdomaind.daemon.parsing._BOOT", "import sys; sys.exit(1)")  # no fresh worker can start
    crash = pool.submit(with_header(request_mail("a@example.org", "enam"), b"X-Test-Crash: yes"), ParseOptions())
    assert (crash.result().kind, crash.result().reason) == ("unreadable", CRASH_REASON)
    raw = request_mail("b@example.org", "tujuh")  # the next one is parsed in the daemon instead
    assert pool.submit(raw, ParseOptions()).result() == parse(raw, ParseOptions())


def test_daemon_quarantines_the_message_its_worker_lost_and_goes_on(world) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    d, src, tr, _dns, sessions = world
    d.parser.close()
    d.parser = ProcessParser(1, timeout=2.0, task=hostile_task)
    try:
        src.add(with_header(request_mail("dinsos@trenggalekkab.go.id", "dinsoshang"), b"X-Test-Hang: yes"))
        src.add(request_mail("dinkes@trenggalekkab.go.id", "dinkes"))
        d.run_once()
    finally:
        d.parser.close()
    with sessions() as s:
        rows = s.execute(select(Inbound).order_by(Inbound.uid)).scalars().all()
        assert [(r.uid, r.status) for r in rows] == [(1, "quarantined"), (2, "handled")]
        assert rows[0].error == TIMEOUT_REASON.format(seconds=2.0)
        assert [r.subdomain for r in s.execute(select(Request)).scalars()] == ["dinkes"]
    assert src.marked == {1: True, 2: False}


def test_inline_parser_is_parse() -> None:
    raw = request_mail("dinsos@trenggalekkab.go.id", "dinsos")
    assert InlineParser().submit(raw, ParseOptions()).result() == parse(raw, ParseOptions())


def test_no_workers_possible_means_parsing_in_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot start (here: no Python to run it) is no reason to quarantine anything: the
    daemon goes on parsing in its own process."""
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")
    p = ProcessParser(1, timeout=3.0)
    p.warm()
    raw = request_mail("dinsos@trenggalekkab.go.id", "dinsos")
    assert p.submit(raw, ParseOptions()).result() == parse(raw, ParseOptions())
    assert p.pids() == []


def test_worker_that_dies_while_starting_is_not_a_crash_of_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("subdomaind.daemon.parsing._BOOT", "import sys; sys.exit(1)")
    p = ProcessParser(1, timeout=3.0)
    raw = request_mail("dinsos@trenggalekkab.go.id", "dinsos")
    assert p.submit(raw, ParseOptions()).result() == parse(raw, ParseOptions())


def test_large_letter_goes_by_spool_file_removed_after(tmp_path: Path) -> None:
    msg = email.message_from_bytes(request_mail("dinsos@trenggalekkab.go.id", "dinsosbig"),
                                   policy=email.policy.default)
    msg.add_attachment(os.urandom(SPOOL_MIN), maintype="application", subtype="octet-stream", filename="scan.bin")
    big = msg.as_bytes()
    p = ProcessParser(1, timeout=30.0, spool_dir=tmp_path / "spool")
    try:
        job = p.submit(big, ParseOptions())
        assert len(list((tmp_path / "spool").iterdir())) == 1  # the worker reads the letter from there
        got = job.result()
        assert got.request is not None and got.request.subdomain == "dinsosbig"
        assert list((tmp_path / "spool").iterdir()) == []
    finally:
        p.close()


def test_spool_left_by_a_crash_is_removed_at_start_a_fresh_one_kept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    old, fetched, fresh, other = (spool / n for n in ("parse-old.eml", "fetch-old.eml", "parse-fresh.eml",
                                                       "catatan.txt"))
    for f in (old, fetched, fresh, other):
        f.write_bytes(b"Subject: x\r\n\r\nsandi: Abc123\r\n")
    for f in (old, fetched):
        os.utime(f, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    remove_stale(spool)  # as the daemon does at start (Daemon.run)
    assert sorted(f.name for f in spool.iterdir()) == ["catatan.txt", "parse-fresh.eml"]


def _gone(pid: int, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def test_worker_ends_with_its_parser_closed_or_dropped() -> None:
    import gc

    p = ProcessParser(1, timeout=3.0)
    p.warm()
    (pid,) = p.pids()
    p.close()
    assert _gone(pid, within=5)
    p = ProcessParser(1, timeout=3.0)
    p.warm()
    (pid,) = p.pids()
    del p
    gc.collect()
    assert _gone(pid, within=5)


def test_worker_of_a_daemon_killed_with_sigkill_ends_too() -> None:
    import subprocess
    import sys

    code = ("import os, sys; from subdomaind.daemon.parsing import ProcessParser; p = ProcessParser(1, 3.0); p.warm(); "
            "print(p.pids()[0], flush=True); os._exit(0)")  # as kill -9: no cleanup at all
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent, check=True)
    pid = int(out.stdout.split()[0])
    assert _gone(pid, within=10)
