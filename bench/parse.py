"""Benchmark `parsers.parse` on request mail: body-form throughput, 2-page PDF form latency, and peak RSS with
a 20 MB attachment. Every message is generated in memory; one summary line per figure with its target;
the exit status is non-zero when a target is missed.

    .venv/bin/python bench/parse.py            # all three figures, well under a minute
    .venv/bin/python bench/parse.py --quick    # fewer rounds (CI smoke)

Targets: >= 300 body-form messages/s on one core; <= 150 ms per 2-page PDF form message; peak RSS < 150 MB
parsing a message with a 20 MB attachment (measured in a fresh child process so the other figures and the
generation of the 20 MB message do not count).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from subdomaind.parsers import ParseOptions, parse  # noqa: E402

OPTIONS = ParseOptions(zone="trenggalekkab.go.id", mailbox_address="layanan@trenggalekkab.go.id")
BODY_TARGET = 300.0  # messages per second
PDF_TARGET_MS = 150.0
RSS_TARGET_MB = 150.0

UNITS = [
    ("dinsos", "Dinas Sosial", "Lukman Hakim, S.Kom.", "19870412 201001 1 003", "0812-3456-7890"),
    ("disdik", "Dinas Pendidikan", "Siti Rahmawati, S.Pd.", "19850923 200903 2 004", "0813-3012-4567"),
    (
        "bappeda",
        "Badan Perencanaan Pembangunan Daerah",
        "Agus Setiawan, S.T.",
        "19790115 200501 1 002",
        "0857-3344-5566",
    ),
    ("dinkes", "Dinas Kesehatan", "dr. Rina Marlina", "19900305 201503 2 001", "0821-4455-6677"),
]


def _headers(i: int, subject: str, extra: str = "") -> str:
    return (
        f"From: Perangkat Daerah {i} <opd{i}@trenggalekkab.go.id>\n"
        "To: layanan@trenggalekkab.go.id\n"
        f"Subject: {subject}\n"
        "Date: Tue, 10 Nov 2026 09:15:00 +0700\n"
        f"Message-ID: <bench-{i}@mail.trenggalekkab.go.id>\n"
        "MIME-Version: 1.0\n" + extra
    )


def form_letter(i: int, rows: list[tuple[str, str]], unit: str) -> str:
    """A request letter with the form in its body, in one of three layouts by `i` (numbered, dashed,
    label-over-value); shared with bench/common.py so the backlog parses the same letters."""
    style = i % 3
    if style == 0:
        form = "".join(f"{n}. {label:<24}: {value}\n" for n, (label, value) in enumerate(rows, 1))
    elif style == 1:
        form = "".join(f"- {label} \u2013 {value}\n" for label, value in rows)
    else:
        form = "".join(f"{label}:\n{value}\n" for label, value in rows)
    return (
        f"Nomor    : 460/{100 + i}/406.011/2026          Trenggalek, 10 November 2026\n"
        "Hal      : Permohonan Pembuatan Sub Domain\n\nYth. Kepala Dinas Komunikasi dan Informatika\n\n"
        "Dengan hormat,\nbersama ini kami mengajukan permohonan sub domain sebagai berikut:\n\n"
        f"{form}\nDemikian permohonan ini kami sampaikan.\n\nKEPALA {unit.upper()}\n\nDrs. NAMA KEPALA\n"
        "NIP. 19680411 199303 1 009\n"
    )


def body_message(i: int) -> bytes:
    """A request whose form is in the plain-text body, in one of three layouts."""
    sub, unit, name, nip, phone = UNITS[i % len(UNITS)]
    ip = f"203.0.113.{i % 250 + 1}"
    rows = [
        ("Nama Sub Domain", f"{sub}{i}.trenggalekkab.go.id"),
        ("Perangkat Daerah", unit),
        ("Nama Penanggung Jawab", name),
        ("NIP", nip),
        ("Jabatan", "Pranata Komputer Ahli Pertama"),
        ("No. HP (Whatsapp)", phone),
        ("Email", f"pic{i}@gmail.com"),
        ("Fungsi Aplikasi", f"Website resmi {unit} untuk publikasi informasi layanan publik"),
        ("Jenis Layanan", "Sub Domain"),
        ("Alamat IP", ip),
    ]
    text = form_letter(i, rows, unit)
    head = _headers(
        i, "Permohonan Sub Domain", 'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n'
    )
    return (head + "\n" + text).encode("utf-8")


def two_page_pdf(i: int) -> bytes:
    """A letter page and a bordered-table form page, as units send them."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle

    sub, unit, name, nip, phone = UNITS[i % len(UNITS)]
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
    rows = [
        ["No", "Uraian", "Isian"],
        ["1", "Nama Sub Domain", f"{sub}{i}.trenggalekkab.go.id"],
        ["2", "Perangkat Daerah", unit],
        ["3", "Nama Pengelola", name],
        ["4", "NIP", nip],
        ["5", "Jabatan", "Pranata Komputer Ahli Pertama"],
        ["6", "No. HP (Whatsapp)", phone],
        ["7", "Alamat Email", f"pic{i}@gmail.com"],
        ["8", "Fungsi Aplikasi", f"Website resmi {unit}"],
        ["9", "Jenis Layanan", "Sub Domain"],
        ["10", "Alamat IP", f"198.51.100.{i % 250 + 1}"],
    ]
    table = Table(rows, colWidths=[1.2 * cm, 5 * cm, 10 * cm])
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.7, colors.black)]))
    story.append(table)
    doc.build(story)
    return buf.getvalue()


