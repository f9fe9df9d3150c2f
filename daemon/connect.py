"""`check-config --connect`: try every server the configuration names, the way the daemon will use it.

One small function per check, each returning a `Check` (one line for the operator): the mailbox login of
each agency, the SMTP login, the zone's SOA asked of the primary with the TSIG key (the server checks the
signature, so a wrong secret or key name shows here, before the first request), and each verify server's
authoritative answer. Nothing is changed on any server.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiosmtplib
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig

from subdomaind.daemon.config import AgencyConfig, Config, ConfigError
from subdomaind.daemon.mailbox import ImapSource, MailSourceError
from subdomaind.daemon.oauth import LazyTokens
from subdomaind.daemon.outbox import LoginRefused, SmtpTransport
from subdomaind.daemon.reasons import plain_reason
from subdomaind.daemon.runtime import parse_options_for
from subdomaind.daemon.validate import read_tsig
from subdomaind.workflows.provision import DnsError, Rfc2136Dns


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK   ' if self.ok else 'GAGAL'} {self.what}: {self.detail}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "koneksi ditolak (layanan mati atau port salah)"
    if isinstance(exc, socket.timeout | TimeoutError | dns.exception.Timeout):
        return "tidak menjawab (batas waktu habis)"
    if isinstance(exc, socket.gaierror):
        return f"nama host tidak dikenal ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def imap_login(ag: AgencyConfig) -> Check:
    """Log in to the agency's mailbox as intake does (TLS, password or OAuth 2.0, folders), then log out."""
    what = f"IMAP {ag.id} {ag.imap.user}@{ag.imap.host}:{ag.imap.port}"
    tokens = LazyTokens(ag.imap.oauth, ag.imap.user) if ag.imap.auth == "oauth2" and ag.imap.oauth else None
    src = ImapSource(ag.imap, "" if tokens else ag.imap.read_secret() or "", tokens=tokens)
    try:
        src.connect()
    except MailSourceError as exc:
        return Check(what, False, plain_reason(str(exc)))  # already the server's words, in a sentence
    finally:
        src.close()
    how = f"OAuth 2.0 {ag.imap.oauth.mechanism.upper()}" if tokens and ag.imap.oauth else "kata sandi"
    return Check(what, True, f"login berhasil dengan {how} ({src.mode})")


def smtp_login(cfg: Config) -> Check:
    """Connect to the SMTP server (STARTTLS or TLS as configured) and log in when a user is set, by password
    or OAuth 2.0, through the outbox's own client."""
    s = cfg.smtp
    what = f"SMTP {s.host}:{s.port}"
    password = s.read_secret() if s.user and s.auth == "password" else None
    transport = SmtpTransport(s, password, helo_name=cfg.agencies[0].address.rpartition("@")[2])
    exc = transport.try_login()
    if isinstance(exc, LoginRefused):
        return Check(what, False, f"login {s.user} ditolak: {exc}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return Check(what, False, f"login {s.user} ditolak: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Check(what, False, f"server menjawab {exc.code} {exc.message}")
    if exc is not None:
        # aiosmtplib wraps the socket's error (connection refused, a timeout) in its own.
        return Check(what, False, _why(exc.__cause__ if isinstance(exc.__cause__, OSError) else exc))
    if not s.user:
        return Check(what, True, "terhubung (tanpa login)")
    return Check(what, True, f"terhubung, login {s.user} berhasil" + (" (OAuth 2.0)" if s.auth == "oauth2" else ""))


def _backend(ag: AgencyConfig, timeout: float = 5.0) -> object:
    key = read_tsig(ag.dns)
    d = ag.dns
    return Rfc2136Dns(zone=ag.zone, primary=d.primary, port=d.port, key_name=d.tsig_key_name, secret=key.secret,
                      algorithm=key.algorithm, verify_servers=d.verify_servers or None, timeout=timeout,
                      reserved=parse_options_for(ag).reserved_names)


def tsig_soa(ag: AgencyConfig) -> Check:
    """Ask the primary for the zone's SOA, signed with the TSIG key; the server verifies the signature."""
    what = f"DNS {ag.id} SOA {ag.zone} dengan kunci TSIG {ag.dns.tsig_key_name}"
    try:
        backend = _backend(ag)
        assert isinstance(backend, Rfc2136Dns)
        ep = backend.primary_endpoint()
    except (DnsError, ConfigError) as exc:
        return Check(what, False, "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc))
    what = f"DNS {ag.id} SOA {ag.zone} di {ep.label} dengan kunci TSIG {ag.dns.tsig_key_name}"
    q = dns.message.make_query(backend.origin, dns.rdatatype.SOA)
    q.use_tsig(backend.keyring, keyname=backend.key_name)
    try:
        r = dns.query.tcp(q, ep.address, port=ep.port, timeout=backend.timeout)
    except dns.tsig.PeerBadSignature:
        return Check(what, False, "rahasia kunci TSIG berbeda dengan yang dipasang di server (BADSIG)")
    except dns.tsig.PeerBadKey:
        return Check(what, False, "server tidak mengenal nama atau algoritme kunci TSIG ini (BADKEY)")
    except dns.tsig.PeerBadTime:
        return Check(what, False, "jam komputer ini dan server DNS berselisih lebih dari 5 menit (BADTIME)")
    except dns.tsig.PeerError as exc:
        return Check(what, False, f"server menolak tanda tangan TSIG ({exc.__class__.__name__})")
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        return Check(what, False, _why(exc))
    if r.rcode() != dns.rcode.NOERROR or not r.answer:
        return Check(what, False, f"jawaban {dns.rcode.to_text(r.rcode())} tanpa SOA: server ini bukan "
                                  f"server zona {ag.zone}")
    serial = r.answer[0][0].serial
    return Check(what, True, f"tanda tangan diterima, serial {serial}")


def verify_server(ag: AgencyConfig, label: str, address: str, port: int, timeout: float = 5.0) -> Check:
    """One authoritative server: it must answer the zone's SOA with the AA flag (RFC 1035 section 4.1.1)."""
    what = f"DNS {ag.id} server verifikasi {label}"
    q = dns.message.make_query(ag.zone + ".", dns.rdatatype.SOA)
    q.flags &= ~dns.flags.RD
    try:
        r, _ = dns.query.udp_with_fallback(q, address, port=port, timeout=timeout)
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        return Check(what, False, _why(exc))
    if r.rcode() != dns.rcode.NOERROR or not (r.flags & dns.flags.AA) or not r.answer:
        return Check(what, False, f"bukan server otoritatif zona {ag.zone} ({dns.rcode.to_text(r.rcode())})")
    return Check(what, True, f"menjawab sebagai server otoritatif (serial {r.answer[0][0].serial})")


def verify_servers(ag: AgencyConfig) -> list[Check]:
    try:
        backend = _backend(ag)
        assert isinstance(backend, Rfc2136Dns)
        endpoints = backend.verify_endpoints()
    except (DnsError, ConfigError) as exc:
        detail = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
        return [Check(f"DNS {ag.id} server verifikasi", False, detail)]
    return [verify_server(ag, ep.label, ep.address, ep.port) for ep in endpoints]


# Swappable per check (an OAuth mailbox logs in differently): the list `run_checks` walks.
MAILBOX_CHECK: Callable[[AgencyConfig], Check] = imap_login


def run_checks(cfg: Config) -> Iterator[Check]:
    for ag in cfg.agencies:
        yield MAILBOX_CHECK(ag)
    yield smtp_login(cfg)
    for ag in cfg.agencies:
        yield tsig_soa(ag)
        yield from verify_servers(ag)
