"""The real-server harness (`tests/devkit/devservers.py`) works: every check goes through the real protocol."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import secrets
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage

import aiosmtplib
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import imapclient
import pytest
import sqlalchemy as sa

from tests.devkit.devservers import (
    UPDATE_POLICY_TEMPLATE,
    Bind,
    DkimKey,
    Dovecot,
    MailUser,
    Postfix,
    Postgres,
    SmtpRelay,
    free_port,
    render_update_policy,
)

pytestmark = pytest.mark.servers

ZONE = "trenggalekkab.go.id"


def raw_mail(to: str, subject: str, body: str = "Isi surat.\r\n") -> bytes:
    return (
        f"From: Dinas Sosial <dinsos@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@example.test>\r\n\r\n{body}"
    ).encode()


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def subjects(raws: list[bytes]) -> list[str]:
    return [str(parse(r)["Subject"]) for r in raws]


def update(bind: Bind, build: Callable[[dns.update.UpdateMessage], object], signed: bool = True) -> str:
    msg = dns.update.UpdateMessage(ZONE, keyring=bind.keyring if signed else None)
    build(msg)
    return dns.rcode.to_text(dns.query.tcp(msg, bind.host, port=bind.port, timeout=5).rcode())


def unique_label(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


# ----------------------------------------------------------------------------------------------------
# Dovecot


def test_lmtp_delivery_is_visible_over_imap(dovecot: Dovecot, unique_user: MailUser) -> None:
    assert unique_user.messages() == []
    raw = raw_mail(unique_user.address, "Permohonan subdomain dinsos")
    dovecot.deliver(unique_user.address, raw)
    got = unique_user.messages()
    assert len(got) == 1
    assert got[0].endswith(raw)  # Dovecot only prepends trace headers
    assert parse(got[0])["Return-Path"] == "<sender@example.test>"


def test_unknown_recipient_is_refused(dovecot: Dovecot) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        dovecot.deliver(f"ghost{secrets.token_hex(4)}@{ZONE}", raw_mail("x", "x"))
    ((code, text),) = err.value.recipients.values()
    assert code == 550 and b"User doesn't exist" in text


def test_plus_address_lands_in_the_base_users_inbox(dovecot: Dovecot, make_user: Callable[..., MailUser]) -> None:
    user, other = make_user(), make_user()
    to_header = f"Layanan <{user.address}>"
    dovecot.deliver(user.plus("tabc123"), raw_mail(to_header, "single"))
    (got,) = user.messages()
    msg = parse(got)
    # one recipient in the LMTP transaction: Delivered-To carries the full plus address; To is untouched
    assert msg["Delivered-To"] == user.plus("tabc123")
    assert f"for <{user.plus('tabc123')}>" in str(msg["Received"])
    assert msg["To"] == to_header
    # several recipients in one LMTP transaction: Dovecot 2.3 adds NO Delivered-To (and no "for" clause)
    dovecot.deliver([user.plus("t1"), other.plus("t2")], raw_mail(to_header, "double"))
    for who in (user, other):
        last = parse(who.messages()[-1])
        assert last["Subject"] == "double"
        assert last["Delivered-To"] is None
        assert "for <" not in str(last["Received"])
    assert other.messages()[-1].count(b"+t2") == 0  # the detail is nowhere in the stored message


def test_folders_are_auto_created(unique_user: MailUser) -> None:
    with unique_user.imap() as client:
        folders = {name: flags for flags, _sep, name in client.list_folders()}
    assert set(folders) == {"INBOX", "Archive", "Karantina", "Sent"}
    assert b"\\Archive" in folders["Archive"] and b"\\Sent" in folders["Sent"]


def test_users_added_while_running_can_log_in_at_once(dovecot: Dovecot, unique_user: MailUser) -> None:
    # a lookup of one user, then an immediate add + login of another: with one shared passwd-file Dovecot
    # would still use the copy it read in this same second and refuse the new user
    for _ in range(5):
        with unique_user.imap() as client:
            client.noop()
        fresh = dovecot.new_user()
        with fresh.imap() as client:
            assert client.select_folder("INBOX")[b"EXISTS"] == 0
    with pytest.raises(imapclient.exceptions.LoginError):
        dovecot.imap_client(unique_user.name, "wrong password")


def test_append_and_messages_per_folder(dovecot: Dovecot, unique_user: MailUser) -> None:
    uid = dovecot.append(unique_user.name, raw_mail(unique_user.address, "arsip"), folder="Archive")
    assert isinstance(uid, int)
    assert subjects(unique_user.messages("Archive")) == ["arsip"]
    assert unique_user.messages("INBOX") == []


def test_idle_wakes_after_an_append_from_a_second_connection(dovecot: Dovecot, unique_user: MailUser) -> None:
    with unique_user.imap() as watcher:
        watcher.select_folder("INBOX")
        watcher.idle()
        assert watcher.idle_check(timeout=0.1) == []
        start = time.monotonic()
        dovecot.append(unique_user.name, raw_mail(unique_user.address, "bangun"))
        responses = watcher.idle_check(timeout=5)
        elapsed = time.monotonic() - start
        watcher.idle_done()
    assert (1, b"EXISTS") in responses
    assert elapsed < 2.0, f"IDLE woke after {elapsed:.2f} s"


def test_starttls_login_needs_the_test_ca(dovecot_tls: Dovecot, make_user: Callable[..., MailUser]) -> None:
    user = make_user(dovecot_tls)
    assert dovecot_tls.ca_file is not None and dovecot_tls.ca_file.exists()
    with imapclient.IMAPClient(dovecot_tls.host, port=dovecot_tls.imap_port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" in client.capabilities()
        client.starttls(ssl.create_default_context(cafile=str(dovecot_tls.ca_file)))
        client.login(user.name, user.password)
        assert client.socket().version() in ("TLSv1.2", "TLSv1.3")
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    with (
        imapclient.IMAPClient(dovecot_tls.host, port=dovecot_tls.imap_port, ssl=False, timeout=10) as untrusting,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.starttls(ssl.create_default_context())


def test_plain_dovecot_offers_no_starttls(dovecot: Dovecot) -> None:
    with imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" not in client.capabilities()


def test_restart_keeps_mail_and_ports(dovecot: Dovecot, unique_user: MailUser) -> None:
    dovecot.deliver(unique_user.address, raw_mail(unique_user.address, "sebelum restart"))
    ports = (dovecot.imap_port, dovecot.lmtp_port)
    start = time.monotonic()
    dovecot.restart()
    assert time.monotonic() - start < 3
    assert (dovecot.imap_port, dovecot.lmtp_port) == ports
    assert subjects(unique_user.messages()) == ["sebelum restart"]
    dovecot.deliver(unique_user.address, raw_mail(unique_user.address, "sesudah restart"))
    assert subjects(unique_user.messages()) == ["sebelum restart", "sesudah restart"]


# ----------------------------------------------------------------------------------------------------
# SMTP relay


def email_to(rcpts: list[str], subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Diskominfo <layanan@trenggalekkab.go.id>"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = subject
    msg.set_content("Dengan hormat, permohonan Anda kami terima.\n")
    return msg


def test_smtp_relay_delivers_into_imap(smtp_relay: SmtpRelay, unique_user: MailUser) -> None:
    before = len(smtp_relay.received)
    msg = email_to([unique_user.address], "Balasan permohonan")
    errors, _ = asyncio.run(aiosmtplib.send(msg, hostname=smtp_relay.host, port=smtp_relay.port, timeout=10))
    assert errors == {}
    assert subjects(unique_user.messages()) == ["Balasan permohonan"]
    mail_from, rcpts, raw = smtp_relay.received[before]
    assert (mail_from, rcpts) == ("layanan@trenggalekkab.go.id", [unique_user.address])
    assert parse(raw)["Subject"] == "Balasan permohonan"


def test_smtp_relay_returns_the_lmtp_error_for_an_unknown_mailbox(smtp_relay: SmtpRelay, unique_user: MailUser) -> None:
    ghost = f"ghost{secrets.token_hex(4)}@{ZONE}"
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as err:
        asyncio.run(aiosmtplib.send(email_to([ghost], "x"), hostname=smtp_relay.host, port=smtp_relay.port))
    assert [e.code for e in err.value.recipients] == [550]
    # a mixed list: the good recipient gets the mail, the bad one is reported
    errors, _ = asyncio.run(
        aiosmtplib.send(email_to([ghost, unique_user.address], "campur"), hostname="127.0.0.1", port=smtp_relay.port)
    )
    assert list(errors) == [ghost] and errors[ghost].code == 550
    assert subjects(unique_user.messages()) == ["campur"]


def test_smtp_relay_without_delivery_only_accepts(smtp_relay: SmtpRelay, unique_user: MailUser) -> None:
    """The benches' mode: each mail accepted and kept, none passed on to Dovecot."""
    before = len(smtp_relay.received)
    smtp_relay.deliver = False
    try:
        errors, _ = asyncio.run(aiosmtplib.send(email_to([unique_user.address], "hanya diterima"),
                                                hostname=smtp_relay.host, port=smtp_relay.port, timeout=10))
    finally:
        smtp_relay.deliver = True
    assert errors == {}
    assert [(rcpts, parse(raw)["Subject"]) for _f, rcpts, raw in smtp_relay.received[before:]] == [
        ([unique_user.address], "hanya diterima")]
    assert unique_user.messages() == []


