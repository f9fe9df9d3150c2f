"""The daily digest over a seeded queue: order, overdue marks, inbound problems, failures, month figures,
HTML escaping, the per-role "Menunggu Anda" mails, and headless Chromium pictures of the HTML."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import Config
from subdomaind.workflows.digest import build_digest, digest_due, render_digest, send_digest
from subdomaind.workflows.reminders import format_duration
from subdomaind.workflows.sop import load_sop
from subdomaind.workflows.store import Audit, Decision, Inbound, Outbox
from subdomaind.workflows.worktime import WorkCalendar
from tests.chromium import measure, needs_chromium, screenshot
from tests.devkit.localoffice import ACTORS, STAFF
from tests.test_reminders import REQUESTER, FrozenClock, make_ctx, office, seed_request, wib

__all__ = ["office"]  # the fixture, shared with test_reminders

CAL = WorkCalendar("Asia/Jakarta")
NOW = wib(2026, 11, 10, 9, 0)  # Tuesday
SINCE = wib(2026, 11, 9, 7, 0)  # Monday's digest
HOSTILE = "<script>alert(1)</script>"

Office = tuple[Config, sessionmaker[Session]]


def _inbound(s: Session, n: int, status: str, at: datetime, error: str | None, subject: str) -> None:
    s.add(Inbound(agency="trenggalek", mailbox="INBOX", uidvalidity=1, uid=n, message_id=f"<in{n}@example.org>",
                  sha256="0" * 64, raw=b"", sender=f"orang{n}@example.org", subject=subject, kind="unrelated",
                  status=status, error=error, received_at=at, handled_at=at, attempts=1))


def _outbox(s: Session, n: int, status: str, attempts: int, at: datetime, error: str | None,
            request_id: int | None = None, purpose: str = "final") -> None:
    s.add(Outbox(agency="trenggalek", request_id=request_id, purpose=purpose, message_id=f"<out{n}@x>",
                 mail_from="layanan@trenggalekkab.go.id", rcpts=[f"tujuan{n}@example.org"], subject=f"S{n}",
                 raw=b"", status=status, attempts=attempts, next_attempt_at=at, last_error=error, created_at=at))


def _audit(s: Session, event: str, at: datetime, request_id: int | None = None, **detail: Any) -> None:
    s.add(Audit(agency="trenggalek", request_id=request_id, at=at, actor="subdomaind", event=event, detail=detail))


def seed_queue(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        # Open, in an order unlike the expected one.
        seed_request(s, ticket="SD/2026/0012", step="naik_kabid", kind="approval", role="kabid",
                     opened=wib(2026, 11, 10, 8, 30), received=wib(2026, 11, 6, 9, 0), subdomain="arsip")
        seed_request(s, ticket="SD/2026/0013", step="lengkapi_awal", kind="wait_requester", role="pemohon",
                     opened=wib(2026, 11, 9, 10, 0), received=wib(2026, 11, 9, 10, 0), subdomain="jahat",
                     unit=HOSTILE)
        seed_request(s, ticket="SD/2026/0011", step="periksa", kind="approval", role="kasi",
                     opened=wib(2026, 11, 10, 7, 45), received=wib(2026, 11, 9, 14, 0), subdomain="pupr",
                     unit="Dinas Pekerjaan Umum dan Penataan Ruang")
        _, failing = seed_request(s, ticket="SD/2026/0014", step="buat", kind="action", role=None,
                                  opened=wib(2026, 11, 10, 8, 0), received=wib(2026, 11, 6, 8, 0),
                                  subdomain="dukcapil", unit="Dinas Kependudukan dan Pencatatan Sipil")
        failing.last_error = "DnsError: timeout talking to 192.0.2.1\nTraceback (most recent call last): ..."
        seed_request(s, ticket="SD/2026/0010", step="disposisi", kind="approval", role="kadis",
                     opened=wib(2026, 11, 5, 10, 0), received=wib(2026, 11, 5, 10, 0), subdomain="dinsos")
        # Closed.
        seed_request(s, ticket="SD/2026/0001", step="selesai", kind="end", role=None, status="done",
                     opened=wib(2026, 10, 5, 9, 0), received=wib(2026, 10, 1, 9, 0),
                     closed=wib(2026, 10, 5, 9, 0), subdomain="lama", step_status="done")
        seed_request(s, ticket="SD/2026/0004", step="selesai", kind="end", role=None, status="done",
                     opened=wib(2026, 11, 4, 8, 0), received=wib(2026, 11, 2, 8, 0),
                     closed=wib(2026, 11, 4, 8, 0), subdomain="bappeda", step_status="done")
        seed_request(s, ticket="SD/2026/0005", step="selesai", kind="end", role=None, status="done",
                     opened=wib(2026, 11, 9, 11, 0), received=wib(2026, 11, 3, 8, 0),
                     closed=wib(2026, 11, 9, 11, 0), subdomain="dinkes", unit="Dinas Kesehatan",
                     step_status="done")
        rejected, run = seed_request(s, ticket="SD/2026/0006", step="berakhir_ditolak", kind="end", role=None,
                                     status="rejected", opened=wib(2026, 11, 9, 13, 0),
                                     received=wib(2026, 11, 4, 9, 0), closed=wib(2026, 11, 9, 13, 0),
                                     subdomain="judi", unit="Unit Contoh", step_status="done")
        s.add(Decision(request_id=rejected.id, step_id=run.id, decision="reject", actor="kadis@trenggalekkab.go.id",
                       note="Nama tidak sesuai nomenklatur", accepted=True, rules=[], at=wib(2026, 11, 9, 12, 55)))
        # Inbound mail that needs a person.
        _inbound(s, 1, "quarantined", wib(2026, 11, 9, 10, 30),
                 "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff\nTraceback (most recent call last):",
                 "Permohonan subdomain")
        _inbound(s, 2, "unmatched", wib(2026, 11, 9, 15, 0), "balasan tidak dapat dicocokkan dengan langkah mana pun",
                 '<img src=x onerror="alert(2)">')
        _inbound(s, 3, "quarantined", wib(2026, 11, 2, 9, 0), "lama", "Surel lama")
        _inbound(s, 4, "handled", wib(2026, 11, 9, 11, 0), None, "Balasan SETUJU")
        # Failures.
        _outbox(s, 1, "queued", 2, wib(2026, 11, 10, 8, 40), "421 4.7.0 Try again later", rejected.id, "rejection")
        _outbox(s, 2, "failed", 8, wib(2026, 11, 9, 16, 0), "550 5.1.1 User unknown", None, "step.disposisi")
        _outbox(s, 3, "failed", 8, wib(2026, 11, 2, 16, 0), "550 lama")
        _outbox(s, 4, "sent", 1, wib(2026, 11, 9, 16, 0), None)
        _outbox(s, 5, "queued", 0, wib(2026, 11, 10, 8, 59), None)
        _audit(s, "action.failed", wib(2026, 11, 10, 8, 5), failing.request_id, step="buat", action="provision",
               error="DnsError: timeout talking to 192.0.2.1")
        _audit(s, "mail.bounced", wib(2026, 11, 9, 16, 5), failed=["salah@example.org"], status="5.1.1")
        _audit(s, "staff.alerted", wib(2026, 11, 9, 16, 6), problem="Surel step.disposisi tidak terkirim")
        _audit(s, "action.failed", wib(2026, 11, 6, 9, 0), step="buat", error="lama")
        _audit(s, "step.entered", wib(2026, 11, 9, 16, 7), step="periksa")


def digest(sessions: sessionmaker[Session], cfg: Config, role: str | None = None) -> dict[str, Any]:
    agency = cfg.agencies[0]
    with sessions() as s:
        return build_digest(s, agency, load_sop(agency.sop), CAL, NOW, SINCE, role=role)


def test_queue_order_and_overdue(office: Office) -> None:
    cfg, sessions = office
    seed_queue(sessions)
    data = digest(sessions, cfg)
    queue = data["queue"]
    assert [it["ticket"] for it in queue] == [
        "SD/2026/0010", "SD/2026/0014", "SD/2026/0011", "SD/2026/0012", "SD/2026/0013"]
    assert [it["overdue"] for it in queue] == [True, True, True, False, False]
    kadis = queue[0]
    # Kadis's "1 hari" from Thursday 10.00: due Friday 10.00; late 6 h Friday + Monday + 1.5 h Tuesday.
    assert kadis["overdue_minutes"] == 360 + 510 + 90
    assert kadis["overdue_by"] == "1 hari 7 jam"
    assert kadis["waits_on"] == {"title": "Kepala Dinas Komunikasi dan Informatika",
                                 "addresses": ACTORS["kadis"], "delegates": []}
    assert kadis["next"]["title"].startswith("Meneruskan disposisi")
    assert kadis["deadline"] == "6 November 2026 pukul 10.00 WIB"
    assert queue[1]["waits_on"]["title"] == "Sistem (otomatis)" and queue[1]["next"]["who"] == "otomatis"
    assert queue[1]["problem"] == "DnsError: timeout talking to 192.0.2.1"
    assert queue[2]["overdue_by"] == "15 menit" and queue[2]["mutu"] == "1 jam"
    assert queue[4]["waits_on"]["addresses"] == [REQUESTER, "lukman@example.org"]
    assert data["counts"]["open"] == 5 and data["counts"]["overdue"] == 3

    subject, text, html = render_digest(data, cfg.agencies[0])
    assert subject == "Ringkasan harian layanan sub domain 10 November 2026 — 3 TERLAMBAT"
    section = text.split("ANTREAN PERMOHONAN TERBUKA (5)")[1].split("PERMOHONAN BARU")[0]
    positions = [section.index(t) for t in ("SD/2026/0010", "SD/2026/0014", "SD/2026/0011", "SD/2026/0012",
                                            "SD/2026/0013")]
    assert positions == sorted(positions)
    assert "1. [TERLAMBAT] SD/2026/0010" in section and "4. SD/2026/0012" in section
    assert "Menunggu   : Kepala Dinas Komunikasi dan Informatika (kadis@trenggalekkab.go.id)" in section
    assert "Waktu      : 1 jam 15 menit dari Mutu Baku 1 jam; lewat 15 menit" in section
    assert "Berikutnya : SOP 4 — Meneruskan disposisi" in section
    assert html.count(">TERLAMBAT<") == 3
    assert html.index("SD/2026/0010") < html.index("SD/2026/0014") < html.index("SD/2026/0013")


def test_since_lists_inbound_failures_and_month(office: Office) -> None:
    cfg, sessions = office
    seed_queue(sessions)
    data = digest(sessions, cfg)
    assert [r["ticket"] for r in data["new"]] == ["SD/2026/0013", "SD/2026/0011"]
    assert [r["ticket"] for r in data["finished"]] == ["SD/2026/0005"]
    assert data["finished"][0]["took"] == "4 hari 3 jam"
    assert [(r["ticket"], r["reason"]) for r in data["rejected"]] == [("SD/2026/0006", "Nama tidak sesuai nomenklatur")]
    assert [(m["label"], m["reason"]) for m in data["inbound"]] == [
        ("Karantina", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
        ("Tidak cocok", "balasan tidak dapat dicocokkan dengan langkah mana pun"),
    ]
    assert data["inbound_older"] == 1
    assert [(f["status"], f["attempts"], f["error"]) for f in data["outbox_failures"]] == [
        ("failed", 8, "550 5.1.1 User unknown"), ("queued", 2, "421 4.7.0 Try again later")]
    assert data["outbox_failures"][1]["ticket"] == "SD/2026/0006"
    assert [e["event"] for e in data["events"]] == ["mail.bounced", "staff.alerted", "action.failed"]
    assert data["events"][2]["ticket"] == "SD/2026/0014"
    month = data["month"]
    assert month["name"] == "November 2026"
    assert (month["received"], month["finished"], month["rejected"]) == (8, 2, 1)
    # Working minutes to finish: 0004 took 2 days (1020 min), 0005 took 2220 min; median 1620.
    assert month["median_minutes"] == 1620 and month["median"] == "3 hari 1 jam"
    days, minutes = load_sop("trenggalek").total()
    assert month["sop_total_minutes"] == days * 510 + minutes and month["within"] == 2
    assert month["sop_total"] == format_duration(days * 510 + minutes, 510)

    _, text, html = render_digest(data, cfg.agencies[0])
    for needle in ("PERMOHONAN BARU (2)", "SELESAI (1)", "DITOLAK (1)", "Alasan: Nama tidak sesuai nomenklatur",
                   "[Karantina]", "Sebab  : UnicodeDecodeError", "[Tidak cocok]",
                   "(1 surel lain yang lebih lama masih di karantina atau belum cocok.)",
                   "KEGAGALAN (5)", "550 5.1.1 User unknown", "Surel tertunda, dicoba ulang",
                   "ke salah@example.org (5.1.1)", "Proses otomatis gagal", "ANGKA BULAN NOVEMBER 2026",
                   "Permohonan diterima      : 8", "Median waktu penyelesaian: 3 hari 1 jam",
                   f"Total Mutu Baku SOP      : {month['sop_total']}"):
        assert needle in text, needle
    assert "Traceback" not in text and "Traceback" not in html
    for needle in ("Surel masuk bermasalah", "Sebab: UnicodeDecodeError", "Angka bulan November 2026",
                   "Nama tidak sesuai nomenklatur", "Median waktu penyelesaian"):
        assert needle in html, needle


def test_hostile_values_are_escaped_in_html(office: Office) -> None:
    cfg, sessions = office
    seed_queue(sessions)
    _, text, html = render_digest(digest(sessions, cfg), cfg.agencies[0])
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    assert HOSTILE in text  # the plain-text part is not HTML


def test_role_digest_puts_menunggu_anda_first(office: Office) -> None:
    cfg, sessions = office
    seed_queue(sessions)
    data = digest(sessions, cfg, role="kasi")
    assert [it["ticket"] for it in data["waiting_you"]] == ["SD/2026/0011"]
    assert len(data["queue"]) == 5
    subject, text, html = render_digest(data, cfg.agencies[0])
    assert subject.startswith("Menunggu Anda: 1 permohonan (1 terlambat) — Ringkasan harian")
    assert text.startswith("Yth. Kepala Seksi Layanan Infrastruktur TIK,")
    assert text.index("MENUNGGU ANDA (1)") < text.index("ANTREAN PERMOHONAN TERBUKA (5)")
    mine = text.split("MENUNGGU ANDA (1)")[1].split("ANTREAN")[0]
    assert "SD/2026/0011" in mine and "SD/2026/0010" not in mine
    assert html.index("Menunggu Anda") < html.index("Antrean permohonan terbuka")


def test_send_digest_queues_staff_and_role_mails(office: Office) -> None:
    cfg, sessions = office
    seed_queue(sessions)
    clock = FrozenClock(NOW)
    with sessions.begin() as s:
        assert send_digest(make_ctx(s, cfg, clock), CAL, NOW, SINCE) == 4
    with sessions() as s:
        rows = list(s.execute(select(Outbox).where(Outbox.purpose.like("digest%")).order_by(Outbox.id)).scalars())
        sent = [a.detail for a in s.execute(select(Audit).where(Audit.event.like("digest.%"))).scalars()]
    assert [(r.purpose, r.rcpts) for r in rows] == [
        ("digest", [STAFF]), ("digest.kabid", ACTORS["kabid"]), ("digest.kadis", ACTORS["kadis"]),
        ("digest.kasi", ACTORS["kasi"])]  # sekretaris has nothing waiting: no mail
    assert len(sent) == 4
    assert rows[0].raw is not None
    msg = email.message_from_bytes(rows[0].raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    assert html_part is not None and text_part is not None
    assert "Ringkasan Harian Layanan Sub Domain" in html_part.get_content()
    assert "ANTREAN PERMOHONAN TERBUKA (5)" in text_part.get_content()
    assert msg["Auto-Submitted"] == "auto-generated"


def test_digest_due_once_per_working_day(office: Office) -> None:
    cfg, sessions = office
    at = time(7, 0)
    with sessions() as s:
        assert digest_due(s, "trenggalek", CAL, wib(2026, 11, 10, 6, 59), at) is None
        assert digest_due(s, "trenggalek", CAL, NOW, at) == wib(2026, 11, 9, 9, 0)
    with sessions.begin() as s:
        send_digest(make_ctx(s, cfg, FrozenClock(NOW)), CAL, NOW, SINCE)
    with sessions() as s:
        assert digest_due(s, "trenggalek", CAL, wib(2026, 11, 10, 15, 0), at) is None
        assert digest_due(s, "trenggalek", CAL, wib(2026, 11, 14, 8, 0), at) is None  # Saturday
        assert digest_due(s, "trenggalek", CAL, wib(2026, 11, 11, 7, 0), at) == NOW


def test_long_queue_stays_under_gmail_clipping(office: Office) -> None:
    cfg, sessions = office
    with sessions.begin() as s:
        for i in range(60):
            seed_request(s, ticket=f"SD/2026/{100 + i:04d}", step="periksa", kind="approval", role="kasi",
                         opened=wib(2026, 11, 2 + i % 7, 9, 0), subdomain=f"unit{i}",
                         unit="Badan Perencanaan Pembangunan, Riset dan Inovasi Daerah")
    for role in (None, "kasi"):
        _, text, html = render_digest(digest(sessions, cfg, role=role), cfg.agencies[0])
        assert len(html.encode()) < 100_000, (role, len(html.encode()))
        for i in range(60):
            assert f"unit{i}.trenggalekkab.go.id" in text  # the text part lists everything
        # 10 full cards, then one line each up to 40 more, then a count.
        assert html.count(">Waktu kerja<") == 10
        assert html.count(">TERLAMBAT<") == (50 + 40 if role else 50)
        assert f"Dan {20 if role else 10} permohonan terbuka lainnya" in html
        assert ("Dan 10 permohonan lain yang menunggu Bapak/Ibu" in html) == (role is not None)


def test_empty_digest_renders(office: Office) -> None:
    cfg, sessions = office
    _, text, html = render_digest(digest(sessions, cfg), cfg.agencies[0])
    assert "Tidak ada permohonan terbuka." in text and "Tidak ada permohonan terbuka." in html
    assert "Median waktu penyelesaian: -" in text


@needs_chromium
def test_html_digest_screenshot(office: Office, tmp_path: Path) -> None:
    """The whole digest laid out 800 and 390 px wide (a phone), never wider than the screen."""
    pil = pytest.importorskip("PIL.Image")
    cfg, sessions = office
    seed_queue(sessions)
    _, _, html = render_digest(digest(sessions, cfg, role="kasi"), cfg.agencies[0])
    for width in (800, 390):
        scroll, inner, height = measure(html, width, tmp_path, "digest")
        assert scroll <= inner == width, (width, scroll)
        out = screenshot(html, width, height, tmp_path, "digest")
        assert out.stat().st_size > 20_000, out.stat().st_size
        with pil.open(out) as img:
            assert img.size == (width, height)
            rgb = img.convert("RGB")
            colors = rgb.getcolors(maxcolors=1 << 20) or []
            assert len(colors) > 200  # text, the header bar, the red TERLAMBAT marks: not a blank page
            reds = sum(n for n, (r, g, b) in colors if r > 150 and g < 60 and b < 60)
            assert reds > 200  # the overdue marks are visible


def test_unvouched_decisions_and_capped_mail_are_said_every_day(tmp_path: Path) -> None:
    """With `require = "none"` the digest says so, every day; mail held by the caps on mail caused by
    unverified senders is listed with its ticket and sender (the requests themselves are stored)."""
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.mailer import CAP_NOTE
    from subdomaind.workflows.store import make_engine, make_sessionmaker
    from tests.devkit.localoffice import UNVOUCHED, make_config
    from tests.test_reminders import seed_request

    engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        req, _ = seed_request(s, ticket="SD/2026/0020", step="disposisi", kind="approval", role="kadis",
                              opened=wib(2026, 11, 10, 8, 0), received=wib(2026, 11, 10, 8, 0), subdomain="palsu")
        for n in range(3):
            _outbox(s, 10 + n, "held", 0, wib(2026, 11, 10, 8, 0),
                    f"{CAP_NOTE} (sender 6/6): penyusup@palsu.example", req.id, "ack" if n == 0 else "step.disposisi")
    for auth, said in ((UNVOUCHED, True), (None, False)):
        cfg = make_config(tmp_path / f"cfg{said}", **({"auth": auth} if auth else {}))
        data = digest(sessions, cfg)
        assert data["auth_unvouched"] is said
        assert data["capped_total"] == 3 and {c["sender"] for c in data["capped"]} == {"penyusup@palsu.example"}
        _, text, html = render_digest(data, cfg.agencies[0])
        assert ('auth.require = "none"' in text) is said and ("<b>Perhatian:</b>" in html) is said
        assert "SUREL DITAHAN: BATAS PENGIRIM TAK TERVERIFIKASI (3)" in text
        assert "SD/2026/0020" in text and "penyusup@palsu.example" in html
