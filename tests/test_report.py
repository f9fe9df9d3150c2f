"""The monthly report over a database holding November 2026 with known figures: every figure, the text,
HTML, CSV and PDF renderings, the mail's structure (charts inline, the PDF attached), when it falls due,
and what people see: the HTML in headless Chromium at 390 and 800 px (no horizontal overflow) and the PDF
through pdftoppm, written to tests/artifacts/ to be looked at."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, time
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import Config
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.reminders import format_duration
from subdomaind.workflows.report import (
    MonthlyReport,
    build_report,
    chart_steps,
    chart_weeks,
    render_csv,
    render_mail,
    render_pdf,
    report_due,
    run_scheduled,
    send_report,
)
from subdomaind.workflows.sop import load_sop
from subdomaind.workflows.store import Audit, Decision, Outbox, Request, StepRun, make_engine, make_sessionmaker
from subdomaind.workflows.worktime import WorkCalendar
from tests.chromium import ARTIFACTS, CHROMIUM, measure, screenshot
from tests.devkit.devservers import Postgres
from tests.devkit.localoffice import ACTORS, DEMO_LOGO, STAFF, make_config
from tests.test_reminders import FrozenClock, make_ctx, seed_request, wib

CAL = WorkCalendar("Asia/Jakarta")
NOVEMBER = datetime(2026, 11, 1).date()
NOW = wib(2026, 12, 1, 7, 5)  # Tuesday 1 December: the first working day after November
KADIS, KASI = ACTORS["kadis"][0], ACTORS["kasi"][0]
PLT = "plt.kadis@trenggalekkab.go.id"
NAMES = {KADIS: "Drs. Bambang Sutejo, M.Si", KASI: "Sri Wahyuni, S.Kom", PLT: "Ir. Hadi Prasetyo"}
KADIS_TITLE = "Kepala Dinas Komunikasi dan Informatika"
KASI_TITLE = "Kepala Seksi Layanan Infrastruktur TIK"

Office = tuple[Config, sessionmaker[Session]]


# The PDF's kop as the letters have it, with the coat of arms.
LETTER = {"kop": ["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"], "city": "Trenggalek",
          "address_line": "Jl. Panglima Sudirman No. 1 Trenggalek", "logo": str(DEMO_LOGO)}


@pytest.fixture
def office(tmp_path: Path) -> Iterator[Office]:
    cfg = make_config(tmp_path / "cfg", agency_extra={"names": NAMES, "delegates": {"kadis": [PLT]},
                                                       "letter": LETTER})
    engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
    upgrade(engine)
    yield cfg, make_sessionmaker(engine)
    engine.dispose()


def _run(s: Session, request_id: int, key: str, kind: str, role: str | None, opened: datetime,
         closed: datetime | None, outcome: str | None = None) -> StepRun:
    run = StepRun(request_id=request_id, key=key, kind=kind, role=role, status="done" if closed else "open",
                  opened_at=opened, closed_at=closed, outcome=outcome, attempts=0)
    s.add(run)
    s.flush()
    return run


def _decide(s: Session, run: StepRun, actor: str, decision: str, note: str | None = None,
            on_behalf_of: str | None = None) -> None:
    assert run.closed_at is not None
    s.add(Decision(request_id=run.request_id, step_id=run.id, decision=decision, actor=actor, note=note,
                   on_behalf_of=on_behalf_of, accepted=True, rules=[], at=run.closed_at))


def _closed(s: Session, ticket: str, received: datetime, closed: datetime, subdomain: str, unit: str,
            status: str = "done") -> Request:
    """A request closed at `closed`, with no step visits yet (the caller adds them)."""
    req, placeholder = seed_request(s, ticket=ticket, step="selesai" if status == "done" else "berakhir_ditolak",
                                    kind="end", role=None, status=status, opened=closed, received=received,
                                    closed=closed, subdomain=subdomain, unit=unit, step_status="done")
    s.delete(placeholder)
    return req


def seed_month(sessions: sessionmaker[Session]) -> None:
    """November 2026 (WIB, office 07.30-16.00, 510 working minutes a day, no holidays that month)."""
    with sessions.begin() as s:
        # 0101: received Mon 2 Nov 08.00; Kadis 2 h (within 1 hari), Kasi 30 min (within 1 jam); done Tue 3 Nov 08.00.
        r1 = _closed(s, "SD/2026/0101", wib(2026, 11, 2, 8, 0), wib(2026, 11, 3, 8, 0), "bappeda", "Bappeda")
        _decide(s, _run(s, r1.id, "disposisi", "approval", "kadis", wib(2026, 11, 2, 8, 0),
                        wib(2026, 11, 2, 10, 0), "approve"), KADIS, "approve")
        _decide(s, _run(s, r1.id, "periksa", "approval", "kasi", wib(2026, 11, 2, 10, 0),
                        wib(2026, 11, 2, 10, 30), "approve"), KASI, "approve")
        # 0102: received Tue 3 Nov 09.00; Kadis two days (late), Kasi 2 h (late) and PERBAIKI; the unit
        # corrects in one day (within 2 hari); Kasi 30 min; done Thu 12 Nov 10.00.
        r2 = _closed(s, "SD/2026/0102", wib(2026, 11, 3, 9, 0), wib(2026, 11, 12, 10, 0), "dinkes", "Dinas Kesehatan")
        _decide(s, _run(s, r2.id, "disposisi", "approval", "kadis", wib(2026, 11, 3, 9, 0),
                        wib(2026, 11, 5, 9, 0), "approve"), KADIS, "approve")
        _decide(s, _run(s, r2.id, "periksa", "approval", "kasi", wib(2026, 11, 5, 9, 0),
                        wib(2026, 11, 5, 11, 0), "revise"), KASI, "revise", note="Lengkapi NIP penanggung jawab.")
        _run(s, r2.id, "lengkapi", "wait_requester", "pemohon", wib(2026, 11, 5, 11, 0), wib(2026, 11, 6, 11, 0), "ok")
        _decide(s, _run(s, r2.id, "periksa", "approval", "kasi", wib(2026, 11, 6, 11, 0),
                        wib(2026, 11, 6, 11, 30), "approve"), KASI, "approve")
        # 0103: received Mon 9 Nov 08.00; the acting Kadis (Plt) rejects in 1 h; rejected 09.30.
        r3 = _closed(s, "SD/2026/0103", wib(2026, 11, 9, 8, 0), wib(2026, 11, 9, 9, 30), "judi", "Unit Contoh",
                     status="rejected")
        _decide(s, _run(s, r3.id, "disposisi", "approval", "kadis", wib(2026, 11, 9, 8, 0),
                        wib(2026, 11, 9, 9, 0), "reject"), PLT, "reject", note="Tidak sesuai nomenklatur",
                on_behalf_of="kadis")
        # 0104: received Wed 18 Nov 10.00, still waiting on the Kadis at the month's end.
        seed_request(s, ticket="SD/2026/0104", step="disposisi", kind="approval", role="kadis",
                     opened=wib(2026, 11, 18, 10, 0), received=wib(2026, 11, 18, 10, 0), subdomain="dispar",
                     unit="Dinas Pariwisata")
        # 0105: received Wed 28 Oct 08.00 (last month); the admin confirmed Mon 2 Nov 12.00: finished in November.
        r5 = _closed(s, "SD/2026/0105", wib(2026, 10, 28, 8, 0), wib(2026, 11, 2, 12, 0), "disdik", "Dinas Pendidikan")
        _run(s, r5.id, "konfigurasi", "wait_requester", "pemohon", wib(2026, 10, 30, 8, 0), wib(2026, 11, 2, 12, 0),
             "confirm")
        # 0106: received Mon 23 Nov 08.00; the admin reports KENDALA Wed 25 Nov 09.00; open at the month's end.
        r6, _ = seed_request(s, ticket="SD/2026/0106", step="perbaikan_kendala", kind="approval", role="kasi",
                                 opened=wib(2026, 11, 25, 9, 5), received=wib(2026, 11, 23, 8, 0),
                                 subdomain="dishub", unit="Dinas Perhubungan")
        _run(s, r6.id, "konfigurasi", "wait_requester", "pemohon", wib(2026, 11, 24, 8, 0), wib(2026, 11, 25, 9, 0),
             "problem")
        s.add(Audit(agency="trenggalek", request_id=r6.id, at=wib(2026, 11, 25, 9, 0), actor="admin@dishub.example",
                    event="requester.problem", detail={"note": "Situs belum dapat dibuka dari luar kantor."}))
        # 0107: received Mon 30 Nov, open; 0108: received in December, not in the report.
        seed_request(s, ticket="SD/2026/0107", step="disposisi", kind="approval", role="kadis",
                     opened=wib(2026, 11, 30, 10, 0), received=wib(2026, 11, 30, 10, 0), subdomain="satpol",
                     unit="Satpol PP")
        seed_request(s, ticket="SD/2026/0108", step="disposisi", kind="approval", role="kadis",
                     opened=wib(2026, 12, 1, 7, 0), received=wib(2026, 12, 1, 7, 0), subdomain="baru")


def report(office: Office) -> MonthlyReport:
    cfg, sessions = office
    seed_month(sessions)
    agency = cfg.agencies[0]
    with sessions() as s:
        return build_report(s, agency, load_sop(agency.sop), CAL, NOVEMBER, NOW)


# The figures the seed was written to give, worked out by hand above.
STEPS = {  # key: (count, within, median, longest)
    "disposisi": (3, 2, "2 jam", "2 hari"),
    "periksa": (3, 2, "30 menit", "2 jam"),
    "lengkapi": (1, 1, "1 hari", "1 hari"),
    "konfigurasi": (2, 2, "1 hari 2 jam", "1 hari 4 jam"),
}
OFFICIALS = [  # slowest median first
    (f"{NAMES[KADIS]}, {KADIS_TITLE}", 2, 1, "1 hari 1 jam", "2 hari"),
    (f"{NAMES[PLT]}, Plt./Plh. {KADIS_TITLE}", 1, 1, "1 jam", "1 jam"),
    (f"{NAMES[KASI]}, {KASI_TITLE}", 3, 2, "30 menit", "2 jam"),
]
WEEKS = [("1 Nov", 0, 0, 0), ("2–8 Nov", 2, 2, 0), ("9–15 Nov", 1, 1, 1), ("16–22 Nov", 1, 0, 0),
         ("23–29 Nov", 1, 0, 0), ("30 Nov", 1, 0, 0)]


def test_every_figure_of_the_month(office: Office) -> None:
    check_figures(report(office))


def test_every_figure_on_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "cfg", agency_extra={"names": NAMES, "delegates": {"kadis": [PLT]}})
    engine = make_engine(postgres.create_database(f"report_{secrets.token_hex(4)}"))
    upgrade(engine)
    try:
        check_figures(report((cfg, make_sessionmaker(engine))))
    finally:
        engine.dispose()


def check_figures(r: MonthlyReport) -> None:
    assert (r.month_name, r.received, r.finished, r.rejected, r.open_at_end) == ("November 2026", 6, 3, 1, 3)
    # Received to closed: 0101 510 min, 0105 1770 min, 0102 3630 min; the median is 0105's.
    assert r.median_finish == "3 hari 4 jam" == format_duration(1770, 510)
    days, minutes = load_sop("trenggalek").total()
    sop_minutes = days * 510 + minutes
    assert r.finished_within_sop == sum(m <= sop_minutes for m in (510, 1770, 3630))
    got = {st.key: (st.wait.count, st.wait.within, st.wait.median, st.wait.longest) for st in r.steps}
    assert got == STEPS
    assert [st.key for st in r.steps] == ["disposisi", "periksa", "lengkapi", "konfigurasi"]  # the SOP's order
    disposisi = r.steps[0]
    assert disposisi.who == KADIS_TITLE and disposisi.mutu == "1 hari" and round(disposisi.wait.pct or 0) == 67
    assert [(o.who, o.wait.count, o.wait.within, o.wait.median, o.wait.longest) for o in r.officials] == OFFICIALS
    assert [(w.label, w.received, w.finished, w.rejected) for w in r.weeks] == WEEKS
    assert [(f.ticket, f.word) for f in r.flagged] == [("SD/2026/0102", "PERBAIKI"), ("SD/2026/0106", "KENDALA")]
    assert r.flagged[0].by == f"{NAMES[KASI]}, {KASI_TITLE}" and r.flagged[0].note == "Lengkapi NIP penanggung jawab."
    assert r.flagged[1].note == "Situs belum dapat dibuka dari luar kantor."
    assert r.flagged[0].at == "5 November 2026 pukul 11.00 WIB"


def test_text_html_and_csv_carry_the_figures(office: Office) -> None:
    cfg, _ = office
    r = report(office)
    subject, text, html = render_mail(r, cfg.agencies[0])
    assert subject == "Laporan bulanan layanan sub domain November 2026"
    for needle in ("Permohonan diterima        : 6", "Selesai                    : 3", "Ditolak                    : 1",
                   "Masih terbuka akhir bulan  : 3", "Median waktu penyelesaian  : 3 hari 4 jam",
                   "2–8 Nov        2 / 2 / 0", "9–15 Nov       1 / 1 / 1",
                   "Tepat waktu: 67% (2/3) — DI BAWAH 80%; median 2 jam; terlama 2 hari",
                   "Tepat waktu: 100% (2/2); median 1 hari 2 jam; terlama 1 hari 4 jam",
                   f"- {NAMES[KADIS]}, {KADIS_TITLE}\n  2 keputusan; tepat waktu 50% (1/2); median 1 hari 1 jam",
                   f"PERBAIKI oleh {NAMES[KASI]}, {KASI_TITLE}, 5 November 2026 pukul 11.00 WIB",
                   "Catatan: Situs belum dapat dibuka dari luar kantor.",
                   "DIKEMBALIKAN UNTUK PERBAIKAN ATAU DILAPORKAN KENDALA (2)"):
        assert needle in text, needle
    assert 'src="cid:grafik-mingguan@subdomaind"' in html and 'src="cid:grafik-kepatuhan@subdomaind"' in html
    for needle in (">6</div>", ">3</div>", ">1</div>", "3 hari 4 jam", "Ir. Hadi Prasetyo, Plt./Plh. Kepala Dinas",
                   "67%</b>", "(2/3)", "Lengkapi NIP penanggung jawab.", "30 Nov"):
        assert needle in html, needle
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    assert [row["tiket"] for row in rows] == [f"SD/2026/010{i}" for i in range(1, 8)]
    by = {row["tiket"]: row for row in rows}
    assert by["SD/2026/0105"]["menit_kerja_penyelesaian"] == "1770" and by["SD/2026/0105"]["status_akhir_bulan"] == "selesai"
    assert by["SD/2026/0103"]["status_akhir_bulan"] == "ditolak" and by["SD/2026/0104"]["status_akhir_bulan"] == "terbuka"
    assert by["SD/2026/0102"]["perbaikan"] == "ya" and by["SD/2026/0106"]["kendala"] == "ya"
    assert by["SD/2026/0101"]["diterima"] == "2026-11-02 08:00"
    assert by["SD/2026/0104"]["ditutup"] == by["SD/2026/0104"]["menit_kerja_penyelesaian"] == ""
    # A unit name a spreadsheet would run as a formula stays text.
    hostile = replace(r, rows=(*r.rows[:1], {**r.rows[1], "unit_kerja": '=HYPERLINK("http://x.example","klik")'}))
    cell = list(csv.DictReader(io.StringIO(render_csv(hostile))))[1]["unit_kerja"]
    assert cell == "'=HYPERLINK(\"http://x.example\",\"klik\")"


def test_pdf_holds_the_same_figures(office: Office) -> None:
    from pypdf import PdfReader

    cfg, _ = office
    pdf = render_pdf(report(office), cfg.agencies[0])
    text = " ".join(" ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(pdf)).pages).split())
    for needle in ("Laporan Bulanan Layanan Sub Domain — November 2026", "Diterima", "Terbuka di akhir bulan",
                   "Median waktu penyelesaian: 3 hari 4 jam", "67% (2/3)", "1 hari 4 jam",
                   f"{NAMES[PLT]}, Plt./Plh. {KADIS_TITLE}", "SD/2026/0106", "KENDALA", "PERBAIKI"):
        assert needle in text, needle


def test_send_report_mails_html_with_inline_charts_and_the_pdf(office: Office) -> None:
    cfg, sessions = office
    seed_month(sessions)
    with sessions.begin() as s:
        send_report(make_ctx(s, cfg, FrozenClock(NOW)), CAL, NOVEMBER, NOW)
    with sessions() as s:
        row = s.execute(select(Outbox).where(Outbox.purpose == "report")).scalar_one()
        sent = s.execute(select(Audit).where(Audit.event == "report.sent")).scalar_one()
    assert row.rcpts == sorted({KADIS, STAFF}) and sent.detail["month"] == "2026-11"
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    parts = list(related.iter_parts())
    assert parts[0].get_content_type() == "text/html"
    html = parts[0].get_content()
    for img in parts[1:]:
        assert img.get_content_type() == "image/png" and img.get_content_disposition() == "inline"
        assert f'src="cid:{img["Content-ID"].strip("<>")}"' in html
        assert img.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(parts) == 3
    pdfs = [a for a in msg.iter_attachments() if a.get_content_type() == "application/pdf"]
    assert [a.get_filename() for a in pdfs] == ["laporan-bulanan-trenggalek-2026-11.pdf"]
    assert pdfs[0].get_content().startswith(b"%PDF")


def test_the_daemon_step_sends_last_month_once(office: Office) -> None:
    cfg, sessions = office
    seed_month(sessions)
    clock = FrozenClock(wib(2026, 12, 1, 6, 59))

    def step() -> bool:
        return run_scheduled(sessions, lambda s: make_ctx(s, cfg, clock), CAL, clock.now, time(7, 0))

    assert step() is False  # before the digest time of the first working day: not yet, not settled
    clock.now = NOW
    assert step() is True
    assert step() is True  # settled: nothing more
    with sessions() as s:
        rows = s.execute(select(Outbox.purpose, Outbox.subject)).all()
        events = s.execute(select(Audit.event, Audit.detail).where(Audit.event.like("report.%"))).all()
    assert rows == [("report", "Laporan bulanan layanan sub domain November 2026")]
    assert [(e, d["month"], d["received"]) for e, d in events] == [("report.sent", "2026-11", 6)]


def test_report_due_on_the_first_working_day_once(office: Office) -> None:
    cfg, sessions = office
    at = time(7, 0)
    with sessions() as s:
        # 1 November 2026 is a Sunday: October's report waits for Monday 2 November, 07.00.
        assert report_due(s, "trenggalek", CAL, wib(2026, 11, 1, 9, 0), at) is None
        assert report_due(s, "trenggalek", CAL, wib(2026, 11, 2, 6, 59), at) is None
        assert report_due(s, "trenggalek", CAL, wib(2026, 11, 2, 7, 0), at) == datetime(2026, 10, 1).date()
        assert report_due(s, "trenggalek", CAL, NOW, at) == NOVEMBER
    with sessions.begin() as s:
        send_report(make_ctx(s, cfg, FrozenClock(NOW)), CAL, NOVEMBER, NOW)
    with sessions() as s:
        assert report_due(s, "trenggalek", CAL, wib(2026, 12, 1, 9, 0), at) is None
        assert report_due(s, "trenggalek", CAL, wib(2026, 12, 15, 9, 0), at) is None
        assert report_due(s, "trenggalek", CAL, wib(2027, 1, 4, 7, 30), at) == datetime(2026, 12, 1).date()


def test_empty_month_renders(office: Office) -> None:
    cfg, sessions = office
    agency = cfg.agencies[0]
    with sessions() as s:
        r = build_report(s, agency, load_sop(agency.sop), CAL, NOVEMBER, NOW)
    assert (r.received, r.finished, r.steps, r.officials, r.flagged) == (0, 0, (), (), ())
    _, text, html = render_mail(r, agency)
    assert "Tidak ada langkah yang selesai bulan ini." in text and "Tidak ada keputusan pejabat bulan ini." in html
    assert render_pdf(r, agency).startswith(b"%PDF")
    assert chart_weeks(r)[:4] == chart_steps(r)[:4] == b"\x89PNG"
    # The scheduled report of a month without any request is not mailed (a service that began later).
    with sessions.begin() as s:
        send_report(make_ctx(s, cfg, FrozenClock(NOW)), CAL, NOVEMBER, NOW)
    with sessions() as s:
        assert s.execute(select(Outbox)).first() is None
        assert s.execute(select(Audit.event)).scalars().all() == ["report.empty"]
        assert report_due(s, "trenggalek", CAL, wib(2026, 12, 2, 9, 0)) is None
    with sessions.begin() as s:  # asked for by hand, it is
        send_report(make_ctx(s, cfg, FrozenClock(NOW)), CAL, NOVEMBER, NOW, by_hand=True)
    with sessions() as s:
        assert s.execute(select(Outbox.purpose)).scalars().all() == ["report"]


# --- as people see it ------------------------------------------------------------------------------

def test_report_as_people_see_it(office: Office, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("pdftoppm") is None:
        pytest.skip("chromium and pdftoppm (poppler-utils) are needed: apt-get install chromium poppler-utils")
    pil = pytest.importorskip("PIL.Image")
    cfg, _ = office
    r = report(office)
    _, _, html = render_mail(r, cfg.agencies[0], inline=False)
    for width, height in ((390, 4200), (800, 3000)):
        scroll, inner, _ = measure(html, width, tmp_path, "report")
        assert scroll <= inner == width, f"horizontal overflow at {width} px: {scroll}"
        out = screenshot(html, width, height, tmp_path, "report")
        with pil.open(out) as img:
            rgb = img.convert("RGB")
            assert rgb.size == (width, height)
            colors = dict((c, n) for n, c in (rgb.getcolors(maxcolors=1 << 22) or []))
            navy = sum(n for c, n in colors.items() if c == (30, 58, 95))
            assert navy > 10_000  # the header bar and the chart bars
            greens = sum(n for (cr, cg, cb), n in colors.items() if cg > 100 and cr < 60 and cb < 90)
            reds = sum(n for (cr, cg, cb), n in colors.items() if cr > 150 and cg < 60 and cb < 60)
            assert greens > 500 and reds > 500  # the compliance bars: 100% green, 67% red
    if shutil.which("tesseract"):
        # The figures as the eye reads them off the 800 px picture: the four boxes, the weeks, the median.
        ocr = subprocess.run(["tesseract", str(ARTIFACTS / "report-800.png"), "-", "-l", "ind"], capture_output=True,
                             text=True, timeout=120, check=False).stdout
        seen = " ".join(ocr.replace("–", "-").split())
        for needle in ("6 3 1 3", "Diterima Selesai Ditolak Terbuka", "3 hari 4 jam", "2-8 Nov 2 2 0",
                       "9-15 Nov 1 1 1", "16-22 Nov 1 0 0", "30 Nov 1 0 0", "(2/3)", "(1/1)"):
            assert needle in seen, (needle, seen[:2000])
    pdf = tmp_path / "laporan.pdf"
    pdf.write_bytes(render_pdf(r, cfg.agencies[0]))
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 1
    for n, page in enumerate(pages, start=1):
        shutil.copy(page, ARTIFACTS / f"report-pdf-{n}.png")
    with pil.open(pages[0]) as img:
        assert img.size[0] == round(595 * 60 / 72) + 1 or abs(img.size[0] - 496) <= 2  # A4 at 60 dpi
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 22) or []) > 50
    if shutil.which("tesseract"):
        big = tmp_path / "big"
        subprocess.run(["pdftoppm", "-r", "150", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(big)],
                       check=True, timeout=120)
        ocr = subprocess.run(["tesseract", f"{big}.png", "-", "-l", "ind"], capture_output=True, text=True,
                             timeout=120, check=False).stdout
        words = " ".join(ocr.split())
        for needle in ("November 2026", "Diterima", "Selesai", "Ditolak", "3 hari 4 jam"):
            assert needle in words, (needle, words[:1500])


def test_cli_preview_writes_html_and_pdf_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from subdomaind.daemon.cli import main
    from tests.devkit.localoffice import config_data, write_config

    data = config_data(tmp_path / "cfg", agency_extra={"names": NAMES, "delegates": {"kadis": [PLT]}})
    path = write_config(tmp_path / "config.toml", data)
    state = Path(data["state_dir"])
    # Read-only: before the daemon made a database, it says so and creates nothing.
    assert main(["--config", str(path), "report", "--preview"]) == 1
    assert "belum ada basis data" in capsys.readouterr().err and not state.exists()
    state.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{state / 'subdomaind.db'}")
    upgrade(engine)
    seed_month(make_sessionmaker(engine))
    engine.dispose()
    html, pdf = tmp_path / "laporan.html", tmp_path / "laporan.pdf"
    assert main(["--config", str(path), "report", "--month", "2026-11", "--preview", "--html", str(html),
                 "--pdf", str(pdf)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Subjek: Laporan bulanan layanan sub domain November 2026")
    assert "Permohonan diterima        : 6" in out
    assert 'src="data:image/png;base64,' in html.read_text(encoding="utf-8")  # a browser shows it as is
    assert pdf.read_bytes().startswith(b"%PDF")
    assert main(["--config", str(path), "report", "--month", "2026-11", "--csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 7
    assert main(["--config", str(path), "report", "--month", "2026-13", "--preview"]) == 2
    assert "TAHUN-BULAN" in capsys.readouterr().err
    assert main(["--config", str(path), "report", "--agency", "lain", "--preview"]) == 2
