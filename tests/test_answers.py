"""STATUS and ANTREAN against the real daemon and servers (Dovecot, SMTP relay, BIND), with the sender
checks' attacks, and the monthly report sent through SMTP by `subdomaind report --send`.

STATUS answers whoever takes part in a request (its requester, an official, an acting official) with its
timeline, and nobody else. ANTREAN answers an official or a current acting official only when the sender is
vouched for (or, without vouching, answers one of that official's step mails); a forged or unknown one gets
nothing: no mail, no change, one audit row.
"""

from __future__ import annotations

import html as html_lib
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import pytest

from subdomaind.workflows.worktime import WorkCalendar
from tests.chromium import ARTIFACTS, CHROMIUM, measure, screenshot
from tests.devkit.devservers import Bind, Dovecot, MailUser, SmtpRelay
from tests.devkit.localoffice import Office, body_text, parse_mail, reply_to, request_mail, vouch, write_config
from tests.test_security import db, wait_handled

pytestmark = pytest.mark.servers

KADIS_NAME, KABID_NAME, PLT_NAME = "Drs. Bambang Sutejo, M.Si", "Dra. Endah Lestari", "Ir. Hadi Prasetyo"
KADIS_TITLE = "Kepala Dinas Komunikasi dan Informatika"
KABID_TITLE = "Kepala Bidang e-Government dan Statistik"


def _office(base: str, dovecot: Dovecot, relay: SmtpRelay, bind: Bind, plt: MailUser | None,
            workflow: dict[str, object] | None = None, **agency: object) -> Office:
    o = Office.create(Path(tempfile.mkdtemp(prefix=base)), dovecot, relay, bind, agency_extra=agency,
                      workflow=workflow)
    # The officials' names, once their mailboxes (and so their addresses) exist.
    names = {o.officials["kadis"].address: KADIS_NAME, o.officials["kabid"].address: KABID_NAME}
    if plt is not None:
        names[plt.address] = PLT_NAME
    o.data["agency"][0]["names"] = names
    write_config(o.config_path, o.data)
    o.start()
    return o


@pytest.fixture(scope="module")
def plt(dovecot: Dovecot) -> MailUser:
    return dovecot.new_user("plt")


@pytest.fixture(scope="module")
def office(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind, plt: MailUser) -> Iterator[Office]:
    o = _office("answers-", dovecot, smtp_relay, bind, plt,
                auth={"require": "authres", "authserv_id": "mx.trenggalekkab.go.id"},
                delegates={"kabid": [plt.address]})
    yield o
    o.stop()


