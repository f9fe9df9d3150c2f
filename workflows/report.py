"""The Kepala Dinas's monthly report: how the service performed over one calendar month.

`build_report` reads the store into a frozen `MonthlyReport` (requests received, finished, rejected and open
at the month's end; Mutu Baku compliance, median and longest wait per SOP step and per official; requests
sent back for revision or reported with KENDALA; the month week by week). The renderers turn it into the
mail (text, and HTML showing the charts), the same report as an A4 PDF, the charts (matplotlib PNGs) and a
CSV for the office's records. `send_report` queues it to the head of the SOP and the digest recipients;
`report_due` says which month is due, so the daemon sends each one on the first working day after it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import pickle
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.workflows.answers import person_label
from subdomaind.workflows.digest import DEFAULT_DIGEST_TIME, ZONE_LABELS
from subdomaind.workflows.engine import Ctx, audit
from subdomaind.workflows.mailer import MailAttachment, Mailer, Rendered, format_tanggal
from subdomaind.workflows.reminders import format_duration
from subdomaind.workflows.settings import AgencySettings
from subdomaind.workflows.sop import Sop
from subdomaind.workflows.store import Audit, Decision, Request, StepRun
from subdomaind.workflows.worktime import WorkCalendar

BULAN = (
    "Januari", "Februari", "Maret", "April", "Mei", "Juni",
    "Juli", "Agustus", "September", "Oktober", "November", "Desember",
)
_BULAN_PENDEK = ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des")
# Compliance under this share is marked in red in the mail, the PDF and the chart.
COMPLIANCE_TARGET = 80.0
CHART_WEEKS = "grafik-mingguan@subdomaind"
CHART_STEPS = "grafik-kepatuhan@subdomaind"


@dataclass(frozen=True)
class Wait:
    """Working minutes of finished step visits: how many, median, longest, and how many within Mutu Baku."""

    count: int
    median_minutes: float
    longest_minutes: float
    within: int | None  # None: no Mutu Baku to measure against
    median: str
    longest: str

    @property
    def pct(self) -> float | None:
        return None if self.within is None or not self.count else 100.0 * self.within / self.count


@dataclass(frozen=True)
class StepFigure:
    key: str
    sop_no: str
    title: str
    who: str  # the jabatan (or "Sistem (otomatis)", "Unit Kerja Pemohon")
    mutu: str | None
    wait: Wait


@dataclass(frozen=True)
class OfficialFigure:
    address: str
    who: str  # name and jabatan
    wait: Wait


@dataclass(frozen=True)
class WeekFigure:
    label: str
    received: int
    finished: int
    rejected: int


@dataclass(frozen=True)
class Flagged:
    ticket: str
    fqdn: str
    unit: str
    word: str  # PERBAIKI | KENDALA
    at: str
    by: str
    note: str


@dataclass(frozen=True)
class MonthlyReport:
    agency_id: str
    agency_name: str
    sop_title: str
    month: date  # the first day of the month reported
    month_name: str  # "November 2026"
    generated: str
    office_hours: str
    received: int
    finished: int
    rejected: int
    open_at_end: int
    finished_within_sop: int
    median_finish: str
    sop_total: str
    steps: tuple[StepFigure, ...]
    officials: tuple[OfficialFigure, ...]
    weeks: tuple[WeekFigure, ...]
    flagged: tuple[Flagged, ...]
    rows: tuple[dict[str, Any], ...]  # one per request of the month, for the CSV

    @property
    def slug(self) -> str:
        return f"{self.agency_id}-{self.month:%Y-%m}"


def parse_month(text: str) -> date:
    """"2026-11" -> date(2026, 11, 1); ValueError in Indonesian otherwise."""
    try:
        first = datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise ValueError(f"bulan {text!r} tidak dikenali; tulis sebagai TAHUN-BULAN, misalnya 2026-11") from None
    return first


def month_bounds(calendar: WorkCalendar, month: date) -> tuple[datetime, datetime]:
    """The month as [start, end) in the agency's time zone (aware datetimes)."""
    nxt = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (datetime.combine(month, time(0), calendar.tz), datetime.combine(nxt, time(0), calendar.tz))


