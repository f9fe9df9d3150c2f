"""Decisions only the right official can make, attacked against the real daemon and servers.

People's mail goes through the office MTA (Postfix, with OpenDKIM verifying DKIM signatures and adding
Authentication-Results) into Dovecot, as in production; the officials' domain signs its users' mail with
its test key, a forger outside cannot. The daemon runs with the default `[agency.auth]` (vouching
required, the MTA's authserv-id pinned). Each attack must change nothing (same step, no accepted
decision, nothing provisioned) and leave exactly one audit row carrying the attacking message's
Message-ID; an unknown outsider is never answered.
"""

from __future__ import annotations

import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

import pytest

from tests.devkit.devservers import Bind, DkimKey, Dovecot, Postfix, SmtpRelay
from tests.devkit.localoffice import AUTHSERV_ID, Office, parse_mail, reply_to, vouch

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def office(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind, postfix: Postfix, dkim_key: DkimKey) -> Iterator[Office]:
    base = Path(tempfile.mkdtemp(prefix="security-"))
    o = Office.create(base, dovecot, smtp_relay, bind, mta=postfix, dkim=dkim_key)
    assert "auth" not in o.data["agency"][0] or o.data["agency"][0]["auth"]["authserv_id"] == AUTHSERV_ID
    o.start()
    yield o
    o.stop()


def db(office: Office) -> sqlite3.Connection:
    return sqlite3.connect(Path(office.data["state_dir"]) / "subdomaind.db")


