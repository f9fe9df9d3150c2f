"""Shared helpers for the daemon benchmarks (backlog, latency, idle): the loopback guard, the real local
servers, an office configured for benchmarking, generated request mail, and small statistics.

Every server is the real one from `tests.devkit.devservers` (Dovecot, BIND 9, an aiosmtpd relay into Dovecot
LMTP, optionally PostgreSQL), on 127.0.0.1, under one temporary directory removed at the end (kept with
SUBDOMAIND_KEEP_SERVERS=1).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.devkit import netguard  # noqa: E402


def guard() -> None:
    """Loopback only, in this process and (through the environment) in every daemon it starts."""
    netguard.guard_this_process_and_children()  # 127.0.0.1 only, here and in the daemons started


guard()  # importing this module is enough: each bench script imports it first

from tests.devkit.devservers import Bind, Dovecot, MailUser, Postgres, SmtpRelay  # noqa: E402
from tests.devkit.localoffice import DOMAIN, SUBDOMAIND, UNVOUCHED, Office, scanned_pdf, write_config  # noqa: E402, F401

ZONE_RECORDS = """\
ns1   IN A 192.0.2.1
ns2   IN A 192.0.2.2
www   IN A 203.0.113.5
mail  IN A 203.0.113.6
"""

#: Raised far past any bench's mail per address per day (the production default is 50).
BENCH_DAILY_CAP = 1_000_000


class TimedRelay(SmtpRelay):
    """The dev SMTP relay, also recording when (time.monotonic) each message was accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted_at: list[float] = []
        self.keep_raw = True

    def _store(self, mail_from: str, rcpts: list[str], raw: bytes) -> None:
        with self._cond:
            self.accepted_at.append(time.monotonic())
            # With keep_raw off only the envelope is kept (the raw copies are not needed after setup).
            self.received.append((mail_from, rcpts, raw if self.keep_raw else b""))
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.received)

    def wait_count(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= count, timeout)


@dataclass
class Servers:
    base: Path
    dovecot: Dovecot
    bind: Bind
    relay: TimedRelay
    postgres: Postgres | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@contextlib.contextmanager
def servers(*, postgres: bool = False) -> Iterator[Servers]:
    """Dovecot, BIND and the SMTP relay (and PostgreSQL if asked), started from the main thread."""
    base = Path(tempfile.mkdtemp(prefix="subdomaind-bench-"))
    base.chmod(0o755)  # Dovecot and PostgreSQL drop to system users that must reach their directories
    try:
        with contextlib.ExitStack() as stack:
            dovecot = stack.enter_context(Dovecot(base, DOMAIN))
            bind = stack.enter_context(Bind(base, DOMAIN, ZONE_RECORDS))
            relay = stack.enter_context(TimedRelay(dovecot.host, dovecot.lmtp_port, base=base))
            pg = stack.enter_context(Postgres(base)) if postgres else None
            yield Servers(base, dovecot, bind, relay, pg)
    finally:
        if not os.environ.get("SUBDOMAIND_KEEP_SERVERS"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"servers kept under {base}", file=sys.stderr)


def make_office(srv: Servers, name: str = "office", *, database_url: str | None = None,
                poll_seconds: float | None = None, **workflow: Any) -> Office:
    """An office (mailbox, officials, requester, staff) with undo window 0 and the daily cap raised."""
    base = srv.base / name
    office = Office.create(base, srv.dovecot, srv.relay, srv.bind, database_url=database_url, auth=UNVOUCHED,
                           workflow={"undo_window_minutes": 0, "daily_cap_per_address": BENCH_DAILY_CAP, **workflow})
    if poll_seconds is not None:
        office.data["agency"][0]["imap"]["poll_seconds"] = poll_seconds
        write_config(office.config_path, office.data)
    return office


def postgres_url(srv: Servers, name: str) -> str:
    assert srv.postgres is not None
    return srv.postgres.create_database(name)