def previous_month(calendar: WorkCalendar, now: datetime) -> date:
    first = calendar.local(now).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


def _wait(minutes: list[float], within: int | None, day_minutes: int) -> Wait:
    med = statistics.median(minutes) if minutes else 0.0
    top = max(minutes) if minutes else 0.0
    return Wait(count=len(minutes), median_minutes=med, longest_minutes=top, within=within,
                median=format_duration(med, day_minutes) if minutes else "-",
                longest=format_duration(top, day_minutes) if minutes else "-")


def _weeks(calendar: WorkCalendar, month: date, end_day: date) -> list[tuple[date, date]]:
    """The month cut into calendar weeks (Monday to Sunday), the first and last clipped to the month."""
    out: list[tuple[date, date]] = []
    day = month
    while day <= end_day:
        last = min(day + timedelta(days=6 - day.weekday()), end_day)
        out.append((day, last))
        day = last + timedelta(days=1)
    return out


def build_report(session: Session, agency: AgencySettings, sop: Sop, calendar: WorkCalendar, month: date,
                 now: datetime) -> MonthlyReport:
    """The report of `month` (its first day), as the store holds it at `now`."""
    s = session
    start, end = month_bounds(calendar, month)
    zone = ZONE_LABELS.get(agency.timezone, agency.timezone)
    dm = calendar.day_minutes

    def when(dt: datetime | None) -> str:
        return f"{format_tanggal(calendar.local(dt), with_time=True)} {zone}" if dt is not None else "-"

    mine = Request.agency == agency.id
    received = list(s.execute(select(Request).where(mine, Request.received_at >= start,
                                                    Request.received_at < end).order_by(Request.id)).scalars())
    closed = list(s.execute(select(Request).where(mine, Request.closed_at >= start, Request.closed_at < end,
                                                  Request.status.in_(("done", "rejected")))
                            .order_by(Request.id)).scalars())
    open_end = list(s.execute(select(Request).where(
        mine, Request.received_at < end, or_(Request.closed_at.is_(None), Request.closed_at >= end))
        .order_by(Request.id)).scalars())
    finished = [r for r in closed if r.status == "done"]
    rejected = [r for r in closed if r.status == "rejected"]
    finish_minutes = {r.id: calendar.working_minutes(r.received_at, r.closed_at)
                      for r in finished if r.closed_at is not None}
    days, minutes = sop.total()
    sop_minutes = days * dm + minutes

    # --- step visits finished in the month ---
    visits_in_month = (Request.agency == agency.id, StepRun.status == "done", StepRun.closed_at >= start,
                       StepRun.closed_at < end, StepRun.kind != "end")
    runs = list(s.execute(select(StepRun).join(Request, Request.id == StepRun.request_id)
                          .where(*visits_in_month).order_by(StepRun.id)).scalars())
    decisions = {d.step_id: d for d in s.execute(
        select(Decision).join(StepRun, StepRun.id == Decision.step_id).join(Request, Request.id == StepRun.request_id)
        .where(*visits_in_month, Decision.accepted.is_(True), Decision.decision != "cancel")
        .order_by(Decision.id)).scalars()}
    per_step: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    per_official: dict[tuple[str, str, bool], list[tuple[float, bool]]] = defaultdict(list)
    for run in runs:
        step = sop.steps.get(run.key)
        if step is None or run.closed_at is None:
            continue
        took = calendar.working_minutes(run.opened_at, run.closed_at)
        ok = step.time is None or run.closed_at <= calendar.deadline(run.opened_at, step.time)
        per_step[run.key].append((took, ok))
        d = decisions.get(run.id)
        if d is not None and run.role:
            per_official[(d.actor, d.on_behalf_of or run.role, bool(d.on_behalf_of))].append((took, ok))
    steps = []
    for key, step in sop.steps.items():  # in the SOP's own order
        if key not in per_step:
            continue
        visits = per_step[key]
        who = "Sistem (otomatis)" if step.kind == "action" or not step.actor else sop.roles[step.actor].title
        steps.append(StepFigure(
            key=key, sop_no=step.sop_no or "-", title=step.title, who=who, mutu=step.time.text if step.time else None,
            wait=_wait([t for t, _ in visits], sum(ok for _, ok in visits) if step.time else None, dm)))
    officials = sorted(
        (OfficialFigure(address=addr, who=person_label(agency, sop, addr, role, acting=acting,
                                                        address_if_unnamed=True),
                        wait=_wait([t for t, _ in v], sum(ok for _, ok in v), dm))
         for (addr, role, acting), v in per_official.items()),
        key=lambda o: (-o.wait.median_minutes, o.who))

    # --- sent back for revision, or KENDALA ---
    revisions = list(s.execute(
        select(Decision, Request, StepRun.role).join(Request, Request.id == Decision.request_id)
        .outerjoin(StepRun, StepRun.id == Decision.step_id)
        .where(Request.agency == agency.id, Decision.accepted.is_(True), Decision.decision == "revise",
               Decision.at >= start, Decision.at < end)).all())
    problems = list(s.execute(
        select(Audit, Request).outerjoin(Request, Request.id == Audit.request_id)
        .where(Audit.agency == agency.id, Audit.event == "requester.problem", Audit.at >= start,
               Audit.at < end)).all())

    def fqdn(r: Request | None) -> str:
        return f"{r.subdomain}.{agency.zone}" if r is not None and r.subdomain else "(belum disebutkan)"

    def flag(at: datetime, r: Request | None, word: str, by: str, note: object) -> tuple[datetime, Flagged]:
        return at, Flagged(ticket=r.ticket if r else "-", fqdn=fqdn(r), unit=(r.unit if r else None) or "-",
                           word=word, at=when(at), by=by, note=" ".join(str(note or "-").split())[:300])

    flagged = [flag(d.at, r, "PERBAIKI", person_label(agency, sop, d.actor, d.on_behalf_of or role,
                                                      acting=bool(d.on_behalf_of)), d.note)
               for d, r, role in revisions]
    flagged += [flag(a.at, r, "KENDALA", f"Unit Kerja Pemohon ({a.actor})", (a.detail or {}).get("note"))
                for a, r in problems]
    flagged.sort(key=lambda f: (f[0], f[1].ticket))

    # --- week by week ---
    last_day = (end - timedelta(days=1)).date()
    weeks = []
    for first, last in _weeks(calendar, month, last_day):
        lo = datetime.combine(first, time(0), calendar.tz)
        hi = datetime.combine(last + timedelta(days=1), time(0), calendar.tz)
        label = (f"{first.day}–{last.day} {_BULAN_PENDEK[month.month - 1]}" if first != last
                 else f"{first.day} {_BULAN_PENDEK[month.month - 1]}")
        weeks.append(WeekFigure(
            label=label,
            received=sum(1 for r in received if lo <= r.received_at < hi),
            finished=sum(1 for r in finished if r.closed_at is not None and lo <= r.closed_at < hi),
            rejected=sum(1 for r in rejected if r.closed_at is not None and lo <= r.closed_at < hi)))

    # --- the records, one row per request of the month ---
    flagged_words: dict[str, set[str]] = defaultdict(set)
    for _, f in flagged:
        flagged_words[f.ticket].add(f.word)
    seen: dict[int, Request] = {r.id: r for r in (*received, *closed, *open_end)}
    still_open = {r.id for r in open_end}
    rows = []
    for r in sorted(seen.values(), key=lambda r: r.id):
        spent = finish_minutes.get(r.id)
        status = "terbuka" if r.id in still_open else {"done": "selesai", "rejected": "ditolak"}.get(r.status, r.status)
        rows.append({
            "tiket": r.ticket, "sub_domain": fqdn(r), "unit_kerja": r.unit or "", "pemohon": r.requester,
            "diterima": calendar.local(r.received_at).strftime("%Y-%m-%d %H:%M"),
            "status_akhir_bulan": status,
            "ditutup": calendar.local(r.closed_at).strftime("%Y-%m-%d %H:%M")
            if r.closed_at and r.id not in still_open else "",
            "menit_kerja_penyelesaian": f"{spent:.0f}" if spent is not None else "",
            "dalam_mutu_baku_sop": ("ya" if spent <= sop_minutes else "tidak") if spent is not None else "",
            "perbaikan": "ya" if "PERBAIKI" in flagged_words[r.ticket] else "tidak",
            "kendala": "ya" if "KENDALA" in flagged_words[r.ticket] else "tidak",
        })

    med = statistics.median(finish_minutes.values()) if finish_minutes else None
    return MonthlyReport(
        agency_id=agency.id, agency_name=agency.name, sop_title=sop.title, month=month,
        month_name=f"{BULAN[month.month - 1]} {month.year}", generated=when(now),
        office_hours=f"{calendar.start:%H.%M}–{calendar.end:%H.%M} {zone}",
        received=len(received), finished=len(finished), rejected=len(rejected), open_at_end=len(open_end),
        finished_within_sop=sum(1 for m in finish_minutes.values() if m <= sop_minutes),
        median_finish=format_duration(med, dm) if med is not None else "-",
        sop_total=format_duration(sop_minutes, dm),
        steps=tuple(steps), officials=tuple(officials), weeks=tuple(weeks),
        flagged=tuple(f for _, f in flagged), rows=tuple(rows),
    )


