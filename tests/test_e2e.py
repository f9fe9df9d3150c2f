"""The whole Trenggalek SOP against real servers: Dovecot (IMAP+LMTP), an SMTP relay, BIND with TSIG,
and SQLite or PostgreSQL, with the real `subdomaind run` process in between.

The test plays every person: the unit sends its letter by SMTP; each official reads their own mailbox
over IMAP and answers SETUJU or TOLAK by SMTP; the test then checks BIND, the requester's mailbox and
`subdomaind show`.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.devkit.devservers import Bind, DkimKey, Dovecot, Postfix, Postgres, SmtpRelay
from tests.devkit.localoffice import Office, body_text, parse_mail, reply_to

pytestmark = pytest.mark.servers


@pytest.fixture(params=["sqlite", "postgresql"])
def office(request: pytest.FixtureRequest, dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind, postfix: Postfix,
           dkim_key: DkimKey) -> Iterator[Office]:
    """The office with people's mail going through the office MTA (Postfix + OpenDKIM), as in production:
    the officials' decisions count because the MTA vouches for them (the default `[agency.auth]`)."""
    base = Path(tempfile.mkdtemp(prefix="office-"))
    url = None
    if request.param == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"e2e_{secrets.token_hex(4)}")
    o = Office.create(base, dovecot, smtp_relay, bind, database_url=url, mta=postfix, dkim=dkim_key)
    o.start()
    yield o
    o.stop()


def test_request_travels_the_whole_sop(office: Office) -> None:
    label = f"dinsos{secrets.token_hex(3)}"
    office.send_request(label)
    ack = office.wait_mail(office.requester, lambda m: "diterima" in str(m["Subject"]))
    ticket = re.search(r"\[(SD/\d{4}/\d{4})\]", str(parse_mail(ack)["Subject"])).group(1)  # type: ignore[union-attr]
    assert ticket.startswith("SD/")
    # Sekretaris is told (SOP step 3); Kadis disposes (4); Kabid and Kasi route it down and check (4-5).
    office.wait_mail(office.officials["sekretaris"], lambda m: "Pemberitahuan" in str(m["Subject"]))
    for role in ("kadis", "kabid", "kasi"):
        step_mail = office.decide(role, "SETUJU")
        assert label in body_text(step_mail)
    # Provisioning (6), then the reply letter goes up: Kasi (7), Kabid (8), Kadis (9).
    for role in ("kasi", "kabid", "kadis"):
        office.decide(role, "Setuju, silakan dikirim.")
    final = office.wait_mail(office.requester, lambda m: "telah aktif" in str(m["Subject"]), timeout=30)
    text = body_text(final)
    fqdn = f"{label}.trenggalekkab.go.id"
    assert fqdn in text and "203.0.113.10" in text
    assert "ns1.trenggalekkab.go.id" in text and "ns2.trenggalekkab.go.id" in text
    # The account's user name and password reach the PIC in a mail of their own, never in the letter.
    assert "Kata sandi :" not in text and "kata sandi telah dikirim terpisah" in " ".join(text.split())
    # The password comes to the PIC (here the requester) alone, in its own mail after the letter.
    creds = office.wait_mail(office.requester, lambda m: "Kata sandi akun" in str(m["Subject"]))
    assert office.requester.messages().index(creds) > office.requester.messages().index(final)
    assert re.search(r"Nama pengguna\s*:\s*" + label, body_text(creds))
    password = re.search(r"Kata sandi\s*:\s*(\S+)", body_text(creds)).group(1)  # type: ignore[union-attr]
    assert len(password) >= 16 and password not in text
    assert any(p.get_content_type() == "application/pdf" for p in parse_mail(final).iter_attachments())
    assert office.bind.addresses(label) == ["203.0.113.10"]
    # The unit's IT admin confirms it works: the request is done.
    office.send(reply_to(final, office.requester.address, "BERHASIL, sudah dapat digunakan."), office.requester.address)
    office.wait_until(lambda: ticket not in office.cli("status", "--json").stdout)
    shown = office.cli("show", ticket).stdout
    for step in ("disposisi", "disposisi_kabid", "periksa", "buat", "konsep", "paraf_kasi", "naik_kabid",
                 "naik_kadis", "kirim", "konfigurasi", "selesai"):
        assert f'"step": "{step}"' in shown, shown
    assert "decision.accepted" in shown and "provisioned" in shown
    assert office.stop() == 0