def wait_handled(office: Office, message_id: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db(office) as c:
            row = c.execute("SELECT status FROM inbound WHERE message_id = ?", (message_id,)).fetchone()
        if row and row[0] != "received":
            return str(row[0])
        time.sleep(0.1)
    raise AssertionError(f"{message_id} not handled; log:\n{office.log()}")


def state(office: Office, ticket: str) -> tuple[str, str, int, str | None]:
    with db(office) as c:
        rid, step, status, prov = c.execute(
            "SELECT id, step, status, provisioned FROM requests WHERE ticket = ?", (ticket,)).fetchone()
        accepted = c.execute("SELECT count(*) FROM decisions WHERE request_id = ? AND accepted", (rid,)).fetchone()
    return step, status, accepted[0], prov


def audit_rows(office: Office, message_id: str) -> list[tuple[str, str]]:
    with db(office) as c:
        return c.execute("SELECT event, detail FROM audit WHERE message_id = ?", (message_id,)).fetchall()


def new_request(office: Office) -> tuple[str, bytes]:
    """A fresh request waiting on the Kadis; returns its ticket and the Kadis's step mail."""
    label = f"atk{secrets.token_hex(3)}"
    office.send_request(label)
    mail = office.wait_mail(office.officials["kadis"], lambda m: label in str(m["Subject"]))
    subject = str(parse_mail(mail)["Subject"])
    return subject.split("]")[0].lstrip("["), mail


def send(office: Office, raw: bytes, sender: str) -> str:
    office.send(raw, sender)
    mid = str(parse_mail(raw)["Message-ID"])
    wait_handled(office, mid)
    return mid


def assert_refused(office: Office, ticket: str, before: tuple[str, str, int, str | None], mid: str) -> None:
    assert state(office, ticket) == before
    rows = audit_rows(office, mid)
    assert len(rows) == 1, rows


def test_forged_from_with_a_valid_token_is_refused(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    kadis = office.officials["kadis"].address
    # From says the Kadis, the token is right, but our MTA did not vouch for it.
    forged = reply_to(step_mail, kadis, "SETUJU")
    mid = send(office, forged, "penyusup@example.net")
    assert_refused(office, ticket, before, mid)
    assert "not_vouched" in audit_rows(office, mid)[0][1]
    # A forged Authentication-Results from another server is no better.
    forged2 = vouch(reply_to(step_mail, kadis, "SETUJU"), kadis, authserv="mx.example.net")
    mid2 = send(office, forged2, "penyusup@example.net")
    assert_refused(office, ticket, before, mid2)
    # Nor is one that names our own MTA: OpenDKIM removes it (RFC 8601 section 5) and adds its own.
    forged3 = vouch(reply_to(step_mail, kadis, "SETUJU"), kadis)
    mid3 = send(office, forged3, "penyusup@example.net")
    assert_refused(office, ticket, before, mid3)
    assert "not_vouched" in audit_rows(office, mid3)[0][1]
    # The genuine reply, signed by the officials' domain and vouched for by our MTA, is accepted.
    genuine = reply_to(step_mail, kadis, "SETUJU")
    send(office, genuine, kadis)
    assert state(office, ticket)[0] == "disposisi_kabid"


def test_stranger_with_the_token_is_refused_and_not_answered(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    stranger = office.dovecot.new_user("orang")
    raw = reply_to(step_mail, stranger.address, "SETUJU")  # signed: a colleague of the officials' domain
    mid = send(office, raw, stranger.address)
    assert_refused(office, ticket, before, mid)
    time.sleep(0.5)
    assert stranger.messages() == []  # never answer an unknown outsider


def test_right_sender_without_token_or_thread_changes_nothing(office: Office) -> None:
    ticket, _ = new_request(office)
    before = state(office, ticket)
    kadis = office.officials["kadis"].address
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = kadis, office.mailbox.address, "SETUJU"
    msg["Date"], msg["Message-ID"] = formatdate(), make_msgid(domain="trenggalekkab.go.id")
    msg.set_content("SETUJU")
    mid = send(office, msg.as_bytes(), kadis)
    assert_refused(office, ticket, before, mid)


def test_token_replayed_and_closed_step(office: Office) -> None:
    ticket, step_mail = new_request(office)
    kadis = office.officials["kadis"].address
    send(office, reply_to(step_mail, kadis, "SETUJU"), kadis)
    before = state(office, ticket)
    assert before[0] == "disposisi_kabid"
    mid = send(office, reply_to(step_mail, kadis, "TOLAK"), kadis)
    assert_refused(office, ticket, before, mid)
    assert "step_closed" in audit_rows(office, mid)[0][1]


def test_token_of_another_step_and_another_official(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    kabid = office.officials["kabid"].address
    mid = send(office, reply_to(step_mail, kabid, "SETUJU"), kabid)
    assert_refused(office, ticket, before, mid)
    assert "not_actor" in audit_rows(office, mid)[0][1]


def test_requester_cannot_approve_their_own_request(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    me = office.requester.address
    mid = send(office, reply_to(step_mail, me, "SETUJU"), me)
    assert_refused(office, ticket, before, mid)
    assert "requester" in audit_rows(office, mid)[0][1]


def test_a_cc_d_colleague_replying_all_is_refused(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    colleague = office.dovecot.new_user("staf")
    raw = reply_to(step_mail, colleague.address, "SETUJU, atas arahan Kadis")
    msg = parse_mail(raw)
    msg["Cc"] = office.officials["kadis"].address
    mid = send(office, msg.as_bytes(), colleague.address)
    assert_refused(office, ticket, before, mid)


def test_out_of_office_from_an_official_is_ignored(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    kadis = office.officials["kadis"].address
    orig = parse_mail(step_mail)
    msg = EmailMessage()
    msg["From"], msg["To"] = kadis, parseaddr(str(orig["Reply-To"]))[1]
    msg["Subject"] = "Balasan Otomatis: " + str(orig["Subject"])
    msg["Auto-Submitted"] = "auto-replied"
    msg["In-Reply-To"] = str(orig["Message-ID"])
    msg["Date"], msg["Message-ID"] = formatdate(), make_msgid(domain="trenggalekkab.go.id")
    msg.set_content("Saya sedang cuti sampai 1 Desember. SETUJU untuk hal mendesak hubungi Sekretaris.")
    mid = send(office, msg.as_bytes(), kadis)
    assert_refused(office, ticket, before, mid)
    assert audit_rows(office, mid)[0][0] == "mail.auto_reply"


def test_bounce_of_a_step_mail_alerts_staff_and_changes_nothing(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    orig = parse_mail(step_mail)
    mid_dsn = make_msgid(domain="trenggalekkab.go.id")
    raw = (
        "From: MAILER-DAEMON@trenggalekkab.go.id\r\n"
        f"To: {office.mailbox.address}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {mid_dsn}\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.trenggalekkab.go.id\r\n\r\n"
        "Final-Recipient: rfc822; kadis.lama@trenggalekkab.go.id\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {orig['Message-ID']}\r\nSubject: {orig['Subject']}\r\n"
        "--b1--\r\n"
    ).encode()

    class _Raw:
        def as_bytes(self) -> bytes:
            return raw

    dsn = _Raw()
    mid = send(office, dsn.as_bytes(), "mailer-daemon@trenggalekkab.go.id")
    assert state(office, ticket) == before
    rows = audit_rows(office, mid)
    assert [r[0] for r in rows] == ["mail.bounced"], rows
    office.wait_mail(office.staff, lambda m: "Perlu tindakan" in str(m["Subject"]))


def new_mail(sender: str, to: str, subject: str, text: str) -> bytes:
    """A new mail (no In-Reply-To, no References), as an official writes one from scratch."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"], msg["Message-ID"] = formatdate(), make_msgid(domain="trenggalekkab.go.id")
    msg.set_content(text)
    return msg.as_bytes()


def reply_address(step_mail: bytes) -> str:
    return parseaddr(str(parse_mail(step_mail)["Reply-To"]))[1]


def notices(office: Office, role: str, code_subject: str) -> list[str]:
    return [str(parse_mail(m)["Subject"]) for m in office.officials[role].messages()
            if code_subject in str(parse_mail(m)["Subject"])]


WRONG_REQUEST = "nomor tiket tidak sesuai"


def test_autocompleted_plus_address_of_another_request_changes_nothing(office: Office) -> None:
    """The Kadis writes "[SD/…/A] SETUJU" and the mail client autocompletes the reply address of request
    B's step mail: neither request moves, and the Kadis is told which request the address belonged to."""
    ticket_a, mail_a = new_request(office)
    ticket_b, mail_b = new_request(office)
    before_a, before_b = state(office, ticket_a), state(office, ticket_b)
    kadis = office.officials["kadis"].address
    mid = send(office, new_mail(kadis, reply_address(mail_b), f"[{ticket_a}] SETUJU", "SETUJU"), kadis)
    assert_refused(office, ticket_a, before_a, mid)
    assert state(office, ticket_b) == before_b
    assert "wrong_request" in audit_rows(office, mid)[0][1]
    told = office.wait_mail(office.officials["kadis"], lambda m: WRONG_REQUEST in str(m["Subject"])
                            and str(m["In-Reply-To"]) == mid)
    line = next(t for t in parse_mail(told).get_body(preferencelist=("plain",)).get_content().splitlines()  # type: ignore[union-attr]
                if ticket_a in t)
    assert ticket_b in line and "Balas" in line  # one line: the ticket the address belongs to, the one named, how
    # The same with the thread: a reply to A's step mail, sent to B's address, changes nothing either.
    mid2 = send(office, _retarget(reply_to(mail_a, kadis, "SETUJU"), reply_address(mail_b)), kadis)
    assert_refused(office, ticket_a, before_a, mid2)
    assert state(office, ticket_b) == before_b
    assert "wrong_request" in audit_rows(office, mid2)[0][1]
    # The reply as the client makes it, to the step mail's own address, is taken.
    send(office, reply_to(mail_a, kadis, "SETUJU"), kadis)
    assert state(office, ticket_a)[0] == "disposisi_kabid"
    assert state(office, ticket_b) == before_b


def _retarget(raw: bytes, to: str) -> bytes:
    msg = parse_mail(raw)
    del msg["To"]
    msg["To"] = to
    return msg.as_bytes()


def test_token_alone_naming_no_request_changes_nothing(office: Office) -> None:
    """A new mail to a step mail's reply address that names no ticket and no thread: the token alone may
    be an autocompleted address, so it decides nothing, and the official is told how to answer."""
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    kadis = office.officials["kadis"].address
    mid = send(office, new_mail(kadis, reply_address(step_mail), "Persetujuan", "SETUJU"), kadis)
    assert_refused(office, ticket, before, mid)
    assert "wrong_request" in audit_rows(office, mid)[0][1]
    office.wait_mail(office.officials["kadis"], lambda m: WRONG_REQUEST in str(m["Subject"])
                     and str(m["In-Reply-To"]) == mid)


def test_an_official_hears_back_on_every_request_once_a_day_each(office: Office) -> None:
    """Unclear replies from the Kabid on three requests: three notices, one per request; the same unclear
    reply again on one of them the same day: no fourth."""
    kadis, kabid = office.officials["kadis"].address, office.officials["kabid"]
    tickets = []
    for _ in range(3):
        ticket, step_mail = new_request(office)
        send(office, reply_to(step_mail, kadis, "SETUJU"), kadis)
        kabid_mail = office.wait_mail(kabid, lambda m, t=ticket: t in str(m["Subject"])
                                      and "Mohon keputusan" in str(m["Subject"]))
        tickets.append((ticket, kabid_mail))
    before = len(notices(office, "kabid", "belum dapat dipahami"))
    for _ticket, kabid_mail in tickets:
        mid = send(office, reply_to(kabid_mail, kabid.address, "Bagaimana kalau minggu depan saja?"), kabid.address)
        assert "unclear" in audit_rows(office, mid)[0][1]
    office.wait_until(lambda: len(notices(office, "kabid", "belum dapat dipahami")) == before + 3)
    told = notices(office, "kabid", "belum dapat dipahami")[before:]
    assert sorted(t.split("]")[0].lstrip("[") for t in told) == sorted(t for t, _ in tickets)
    mid = send(office, reply_to(tickets[0][1], kabid.address, "Mungkin besok?"), kabid.address)
    assert "unclear" in audit_rows(office, mid)[0][1]
    time.sleep(1.0)
    assert len(notices(office, "kabid", "belum dapat dipahami")) == before + 3