# --- charts ----------------------------------------------------------------------------------------

_NAVY, _GREEN, _RED, _GREY = "#1e3a5f", "#15803d", "#b91c1c", "#6b7280"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, metadata={"Software": None})
    # matplotlib (heavy) only when the monthly report draws its charts
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def chart_weeks(report: MonthlyReport) -> bytes:
    """Grouped bars: requests received, finished and rejected in each week of the month."""
    # matplotlib (heavy) only when the monthly report draws its charts
    import matplotlib

    matplotlib.use("Agg")  # no display: the daemon and the tests draw into memory
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.6, 2.9), layout="constrained")
    xs = range(len(report.weeks))
    width = 0.26
    for i, (label, attr, color) in enumerate((("Diterima", "received", _NAVY), ("Selesai", "finished", _GREEN),
                                              ("Ditolak", "rejected", _RED))):
        values = [getattr(w, attr) for w in report.weeks]
        bars = ax.bar([x + (i - 1) * width for x in xs], values, width, label=label, color=color)
        ax.bar_label(bars, labels=[str(v) if v else "" for v in values], fontsize=10, padding=1)
    ax.set_xticks(list(xs), [w.label for w in report.weeks], fontsize=10)
    ax.tick_params(axis="y", labelsize=10)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = max([1, *(max(w.received, w.finished, w.rejected) for w in report.weeks)])
    ax.set_ylim(0, top * 1.35)
    ax.legend(fontsize=10, frameon=False, ncols=3, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def chart_steps(report: MonthlyReport) -> bytes:
    """Horizontal bars: the share of each step's visits finished within its Mutu Baku, each step's name
    written above its bar (so that the bars keep the whole width on a phone)."""
    # matplotlib (heavy) only when the monthly report draws its charts
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [st for st in report.steps if st.wait.pct is not None]
    fig, ax = plt.subplots(figsize=(5.6, 0.5 + 0.62 * max(1, len(measured))), layout="constrained")
    values = [st.wait.pct or 0.0 for st in measured]
    ys = [2 * i for i in range(len(measured))][::-1]
    colors = [_GREEN if v >= COMPLIANCE_TARGET else _RED for v in values]
    bars = ax.barh(ys, values, color=colors, height=0.8)
    # The target line runs behind the words; each label is set on white so that it stays readable.
    on_white = {"facecolor": "white", "edgecolor": "none", "pad": 0.6}
    texts = ax.bar_label(bars, labels=[f"{v:.0f}% ({st.wait.within}/{st.wait.count})"
                                       for v, st in zip(values, measured, strict=True)], fontsize=10, padding=3)
    for t in texts:
        t.set_bbox(on_white)
    for y, st in zip(ys, measured, strict=True):
        label = (f"SOP {st.sop_no} · " if st.sop_no != "-" else "") + _short(st.title, 60)
        ax.text(0, y + 0.55, label, fontsize=10, va="bottom", color="#1f2937", bbox=on_white)
    ax.set_yticks([])
    ax.set_ylim(-0.8, (max(ys) if ys else 0) + 1.6)
    ax.set_xlim(0, 122)
    ax.set_xticks([0, 20, 40, 60, 80, 100], ["0", "20", "40", "60", "80", "100%"], fontsize=10)
    ax.axvline(COMPLIANCE_TARGET, color=_GREY, linewidth=0.8, linestyle="--", zorder=0)
    ax.spines[["top", "right", "left"]].set_visible(False)
    if not measured:
        ax.text(50, 0, "Belum ada langkah yang selesai bulan ini.", ha="center", va="center", fontsize=10)
    return _png(fig)


def _short(title: str, limit: int = 42) -> str:
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "…"


# --- renderers -------------------------------------------------------------------------------------

def report_context(report: MonthlyReport, images: dict[str, str]) -> dict[str, Any]:
    """What the report templates get: the report, the image sources by chart, the target."""
    return {"r": report, "images": images, "target": COMPLIANCE_TARGET, "agency_name": report.agency_name}


def render_mail(report: MonthlyReport, agency: AgencySettings, *, inline: bool = True) -> tuple[str, str, str]:
    """(subject, text, HTML). With `inline`, the HTML shows the charts by Content-ID (as mailed); else as
    data: URIs, for a browser (the preview, the screenshots)."""
    if inline:
        images = {"weeks": f"cid:{CHART_WEEKS}", "steps": f"cid:{CHART_STEPS}"}
    else:
        images = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                  for name, png in (("weeks", chart_weeks(report)), ("steps", chart_steps(report)))}
    mailer = Mailer(agency_id=agency.id, agency_name=agency.name, address=agency.address, zone=agency.zone,
                    clock=datetime.now)
    rendered = mailer.render("report", report_context(report, images))
    assert rendered.html is not None
    return rendered.subject, rendered.text, rendered.html