def test_tolak_sends_the_rejection_letter(office: Office) -> None:
    label = f"dispar{secrets.token_hex(3)}"
    office.send_request(label)
    office.decide("kadis", "TOLAK\nNama sub domain tidak sesuai nomenklatur perangkat daerah.")
    letter = office.wait_mail(office.requester, lambda m: "dapat dipenuhi" in str(m["Subject"]))
    text = " ".join(body_text(letter).split())  # the letter wraps its paragraphs
    assert "Nama sub domain tidak sesuai nomenklatur perangkat daerah." in text
    assert "Kepala Dinas Komunikasi dan Informatika" in text
    assert office.bind.addresses(label) == []


LETTER_TWO_NAMES = """PEMERINTAH KABUPATEN TRENGGALEK
SEKRETARIAT DAERAH

Nomor   : 000.1/412/406.001/2026
Perihal : Permohonan Pembuatan Sub Domain

Yth. Kepala Dinas Komunikasi dan Informatika
di TRENGGALEK

Dengan hormat,
Dalam rangka keterbukaan informasi publik, bersama ini kami mengajukan
permohonan pembuatan sub domain {first}.trenggalekkab.go.id dan
{second}.trenggalekkab.go.id untuk layanan informasi publik dan dokumentasi
hukum daerah, diarahkan ke alamat IP 203.0.113.10.
Sebagai penanggung jawab kami tunjuk Sdr. Rina Marlina, S.T. (NIP 19900305
201503 2 001), jabatan Pranata Komputer Ahli Pertama, surel {pic}, telepon
0812-7788-1122.

Demikian permohonan ini kami sampaikan, atas perhatian dan kerja samanya
diucapkan terima kasih.

SEKRETARIS DAERAH
"""


def test_one_letter_two_names_opens_two_requests(office: Office) -> None:
    """A letter in sentences asking for two names: two tickets, one acknowledgement listing both, and each
    request runs its own SOP (one approved on to the next step, the other rejected with its letter)."""
    first, second = f"ppid{secrets.token_hex(3)}", f"jdih{secrets.token_hex(3)}"
    body = LETTER_TWO_NAMES.format(first=first, second=second, pic=office.requester.address)
    office.send_request(first, body=body)
    ack = office.wait_mail(office.requester, lambda m: "diterima" in str(m["Subject"]))
    text = body_text(ack)
    tickets = re.findall(r"(SD/\d{4}/\d{4}) : (\S+)", text)
    assert [fqdn for _, fqdn in tickets] == [f"{first}.trenggalekkab.go.id", f"{second}.trenggalekkab.go.id"], text
    assert len(office.requester.messages()) == 1  # one acknowledgement for the letter, not one per name
    by_label = {fqdn.split(".")[0]: ticket for ticket, fqdn in tickets}
    # Kadis gets one decision mail per request; approves the first name and rejects the second.
    for _ in range(2):
        step_mail = office.wait_mail(office.officials["kadis"], lambda m: "Mohon keputusan" in str(m["Subject"]),
                                     after=office.answered.get("kadis", 0))
        word = "SETUJU" if first in body_text(step_mail) else "TOLAK\nNama belum sesuai nomenklatur."
        office.answered["kadis"] = office.officials["kadis"].messages().index(step_mail) + 1
        office.send(reply_to(step_mail, office.officials["kadis"].address, word), office.officials["kadis"].address)
    letter = office.wait_mail(office.requester, lambda m: "dapat dipenuhi" in str(m["Subject"]))
    assert by_label[second] in str(parse_mail(letter)["Subject"]) or second in body_text(letter)
    kabid = office.wait_mail(office.officials["kabid"], lambda m: "Mohon keputusan" in str(m["Subject"]))
    assert first in body_text(kabid) and second not in body_text(kabid)
    shown_first = office.cli("show", by_label[first]).stdout
    shown_second = office.cli("show", by_label[second]).stdout
    assert '"step": "disposisi_kabid"' in shown_first
    assert '"step": "disposisi_kabid"' not in shown_second
    for shown in (shown_first, shown_second):
        assert by_label[first] in shown and by_label[second] in shown  # each names the letter's tickets
    assert office.stop() == 0
