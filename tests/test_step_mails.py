"""The mails officials get for a step, as they see them: email-safe HTML with the Mutu Baku deadline first,
one-tap SETUJU / TOLAK / PERBAIKI links (RFC 6068 mailto:) that the daemon accepts like a typed reply, the
request as a table, the history by name and jabatan, the unit's files attached as themselves, the same
content in the plain-text part; each kind rendered by headless Chromium at 390 and 800 px without
horizontal overflow (pictures in tests/artifacts/)."""

from __future__ import annotations

import email
import email.policy
import html as htmllib
import re
import secrets
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import select

from subdomaind.daemon.config import LetterConfig
from subdomaind.workflows.forms import form_docx
from subdomaind.workflows.mailer import format_deadline
from subdomaind.workflows.mailto import MAX_LINK, answer_links, mailto
from subdomaind.workflows.reminders import due_reminders
from subdomaind.workflows.store import Decision
from subdomaind.workflows.worktime import WorkCalendar
from tests.chromium import measure_all, needs_chromium, screenshot_all
from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import ACTORS, UNVOUCHED, Office, request_mail, text_pdf
from tests.test_engine_unit import approve, last_to, world
from tests.test_reminders import office

__all__ = ["office", "world"]

REQUESTER = "dinsos@example.org"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
KADIS_NAME = "Drs. Bambang Sutrisno, M.Si."