def render_csv(report: MonthlyReport) -> str:
    """One row per request received in the month, closed in it, or open at its end."""
    out = io.StringIO()
    fields = ["tiket", "sub_domain", "unit_kerja", "pemohon", "diterima", "status_akhir_bulan", "ditutup",
              "menit_kerja_penyelesaian", "dalam_mutu_baku_sop", "perbaikan", "kendala"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")  # RFC 4180 line ends
    writer.writeheader()
    for row in report.rows:
        # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection): quoted as text.
        writer.writerow({k: ("'" + v if isinstance(v, str) and v and v[0] in "=+-@" else v) for k, v in row.items()})
    return out.getvalue()


def render_pdf(report: MonthlyReport, agency: AgencySettings) -> bytes:
    """The same report as an A4 PDF: title, figures, both charts, the step and official tables, the list."""
    # reportlab (heavy) only for the PDF: the mail and CSV forms never load it
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import Image, KeepTogether, Paragraph, Spacer, Table, TableStyle

    from subdomaind.workflows.letters import a4_document, kop_flowables, pdf_fonts

    regular, bold, _ = pdf_fonts()
    navy, grey, red, green = (colors.HexColor(c) for c in (_NAVY, _GREY, _RED, _GREEN))
    st = {
        "title": ParagraphStyle("t", fontName=bold, fontSize=15, leading=19, textColor=navy),
        "sub": ParagraphStyle("s", fontName=regular, fontSize=10, leading=13, textColor=grey),
        "h": ParagraphStyle("h", fontName=bold, fontSize=12, leading=15, textColor=navy, spaceBefore=10,
                            spaceAfter=4, keepWithNext=1),
        "cell": ParagraphStyle("c", fontName=regular, fontSize=8.5, leading=10.5),
        "cellb": ParagraphStyle("cb", fontName=bold, fontSize=8.5, leading=10.5),
        "small": ParagraphStyle("sm", fontName=regular, fontSize=8, leading=10, textColor=grey),
    }

    def p(text: object, style: str = "cell") -> Paragraph:
        return Paragraph(html.escape(str(text), quote=False), st[style])

    buf = io.BytesIO()

    def page_number(canvas: Any, doc_: Any) -> None:
        canvas.saveState()
        canvas.setFont(regular, 8)
        canvas.setFillColor(grey)
        canvas.drawRightString(doc_.pagesize[0] - 2.0 * cm, 0.8 * cm, f"Laporan bulanan {report.month_name} "
                                                                      f"· halaman {doc_.page}")
        canvas.restoreState()

    doc = a4_document(buf, title=f"Laporan Bulanan Layanan Sub Domain {report.month_name}",
                      author=report.agency_name, subject=report.sop_title, later_pages=page_number,
                      margins=(2.0 * cm, 2.0 * cm, 1.5 * cm, 1.6 * cm))
    width = doc.width
    story: list[Any] = []
    if agency.letter.kop:
        logo = agency.letter.logo if agency.letter.logo is not None and agency.letter.logo.is_file() else None
        story += kop_flowables(agency.letter.kop, agency.letter.address_line, width, logo=logo)
        story.append(Spacer(1, 0.3 * cm))
    story += [p(f"Laporan Bulanan Layanan Sub Domain — {report.month_name}", "title"),
              p(f"{report.sop_title} · disusun {report.generated}", "sub"), Spacer(1, 0.35 * cm)]

    figures = [("Diterima", report.received, navy), ("Selesai", report.finished, green),
               ("Ditolak", report.rejected, navy), ("Terbuka di akhir bulan", report.open_at_end, navy)]
    figure = ParagraphStyle("f", fontName=bold, fontSize=18, leading=22, alignment=1)
    label_style = ParagraphStyle("fl", parent=st["small"], alignment=1)
    boxes = Table([[Paragraph(f'<font color="{_hex(c)}">{n}</font>', figure) for _, n, c in figures],
                   [Paragraph(label, label_style) for label, _, _ in figures]], colWidths=[width / 4] * 4)
    boxes.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.5, colors.HexColor("#d1d5db")),
                               ("INNERGRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#e5e7eb")),
                               ("LINEBELOW", (0, 0), (-1, 0), 0, colors.white),
                               ("TOPPADDING", (0, 0), (-1, 0), 6), ("BOTTOMPADDING", (0, 1), (-1, 1), 6)]))
    story += [boxes, Spacer(1, 0.2 * cm),
              p(f"Median waktu penyelesaian: {report.median_finish} kerja; {report.finished_within_sop} dari "
                f"{report.finished} selesai dalam total Mutu Baku SOP ({report.sop_total}).", "cell")]

    def chart(png: bytes, h_over_w: float) -> Image:
        w = width * 0.9
        return Image(io.BytesIO(png), width=w, height=w * h_over_w)

    weeks_png, steps_png = chart_weeks(report), chart_steps(report)
    story += [p("Permohonan per minggu", "h"), chart(weeks_png, _ratio(weeks_png))]
    story += [p("Kepatuhan Mutu Baku per langkah SOP", "h"), chart(steps_png, _ratio(steps_png))]

    head = ["Langkah SOP", "Pelaksana", "Mutu Baku", "Jumlah", "Tepat waktu", "Median", "Terlama"]
    rows: list[list[Any]] = [[p(h, "cellb") for h in head]]
    for sf in report.steps:
        pct = sf.wait.pct
        rows.append([p((f"SOP {sf.sop_no} · " if sf.sop_no != "-" else "") + sf.title), p(sf.who),
                     p(sf.mutu or "-"), p(sf.wait.count),
                     p(f"{pct:.0f}% ({sf.wait.within}/{sf.wait.count})" if pct is not None else "-",
                       "cellb" if pct is not None and pct < COMPLIANCE_TARGET else "cell"),
                     p(sf.wait.median), p(sf.wait.longest)])
    story += [p("Waktu tunggu dan kepatuhan per langkah", "h"), _table(rows, width, [0.33, 0.17, 0.09, 0.08,
                                                                                     0.12, 0.105, 0.105])]
    rows = [[p(h, "cellb") for h in ("Pejabat (nama, jabatan)", "Keputusan", "Tepat waktu", "Median", "Terlama")]]
    for of in report.officials:
        pct = of.wait.pct
        rows.append([p(of.who), p(of.wait.count), p(f"{pct:.0f}% ({of.wait.within}/{of.wait.count})"
                                                     if pct is not None else "-"),
                     p(of.wait.median), p(of.wait.longest)])
    if len(rows) == 1:
        rows.append([p("Tidak ada keputusan pejabat bulan ini."), "", "", "", ""])
    story += [p("Waktu tunggu per pejabat", "h"), _table(rows, width, [0.45, 0.12, 0.17, 0.13, 0.13])]
    rows = [[p(h, "cellb") for h in ("Tiket", "Sub domain / unit", "Jenis", "Oleh, waktu", "Catatan")]]
    for f in report.flagged:
        rows.append([p(f.ticket), p(f"{f.fqdn}\n{f.unit}"), p(f.word, "cellb"), p(f"{f.by}, {f.at}"), p(f.note)])
    if len(rows) == 1:
        rows.append([p("Tidak ada permohonan yang dikembalikan untuk perbaikan atau dilaporkan kendala."), "", "",
                     "", ""])
    story += [KeepTogether([p("Dikembalikan untuk perbaikan atau dilaporkan KENDALA", "h"),
                            _table(rows, width, [0.14, 0.24, 0.11, 0.26, 0.25])])]
    story += [Spacer(1, 0.4 * cm), p(f"Waktu dihitung dalam jam kerja ({report.office_hours}, hari kerja di luar "
                                     "libur nasional dan cuti bersama). Laporan ini disusun otomatis oleh Sistem "
                                     f"Layanan Sub Domain {report.agency_name}.", "small")]
    doc.build(story)
    return buf.getvalue()