@pytest.fixture(scope="module")
def open_office(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> Iterator[Office]:
    """No MTA vouching configured, and a daily cap of 4 mails per address."""
    o = _office("answers-open-", dovecot, smtp_relay, bind, None, workflow={"daily_cap_per_address": 4},
                auth={"require": "none"})
    yield o
    o.stop()


def send(office: Office, raw: bytes, sender: str) -> tuple[str, str]:
    """Send, wait until handled; (Message-ID, inbound status)."""
    office.send(raw, sender)
    mid = str(parse_mail(raw)["Message-ID"])
    return mid, wait_handled(office, mid)


def new_mail(sender: str, to: str, subject: str, body: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"], msg["Message-ID"] = formatdate(), make_msgid(domain=sender.split("@")[1])
    msg.set_content(body or "\n")
    return msg.as_bytes()


def refused(office: Office, mid: str) -> str:
    with db(office) as c:
        rows = c.execute("SELECT event, detail FROM audit WHERE message_id = ?", (mid,)).fetchall()
    # The one row says why; an answer would have written "status.answered" / "queue.answered" instead.
    assert [r[0] for r in rows] == ["mail.refused"], rows
    return str(rows[0][1])


def new_request(office: Office) -> tuple[str, bytes, bytes]:
    """A fresh request waiting on the Kadis: (ticket, the requester's acknowledgement, the Kadis's step mail)."""
    label = f"st{secrets.token_hex(3)}"
    office.send_request(label)
    ack = office.wait_mail(office.requester, lambda m: label in str(m["Subject"]) and "diterima" in str(m["Subject"]))
    step = office.wait_mail(office.officials["kadis"], lambda m: label in str(m["Subject"]))
    ticket = re.search(r"\[(SD/\d{4}/\d{4})\]", str(parse_mail(ack)["Subject"])).group(1)  # type: ignore[union-attr]
    return ticket, ack, step


def step_of(office: Office, ticket: str) -> tuple[str, int]:
    with db(office) as c:
        rid, step = c.execute("SELECT id, step FROM requests WHERE ticket = ?", (ticket,)).fetchone()
        accepted = c.execute("SELECT count(*) FROM decisions WHERE request_id = ?", (rid,)).fetchone()[0]
    return step, accepted


def status_mail(office: Office, user: MailUser, ticket: str, after: int) -> str:
    raw = office.wait_mail(user, lambda m: str(m["Subject"]).endswith(f"Status permohonan {ticket}"), after=after)
    return body_text(raw)


def see_on_a_phone(office: Office, user: MailUser, subject: str, name: str, tmp: Path) -> None:
    """The newest mail of `user` whose subject holds `subject`, its HTML part in Chromium at 390 px: written
    to tests/artifacts/ to be looked at, and no wider than the phone."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    pil = pytest.importorskip("PIL.Image")
    raw = next(m for m in reversed(user.messages()) if subject in str(parse_mail(m)["Subject"]))
    part = parse_mail(raw).get_body(preferencelist=("html",))
    assert part is not None
    scroll, inner, _ = measure(part.get_content(), 390, tmp, name)
    assert scroll <= inner == 390, f"{name}: {scroll} px wide on a 390 px phone"
    out = screenshot(part.get_content(), 390, 1600, tmp, name)
    with pil.open(out) as img:
        colors = dict((c, n) for n, c in (img.convert("RGB").getcolors(maxcolors=1 << 22) or []))
    assert colors.get((30, 58, 95), 0) > 5_000  # the office-blue header bar is there


def test_answer_templates_escape_what_units_wrote() -> None:
    from subdomaind.workflows.mailer import Mailer

    hostile = "<script>alert(1)</script>"
    m = Mailer(agency_id="trenggalek", agency_name="Diskominfo", address="layanan@trenggalekkab.go.id",
               zone="trenggalekkab.go.id", clock=lambda: datetime.now(ZoneInfo("UTC")))
    status = {"ticket": "SD/2026/0001", "fqdn": hostile, "unit": hostile, "received": "-", "status": "Selesai",
              "closed": None, "current": None, "done": [{"no": 1, "title": "T", "sop_no": "-", "said": hostile,
                                                          "closed": "-", "took": "0 menit"}]}
    item = {"no": 1, "ticket": "SD/2026/0001", "fqdn": hostile, "unit": hostile, "step_title": "T", "sop_no": "-",
            "acting": False, "role_title": "Kepala Dinas", "opened": "-", "age": "-", "mutu": None,
            "overdue": False, "answers": ["SETUJU"], "step_mail": hostile, "links": []}
    for rendered in (m.render("status", {"statuses": [status], "official": False}),
                     m.render("antrean", {"items": [item], "who": hostile, "tag_replies": False, "overdue": 0})):
        assert rendered.html is not None and "<script" not in rendered.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html


# --- STATUS ----------------------------------------------------------------------------------------

def test_requester_replies_status_and_sees_the_timeline(office: Office) -> None:
    ticket, ack, _ = new_request(office)
    me = office.requester
    n = len(me.messages())
    _, status = send(office, reply_to(ack, me.address, "STATUS"), me.address)
    assert status == "answered"
    text = status_mail(office, me, ticket, n)
    assert f"Nomor tiket : {ticket}" in text and "Status      : Sedang diproses" in text
    now = text.split("SAAT INI MENUNGGU")[1].split("LANGKAH YANG SUDAH DILALUI")[0]
    assert "SOP 4 — Mendisposisi surat permohonan" in now
    assert f"Menunggu  : {KADIS_NAME}, {KADIS_TITLE}" in now
    assert re.search(r"Mutu Baku : 1 hari, batas \d+ \w+ \d{4} pukul \d\d\.\d\d WIB", now), now
    done = text.split("LANGKAH YANG SUDAH DILALUI")[1]
    assert "Lengkap (proses otomatis)" in done
    assert "Diberitahukan kepada Sekretaris\r\n" in done  # no name configured: the jabatan alone
    assert step_of(office, ticket) == ("disposisi", 0)  # asking changes nothing


def test_official_replies_status_to_the_step_mail_without_deciding(office: Office) -> None:
    ticket, _, step_mail = new_request(office)
    kadis = office.officials["kadis"]
    n = len(kadis.messages())
    # Not vouched for: STATUS needs no vouching, its answer goes to the From address only.
    _, status = send(office, reply_to(step_mail, kadis.address, "Status"), kadis.address)
    assert status == "answered"
    assert "SAAT INI MENUNGGU" in status_mail(office, kadis, ticket, n)
    assert step_of(office, ticket) == ("disposisi", 0)


def test_status_by_ticket_shows_who_decided(office: Office, tmp_path: Path) -> None:
    ticket, _, step_mail = new_request(office)
    kadis, me = office.officials["kadis"], office.requester
    send(office, vouch(reply_to(step_mail, kadis.address, "SETUJU"), kadis.address), kadis.address)
    assert step_of(office, ticket) == ("disposisi_kabid", 1)
    n = len(me.messages())
    _, status = send(office, new_mail(me.address, office.mailbox.address, f"STATUS {ticket}"), me.address)
    assert status == "answered"
    text = status_mail(office, me, ticket, n)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "status.txt").write_text(text, encoding="utf-8")  # to be read as the requester reads it
    see_on_a_phone(office, me, f"Status permohonan {ticket}", "status", tmp_path)
    assert f"Disetujui oleh {KADIS_NAME}, {KADIS_TITLE}" in text
    # The Kabid's step is waiting, on the Kabid and on the acting Kabid (Plt) from the config.
    assert f"Menunggu  : {KABID_NAME}, {KABID_TITLE}; {PLT_NAME}, Plt./Plh. {KABID_TITLE}" in text
    # In the body too, with no subject.
    n = len(me.messages())
    _, status = send(office, new_mail(me.address, office.mailbox.address, "Pertanyaan", f"status {ticket}\n"),
                     me.address)
    assert status == "answered" and "SAAT INI MENUNGGU" in status_mail(office, me, ticket, n)


def test_status_while_the_unit_must_complete_its_form_is_not_a_correction(office: Office) -> None:
    label = f"lkp{secrets.token_hex(3)}"
    me = office.requester
    n = len(me.messages())
    office.send_request(label, body=f"Dengan hormat,\nMohon dibuatkan sub domain.\n\nNama Sub Domain : {label}\n")
    ask = office.wait_mail(me, lambda m: "perlu dilengkapi" in str(m["Subject"]), after=n, timeout=60)
    ticket = re.search(r"\[(SD/\d{4}/\d{4})\]", str(parse_mail(ask)["Subject"])).group(1)  # type: ignore[union-attr]
    n = len(me.messages())
    _, status = send(office, reply_to(ask, me.address, "STATUS"), me.address)
    assert status == "answered"
    text = status_mail(office, me, ticket, n)
    assert "SOP 1 — Pemohon melengkapi isian permohonan" in text
    assert "Menunggu  : Unit Kerja Pemohon (" in text
    assert step_of(office, ticket) == ("lengkapi_awal", 0)  # still waiting for the form


def test_status_from_anyone_else_gets_nothing(office: Office, dovecot: Dovecot) -> None:
    ticket, ack, _ = new_request(office)
    stranger = dovecot.new_user("orang")
    # Vouched for, and even answering the acknowledgement: not a party to the request.
    mid, status = send(office, vouch(reply_to(ack, stranger.address, "STATUS"), stranger.address), stranger.address)
    assert status == "ignored" and "not_party" in refused(office, mid)
    mid, status = send(office, new_mail(stranger.address, office.mailbox.address, f"STATUS {ticket}"),
                       stranger.address)
    assert status == "ignored" and "not_party" in refused(office, mid)
    # A ticket that does not exist says nothing either (not even that it does not exist).
    mid, status = send(office, new_mail(stranger.address, office.mailbox.address, "STATUS SD/2026/9999"),
                       stranger.address)
    assert status == "ignored"
    time.sleep(1.0)
    assert stranger.messages() == []


def test_requester_sees_only_their_own_requests(office: Office, dovecot: Dovecot) -> None:
    ticket, _, _ = new_request(office)
    other = dovecot.new_user("dinkes")
    label = f"lain{secrets.token_hex(3)}"
    office.send(office_request(office, other.address, label), other.address)
    office.wait_mail(other, lambda m: label in str(m["Subject"]))
    n = len(other.messages())
    # Another unit naming this ticket: nothing.
    mid, status = send(office, new_mail(other.address, office.mailbox.address, f"STATUS {ticket}"), other.address)
    assert status == "ignored" and "not_party" in refused(office, mid)
    # "STATUS" alone: its own open request, and nothing of the other unit's.
    _, status = send(office, new_mail(other.address, office.mailbox.address, "STATUS"), other.address)
    assert status == "answered"
    raw = office.wait_mail(other, lambda m: "Status permohonan" in str(m["Subject"]), after=n)
    text = body_text(raw)
    assert label in text and ticket not in text


def office_request(office: Office, sender: str, label: str) -> bytes:
    return request_mail(sender, label, to=office.mailbox.address)


# --- ANTREAN ---------------------------------------------------------------------------------------

def antrean_mail(office: Office, user: MailUser, after: int) -> str:
    return body_text(office.wait_mail(user, lambda m: str(m["Subject"]).startswith("Antrean Anda:"), after=after))


def test_antrean_vouched_official_gets_the_list(office: Office, tmp_path: Path) -> None:
    ticket, _, _ = new_request(office)
    kadis = office.officials["kadis"]
    n = len(kadis.messages())
    _, status = send(office, vouch(new_mail(kadis.address, office.mailbox.address, "ANTREAN"), kadis.address),
                     kadis.address)
    assert status == "answered"
    text = antrean_mail(office, kadis, n)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "antrean.txt").write_text(text, encoding="utf-8")
    see_on_a_phone(office, kadis, "Antrean Anda:", "antrean", tmp_path)
    assert text.startswith(f"Yth. {KADIS_NAME}, {KADIS_TITLE},")
    assert ticket in text and f"Sebagai    : {KADIS_TITLE}" in text
    assert "Menjawab   : SETUJU / TOLAK" in text
    assert f"(subjek: [{ticket}] Mohon keputusan: Mendisposisi surat permohonan" in text
    assert f'bersubjek "[{ticket}] SETUJU"' in text  # vouched replies may name the ticket alone
    # One tap: the link's mail (office mailbox, ticket in the subject, the word first), vouched, decides.
    html = parse_mail(next(m for m in reversed(kadis.messages()) if b"Antrean Anda" in m)).get_body(
        preferencelist=("html",))
    assert html is not None
    link = next(h for h in re.findall(r'href="(mailto:[^"]+)"', html.get_content()) if "SETUJU" in unquote(h)
                and ticket in unquote(h))
    to, _, query = html_lib.unescape(link).removeprefix("mailto:").partition("?")
    fields = {k: unquote(v) for k, v in (p.split("=", 1) for p in query.split("&"))}
    assert unquote(to) == office.mailbox.address and fields["body"].startswith("SETUJU")
    tapped = vouch(new_mail(kadis.address, unquote(to), fields["subject"], fields["body"]), kadis.address)
    send(office, tapped, kadis.address)
    assert step_of(office, ticket) == ("disposisi_kabid", 1)
    items = re.findall(r"^\d+\. (\[TERLAMBAT\] )?(SD/\d{4}/\d{4})", text, re.MULTILINE)
    late = [t for flag, t in items if flag]
    assert [t for _, t in items[:len(late)]] == late  # overdue ones first


def test_forged_antrean_gets_nothing(office: Office, dovecot: Dovecot) -> None:
    new_request(office)
    kadis = office.officials["kadis"]
    n = len(kadis.messages())
    # No Authentication-Results from our MTA.
    mid, status = send(office, new_mail(kadis.address, office.mailbox.address, "ANTREAN"), "penyusup@example.net")
    assert status == "ignored" and "not_vouched" in refused(office, mid)
    # A result from another server's id.
    raw = vouch(new_mail(kadis.address, office.mailbox.address, "ANTREAN"), kadis.address, authserv="mx.example.net")
    mid, status = send(office, raw, "penyusup@example.net")
    assert status == "ignored" and "not_vouched" in refused(office, mid)
    # Vouched for, but holding no role.
    stranger = dovecot.new_user("orang")
    raw = vouch(new_mail(stranger.address, office.mailbox.address, "ANTREAN"), stranger.address)
    mid, status = send(office, raw, stranger.address)
    assert status == "ignored" and "not_party" in refused(office, mid)
    time.sleep(1.0)
    assert not [m for m in kadis.messages()[n:] if b"Antrean Anda" in m]
    assert stranger.messages() == []


def test_antrean_of_an_acting_official_while_it_lasts(office: Office, plt: MailUser, dovecot: Dovecot) -> None:
    ticket, _, step_mail = new_request(office)
    kadis = office.officials["kadis"]
    send(office, vouch(reply_to(step_mail, kadis.address, "SETUJU"), kadis.address), kadis.address)
    n = len(plt.messages())
    _, status = send(office, vouch(new_mail(plt.address, office.mailbox.address, "Antrean"), plt.address), plt.address)
    assert status == "answered"
    text = antrean_mail(office, plt, n)
    assert ticket in text and f"Sebagai    : Plt./Plh. {KABID_TITLE}" in text
    # A delegation the Kadis registered that has already ended: nothing.
    former = dovecot.new_user("mantan")
    raw = vouch(new_mail(kadis.address, office.mailbox.address, f"PLT kabid {former.address} sampai 2026-01-01"),
                kadis.address)
    _, status = send(office, raw, kadis.address)
    assert status == "handled"
    mid, status = send(office, vouch(new_mail(former.address, office.mailbox.address, "ANTREAN"), former.address),
                       former.address)
    assert status == "ignored" and "not_party" in refused(office, mid)


def test_antrean_without_vouching_needs_the_step_mail(open_office: Office) -> None:
    office = open_office
    ticket, _, step_mail = new_request(office)
    kadis, kabid = office.officials["kadis"], office.officials["kabid"]
    # A new mail says nothing of who sent it: refused.
    mid, status = send(office, new_mail(kadis.address, office.mailbox.address, "ANTREAN"), kadis.address)
    assert status == "ignored" and "not_vouched" in refused(office, mid)
    # Another official answering the Kadis's step mail: not that official's capability.
    mid, status = send(office, reply_to(step_mail, kabid.address, "ANTREAN"), kabid.address)
    assert status == "ignored" and "not_vouched" in refused(office, mid)
    # The Kadis answering their own step mail (its token): the list.
    n = len(kadis.messages())
    _, status = send(office, reply_to(step_mail, kadis.address, "ANTREAN"), kadis.address)
    assert status == "answered"
    assert ticket in antrean_mail(office, kadis, n)
    assert step_of(office, ticket) == ("disposisi", 0)


def test_status_answers_are_capped_per_address(open_office: Office) -> None:
    office = open_office
    ticket, ack, _ = new_request(office)
    me = office.requester
    with db(office) as c:
        before = c.execute("SELECT count(*) FROM outbox WHERE rcpts LIKE ?", (f"%{me.address}%",)).fetchone()[0]
    for _ in range(5):
        send(office, reply_to(ack, me.address, "STATUS"), me.address)
    with db(office) as c:
        rows = c.execute("SELECT status FROM outbox WHERE purpose = 'status' AND rcpts LIKE ? ORDER BY id",
                         (f"%{me.address}%",)).fetchall()
    # The daily cap of 4 counts every mail to the address today (the acknowledgements included).
    assert len(rows) == 5
    assert [r[0] for r in rows].count("held") == 5 - max(0, 4 - before)


# --- the monthly report over SMTP ------------------------------------------------------------------

def test_report_sent_by_hand_and_on_schedule(office: Office) -> None:
    new_request(office)
    month = datetime.now(ZoneInfo("Asia/Jakarta")).strftime("%Y-%m")
    kadis, staff = office.officials["kadis"], office.staff
    n_kadis, n_staff = len(kadis.messages()), len(staff.messages())
    out = office.cli("report", "--month", month, "--send")
    assert "diantrekan" in out.stdout, out.stderr
    with db(office) as c:
        received = c.execute("SELECT count(*) FROM requests").fetchone()[0]  # all created this month, by the tests
    for user, n in ((kadis, n_kadis), (staff, n_staff)):
        raw = office.wait_mail(user, lambda m: str(m["Subject"]).startswith("Laporan bulanan"), after=n)
        msg = parse_mail(raw)
        text = body_text(raw)
        assert f"Permohonan diterima        : {received}" in text
        html = msg.get_body(preferencelist=("html",))
        assert html is not None and 'src="cid:grafik-mingguan@subdomaind"' in html.get_content()
        kinds = sorted(p.get_content_type() for p in msg.walk() if not p.is_multipart())
        assert kinds == ["application/pdf", "image/png", "image/png", "text/html", "text/plain"]
    csv_out = office.cli("report", "--month", month, "--csv").stdout
    assert len(csv_out.strip().splitlines()) == 1 + received
    bad = office.cli("report", "--month", "November", "--preview", check=False)
    assert bad.returncode == 2 and "TAHUN-BULAN" in bad.stderr and "Traceback" not in bad.stderr
    # The daemon itself looks at last month's report from the first working day of this month at the
    # digest time on; last month had no request in this database, so it is recorded, not mailed.
    cal = WorkCalendar("Asia/Jakarta")
    today = datetime.now(ZoneInfo("Asia/Jakarta"))
    first = today.date().replace(day=1)
    first_workday = first if cal.is_workday(first) else cal.next_workday(first)
    due = today.date() > first_workday or (today.date() == first_workday and today.hour >= 7)
    with db(office) as c:
        events = [r[0] for r in c.execute("SELECT event FROM audit WHERE event LIKE 'report.%' ORDER BY id")]
    assert events.count("report.sent_by_hand") == 1 and "report.sent" not in events
    assert events.count("report.empty") == (1 if due else 0), events