def with_attachment(i: int, text: str, data: bytes, filename: str, ctype: str) -> bytes:
    boundary = f"=_bench_{i}"
    head = _headers(i, "Permohonan Sub Domain", f'Content-Type: multipart/mixed; boundary="{boundary}"\n')
    body = (
        f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
        f'--{boundary}\nContent-Type: {ctype}; name="{filename}"\nContent-Transfer-Encoding: base64\n'
        f'Content-Disposition: attachment; filename="{filename}"\n\n'
    )
    return (head + body).encode() + base64.encodebytes(data) + f"--{boundary}--\n".encode()


def big_pdf(size: int) -> bytes:
    """A one-page PDF whose scanned image (random, so incompressible) makes it `size` bytes, with a text
    layer holding the form. Written by hand so generating 20 MB takes a moment, not a minute."""
    # Imported here, not at the top: the RSS children run this file and must carry only the parsers.
    from tests.devkit.localoffice import scanned_pdf

    rng = random.Random(20)
    side = int((size / 3) ** 0.5)
    image = zlib.compress(rng.randbytes(side * side * 3), 1)
    return scanned_pdf(b"BT /F1 11 Tf 72 760 Td (Nama Sub Domain : dinsos) Tj 0 -16 Td (Perangkat Daerah : Dinas "
                       b"Sosial) Tj ET", image, width=side, height=side, image_filter="FlateDecode")


def bench_body(seconds: float) -> float:
    messages = [body_message(i) for i in range(400)]
    for raw in messages[:20]:  # warm caches and imports, as a running daemon has them
        assert parse(raw, OPTIONS).kind == "request"
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for raw in messages:
            parse(raw, OPTIONS)
        count += len(messages)
    return count / (time.perf_counter() - start)


def bench_pdf(rounds: int) -> float:
    messages = [
        with_attachment(i, "Terlampir surat dan formulir.", two_page_pdf(i), "formulir.pdf", "application/pdf")
        for i in range(8)
    ]
    first = parse(messages[0], OPTIONS)
    assert first.request is not None and first.request.source == "pdf", first.request
    timings = []
    for r in range(rounds):
        raw = messages[r % len(messages)]
        start = time.perf_counter()
        parse(raw, OPTIONS)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def rss_child(path: str, mime_only: bool) -> None:
    raw = Path(path).read_bytes()
    if mime_only:
        from subdomaind.parsers.mime import parse_mime

        parse_mime(raw, OPTIONS.limits)
    else:
        result = parse(raw, OPTIONS)
        assert result.kind == "request", result.kind
    print(f"{own_peak_mb():.1f}")


def own_peak_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: a child started by subprocess inherits its
    parent's maxrss at fork, so it could never read below the bench parent that holds the 20 MB message."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_rss() -> tuple[float, float]:
    """Peak RSS of a fresh process parsing the message, and of one only reading its MIME structure."""
    form = (
        "Nama Sub Domain : dinsos\nPerangkat Daerah : Dinas Sosial\nNama Pengelola : Lukman Hakim\n"
        "No. HP : 0812-3456-7890\nEmail : lukman@gmail.com\nKeperluan : Website resmi Dinas Sosial\n"
    )
    raw = with_attachment(1, form, big_pdf(20 * 1024 * 1024), "scan_lampiran.pdf", "application/pdf")
    with tempfile.NamedTemporaryFile(suffix=".eml", delete=False) as tmp:
        tmp.write(raw)
    peaks = []
    try:
        for mode in ("--rss-child", "--rss-child-mime"):
            done = subprocess.run(
                [sys.executable, __file__, mode, tmp.name], capture_output=True, text=True, check=True, timeout=120
            )
            peaks.append(float(done.stdout.strip().splitlines()[-1]))
    finally:
        os.unlink(tmp.name)
    return peaks[0], peaks[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss-child", metavar="EML", help=argparse.SUPPRESS)
    parser.add_argument("--rss-child-mime", metavar="EML", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child or args.rss_child_mime:
        rss_child(args.rss_child or args.rss_child_mime, mime_only=bool(args.rss_child_mime))
        return 0
    failed = False
    rate = bench_body(1.5 if args.quick else 5.0)
    ok = rate >= BODY_TARGET
    failed |= not ok
    print(f"body-form messages/s: {rate:8.0f}   target >= {BODY_TARGET:.0f}   {'ok' if ok else 'MISSED'}")
    ms = bench_pdf(16 if args.quick else 60)
    ok = ms <= PDF_TARGET_MS
    failed |= not ok
    print(f"ms per 2-page PDF form message: {ms:6.1f}   target <= {PDF_TARGET_MS:.0f}   {'ok' if ok else 'MISSED'}")
    mb, mime_mb = bench_rss()
    ok = mb < RSS_TARGET_MB
    failed |= not ok
    print(
        f"peak RSS with a 20 MB attachment (MB): {mb:6.1f}   target < {RSS_TARGET_MB:.0f}   {'ok' if ok else 'MISSED'}"
        f"   (parsers.mime.parse_mime alone: {mime_mb:.1f} MB)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