def _hex(color: Any) -> str:
    return "#" + color.hexval()[2:]


def _ratio(png: bytes) -> float:
    """Height over width of a PNG (from its IHDR chunk)."""
    w = int.from_bytes(png[16:20], "big")
    h = int.from_bytes(png[20:24], "big")
    return h / w if w else 0.5


def _table(rows: list[list[Any]], width: float, shares: list[float]) -> Any:
    # reportlab (heavy) only for the PDF: the mail and CSV forms never load it
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    t = Table(rows, colWidths=[width * s for s in shares], repeatRows=1)
    t.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.HexColor("#d1d5db")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]))
    return t


# --- sending and scheduling ------------------------------------------------------------------------

def report_recipients(agency: AgencySettings, sop: Sop) -> list[str]:
    """The head of the SOP (the role with no superior: the Kepala Dinas) and the digest recipients."""
    heads = [r.key for r in sop.roles.values() if not r.superior and not r.requester]
    out: list[str] = []
    for addr in (*(a for h in heads for a in agency.actors.get(h, [])), *agency.digest_recipients):
        if addr not in out:
            out.append(addr)
    return out


def _render_files(report: MonthlyReport, agency: AgencySettings) -> tuple[bytes, bytes, bytes]:
    return chart_weeks(report), chart_steps(report), render_pdf(report, agency)