def in_process_daemon(office: Office) -> Any:
    """The daemon built as `subdomaind run` builds it (config file, migrated database), not started."""
    from subdomaind.daemon.config import load_config
    from subdomaind.daemon.service import Daemon
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.store import make_engine, make_sessionmaker

    cfg = load_config(office.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    return Daemon(cfg, make_sessionmaker(engine))


def start_daemon(office: Office, preload: str | None) -> subprocess.Popen[bytes]:
    """`subdomaind --config FILE run`; with `preload`, the same entry point after running that file first
    (a what-if change as a monkeypatch, to measure before editing the daemon)."""
    cli = ["--config", str(office.config_path), "run"]
    if preload:
        code = ("import runpy, sys; runpy.run_path(sys.argv[1]); from subdomaind.daemon.cli import main; "
                "raise SystemExit(main(sys.argv[2:]))")
        argv = [sys.executable, "-c", code, preload, *cli]
    else:
        argv = [str(SUBDOMAIND), *cli]
    log = (office.base / "daemon.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as systemd stops it; the exit status."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def append_many(user: MailUser, raws: Sequence[bytes], folder: str = "INBOX") -> float:
    """APPEND every message over one IMAP connection; returns the seconds it took."""
    start = time.perf_counter()
    with user.imap() as client:
        for raw in raws:
            client.append(folder, raw)
    return time.perf_counter() - start


# --- generated request mail -------------------------------------------------------------------------------

UNITS = [
    ("Dinas Sosial", "Lukman Hakim, S.Kom.", "19870412 201001 1 003", "0812-3456-7890"),
    ("Dinas Pendidikan", "Siti Rahmawati, S.Pd.", "19850923 200903 2 004", "0813-3012-4567"),
    ("Badan Perencanaan Pembangunan Daerah", "Agus Setiawan, S.T.", "19790115 200501 1 002", "0857-3344-5566"),
    ("Dinas Kesehatan", "dr. Rina Marlina", "19900305 201503 2 001", "0821-4455-6677"),
]

_seq = iter(range(10**9))


def _message_id(kind: str, i: int) -> str:
    return f"<bench-{kind}-{i}-{next(_seq)}-{os.getpid()}@mail.{DOMAIN}>"


def _headers(sender: str, unit: str, subject: str, mid: str, extra: str) -> str:
    return (
        f"From: {unit} <{sender}>\n"
        f"To: layanan@{DOMAIN}\n"
        f"Subject: {subject}\n"
        f"Date: {formatdate(localtime=True)}\n"
        f"Message-ID: {mid}\n"
        "MIME-Version: 1.0\n" + extra
    )


def _rows(i: int, sender: str, label: str) -> list[tuple[str, str]]:
    unit, name, nip, phone = UNITS[i % len(UNITS)]
    return [
        ("Nama Sub Domain", f"{label}.{DOMAIN}"),
        ("Perangkat Daerah", unit),
        ("Nama Penanggung Jawab", name),
        ("NIP", nip),
        ("Jabatan", "Pranata Komputer Ahli Pertama"),
        ("No. HP (Whatsapp)", phone),
        ("Email", sender),
        ("Fungsi Aplikasi", f"Website resmi {unit} untuk publikasi informasi layanan publik"),
        ("Jenis Layanan", "Sub Domain"),
        ("Alamat IP", f"203.0.113.{i % 250 + 1}"),
    ]


def body_request(i: int, sender: str, label: str) -> bytes:
    """A request whose form is in the plain-text body, in one of three layouts (as bench/parse.py)."""
    from bench.parse import form_letter

    unit = UNITS[i % len(UNITS)][0]
    text = form_letter(i, _rows(i, sender, label), unit)
    head = _headers(sender, unit, "Permohonan Sub Domain", _message_id("body", i),
                    'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n')
    return (head + "\n" + text).encode("utf-8")


def form_pdf(i: int, sender: str, label: str) -> bytes:
    """A letter page and a bordered-table form page (the 2-page PDF of bench/parse.py)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle

    unit = UNITS[i % len(UNITS)][0]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, invariant=1)
    styles = getSampleStyleSheet()
    story = [
        Paragraph(f"PEMERINTAH KABUPATEN TRENGGALEK<br/>{unit.upper()}", styles["Title"]),
        Paragraph(f"Nomor : 460/{100 + i}/406.011/2026", styles["Normal"]),
        Paragraph("Hal : Permohonan Pembuatan Sub Domain", styles["Normal"]),
        Paragraph("Dengan hormat, bersama ini kami sampaikan formulir permohonan sub domain. " * 6, styles["Normal"]),
        PageBreak(),
        Paragraph("FORMULIR PERMOHONAN LAYANAN SUB DOMAIN", styles["Heading2"]),
    ]
    rows = [["No", "Uraian", "Isian"]] + [[str(n), k, v] for n, (k, v) in enumerate(_rows(i, sender, label), 1)]
    table = Table(rows, colWidths=[1.2 * cm, 5 * cm, 10 * cm])
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.7, colors.black)]))
    story.append(table)
    doc.build(story)
    return buf.getvalue()


def with_attachment(i: int, sender: str, text: str, data: bytes, filename: str, ctype: str) -> bytes:
    import base64

    unit = UNITS[i % len(UNITS)][0]
    boundary = f"=_bench_{i}"
    head = _headers(sender, unit, "Permohonan Sub Domain", _message_id("pdf", i),
                    f'Content-Type: multipart/mixed; boundary="{boundary}"\n')
    body = (
        f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
        f'--{boundary}\nContent-Type: {ctype}; name="{filename}"\nContent-Transfer-Encoding: base64\n'
        f'Content-Disposition: attachment; filename="{filename}"\n\n'
    )
    return (head + body).encode() + base64.encodebytes(data) + f"--{boundary}--\n".encode()


def pdf_request(i: int, sender: str, label: str) -> bytes:
    """A request whose form is only in the attached 2-page PDF."""
    return with_attachment(i, sender, "Terlampir surat dan formulir permohonan sub domain.",
                           form_pdf(i, sender, label), "formulir.pdf", "application/pdf")


def big_scan_pdf(size: int, seed: int, label: str = "dinsos") -> bytes:
    """A one-page PDF of about `size` bytes: a "scanned" letter stored as a JPEG image (DCTDecode, as
    scanners write it; random bytes, so nothing shrinks it) with a small text layer, written by hand."""
    image = random.Random(seed).randbytes(size)
    return scanned_pdf(b"BT /F1 11 Tf 72 760 Td (Surat permohonan sub domain " + label.encode() + b") Tj ET",
                       image, width=2480, height=3508, image_filter="DCTDecode")


def body_request_with_scan(i: int, sender: str, label: str, size: int) -> bytes:
    """A body-form request that also carries a scanned letter of `size` bytes."""
    plain = body_request(i, sender, label)
    text = plain.split(b"\n\n", 1)[1].decode("utf-8")
    return with_attachment(i, sender, text, big_scan_pdf(size, i, label), "scan_surat.pdf", "application/pdf")


# --- numbers ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _worker_pids(daemon: Any) -> list[int]:
    pids = getattr(daemon.parser, "pids", None)  # daemon.parsing.ProcessParser; none when parsing inline
    return list(pids()) if pids is not None else []


def worker_cpu(daemon: Any) -> float:
    """CPU seconds (user + system) of the daemon's parser worker processes so far."""
    return sum(process_cpu(_worker_pids(daemon)).values())


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (so the 1st is the state, the 2nd the parent)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def status_mb(pid: int | str, field: str) -> float:
    """A size from /proc/PID/status (VmRSS, VmHWM...) in MB; nan when the kernel does not give it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_cpu(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each live process in `pids` so far."""
    out = {}
    for pid in pids:
        try:
            fields = _stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


class ServersCpu:
    """CPU seconds spent, between enter and exit, by this process (the SMTP relay's thread) and by the
    server processes below it (Dovecot), the daemon process `exclude` and its children left out."""

    def __init__(self, exclude: Callable[[], int | None]) -> None:
        self.exclude = exclude
        self.seconds = float("nan")

    def _servers(self) -> dict[int, float]:
        skip = self.exclude()
        skipped = {skip, *descendants(skip)} if skip else set()
        return process_cpu([p for p in descendants(os.getpid()) if p not in skipped])

    def __enter__(self) -> ServersCpu:
        self._before, self._self = self._servers(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._servers()
        self.seconds = (time.process_time() - self._self) + sum(
            v - self._before.get(pid, 0.0) for pid, v in after.items())


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the parser workers)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(_stat(entry.name)[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


class TreeSampler:
    """Samples the summed RSS of a process and its descendants every `interval` s, on a thread; `peak`
    is the largest sum seen: the memory the processes held at one moment, where the sum of each one's
    VmHWM adds peaks that need not coincide. A spike shorter than the interval can be missed."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids, refreshed = [self.pid], 0.0
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 0.5:  # a worker may be replaced; /proc walks are not free
                pids, refreshed = [self.pid, *descendants(self.pid)], time.monotonic()
            total = 0.0
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    rss = status_mb(pid, "VmRSS")
                    total += 0.0 if math.isnan(rss) else rss  # a zombie (a worker being replaced) has none
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process (VmHWM)."""
    return status_mb(pid, "VmHWM")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def load_agency(office: Office) -> Any:
    """The office's (only) agency as the daemon reads it from the config file."""
    from subdomaind.daemon.config import load_config

    return load_config(office.config_path).agencies[0]


def loadavg() -> str:
    """The 1-minute load average: other work on this 2-core machine skews every figure."""
    return f"{os.getloadavg()[0]:.2f}"


def header(raw: bytes, name: str) -> str:
    """One header of a raw message, unfolded (enough for Message-ID)."""
    import email
    import email.policy

    return str(email.message_from_bytes(raw, policy=email.policy.default)[name] or "").strip()
