"""Provisioning behind small interfaces: DNS records (RFC 2136 + TSIG), hosting accounts, credentials.

`DnsBackend` and `HostingBackend` are protocols the engine receives; `Rfc2136Dns` is the real one
(dnspython against the zone's primary), `NoHosting` and `CommandHosting` the two hosting backends.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

# No look-alike characters (0/O, 1/l/I) so the PIC can type it from a printed letter.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_LENGTH = 20


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        # At least one of each class, so panels with composition rules accept it.
        if any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw):
            return pw


def make_username(pattern: str, subdomain: str, pic_name: str | None, taken: set[str]) -> str:
    """A unique username from the pattern (`{subdomain}`, `{pic}` = first name), lower-case, [a-z0-9_]."""
    first = re.sub(r"[^a-z0-9]", "", (pic_name or "").split()[0].lower()) if pic_name and pic_name.split() else ""
    base = pattern.format(subdomain=subdomain, pic=first or "admin")
    base = re.sub(r"[^a-z0-9_]", "_", base.lower()).strip("_")[:28] or "user"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


class DnsError(Exception):
    pass


class NameInUse(DnsError):
    pass


@dataclass(frozen=True)
class PlannedRecord:
    name: str  # relative label, e.g. "dinsos"
    rdtype: str  # "A", "AAAA", "CNAME"
    value: str
    ttl: int

    def line(self, zone: str) -> str:
        return f"{self.name}.{zone}. {self.ttl} IN {self.rdtype} {self.value}"


class DnsBackend(Protocol):
    zone: str

    def existing(self, name: str) -> list[str]: ...
    def add(self, record: PlannedRecord) -> None: ...
    def remove(self, record: PlannedRecord) -> None: ...
    def serving(self, record: PlannedRecord) -> dict[str, bool]: ...
    def name_servers(self) -> list[str]: ...


def _hostport(spec: str, default_port: int) -> tuple[str, int]:
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, default_port


class Rfc2136Dns:
    """Dynamic updates signed with TSIG on the zone's primary; checks against every authoritative server."""

    def __init__(
        self,
        *,
        zone: str,
        primary: str,
        port: int,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        verify_servers: list[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.zone = zone.rstrip(".")
        self.primary = primary
        self.port = port
        self.keyring = dns.tsigkeyring.from_text({key_name: secret})
        self.key_name = key_name
        self.algorithm = dns.name.from_text(algorithm)
        self.verify_servers = [_hostport(s, port) for s in (verify_servers or [f"{primary}:{port}"])]
        self.timeout = timeout

    def _query(self, server: tuple[str, int], name: str, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(f"{name}.{self.zone}.", rdtype)
        q.flags &= ~dns.flags.RD  # authoritative answers only
        return dns.query.udp(q, server[0], port=server[1], timeout=self.timeout)

    def existing(self, name: str) -> list[str]:
        """Every record at the name on any authoritative server, as text lines; empty when the name is free."""
        found: list[str] = []
        for server in self.verify_servers:
            resp = self._query(server, name, "ANY")
            if resp.rcode() == dns.rcode.NXDOMAIN:
                continue
            for rrset in resp.answer:
                for rd in rrset:
                    line = f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                    if line not in found:
                        found.append(line)
        return found

    def _send(self, update: dns.update.UpdateMessage) -> None:
        try:
            resp = dns.query.tcp(update, self.primary, port=self.port, timeout=self.timeout)
        except (dns.tsig.PeerBadKey, dns.tsig.PeerBadSignature, dns.tsig.PeerError) as exc:
            raise DnsError(f"TSIG ditolak server DNS: {exc.__class__.__name__}") from exc
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsError(f"server DNS {self.primary}:{self.port} tidak dapat dihubungi: {exc}") from exc
        rcode = resp.rcode()
        if rcode == dns.rcode.YXDOMAIN:
            raise NameInUse("nama sudah ada di zona")
        if rcode != dns.rcode.NOERROR:
            raise DnsError(f"pembaruan DNS ditolak: {dns.rcode.to_text(rcode)}")

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.zone, keyring=self.keyring, keyname=self.key_name,
                                        keyalgorithm=self.algorithm)

    def add(self, record: PlannedRecord) -> None:
        """Add the record only if the name does not exist at all (RFC 2136 prerequisite "name not in use"),
        so no update can replace or delete a record that was not created for this request."""
        u = self._update()
        u.absent(record.name)
        u.add(record.name, record.ttl, record.rdtype, record.value)
        self._send(u)

    def remove(self, record: PlannedRecord) -> None:
        """Remove exactly the record we added (prerequisite: it is there with our value)."""
        u = self._update()
        u.present(record.name, record.rdtype, record.value)
        u.delete(record.name, record.rdtype, record.value)
        self._send(u)

    def serving(self, record: PlannedRecord) -> dict[str, bool]:
        result: dict[str, bool] = {}
        for server in self.verify_servers:
            key = f"{server[0]}:{server[1]}"
            try:
                resp = self._query(server, record.name, record.rdtype)
                values = {rd.to_text().rstrip(".").lower() for rrset in resp.answer for rd in rrset}
                result[key] = record.value.rstrip(".").lower() in values
            except (OSError, dns.exception.DNSException):
                result[key] = False
        return result

    def wait_served(self, record: PlannedRecord, timeout: float) -> dict[str, bool]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.serving(record)
            if all(state.values()) or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)

    def name_servers(self) -> list[str]:
        resp = dns.query.udp(dns.message.make_query(f"{self.zone}.", "NS"), self.verify_servers[0][0],
                             port=self.verify_servers[0][1], timeout=self.timeout)
        return sorted(rd.to_text().rstrip(".") for rrset in resp.answer for rd in rrset
                      if rrset.rdtype == dns.rdatatype.NS)


class HostingError(Exception):
    pass


class HostingBackend(Protocol):
    name: str

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str: ...


class NoHosting:
    """DNS only: the account is the sub-domain's management username, nothing is created elsewhere."""

    name = "none"

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str:
        return "tidak ada akun hosting (hanya DNS)"


class CommandHosting:
    """Runs an operator-given argv template without a shell; the password goes on stdin or in the env."""

    name = "command"

    def __init__(self, argv: list[str], *, secret_via: str = "stdin", timeout: float = 60.0) -> None:
        self.argv = argv
        self.secret_via = secret_via
        self.timeout = timeout

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str:
        values = {"username": username, "fqdn": fqdn, "ip": ip, "subdomain": subdomain}
        # Substitution per argument: a value can never split into more arguments or reach a shell.
        argv = [arg.format(**values) for arg in self.argv]
        env = dict(os.environ)
        stdin = None
        if self.secret_via == "env":
            env["SUBDOMAIND_PASSWORD"] = password
        else:
            stdin = password + "\n"
        try:
            proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True,
                                  timeout=self.timeout, check=False, shell=False)
        except subprocess.TimeoutExpired as exc:
            raise HostingError(f"perintah akun hosting melewati batas waktu {self.timeout:.0f} detik") from exc
        except OSError as exc:
            raise HostingError(f"perintah akun hosting tidak dapat dijalankan: {exc.strerror}") from exc
        out = (proc.stdout + proc.stderr).replace(password, "********")[-2000:]
        if proc.returncode != 0:
            raise HostingError(f"perintah akun hosting gagal (kode {proc.returncode}): {out.strip()}")
        return out.strip()