# How long the child process may take to draw the charts and the PDF.
RENDER_TIMEOUT_SECONDS = 300.0


_CHILD_BOOT = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
               "from subdomaind.workflows.report import render_child; render_child()")


def render_child() -> None:
    """The child process's side of `report_attachments(isolated=True)`: (report, agency) in on stdin, the
    two PNGs and the PDF out on stdout."""
    # The parent wrote these bytes itself, a moment ago, into this process's own pipe.
    report, agency = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    sys.stdout.buffer.write(pickle.dumps(_render_files(report, agency)))


def report_attachments(report: MonthlyReport, agency: AgencySettings, *, isolated: bool = True) -> list[MailAttachment]:
    """The two charts (inline) and the PDF. `isolated` draws them in a fresh Python process (started as the
    parser workers are, never forked from the threaded daemon): matplotlib and its fonts would otherwise
    stay in the daemon, about 90 MB, half its memory budget (docs/PERFORMANCE.md)."""
    if isolated:
        proc = subprocess.run([sys.executable, "-c", _CHILD_BOOT, json.dumps(sys.path)],
                              input=pickle.dumps((report, agency)), capture_output=True,
                              timeout=RENDER_TIMEOUT_SECONDS, check=False)
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(tanpa pesan)"]
            raise RuntimeError(f"menggambar laporan bulanan gagal (kode {proc.returncode}): {tail[0]}")
        weeks, steps, pdf = pickle.loads(proc.stdout)  # noqa: S301 - our own child's answer on its own pipe
    else:
        weeks, steps, pdf = _render_files(report, agency)
    return [
        MailAttachment("grafik-mingguan.png", "image/png", weeks, content_id=CHART_WEEKS),
        MailAttachment("grafik-kepatuhan.png", "image/png", steps, content_id=CHART_STEPS),
        MailAttachment(f"laporan-bulanan-{report.slug}.pdf", "application/pdf", pdf),
    ]


