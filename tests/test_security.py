"""Decisions only the right official can make (issue 4), attacked against the real daemon and servers.

Each attack must change nothing (same step, no accepted decision, nothing provisioned) and leave exactly
one audit row carrying the attacking message's Message-ID; an unknown outsider is never answered.
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

from daemon.devservers import Bind, Dovecot, SmtpRelay
from daemon.localoffice import Office, parse_mail, reply_to, vouch

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def office(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> Iterator[Office]:
    base = Path(tempfile.mkdtemp(prefix="security-"))
    o = Office.create(base, dovecot, smtp_relay, bind,
                      agency_extra={"auth": {"require": "authres", "authserv_id": "mx.trenggalekkab.go.id"}})
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
    # The genuine reply, vouched for by our MTA, is accepted.
    genuine = vouch(reply_to(step_mail, kadis, "SETUJU"), kadis)
    send(office, genuine, kadis)
    assert state(office, ticket)[0] == "disposisi_kabid"


def test_stranger_with_the_token_is_refused_and_not_answered(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    stranger = office.dovecot.new_user("orang")
    raw = vouch(reply_to(step_mail, stranger.address, "SETUJU"), stranger.address)
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
    mid = send(office, vouch(msg.as_bytes(), kadis), kadis)
    assert_refused(office, ticket, before, mid)


def test_token_replayed_and_closed_step(office: Office) -> None:
    ticket, step_mail = new_request(office)
    kadis = office.officials["kadis"].address
    send(office, vouch(reply_to(step_mail, kadis, "SETUJU"), kadis), kadis)
    before = state(office, ticket)
    assert before[0] == "disposisi_kabid"
    mid = send(office, vouch(reply_to(step_mail, kadis, "TOLAK"), kadis), kadis)
    assert_refused(office, ticket, before, mid)
    assert "step_closed" in audit_rows(office, mid)[0][1]


def test_token_of_another_step_and_another_official(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    kabid = office.officials["kabid"].address
    mid = send(office, vouch(reply_to(step_mail, kabid, "SETUJU"), kabid), kabid)
    assert_refused(office, ticket, before, mid)
    assert "not_actor" in audit_rows(office, mid)[0][1]


def test_requester_cannot_approve_their_own_request(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    me = office.requester.address
    mid = send(office, vouch(reply_to(step_mail, me, "SETUJU"), me), me)
    assert_refused(office, ticket, before, mid)
    assert "requester" in audit_rows(office, mid)[0][1]


def test_a_cc_d_colleague_replying_all_is_refused(office: Office) -> None:
    ticket, step_mail = new_request(office)
    before = state(office, ticket)
    colleague = office.dovecot.new_user("staf")
    raw = reply_to(step_mail, colleague.address, "SETUJU, atas arahan Kadis")
    msg = parse_mail(raw)
    msg["Cc"] = office.officials["kadis"].address
    mid = send(office, vouch(msg.as_bytes(), colleague.address), colleague.address)
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
    mid = send(office, vouch(msg.as_bytes(), kadis), kadis)
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