def letter_with_files(label: str = "dinsos") -> bytes:
    """A unit's request: the form in the body, the signed letter as a PDF its client labelled
    application/octet-stream, and the filled form as a DOCX."""
    msg = email.message_from_bytes(request_mail(REQUESTER, label), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    content = b"BT /F1 12 Tf 72 760 Td (Surat Permohonan Sub Domain Dinas Sosial) Tj ET"
    pdf = text_pdf(content)
    msg.add_attachment(pdf, maintype="application", subtype="octet-stream", filename="Surat Permohonan Dinsos.pdf")
    msg.add_attachment(form_docx("Dinas Kominfo", "trenggalekkab.go.id", LetterConfig()), maintype="application",
                       subtype="octet-stream", filename="formulir-dinsos.docx")
    return msg.as_bytes()


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def buttons(msg: EmailMessage) -> dict[str, str]:
    """The answer links of a mail's HTML, by the word on the button."""
    found = re.findall(r'<a href="(mailto:[^"]+)"[^>]*>([A-Z]+)</a>', html_of(msg))
    return {word: htmllib.unescape(href) for href, word in found}


def from_mailto(href: str, sender: str, typed: str = "") -> bytes:
    """The mail a client writes when the link is tapped (RFC 6068: percent-decoding only, "+" is a "+"),
    sent as a new message: no In-Reply-To, no References, only what the link carries, with what the
    official `typed` where the cursor is (after the word) and the client's signature below."""
    assert href.startswith("mailto:")
    to, _, query = href[len("mailto:"):].partition("?")
    fields = {k.lower(): unquote(v) for k, _, v in (p.partition("=") for p in query.split("&") if p)}
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = unquote(to)
    msg["Subject"] = fields.get("subject", "")
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    word, _, rest = fields.get("body", "").replace("\r\n", "\n").partition("\n")
    msg.set_content(f"{word}\n{typed}\n{rest}\nSalam,\nPejabat\n")
    return msg.as_bytes()


# --- the links ------------------------------------------------------------------------------------


def test_mailto_is_percent_encoded_per_rfc_6068() -> None:
    link = mailto("layanan+tabc@trenggalekkab.go.id", subject="SETUJU [SD/2026/0001] Disposisi & cek: 100%",
                  body="SETUJU\n\nCatatan + é")
    assert link.startswith("mailto:layanan+tabc@trenggalekkab.go.id?subject=")
    query = link.split("?", 1)[1]
    assert " " not in link and "+" not in query  # spaces as %20, "+" as %2B: never a form-encoded "+"
    assert "%20" in query and "%2B" in query and "%26" in query and "%25" in query
    assert "body=SETUJU%0D%0A%0D%0ACatatan%20%2B%20%C3%A9" in query  # CRLF line breaks, UTF-8 (section 2, 5)
    with pytest.raises(ValueError):
        mailto("bad address@example.org")
    with pytest.raises(ValueError):
        mailto("a@example.org", body="x" * MAX_LINK)
    links = answer_links("layanan+tabc@x.go.id", "SD/2026/0001", "Disposisi " * 20,
                         [{"word": "SETUJU", "then": "Kabid"}, {"word": "TOLAK", "then": "Ditolak"}])
    assert [b.word for b in links] == ["SETUJU", "TOLAK"] and all(len(b.href) < 500 for b in links)


def test_deadline_is_written_as_officials_read_it() -> None:
    cal = WorkCalendar("Asia/Jakarta")
    opened = datetime(2026, 12, 4, 15, 0, tzinfo=UTC) - timedelta(hours=7)  # Friday 15.00 WIB
    from subdomaind.workflows.sop import MutuBaku

    due = cal.deadline(opened, MutuBaku.parse("1 hari"))
    assert format_deadline(cal.local(due)) == "Senin, 7 Desember 2026 pukul 15.00 WIB"
    assert format_deadline(WorkCalendar("Asia/Makassar").local(due)).endswith("pukul 16.00 WITA")


def test_names_are_checked_and_normalised(tmp_path: Path) -> None:
    from subdomaind.daemon.config import ConfigError
    from tests.devkit.localoffice import make_config

    cfg = make_config(tmp_path, agency_extra={"names": {"Kadis@Trenggalekkab.go.id": "  Drs.  Bambang  "}})
    assert cfg.agencies[0].names == {"kadis@trenggalekkab.go.id": "Drs. Bambang"}
    with pytest.raises(ConfigError, match="names"):
        make_config(tmp_path, agency_extra={"names": {"kadis": "Drs. Bambang"}})


# --- the mails ------------------------------------------------------------------------------------


@pytest.fixture
def mails(world: Any) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Each kind of step mail from a real run of the Trenggalek SOP (in-memory mailbox and SMTP)."""
    d, src, tr, _dns, sessions = world
    agency = d.runtimes["trenggalek"].agency
    agency.names[ACTORS["kadis"][0]] = KADIS_NAME
    src.add(letter_with_files())
    d.run_once()
    out: dict[str, Any] = {"world": world}
    out["notify"] = parse(last_to(tr, ACTORS["sekretaris"][0]))
    out["ack"] = parse(last_to(tr, REQUESTER))  # a mail in the plain layout, which must fit a phone too
    out["approval"] = parse(last_to(tr, ACTORS["kadis"][0]))
    approve(d, src, tr, "kadis", "SETUJU\nSilakan diproses.")
    out["echo"] = parse(last_to(tr, ACTORS["kadis"][0]))
    approve(d, src, tr, "kadis", "BATAL")  # answers the echo: the step is asked again
    out["cancelled"] = next(m for m in tr.to(ACTORS["kadis"][0]) if "Dibatalkan" in str(m["Subject"]))
    approve(d, src, tr, "kadis", "SETUJU\nSilakan diproses.")
    out["approval_history"] = parse(last_to(tr, ACTORS["kabid"][0]))
    with sessions() as s:
        rendered = d.ctx(s, agency).mailer.render("delegation", {
            "cmd": "PLT", "role_title": "Kepala Bidang e-Government dan Statistik",
            "address": "plt.kabid@trenggalekkab.go.id", "until": "31 Desember 2026", "by": ACTORS["kadis"][0]})
    delegation = EmailMessage()
    delegation.set_content(rendered.text)
    delegation.add_alternative(rendered.html, subtype="html")
    out["delegation"] = delegation
    # Far past the Mutu Baku, on a working morning: the Kabid is reminded, the Kadis told.
    later = datetime(2027, 1, 12, 3, 0, tzinfo=UTC)  # Tuesday 10.00 WIB
    with sessions.begin() as s:
        assert due_reminders(d.ctx(s, agency), d.runtimes["trenggalek"].calendar, later) == 2
    d.run_once()  # sends the reminder mails
    out["reminder"] = parse(last_to(tr, ACTORS["kabid"][0]))
    out["escalation"] = parse(last_to(tr, ACTORS["kadis"][0]))
    for role in ("kabid", "kasi"):
        approve(d, src, tr, role)
    out["approval_draft"] = parse(last_to(tr, ACTORS["kasi"][0]))
    # A second request that the Kasi sends back for correction.
    src.add(request_mail(REQUESTER, "dinkes"))
    d.run_once()
    for role in ("kadis", "kabid"):
        approve(d, src, tr, role)
    approve(d, src, tr, "kasi", "PERBAIKI\nNama penanggung jawab belum lengkap.")
    out["revise"] = parse(last_to(tr, REQUESTER))
    yield out


def test_approval_mail_says_what_is_asked_and_by_when(mails: dict[str, Any]) -> None:
    msg = mails["approval"]
    text, page = text_of(msg), html_of(msg)
    first = text.strip().splitlines()[0]
    assert first.startswith("Mohon keputusan Bapak/Ibu:") and "paling lambat" in first
    assert re.search(r"paling lambat (Senin|Selasa|Rabu|Kamis|Jumat), \d{1,2} \w+ \d{4} pukul \d\d\.\d\d WIB", first)
    assert "paling lambat" in page and "WIB" in page
    # The token's expiry is not a deadline the mail shows.
    assert "sampai " not in text.split("CARA MENJAWAB")[1].split("\n\n")[0]
    # What to do comes before the request's details, in both parts.
    assert text.index("CARA MENJAWAB") < text.index("Nomor tiket")
    assert page.index("SETUJU</a>") < page.index("Nomor tiket")
    assert set(buttons(msg)) == {"SETUJU", "TOLAK"}
    reply_address = str(msg["Reply-To"])
    for href in buttons(msg).values():
        assert href.startswith(f"mailto:{reply_address}?subject=")
    # Email-safe: no scripts, no external resources, styles inline.
    assert "<script" not in page and "<link" not in page and "<style" not in page
    assert not re.search(r'(src|href)="https?:', page)


def test_unit_files_are_attached_as_themselves(mails: dict[str, Any]) -> None:
    msg = mails["approval"]
    parts = {p.get_filename(): p.get_content_type() for p in msg.iter_attachments()}
    assert parts == {"Surat Permohonan Dinsos.pdf": "application/pdf", "formulir-dinsos.docx": DOCX}
    assert not any(p.get_content_type() in ("message/rfc822", "application/octet-stream")
                   for p in msg.iter_attachments())
    for name in parts:
        assert name in text_of(msg) and htmllib.escape(name) in html_of(msg)
    # The first mails take the files as the parser read them; later ones read the letter back.
    for kind in ("notify", "approval_history"):
        assert {p.get_filename(): p.get_content_type() for p in mails[kind].iter_attachments()} == parts
        assert [p.get_content() for p in mails[kind].iter_attachments()] == \
            [p.get_content() for p in msg.iter_attachments()]


def test_a_large_file_is_attached_whole(world: Any) -> None:  # type: ignore[no-untyped-def]
    """A file the parser worker does not send back (over RETURN_ATTACHMENT_MAX) is read from the stored
    letter for the first step mails too."""
    from subdomaind.daemon.parsing import RETURN_ATTACHMENT_MAX

    d, src, tr, _dns, _sessions = world
    msg = parse(request_mail(REQUESTER, "dinsos"))
    lines = b"".join(b"BT /F1 8 Tf 72 %d Td (lampiran %d) Tj ET\n" % (800 - (i % 90) * 8, i) for i in range(9000))
    pdf = text_pdf(lines)
    assert len(pdf) > RETURN_ATTACHMENT_MAX
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="scan.pdf")
    src.add(msg.as_bytes())
    d.run_once()
    got = [(p.get_filename(), p.get_content()) for p in parse(last_to(tr, ACTORS["kadis"][0])).iter_attachments()]
    assert got == [("scan.pdf", pdf)]


def test_draft_letter_is_attached_and_named(mails: dict[str, Any]) -> None:
    msg = mails["approval_draft"]
    drafts = [p for p in msg.iter_attachments() if (p.get_filename() or "").startswith("konsep-surat-balasan")]
    assert len(drafts) == 1 and drafts[0].get_content_type() == "application/pdf"
    name = drafts[0].get_filename()
    assert f"Konsep surat balasan terlampir sebagai {name}" in text_of(msg)
    assert name in html_of(msg) and "konsep surat balasan" in html_of(msg)


def test_history_shows_names_and_jabatan_not_addresses(mails: dict[str, Any]) -> None:
    msg = mails["approval_history"]
    text, page = text_of(msg), html_of(msg)
    history = text.split("Riwayat keputusan:")[1].split("\n\n")[0]
    assert f"SETUJU oleh {KADIS_NAME}, Kepala Dinas Komunikasi dan Informatika" in history
    assert "Silakan diproses." in history and "@" not in history
    riwayat = page.split("Riwayat keputusan")[1].split("Lampiran")[0]
    assert KADIS_NAME in riwayat and "Kepala Dinas Komunikasi dan Informatika" in riwayat and "@" not in riwayat
    assert f"Dicatat: SETUJU oleh {KADIS_NAME}, Kepala Dinas Komunikasi dan Informatika" in text_of(mails["echo"])
    escalation = text_of(mails["escalation"])
    assert "kabid@" not in escalation and "Kepala Bidang" in escalation


def test_plain_text_part_carries_the_same_content(mails: dict[str, Any]) -> None:
    for kind in ("approval", "approval_history", "reminder", "escalation", "notify", "approval_draft", "revise",
                 "echo", "cancelled", "delegation"):
        msg = mails[kind]
        text = text_of(msg)
        page = htmllib.unescape(re.sub(r"<[^>]+>", " ", html_of(msg)))
        page = " ".join(page.split())
        for value in re.findall(r"SD/\d{4}/\d{4}|\w+\.trenggalekkab\.go\.id|\w+, \d{1,2} \w+ \d{4} pukul \d\d\.\d\d "
                                r"WIB", text):
            assert value in page, (kind, value)
        if kind != "delegation":
            assert "Nomor tiket" in text and "Nomor tiket" in page
        if kind.startswith("approval") or kind == "reminder":
            # The first line, what is asked and by when, is the same sentence in both parts.
            flat = " ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", html_of(msg))).split())
            first = text.strip().splitlines()[0]
            assert first.split(" telah lewat")[0] in flat, (kind, first)


def _send_button(world: Any, msg: EmailMessage, word: str, sender: str) -> None:
    d, src, _tr, _dns, _sessions = world
    src.add(from_mailto(buttons(msg)[word], sender))
    d.run_once()


def test_reminder_buttons_decide_too(mails: dict[str, Any]) -> None:
    """A reminder's links carry the reminder's own token: tapped, they decide the reminded step."""
    msg = mails["reminder"]
    assert set(buttons(msg)) == {"SETUJU", "TOLAK"}
    assert html_of(msg).index("SETUJU</a>") < html_of(msg).index("Nomor tiket")
    world = d, src, tr, _dns, sessions = mails["world"]
    with sessions() as s:
        before = len(s.execute(select(Decision)).all())
    # A new request at the Kabid's step, then a reminder past its Mutu Baku, answered by its button.
    src.add(letter_with_files("dinsos2"))
    d.run_once()
    approve(d, src, tr, "kadis")
    later = datetime(2027, 2, 9, 3, 0, tzinfo=UTC)  # Tuesday 10.00 WIB
    agency = d.runtimes["trenggalek"].agency
    with sessions.begin() as s:
        assert due_reminders(d.ctx(s, agency), d.runtimes["trenggalek"].calendar, later) >= 1
    d.run_once()
    reminder = parse(last_to(tr, ACTORS["kabid"][0]))
    assert "Pengingat" in str(reminder["Subject"])
    _send_button(world, reminder, "SETUJU", ACTORS["kabid"][0])
    with sessions() as s:
        after = s.execute(select(Decision).order_by(Decision.id)).scalars().all()[before:]
    assert [(x.decision, x.actor, x.accepted) for x in after] == [("approve", ACTORS["kadis"][0], True),
                                                                  ("approve", ACTORS["kabid"][0], True)]


@pytest.mark.parametrize("word, decision", [("SETUJU", "approve"), ("TOLAK", "reject")])
def test_each_button_is_accepted_like_a_typed_reply(world: Any, word: str, decision: str) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, _dns, sessions = world
    src.add(letter_with_files())
    d.run_once()
    _send_button(world, parse(last_to(tr, ACTORS["kadis"][0])), word, ACTORS["kadis"][0])
    with sessions() as s:
        got = s.execute(select(Decision.decision, Decision.accepted)).all()
        assert got == [(decision, True)]


@pytest.mark.servers
def test_buttons_decide_through_the_real_servers(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    """Each button's mail, sent by SMTP to Dovecot and read by the real `subdomaind run`: SETUJU moves the
    request on, PERBAIKI sends it back to the unit with the official's reason, TOLAK sends the rejection."""
    base = Path(tempfile.mkdtemp(prefix="office-"))
    office = Office.create(base, dovecot, smtp_relay, bind, auth=UNVOUCHED)
    office.start()
    try:
        label = f"dinsos{secrets.token_hex(3)}"
        office.send_request(label)
        seen: dict[str, int] = {}

        def tap(role: str, word: str, typed: str = "") -> None:
            user = office.officials[role]
            raw = office.wait_mail(user, lambda m: "Mohon keputusan" in str(m["Subject"]), after=seen.get(role, 0))
            seen[role] = user.messages().index(raw) + 1
            links = buttons(parse(raw))
            assert word in links, (role, sorted(links))
            office.send(from_mailto(links[word], user.address, typed), user.address)

        tap("kadis", "SETUJU")
        tap("kabid", "SETUJU")
        tap("kasi", "PERBAIKI", "Nama penanggung jawab belum lengkap.")
        revise = office.wait_mail(office.requester, lambda m: "perlu diperbaiki" in str(m["Subject"]))
        assert "Nama penanggung jawab belum lengkap." in text_of(parse(revise))
        office.send_request(f"dispar{secrets.token_hex(3)}")
        tap("kadis", "TOLAK", "Nama sub domain tidak sesuai nomenklatur.")
        letter = office.wait_mail(office.requester, lambda m: "dapat dipenuhi" in str(m["Subject"]))
        assert "nomenklatur" in " ".join(text_of(parse(letter)).split())
        tickets = [re.search(r"\[(SD/\d{4}/\d{4})\]", str(parse(m)["Subject"])).group(1)  # type: ignore[union-attr]
                   for m in (revise, letter)]
        shown = "".join(office.cli("show", t).stdout for t in tickets)
        for decision in ("approve", "revise", "reject"):
            assert f'"decision": "{decision}"' in shown, decision
        assert office.stop() == 0
    finally:
        office.stop()


# --- as people see them ---------------------------------------------------------------------------



@needs_chromium
def test_every_step_mail_fits_a_phone_and_a_desktop(mails: dict[str, Any], tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    pages = {f"step-{kind}": html_of(mails[kind]) for kind in (
        "approval", "approval_history", "approval_draft", "reminder", "escalation", "notify", "revise", "echo",
        "cancelled", "delegation", "ack")}
    for width in (390, 800):
        laid_out = measure_all(pages, width, tmp_path, "step")
        for name, (scroll, inner, _) in laid_out.items():
            assert inner == width and scroll <= inner, (name, width, scroll, inner)
        shots = screenshot_all(pages, width, {name: h for name, (_, _, h) in laid_out.items()}, tmp_path)
        for name, png in shots.items():
            with pil.open(png) as img:
                colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
                assert len(colors) > 100, (name, width)  # text and colour, not a blank page
                if name.startswith("step-approval"):
                    greens = sum(n for n, (r, g, b) in colors if g > 100 and r < 60 and b < 100)
                    assert greens > 1500, (name, width, greens)  # the SETUJU button is painted
    for name, page in pages.items():
        if name.startswith("step-approval") or name == "step-reminder":
            assert "paling lambat" in page or "Batas waktunya" in page


@needs_chromium
def test_digest_fits_a_phone(office: Any, tmp_path: Path) -> None:
    from tests.test_digest import digest, render_digest, seed_queue

    cfg, sessions = office
    seed_queue(sessions)
    pages = {f"digest-{role}": render_digest(digest(sessions, cfg, role=role), cfg.agencies[0])[2]
             for role in (None, "kasi")}
    for width in (320, 360, 390):
        for name, (scroll, inner, _) in measure_all(pages, width, tmp_path, "digest").items():
            assert inner == width and scroll <= inner, (name, width, scroll)