def send_report(ctx: Ctx, calendar: WorkCalendar, month: date, now: datetime, *,
                by_hand: bool = False) -> MonthlyReport:
    """Queue the report of `month` to its recipients (HTML with the charts, the PDF attached), all in the
    caller's transaction. The scheduled report of a month without any request is not sent; one asked for
    `by_hand` always is, and does not count as the month's scheduled one."""
    report = build_report(ctx.session, ctx.agency, ctx.sop, calendar, month, now)
    queue_report(ctx, report, render_report(report, ctx.agency) if report.rows or by_hand else None,
                 by_hand=by_hand)
    return report


def render_report(report: MonthlyReport, agency: AgencySettings) -> tuple[Rendered, list[MailAttachment]]:
    """The mail and its attachments, made without the database (seconds of work: the child process)."""
    subject, text, html = render_mail(report, agency)
    return Rendered(subject=subject, text=text, html=html), report_attachments(report, agency)


def queue_report(ctx: Ctx, report: MonthlyReport, made: tuple[Rendered, list[MailAttachment]] | None, *,
                 by_hand: bool = False) -> None:
    """Write the report mail into the outbox (or, with nothing `made`, record a month without requests)."""
    month = f"{report.month:%Y-%m}"
    if made is None:
        # No request was received, closed or open that month (a month before the service began): nobody
        # needs a page of zeros. Recorded, so that the month is not looked at again.
        audit(ctx, None, "report.empty", month=month)
        return
    rendered, attachments = made
    to = report_recipients(ctx.agency, ctx.sop)
    ctx.mailer.queue_rendered(ctx.session, rendered=rendered, to=to, purpose="report", attachments=attachments)
    audit(ctx, None, "report.sent_by_hand" if by_hand else "report.sent", to=to, month=month,
          received=report.received, finished=report.finished, rejected=report.rejected, open=report.open_at_end)


