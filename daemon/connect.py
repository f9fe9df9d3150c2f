"""`check-config --connect`: try every server the configuration names, the way the daemon will use it.

One small function per check, each returning a `Check` (one line for the operator): the mailbox login of
each agency, the SMTP login, the zone's SOA asked of the primary with the TSIG key (the server checks the
signature, so a wrong secret or key name shows here, before the first request), and each verify server's
authoritative answer. Nothing is changed on any server.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig

from daemon.cli import plain_reason
from daemon.config import AgencyConfig, Config, ConfigError
from daemon.validate import read_tsig


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
    """Log in to the agency's mailbox as intake does (TLS, folders), then log out."""
    from daemon.mailbox import ImapSource, MailSourceError

    what = f"IMAP {ag.id} {ag.imap.user}@{ag.imap.host}:{ag.imap.port}"
    src = ImapSource(ag.imap, ag.imap.read_secret() or "")
    try:
        src.connect()
    except MailSourceError as exc:
        text = plain_reason(str(exc))  # imapclient gives the server's words as bytes
        if "AUTHENTICATIONFAILED" in text or "uthentication failed" in text:
            return Check(what, False, f"login ditolak: nama pengguna atau kata sandi salah ({text})")
        return Check(what, False, text)
    finally:
        src.close()
    return Check(what, True, f"login berhasil ({src.mode})")


def smtp_login(cfg: Config) -> Check:
    """Connect to the SMTP server (STARTTLS or TLS as configured) and log in when a user is set."""
    from daemon.outbox import SmtpTransport

    s = cfg.smtp
    what = f"SMTP {s.host}:{s.port}"
    transport = SmtpTransport(s, s.read_secret() if s.user else None,
                              helo_name=cfg.agencies[0].address.rpartition("@")[2])
    try:
        client = transport._connect()
    except smtplib.SMTPAuthenticationError as exc:
        err = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return Check(what, False, f"login {s.user} ditolak: {exc.smtp_code} {err}")
    except (smtplib.SMTPException, OSError) as exc:
        return Check(what, False, _why(exc))
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    return Check(what, True, f"terhubung, login {s.user} berhasil" if s.user else "terhubung (tanpa login)")


def _backend(ag: AgencyConfig, timeout: float = 5.0) -> object:
    from daemon.service import parse_options_for
    from workflows.provision import Rfc2136Dns

    key = read_tsig(ag.dns)
    d = ag.dns
    return Rfc2136Dns(zone=ag.zone, primary=d.primary, port=d.port, key_name=d.tsig_key_name, secret=key.secret,
                      algorithm=key.algorithm, verify_servers=d.verify_servers or None, timeout=timeout,
                      reserved=parse_options_for(ag).reserved_names)


def tsig_soa(ag: AgencyConfig) -> Check:
    """Ask the primary for the zone's SOA, signed with the TSIG key; the server verifies the signature."""
    from workflows.provision import DnsError, Rfc2136Dns

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
    from workflows.provision import DnsError, Rfc2136Dns

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
