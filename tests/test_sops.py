"""Both SOPs on the real servers, every loop and every TOLAK, delegation, BATAL, several agencies.

The daemon runs in-process and is pumped (`run_once`) while the test waits for mail, so each step costs
milliseconds, not an IDLE round; everything else is real: SMTP in, IMAP out, BIND updates, SQLite.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from subdomaind.daemon.config import load_config
from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import Audit, Decision, Request, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, DkimKey, Dovecot, Postfix, SmtpRelay
from tests.devkit.localoffice import (
    AUTHSERV_ID,
    UNVOUCHED,
    Office,
    body_text,
    parse_mail,
    reply_to,
    vouched_by,
    write_config,
)

pytestmark = pytest.mark.servers

KALBAR_ZONE = "kalbarprov.go.id"
KALBAR_ROLES = ("kadis", "kabid", "kasi", "staf")
# The approvals a request meets on its way, in order, with provisioning between the third and fourth.
PATHS = {
    "trenggalek": [("disposisi", "kadis"), ("disposisi_kabid", "kabid"), ("periksa", "kasi"),
                   ("paraf_kasi", "kasi"), ("naik_kabid", "kabid"), ("naik_kadis", "kadis")],
    "kalbar": [("disposisi_kadis", "kadis"), ("teruskan_kabid", "kabid"), ("periksa_kasi", "kasi"),
               ("periksa_hasil", "kasi"), ("periksa_kabid", "kabid"), ("kirim_kadis", "kadis")],
}


@pytest.fixture(scope="module")
def bind_kalbar(servers_root: Path) -> Iterator[Bind]:
    server = Bind(servers_root, KALBAR_ZONE, "ns1 IN A 192.0.2.11\nns2 IN A 192.0.2.12\n")
    with server:
        yield server


def pumped(office: Office, clock: Any = None) -> Daemon:
    cfg = load_config(office.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    daemon = Daemon(cfg, make_sessionmaker(engine), **({"clock": clock} if clock else {}))
    office.pump = daemon.run_once
    return daemon


def make_office(sop: str, dovecot: Dovecot, relay: SmtpRelay, bind: Bind, **extra: Any) -> Office:
    base = Path(tempfile.mkdtemp(prefix=f"sop-{sop}-"))
    if sop == "kalbar":
        return Office.create(base, dovecot, relay, bind, roles=KALBAR_ROLES, agency_id="kalbar", sop="kalbar",
                             zone=KALBAR_ZONE, **{"auth": UNVOUCHED, **extra})
    return Office.create(base, dovecot, relay, bind, **{"auth": UNVOUCHED, **extra})


@pytest.fixture(params=["trenggalek", "kalbar"])
def office(request: pytest.FixtureRequest, dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind,
           bind_kalbar: Bind) -> Iterator[tuple[Office, Daemon]]:
    o = make_office(request.param, dovecot, smtp_relay, bind if request.param == "trenggalek" else bind_kalbar)
    d = pumped(o)
    yield o, d
    d.shutdown(flush_seconds=1)


def _audit_events(d: Daemon, event: str) -> int:
    with d.sessions() as s:
        return len(s.execute(select(Audit).where(Audit.event == event)).scalars().all())


def requests_of(d: Daemon) -> list[Request]:
    with d.sessions() as s:
        return list(s.execute(select(Request)).scalars())


def sop_of(o: Office) -> str:
    return str(o.data["agency"][0]["sop"])


@pytest.mark.parametrize("at", range(6))
def test_tolak_at_each_approval_step(office: tuple[Office, Daemon], at: int) -> None:
    o, d = office
    label = f"t{secrets.token_hex(3)}"
    o.send_request(label)
    path = PATHS[sop_of(o)]
    for _step, role in path[:at]:
        o.decide(role, "SETUJU")
    step, role = path[at]
    o.wait_until(lambda: bool(requests_of(d)) and requests_of(d)[0].step == step)
    o.decide(role, f"TOLAK\nAlasan penolakan pada langkah {step}.")
    letter = o.wait_mail(o.requester, lambda m: "dapat dipenuhi" in str(m["Subject"]))
    assert f"Alasan penolakan pada langkah {step}." in " ".join(body_text(letter).split())
    req = requests_of(d)[0]
    assert req.status == "rejected"
    # Rejected after provisioning: the record made for it is taken back.
    assert o.bind.addresses(label) == []


def test_incomplete_then_corrected_continues_the_same_request(office: tuple[Office, Daemon]) -> None:
    o, d = office
    body = "Dengan hormat,\nMohon dibuatkan sub domain.\n\nNama Sub Domain : perpus{}\nUnit Kerja : Dinas Perpustakaan\n"
    label = f"perpus{secrets.token_hex(2)}"
    o.send_request(label, body=body.replace("perpus{}", label))
    ask = o.wait_mail(o.requester, lambda m: "perlu dilengkapi" in str(m["Subject"]))
    text = " ".join(body_text(ask).split())
    assert "Nomor HP" in text or "telepon" in text.lower()
    correction = (f"Nama Penanggung Jawab : Siti Aminah\nEmail : {o.requester.address}\nNo. HP : 0813-1111-2222\n"
                  "Keperluan : Katalog daring perpustakaan daerah\n")
    o.send(reply_to(ask, o.requester.address, correction), o.requester.address)
    first, role = PATHS[sop_of(o)][0]
    o.decide(role, "SETUJU")
    o.wait_until(lambda: requests_of(d)[0].step == PATHS[sop_of(o)][1][0])
    reqs = requests_of(d)
    assert len(reqs) == 1 and reqs[0].fields["pic_phone"] == "+6281311112222"


def test_perbaiki_loops_back_as_the_sop_says(office: tuple[Office, Daemon]) -> None:
    o, d = office
    label = f"p{secrets.token_hex(3)}"
    o.send_request(label)
    path = PATHS[sop_of(o)]
    for _step, role in path[:2]:
        o.decide(role, "SETUJU")
    # The Kasi sends it back to the unit; the unit's correction returns it to the Kasi.
    o.decide(path[2][1], "PERBAIKI\nMohon lampirkan SK tim pengelola.")
    ask = o.wait_mail(o.requester, lambda m: "perlu diperbaiki" in str(m["Subject"]))
    assert "SK tim pengelola" in body_text(ask)
    o.send(reply_to(ask, o.requester.address, "Terlampir SK tim pengelola."), o.requester.address)
    o.decide(path[2][1], "SETUJU")
    o.decide(path[3][1], "SETUJU")
    # The Kabid sends the draft back to the Kasi's check.
    o.wait_until(lambda: requests_of(d)[0].step == path[4][0])
    o.decide(path[4][1], "PERBAIKI\nNomor surat belum sesuai.")
    step_mail = o.decide(path[3][1], "SETUJU")
    assert "Nomor surat belum sesuai." in body_text(step_mail)
    o.decide(path[4][1], "SETUJU")
    o.decide(path[5][1], "SETUJU")
    final = o.wait_mail(o.requester, lambda m: "telah aktif" in str(m["Subject"]))
    # KENDALA, then BERHASIL, from the unit's IT admin.
    o.send(reply_to(final, o.requester.address, "KENDALA\nSitus belum bisa dibuka dari server 203.0.113.77."),
           o.requester.address)
    kasi = o.officials["kasi"]
    o.wait_mail(kasi, lambda m: "KENDALA" in str(m["Subject"]))
    result = o.wait_mail(o.requester, lambda m: "pemeriksaan ulang" in str(m["Subject"]))
    assert "203.0.113.77" in body_text(result) and "BERBEDA" in body_text(result)
    o.send(reply_to(result, o.requester.address, "BERHASIL"), o.requester.address)
    o.wait_until(lambda: requests_of(d)[0].status == "done")


def test_delegate_from_config_and_by_the_kadis(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind,
                                               postfix: Postfix, dkim_key: DkimKey) -> None:
    plt = dovecot.new_user("pltkadis")
    # Naming an acting official by mail needs a sender our MTA vouched for: people's mail goes through
    # the office MTA (Postfix + OpenDKIM), which verifies the officials' domain's DKIM signatures.
    o = make_office("trenggalek", dovecot, smtp_relay, bind, mta=postfix, dkim=dkim_key, auth=vouched_by(postfix),
                    agency_extra={"delegates": {"kadis": [plt.address]}})
    assert o.data["agency"][0]["auth"]["authserv_id"] == AUTHSERV_ID
    d = pumped(o)
    o.send_request(f"d{secrets.token_hex(3)}")
    step_mail = o.wait_mail(o.officials["kadis"], lambda m: "Mohon keputusan" in str(m["Subject"]))
    o.send(reply_to(step_mail, plt.address, "SETUJU"), plt.address)
    o.wait_until(lambda: requests_of(d)[0].step == "disposisi_kabid")
    with d.sessions() as s:
        dec = s.execute(select(Decision).where(Decision.accepted.is_(True))).scalar_one()
        assert dec.actor == plt.address and dec.on_behalf_of == "kadis"
    # The Kadis names a Plh for the Kabid by mail; the Plh's answer counts for the Kabid.
    plh = dovecot.new_user("plhkabid")
    kadis = o.officials["kadis"].address
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    cmd = EmailMessage()
    cmd["From"], cmd["To"], cmd["Subject"] = kadis, o.mailbox.address, "Penunjukan Plh"
    cmd["Date"], cmd["Message-ID"] = formatdate(), make_msgid(domain="trenggalekkab.go.id")
    cmd.set_content(f"PLH kabid {plh.address} sampai 2099-12-31\n")
    o.send(cmd.as_bytes(), "penyusup@example.net")  # from outside, no signature: refused, nothing registered
    o.wait_until(lambda: _audit_events(d, "mail.refused") >= 1)
    cmd.replace_header("Message-ID", make_msgid(domain="trenggalekkab.go.id"))
    o.send(cmd.as_bytes(), kadis)  # the Kadis's own mail, signed by the officials' domain
    o.wait_mail(plh, lambda m: "Dicatat: PLH" in str(m["Subject"]))
    step_mail = o.wait_mail(o.officials["kabid"], lambda m: "Mohon keputusan" in str(m["Subject"]))
    o.send(reply_to(step_mail, plh.address, "SETUJU"), plh.address)
    o.wait_until(lambda: requests_of(d)[0].step == "periksa")
    d.shutdown(flush_seconds=1)


def test_batal_after_the_window_is_refused(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    o = make_office("trenggalek", dovecot, smtp_relay, bind)  # undo window 0: provisioning runs at once
    d = pumped(o)
    label = f"b{secrets.token_hex(3)}"
    o.send_request(label)
    for role in ("kadis", "kabid", "kasi"):
        o.decide(role, "SETUJU")
    kasi = o.officials["kasi"]
    echo = o.wait_mail(kasi, lambda m: "Dicatat: SETUJU" in str(m["Subject"]) and "Mengecek" in str(m["Subject"]))
    o.wait_until(lambda: o.bind.addresses(label) != [])
    o.send(reply_to(echo, kasi.address, "BATAL"), kasi.address)
    o.wait_mail(kasi, lambda m: "BATAL tidak dapat dicatat" in str(m["Subject"]))
    assert o.bind.addresses(label) == ["203.0.113.10"]
    d.shutdown(flush_seconds=1)


def test_two_agencies_in_one_daemon(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind, bind_kalbar: Bind) -> None:
    t = make_office("trenggalek", dovecot, smtp_relay, bind)
    k = make_office("kalbar", dovecot, smtp_relay, bind_kalbar)
    data = dict(t.data)
    data["agency"] = t.data["agency"] + k.data["agency"]
    path = write_config(t.base / "both.toml", data)
    t.config_path = k.config_path = path
    d = pumped(t)
    k.pump = t.pump
    lt, lk = f"tg{secrets.token_hex(3)}", f"kb{secrets.token_hex(3)}"
    t.send_request(lt)
    k.send_request(lk)
    a = t.wait_mail(t.officials["kadis"], lambda m: lt in str(m["Subject"]))
    b = k.wait_mail(k.officials["kadis"], lambda m: lk in str(m["Subject"]))
    # Each agency numbers its own tickets and answers from its own mailbox.
    assert re.search(r"\[SD/\d{4}/0001\]", str(parse_mail(a)["Subject"]))
    assert re.search(r"\[SD/\d{4}/0001\]", str(parse_mail(b)["Subject"]))
    assert t.mailbox.address.split("@")[0] in str(parse_mail(a)["Reply-To"])
    assert k.mailbox.address.split("@")[0] in str(parse_mail(b)["Reply-To"])
    with d.sessions() as s:
        agencies = sorted(r.agency for r in s.execute(select(Request)).scalars())
        assert agencies == ["kalbar", "trenggalek"]
        assert s.execute(select(Audit)).first() is not None
    d.shutdown(flush_seconds=1)


def test_batal_inside_the_window_cancels_before_dns(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    o = make_office("trenggalek", dovecot, smtp_relay, bind, workflow={"undo_window_minutes": 10})
    d = pumped(o)
    label = f"w{secrets.token_hex(3)}"
    o.send_request(label)
    for role in ("kadis", "kabid", "kasi"):
        o.decide(role, "SETUJU")
    kasi = o.officials["kasi"]
    echo = o.wait_mail(kasi, lambda m: "Dicatat: SETUJU" in str(m["Subject"]) and "Mengecek" in str(m["Subject"]))
    o.wait_until(lambda: requests_of(d)[0].step == "buat")
    o.send(reply_to(echo, kasi.address, "BATAL"), kasi.address)
    o.wait_mail(kasi, lambda m: "Dibatalkan" in str(m["Subject"]))
    o.wait_until(lambda: requests_of(d)[0].step == "periksa")
    assert o.bind.addresses(label) == []  # the DNS change never happened
    d.shutdown(flush_seconds=1)


def test_expired_token_is_refused(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    from datetime import UTC, datetime, timedelta

    now = [datetime.now(UTC)]
    o = make_office("trenggalek", dovecot, smtp_relay, bind)  # tokens live 7 days
    d = pumped(o, clock=lambda: now[0])
    o.send_request(f"x{secrets.token_hex(3)}")
    kadis = o.officials["kadis"]
    step_mail = o.wait_mail(kadis, lambda m: "Mohon keputusan" in str(m["Subject"]))
    now[0] += timedelta(days=8)  # the Kadis answers eight days later
    o.send(reply_to(step_mail, kadis.address, "SETUJU"), kadis.address)
    o.wait_mail(kadis, lambda m: "kedaluwarsa" in str(m["Subject"]))
    assert requests_of(d)[0].step == "disposisi"
    with d.sessions() as s:
        refused = s.execute(select(Decision).where(Decision.accepted.is_(False))).scalar_one()
        assert refused.reason and refused.reason.startswith("token_expired")
    # Staff send the step mail again (subdomaind resend); the fresh one is answered in time.
    from subdomaind.workflows.engine import reissue_step

    with d.sessions.begin() as s:  # what `subdomaind resend TICKET` does, at the test's clock
        req = s.get(Request, requests_of(d)[0].id)
        assert reissue_step(d.ctx(s, d.config.agencies[0]), req, by="staf")
    fresh = o.wait_mail(kadis, lambda m: "Mohon keputusan" in str(m["Subject"]),
                        after=kadis.messages().index(step_mail) + 1)
    o.send(reply_to(fresh, kadis.address, "SETUJU"), kadis.address)
    o.wait_until(lambda: requests_of(d)[0].step == "disposisi_kabid")
    d.shutdown(flush_seconds=1)


def test_unit_with_its_own_name_servers_gets_a_delegation(dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                          bind: Bind) -> None:
    from tests.devkit.localoffice import REQUEST_BODY

    o = make_office("trenggalek", dovecot, smtp_relay, bind)
    d = pumped(o)
    label = f"ns{secrets.token_hex(3)}"
    body = REQUEST_BODY.format(label=label, pic=o.requester.address).replace(
        "Nomor Surat :", f"Name Server : ns1.{label}.trenggalekkab.go.id (203.0.113.20), "
                         f"ns2.{label}.trenggalekkab.go.id (203.0.113.21)\nNomor Surat :")
    o.send_request(label, body=body)
    step_mail = o.decide("kadis", "SETUJU")
    assert f"IN NS ns1.{label}.trenggalekkab.go.id." in body_text(step_mail)  # the planned change, shown
    o.decide("kabid", "SETUJU")
    o.decide("kasi", "SETUJU")
    o.wait_until(lambda: requests_of(d)[0].provisioned is not None)
    referral = o.bind.query(label, "NS")
    ns = sorted(rd.to_text() for rrset in referral.authority for rd in rrset if rrset.rdtype == 2)
    assert ns == [f"ns1.{label}.trenggalekkab.go.id.", f"ns2.{label}.trenggalekkab.go.id."]
    glue = sorted(rd.to_text() for rrset in referral.additional for rd in rrset if rrset.rdtype == 1)
    assert glue == ["203.0.113.20", "203.0.113.21"]  # below the cut, the addresses come as glue
    d.shutdown(flush_seconds=1)