def run_scheduled(sessions: sessionmaker[Session], make_ctx: Callable[[Session], Ctx], calendar: WorkCalendar,
                  now: datetime, at: time) -> bool:
    """The daemon's monthly step: send last month's report if it is due. The store is read in one short
    session and written in another; the drawing between them holds no transaction (on SQLite it would
    hold the write lock for the seconds the charts take). True once this month's report is settled."""
    with sessions() as s:
        ctx = make_ctx(s)
        month = report_due(s, ctx.agency.id, calendar, now, at)
        if month is None:
            return report_recorded(s, ctx.agency.id, calendar, now)
        report = build_report(s, ctx.agency, ctx.sop, calendar, month, now)
    made = render_report(report, ctx.agency) if report.rows else None
    with sessions.begin() as s:
        ctx = make_ctx(s)
        if not report_recorded(s, ctx.agency.id, calendar, now):  # not sent meanwhile by another process
            queue_report(ctx, report, made)
    return True


def report_due(session: Session, agency_id: str, calendar: WorkCalendar, now: datetime,
               at: time = DEFAULT_DIGEST_TIME) -> date | None:
    """The month whose report is due now, or None: from the first working day of the next month at `at`
    (local time), once; a daemon that was down that day sends it when it is back, within the month."""
    local_now = calendar.local(now)
    first = local_now.date().replace(day=1)
    first_workday = first if calendar.is_workday(first) else calendar.next_workday(first)
    if local_now.date() < first_workday or (local_now.date() == first_workday and local_now.time() < at):
        return None
    return None if report_recorded(session, agency_id, calendar, now) else previous_month(calendar, now)


def report_recorded(session: Session, agency_id: str, calendar: WorkCalendar, now: datetime) -> bool:
    """Whether this month has already sent (or, for a month without requests, recorded) last month's report."""
    first = calendar.local(now).date().replace(day=1)
    return bool(session.execute(
        select(func.count()).select_from(Audit).where(Audit.agency == agency_id,
                                                      Audit.event.in_(("report.sent", "report.empty")),
                                                      Audit.at >= datetime.combine(first, time(0), calendar.tz))
    ).scalar_one())