def test_smtp_relay_can_be_down_for_a_while(smtp_relay: SmtpRelay, unique_user: MailUser) -> None:
    port = smtp_relay.port
    smtp_relay.stop()
    with pytest.raises(aiosmtplib.SMTPConnectError):
        asyncio.run(aiosmtplib.send(email_to([unique_user.address], "x"), hostname="127.0.0.1", port=port, timeout=5))
    smtp_relay.start()
    assert smtp_relay.port == port
    asyncio.run(aiosmtplib.send(email_to([unique_user.address], "lagi"), hostname="127.0.0.1", port=port, timeout=5))
    assert subjects(unique_user.messages()) == ["lagi"]


def test_smtp_starttls_needs_the_test_ca(smtp_relay_tls: SmtpRelay, unique_user: MailUser) -> None:
    assert smtp_relay_tls.ca_file is not None
    trusted = ssl.create_default_context(cafile=str(smtp_relay_tls.ca_file))

    async def send(context: ssl.SSLContext) -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_relay_tls.port, start_tls=False, timeout=10)
        async with client:
            await client.ehlo()
            assert client.supports_extension("starttls")
            await client.starttls(tls_context=context)
            assert client.get_transport_info("sslcontext") is context
            await client.send_message(email_to([unique_user.address], "lewat TLS"))
        return "sent"

    assert asyncio.run(send(trusted)) == "sent"
    assert subjects(unique_user.messages()) == ["lewat TLS"]
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(send(ssl.create_default_context()))


# ----------------------------------------------------------------------------------------------------
# BIND


def _through_postfix(postfix: Postfix, user: MailUser, raw: bytes, mail_from: str) -> str:
    """Send `raw` through the office MTA to `user`; the Authentication-Results of what lands, unfolded."""
    before = len(user.messages())
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as s:
        s.sendmail(mail_from, [user.plus("tabc")], raw)
    deadline = time.monotonic() + 10
    while len(user.messages()) <= before:
        assert time.monotonic() < deadline, postfix.log_text()[-2000:]
        time.sleep(0.05)
    got = email.message_from_bytes(user.messages()[-1], policy=email.policy.default)
    return " | ".join(" ".join(str(v).split()) for v in got.get_all("Authentication-Results") or [])


def _plain(sender: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "SETUJU"
    msg["Message-ID"] = f"<{secrets.token_hex(6)}@trenggalekkab.go.id>"
    msg.set_content("SETUJU")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def test_postfix_with_opendkim_vouches_only_for_a_valid_signature(
        postfix: Postfix, dkim_key: DkimKey, unique_user: MailUser) -> None:
    authserv = postfix.milter.authserv_id
    raw = _plain(unique_user.address, unique_user.plus("tabc"))
    signed = _through_postfix(postfix, unique_user, dkim_key.sign(raw), unique_user.address)
    assert signed.startswith(f"{authserv}; dkim=pass") and f"header.d={ZONE}" in signed
    assert _through_postfix(postfix, unique_user, raw, "x@example.net").startswith(f"{authserv}; dkim=none")
    tampered = dkim_key.sign(raw).replace(b"SETUJU\r\n", b"TOLAK\r\n")
    assert "dkim=fail" in _through_postfix(postfix, unique_user, tampered, "x@example.net")
    other = DkimKey.generate(ZONE, selector="lain")  # a key the officials' domain never published
    assert "dkim=pass" not in _through_postfix(postfix, unique_user, other.sign(raw), "x@example.net")
    # A forged header naming our MTA is removed on the way in (RFC 8601 section 5); only the MTA's own stays.
    forged = f"Authentication-Results: {authserv}; dkim=pass header.d={ZONE}\r\n".encode() + raw
    results = _through_postfix(postfix, unique_user, forged, "x@example.net")
    assert results.count(authserv) == 1 and "dkim=pass" not in results


def test_postfix_relays_only_the_office_domain(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as s, pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("a@example.net", ["b@example.org"], _plain("a@example.net", "b@example.org"))


def test_update_policy_is_the_documented_one(bind: Bind) -> None:
    assert "${zone}" in UPDATE_POLICY_TEMPLATE and "${key_name}" in UPDATE_POLICY_TEMPLATE
    rendered = render_update_policy(ZONE, "subdomaind")
    assert 'grant "subdomaind" wildcard "*.trenggalekkab.go.id." A AAAA CNAME NS TXT;' in rendered
    conf = bind.conf_path.read_text()
    assert rendered.replace("\n", "\n    ") in conf
    assert "allow-update" not in conf
    assert bind.secret_file.read_text().strip() == bind.secret


def test_signed_update_is_served(bind: Bind) -> None:
    name = unique_label("dinsos")
    serial = bind.serial()
    assert bind.addresses(name) == []
    assert update(bind, lambda u: u.replace(name, 300, "A", "203.0.113.10")) == "NOERROR"
    assert bind.addresses(name) == ["203.0.113.10"]
    assert bind.serial() > serial
    assert bind.addresses("www") == ["203.0.113.5"]


def test_other_allowed_types_and_multi_level_glue(bind: Bind) -> None:
    unit = unique_label("unit")
    assert update(bind, lambda u: u.add(f"v6{unit}", 300, "AAAA", "2001:db8::10")) == "NOERROR"
    assert update(bind, lambda u: u.add(f"alias{unit}", 300, "CNAME", "www")) == "NOERROR"
    assert update(bind, lambda u: u.add(f"txt{unit}", 300, "TXT", '"v=spf1 -all"')) == "NOERROR"

    def delegate(u: dns.update.UpdateMessage) -> None:
        u.add(unit, 300, "NS", f"ns1.{unit}")
        u.add(f"ns1.{unit}", 300, "A", "203.0.113.20")

    assert update(bind, delegate) == "NOERROR"
    referral = bind.query(f"host.{unit}", "A")
    assert not referral.answer
    assert [rr.to_text() for rr in referral.authority[0]] == [f"ns1.{unit}.{ZONE}."]
    assert referral.additional[0][0].to_text() == "203.0.113.20"
    assert bind.addresses(f"v6{unit}", "AAAA") == ["2001:db8::10"]


def test_policy_refuses_the_apex_and_other_types(bind: Bind) -> None:
    ns_before = bind.addresses("@", "NS")
    serial = bind.serial()
    assert update(bind, lambda u: u.add("@", 300, "NS", "ns.evil.example.")) == "REFUSED"
    assert update(bind, lambda u: u.delete("@", "NS")) == "REFUSED"
    soa = f"ns1.{ZONE}. hostmaster.{ZONE}. 2099010101 3600 600 86400 300"
    assert update(bind, lambda u: u.replace("@", 300, "SOA", soa)) == "REFUSED"
    assert update(bind, lambda u: u.add("@", 300, "A", "203.0.113.99")) == "REFUSED"
    assert update(bind, lambda u: u.add("@", 300, "TXT", '"x"')) == "REFUSED"
    assert update(bind, lambda u: u.add(unique_label(), 300, "MX", "10 mail")) == "REFUSED"
    assert bind.addresses("@", "NS") == ns_before == [f"ns1.{ZONE}.", f"ns2.{ZONE}."]
    assert bind.serial() == serial


def test_unsigned_and_wrongly_signed_updates_are_refused(bind: Bind) -> None:
    name = unique_label("evil")
    assert update(bind, lambda u: u.replace(name, 300, "A", "203.0.113.66"), signed=False) == "REFUSED"
    wrong = dns.tsigkeyring.from_text({bind.key_name: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="})
    msg = dns.update.UpdateMessage(ZONE, keyring=wrong)
    msg.replace(name, 300, "A", "203.0.113.66")
    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.query.tcp(msg, bind.host, port=bind.port, timeout=5)
    assert bind.addresses(name) == []


def test_secondary_serves_the_zone_and_can_lag(bind: Bind, bind_secondary: Bind) -> None:
    assert bind_secondary.port != bind.port
    assert bind_secondary.addresses("www") == ["203.0.113.5"]
    name = unique_label("sek")
    assert update(bind, lambda u: u.replace(name, 300, "A", "203.0.113.30")) == "NOERROR"
    bind_secondary.wait_serial(bind.serial(), timeout=5)  # NOTIFY + IXFR, no polling interval involved
    assert bind_secondary.addresses(name) == ["203.0.113.30"]

    with bind_secondary.frozen_secondary():
        frozen_serial = bind_secondary.serial()
        late = unique_label("telat")
        assert update(bind, lambda u: u.replace(late, 300, "A", "203.0.113.31")) == "NOERROR"
        # an unfrozen secondary catches up within ~0.5 s of an update (see the wait_serial above)
        with pytest.raises(TimeoutError):
            bind_secondary.wait_serial(bind.serial(), timeout=0.75)
        assert bind.addresses(late) == ["203.0.113.31"]
        assert bind_secondary.addresses(late) == []
        assert bind_secondary.serial() == frozen_serial < bind.serial()
        assert bind_secondary.addresses(name) == ["203.0.113.30"]
    assert bind_secondary.serial() == bind.serial()
    assert bind_secondary.addresses(late) == ["203.0.113.31"]


def test_bind_restart_keeps_dynamic_records(bind: Bind) -> None:
    name = unique_label("awet")
    assert update(bind, lambda u: u.replace(name, 300, "A", "203.0.113.40")) == "NOERROR"
    port = bind.port
    bind.restart()
    assert bind.port == port
    assert bind.addresses(name) == ["203.0.113.40"]


# ----------------------------------------------------------------------------------------------------
# PostgreSQL and ports


def test_postgres_database_with_sqlalchemy(postgres: Postgres) -> None:
    name = unique_label("db_")
    url = postgres.create_database(name)
    assert url == f"postgresql+psycopg://test@127.0.0.1:{postgres.port}/{name}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_database()")).scalar_one() == name
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (42)"))
    finally:
        engine.dispose()
    postgres.restart()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select x from t")).scalar_one() == 42
    finally:
        engine.dispose()


def test_free_port_is_free_on_tcp_and_udp() -> None:
    port = free_port(udp_too=True)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))


def test_missing_binaries_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.devkit.devservers as devservers

    assert devservers.missing_binaries() == []
    monkeypatch.setattr(devservers, "_which", lambda name: None)
    assert devservers.missing_binaries("dovecot") == ["setpriv", "dovecot", "doveconf"]
    assert devservers.missing_binaries("bind") == ["setpriv", "named", "named-checkconf"]


def test_unreachable_base_dir_fails_clearly(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops to the dovecot user")
    private = tmp_path_factory.mktemp("private")
    private.chmod(0o700)
    with pytest.raises(PermissionError, match="not traversable by the system user 'dovecot'"):
        Dovecot(private, ZONE)


def test_the_loopback_guard_holds_in_every_python_process_the_tests_start() -> None:
    """A daemon started by a test is guarded too: a connection off loopback fails before any packet leaves."""
    code = ("import socket\n"
            "try:\n"
            "    socket.create_connection(('192.0.2.1', 53), timeout=1)\n"
            "except OSError as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert "OffLoopback" in out and "loopback-only guard" in out, out
