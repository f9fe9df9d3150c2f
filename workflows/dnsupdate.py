"""The RFC 2136 client: one TSIG-signed dynamic update per request, exact removal, verification on every server.

Why its own module: it is the only code that talks to name servers, so its sockets, timeouts and rollback
rules sit in one place; the rules it enforces before sending live in workflows/dnsplan.py.

* `Rfc2136Dns.apply` sends ONE RFC 2136 dynamic update signed with TSIG (RFC 8945), with RFC 2136 prerequisites
  that every owner name is not in use, so the server applies all of it or none of it; `remove` deletes exactly
  our records, with prerequisites that they still hold our values;
* `Rfc2136Dns.wait_served` checks every authoritative server of the zone (the NS RRset, RFC 1034 section 4.1)
  until each serves every record, within a bound.

Rollback rules (docs/DNS.md): a refused, failed, uncertain or partial update leaves nothing (apply removes
whatever of ours did land and raises `RolledBack`, or `DnsStateUnknown` if even that fails); a secondary
that lags behind keeps the record: `wait_served` reports it and the engine alerts staff and waits at a
check step.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from subdomaind.workflows.dnsplan import (
    CLASS_IN,
    MAX_RECORDS,
    RESERVED_NAMES,
    DnsError,
    DnsStateUnknown,
    Groups,
    GuardRefused,
    NameInUse,
    NameState,
    PlannedRecord,
    RecordsChanged,
    RolledBack,
    as_list,
    check_records,
    format_diff,
    guard_update,
    owner_name,
    record_entries,
)


@dataclass(frozen=True)
class Endpoint:
    """One server to talk to: ``label`` for people ("ns2.trenggalekkab.go.id:53"), ``address`` an IP literal."""

    label: str
    address: str
    port: int


def _split_hostport(spec: str, default_port: int) -> tuple[str, int]:
    """"host", "host:port", "1.2.3.4:53", "[2001:db8::1]:53" or a bare IPv6 literal."""
    text = spec.strip()
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DnsError(f"alamat server DNS '{spec}' tidak sah (contoh: ns2.trenggalekkab.go.id atau 192.0.2.2:53)")
    return host, int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "koneksi ditolak (layanan DNS mati atau port salah)"
    if isinstance(exc, dns.exception.Timeout | socket.timeout | TimeoutError):
        return f"tidak menjawab dalam {timeout:g} detik"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {exc}"


def _lines(rrset: Any) -> list[str]:
    return [f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}" for rd in rrset]


class _Unsure(DnsError):
    """The update was sent, but no trustworthy answer came back: it may or may not have been applied."""


class Rfc2136Dns:
    """RFC 2136 dynamic updates signed with TSIG (RFC 8945) on the zone's primary; verification on every
    authoritative server.

    ``primary`` (host or address; ``port`` for all servers): where updates go; unset, it is the SOA MNAME
    (RFC 2136 section 4: the primary master), looked up through ``verify_servers`` or the system resolver.
    ``verify_servers`` ("host" or "host:port"): the servers that must serve each record; unset, every address
    of the zone's NS RRset (RFC 1034 section 4.1), read from the primary. In-zone server names are resolved
    through the primary itself, other names through the system resolver. Discovery is cached for
    ``discovery_ttl`` seconds.
    """

    def __init__(
        self,
        *,
        zone: str,
        primary: str | None = None,
        port: int = 53,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        verify_servers: Sequence[str] | None = None,
        timeout: float = 5.0,
        reserved: Iterable[str] = RESERVED_NAMES,
        max_records: int = MAX_RECORDS,
        discovery_ttl: float = 600.0,
    ) -> None:
        self.zone = zone.strip().rstrip(".").lower()
        self.origin = dns.name.from_text(self.zone + ".")
        self.primary = primary.strip() if primary else None
        self.port = port
        self.key_name = dns.name.from_text(key_name)
        try:
            self.keyring: dict[dns.name.Name, dns.tsig.Key] = dns.tsigkeyring.from_text(
                {key_name: (algorithm, secret)})
        except (ValueError, dns.exception.DNSException) as exc:
            raise DnsError(f"rahasia kunci TSIG '{key_name}' tidak sah (harus base64, seperti keluaran "
                           f"tsig-keygen): {exc.__class__.__name__}") from exc
        self.algorithm = algorithm
        self.verify_specs = [s for s in (verify_servers or []) if s.strip()]
        self.timeout = timeout
        self.reserved = frozenset(n.lower() for n in reserved)
        self.max_records = max_records
        self.discovery_ttl = discovery_ttl
        self._cache: dict[str, tuple[float, Any]] = {}
        self._seen: dict[str, tuple[float, NameState]] = {}
        self._tcp: dict[tuple[str, int], socket.socket] = {}  # open query connections (_tcp_query)

    # -- discovery ----------------------------------------------------------------------------------------

    def _cached(self, key: str) -> Any:
        hit = self._cache.get(key)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def _remember(self, key: str, value: Any) -> Any:
        self._cache[key] = (time.monotonic() + self.discovery_ttl, value)
        return value

    def _resolve(self, host: str, port: int, via: Sequence[Endpoint] = ()) -> list[Endpoint]:
        """Endpoints for a server name: an IP literal as is; an in-zone name through ``via`` (authoritative,
        no recursion); otherwise the system resolver."""
        label = f"{host}:{port}"
        if _is_ip(host):
            return [Endpoint(label, host, port)]
        addrs: list[str] = []
        try:
            name = dns.name.from_text(host)
        except dns.exception.DNSException as exc:
            raise DnsError(f"nama server DNS '{host}' tidak sah") from exc
        if via and name.is_subdomain(self.origin):
            for ep in via:
                for rdtype in ("A", "AAAA"):
                    try:
                        found = self._rrset_at(ep, name, dns.rdatatype.from_text(rdtype))
                    except DnsError:
                        continue
                    addrs += [rd.to_text() for rd in found if rd.to_text() not in addrs]
                    if addrs:
                        break
                if addrs:
                    break
        if not addrs:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise DnsError(f"alamat server DNS {host} tidak dapat ditemukan: {_why(exc, self.timeout)}") from exc
            for info in infos:
                addr = str(info[4][0])
                if addr not in addrs:
                    addrs.append(addr)
        if not addrs:
            raise DnsError(f"alamat server DNS {host} tidak dapat ditemukan")
        return [Endpoint(label if len(addrs) == 1 else f"{label} [{a}]", a, port) for a in addrs]

    def _bootstrap(self) -> list[Endpoint]:
        """Servers to ask about the zone before the primary is known: the configured verify servers."""
        eps: list[Endpoint] = []
        for spec in self.verify_specs:
            host, port = _split_hostport(spec, self.port)
            eps += self._resolve(host, port)
        return eps

    def primary_endpoint(self) -> Endpoint:
        """Where updates go: the configured primary, else the SOA MNAME's address (RFC 2136 section 4)."""
        hit = self._cached("primary")
        if hit is not None:
            return hit
        if self.primary:
            host, port = _split_hostport(self.primary, self.port)
            return self._remember("primary", self._resolve(host, port)[0])
        bootstrap = self._bootstrap()
        mname: dns.name.Name | None = None
        if bootstrap:
            for ep in bootstrap:
                try:
                    soa = self._rrset_at(ep, self.origin, dns.rdatatype.SOA)
                except DnsError:
                    continue
                if soa:
                    mname = next(iter(soa)).mname  # type: ignore[attr-defined]
                    break
        else:
            try:
                answer = dns.resolver.Resolver().resolve(self.origin, "SOA", lifetime=self.timeout)
                mname = answer[0].mname
            except dns.exception.DNSException as exc:
                raise DnsError(f"SOA zona {self.zone} tidak dapat dibaca untuk mencari server utama: {exc}") from exc
        if mname is None:
            raise DnsError(f"SOA zona {self.zone} tidak dapat dibaca dari {', '.join(e.label for e in bootstrap)} "
                           f"untuk mencari server utama; isi 'primary' di konfigurasi")
        eps = self._resolve(mname.to_text(omit_final_dot=True), self.port, via=bootstrap)
        return self._remember("primary", eps[0])

    def verify_endpoints(self) -> list[Endpoint]:
        """Every server that must serve the records: configured, else every address of the zone's NS RRset."""
        hit = self._cached("verify")
        if hit is not None:
            return hit
        specs: list[tuple[str, int]]
        if self.verify_specs:
            specs = [_split_hostport(s, self.port) for s in self.verify_specs]
        else:
            specs = [(n, self.port) for n in self.name_servers()]
        needs_primary = any(not _is_ip(h) for h, _ in specs)
        via = [self.primary_endpoint()] if needs_primary else []
        eps: list[Endpoint] = []
        for host, port in specs:
            for ep in self._resolve(host, port, via=via):
                if all((ep.address, ep.port) != (e.address, e.port) for e in eps):
                    eps.append(ep)
        if not eps:
            raise DnsError(f"tidak ada server DNS otoritatif zona {self.zone} untuk diperiksa")
        return self._remember("verify", eps)

    def name_servers(self) -> list[str]:
        """The zone's NS names as the primary serves them (what the requester is told)."""
        ns = self._rrset_at(self.primary_endpoint(), self.origin, dns.rdatatype.NS, tcp=True)
        if not ns:
            raise DnsError(f"server utama tidak menyajikan rekaman NS zona {self.zone}")
        return sorted(rd.to_text().rstrip(".") for rd in ns)

    # -- queries ------------------------------------------------------------------------------------------

    def _query(self, ep: Endpoint, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, *, tcp: bool = False,
               timeout: float | None = None) -> dns.message.Message:
        t = timeout if timeout is not None else self.timeout
        q = dns.message.make_query(qname, rdtype, use_edns=0, payload=1232)
        q.flags &= ~dns.flags.RD  # authoritative data only, never a cached answer (RFC 1034 section 4.3.1)
        try:
            if tcp:
                return self._tcp_query(q, ep, t)
            # UDP first; on a truncated answer (TC) ask again over TCP (RFC 7766 section 5).
            response, _ = dns.query.udp_with_fallback(q, ep.address, timeout=t, port=ep.port)
            return response
        except (OSError, EOFError, dns.exception.DNSException, ValueError) as exc:
            raise DnsError(f"server DNS {ep.label} tidak dapat dihubungi: {_why(exc, t)}") from exc

    def _tcp_query(self, q: dns.message.Message, ep: Endpoint, timeout: float) -> dns.message.Message:
        """A query over a TCP connection kept open to that server (RFC 7766 section 6.2.1: a client may send
        several queries on one connection). A new connection per query was a tenth of the daemon's work on
        a backlog. A connection the server has since closed is replaced once."""
        key = (ep.address, ep.port)
        for attempt in (0, 1):
            sock = self._tcp.pop(key, None)
            fresh = sock is None
            if sock is None:
                sock = socket.create_connection(key, timeout=timeout)
            try:
                sock.settimeout(timeout)
                answer = dns.query.tcp(q, ep.address, timeout=timeout, port=ep.port, sock=sock)
            except (OSError, EOFError, dns.exception.DNSException):
                sock.close()
                if fresh or attempt:
                    raise
                continue  # the server closed our idle connection (BIND: tcp-idle-timeout): once more, new
            self._tcp[key] = sock
            return answer
        raise AssertionError("unreachable")

    def _rrset_at(self, ep: Endpoint, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, *, tcp: bool = False,
                  timeout: float | None = None) -> set[dns.rdata.Rdata]:
        """The rdata of owner/rdtype as ``ep`` serves it: an authoritative answer, or, at or below a zone
        cut, the NS RRset and glue of the referral (RFC 1034 section 4.3.2 step 3b). Empty if none."""
        resp = self._query(ep, owner, rdtype, tcp=tcp, timeout=timeout)
        if resp.rcode() != dns.rcode.NOERROR:
            return set()
        found: set[dns.rdata.Rdata] = set()
        if resp.flags & dns.flags.AA:
            sections = [resp.answer]
        elif not resp.answer:
            sections = [resp.authority, resp.additional]
        else:
            sections = []  # a non-authoritative answer (a cache): not proof that the server serves it
        for section in sections:
            for rrset in section:
                if rrset.name == owner and rrset.rdtype == rdtype and rrset.rdclass == CLASS_IN:
                    found.update(rrset)
        return found

    def inspect(self, name: str) -> NameState:
        """What the primary holds at ``name`` (relative to the zone, or absolute with the trailing dot)."""
        try:
            owner = dns.name.from_text(name, self.origin) if name not in ("", "@") else self.origin
        except dns.exception.DNSException as exc:
            raise DnsError(f"nama '{name}' tidak sah: {exc}") from exc
        if not owner.is_subdomain(self.origin):
            raise GuardRefused(f"pengaman DNS menolak: {owner} berada di luar zona {self.zone}")
        ep = self.primary_endpoint()
        resp = self._query(ep, owner, dns.rdatatype.ANY, tcp=True)
        rcode = resp.rcode()
        fqdn = owner.to_text()
        if rcode == dns.rcode.NXDOMAIN:
            return NameState(fqdn, "free")
        if rcode != dns.rcode.NOERROR:
            raise DnsError(f"server DNS {ep.label} menjawab {dns.rcode.to_text(rcode)} untuk {fqdn}; apakah "
                           f"server itu memegang zona {self.zone}?")
        lines = [line for rrset in resp.answer if rrset.name == owner for line in _lines(rrset)]
        if lines and resp.flags & dns.flags.AA:
            # An answer may be synthesized from a wildcard (RFC 4592). The RFC 2136 prerequisite "name is in
            # use" is evaluated on real names only: ask the primary with a prerequisite-only update.
            if self._name_in_use(owner):
                return NameState(fqdn, "used", tuple(lines))
            return NameState(fqdn, "free", wildcard=True)
        cut = [rrset for rrset in resp.authority if rrset.rdtype == dns.rdatatype.NS and rrset.name != self.origin]
        if cut:
            return NameState(fqdn, "delegated", tuple(line for rrset in cut for line in _lines(rrset)))
        if lines:
            return NameState(fqdn, "used", tuple(lines))
        return NameState(fqdn, "below")  # NOERROR without data: an empty non-terminal, names exist below it

    def _name_in_use(self, owner: dns.name.Name) -> bool:
        probe = self._update()
        probe.absent(owner)  # RFC 2136 section 2.4.5; no update section, so nothing can change
        try:
            self.send_update(probe)
        except NameInUse:
            return True
        return False

    # What `existing` and `diff_text` (information for people: the notification, the completeness check
    # and the approval mail of one new letter ask about the same name within milliseconds) may reuse;
    # never the apply path, whose safety is the update's own prerequisites (RFC 2136 section 2.4).
    SEEN_SECONDS = 2.0

    def _inspect_recent(self, name: str) -> NameState:
        try:  # "dinsos" and "dinsos.trenggalekkab.go.id." are the same name
            key = (dns.name.from_text(name, self.origin) if name not in ("", "@") else self.origin).to_text().lower()
        except dns.exception.DNSException:
            return self.inspect(name)  # which says why the name is bad
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is not None and now - hit[0] < self.SEEN_SECONDS:
            return hit[1]
        state = self.inspect(name)
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[key] = (now, state)
        return state

    def existing(self, name: str) -> list[str]:
        """Everything at ``name`` on the primary as zone lines; empty when the name is free."""
        state = self._inspect_recent(name)
        if state.free:
            return []
        return list(state.lines) or [f"{state.name} (ada rekaman pada nama di bawahnya)"]

    def diff_text(self, records: PlannedRecord | Sequence[PlannedRecord]) -> str:
        """The dry run for the approval mail: what would be added and what each name holds now. Never raises."""
        recs = as_list(records)
        try:
            check_records(recs, zone=self.zone, reserved=self.reserved, max_records=self.max_records)
        except GuardRefused as exc:
            return "\n".join([*(f"+ {r.line(self.zone)}" for r in recs), f"  (DITOLAK: {exc})"])
        states: dict[str, NameState | str] = {}
        for r in recs:
            fqdn = r.fqdn(self.zone).lower()
            if fqdn not in states:
                try:
                    states[fqdn] = self._inspect_recent(fqdn)
                except DnsError as exc:
                    states[fqdn] = f"keadaan nama tidak dapat diperiksa: {exc}"
        return format_diff(recs, self.zone, states)

    # -- updates ------------------------------------------------------------------------------------------

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.origin, keyring=self.keyring, keyname=self.key_name)

    def send_update(self, update: dns.update.UpdateMessage, *, ours: Sequence[PlannedRecord] = ()) -> None:
        """The only way an update leaves: `guard_update` first, then TCP to the primary; errors in Indonesian.

        Raises `GuardRefused` (nothing sent), `NameInUse` (YXDOMAIN/YXRRSET), `RecordsChanged` (NXRRSET/
        NXDOMAIN), `DnsError` (refused, TSIG, unreachable: nothing applied), `_Unsure` (sent, no trustworthy
        answer).
        """
        guard_update(update, zone=self.zone, reserved=self.reserved, ours=ours, max_records=self.max_records)
        self._seen.clear()  # what we change is seen afresh
        ep = self.primary_endpoint()
        key = self.key_name.to_text(omit_final_dot=True)
        try:
            sock = socket.create_connection((ep.address, ep.port), timeout=self.timeout)
        except OSError as exc:
            raise DnsError(f"server DNS utama {ep.label} tidak dapat dihubungi: {_why(exc, self.timeout)}; "
                           f"tidak ada yang diubah") from exc
        try:
            with sock:
                resp = dns.query.tcp(update, ep.address, timeout=self.timeout, port=ep.port, sock=sock)
        # The server's TSIG errors (RFC 8945 section 5.2) come with rcode NOTAUTH: nothing was applied.
        except dns.tsig.PeerBadSignature as exc:
            raise DnsError(f"kunci TSIG '{key}' ditolak server DNS {ep.label}: tanda tangan tidak cocok (BADSIG). "
                           f"Rahasia kunci di berkas rahasia subdomaind berbeda dengan yang dipasang di server "
                           f"DNS; samakan keduanya. Tidak ada yang diubah.") from exc
        except dns.tsig.PeerBadKey as exc:
            raise DnsError(f"kunci TSIG '{key}' tidak dikenal server DNS {ep.label} (BADKEY): nama kunci atau "
                           f"algoritmanya ({self.algorithm}) berbeda dengan konfigurasi server. Tidak ada yang "
                           f"diubah.") from exc
        except dns.tsig.PeerBadTime as exc:
            raise DnsError(f"server DNS {ep.label} menolak waktu tanda tangan TSIG (BADTIME): jam komputer ini "
                           f"dan server DNS berselisih lebih dari 5 menit; sinkronkan jam (NTP). Tidak ada yang "
                           f"diubah.") from exc
        except dns.tsig.PeerError as exc:
            raise DnsError(f"server DNS {ep.label} menolak tanda tangan TSIG ({exc.__class__.__name__}). "
                           f"Tidak ada yang diubah.") from exc
        except (OSError, dns.exception.DNSException) as exc:
            raise _Unsure(f"pembaruan DNS terkirim ke {ep.label} tetapi jawabannya tidak diterima dengan sah "
                          f"({_why(exc, self.timeout)})") from exc
        rcode = resp.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode in (dns.rcode.YXDOMAIN, dns.rcode.YXRRSET):
            raise NameInUse(f"nama sudah dipakai di zona {self.zone} ({text}); tidak ada yang diubah")
        if rcode in (dns.rcode.NXRRSET, dns.rcode.NXDOMAIN):
            raise RecordsChanged(f"rekaman di server tidak lagi berisi nilai yang dicatat subdomaind ({text}); "
                                 f"tidak ada yang diubah")
        if rcode == dns.rcode.REFUSED:
            raise DnsError(f"pembaruan DNS ditolak server {ep.label} (REFUSED): kunci TSIG '{key}' tidak berhak "
                           f"atas perubahan ini. Periksa update-policy zona {self.zone} (lihat docs/DNS.md). "
                           f"Tidak ada yang diubah.")
        if rcode == dns.rcode.NOTAUTH:
            raise DnsError(f"server {ep.label} tidak berwenang atas zona {self.zone} (NOTAUTH): bukan server "
                           f"utama zona ini atau kunci TSIG ditolak. Tidak ada yang diubah.")
        if rcode == dns.rcode.NOTZONE:
            raise DnsError(f"nama di luar zona {self.zone} (NOTZONE). Tidak ada yang diubah.")
        if rcode == dns.rcode.SERVFAIL:
            raise _Unsure(f"server DNS {ep.label} gagal memproses pembaruan (SERVFAIL)")
        raise DnsError(f"pembaruan DNS ditolak server {ep.label}: {text}. Tidak ada yang diubah.")

    def _groups(self, records: Sequence[PlannedRecord]) -> Groups:
        groups: Groups = {}
        for owner, rdtype, rd in record_entries(list(records), self.origin, self.reserved):
            groups.setdefault((owner, rdtype), set()).add(rd)
        return groups

    def apply(self, records: Sequence[PlannedRecord]) -> None:
        """Add all records of one request in ONE update, or nothing.

        Before sending: the guard (`check_records`), then a dry run on the primary: every owner name must be
        free (`NameInUse` otherwise, with what is there). The update carries the prerequisite "name is not in
        use" for every owner name (RFC 2136 section 2.4.5), so a name taken meanwhile makes the server refuse
        all of it (section 3.2: prerequisites are checked before any change). RFC 2136 section 3.4.2.2 lets a
        server silently ignore some additions, so afterwards the primary must serve every record; if it does
        not, or if the answer never came, what landed is removed again (`RolledBack`; `DnsStateUnknown` if
        that fails too).
        """
        recs = as_list(records)
        entries = check_records(recs, zone=self.zone, reserved=self.reserved, max_records=self.max_records)
        owners = list(dict.fromkeys(owner for owner, _, _ in entries))
        self._refuse_busy(owners)
        update = self._update()
        for owner in owners:
            update.absent(owner)
        for record, (owner, _, rd) in zip(recs, entries, strict=True):
            update.add(owner, record.ttl, rd)
        try:
            self.send_update(update, ours=recs)
        except NameInUse:
            self._refuse_busy(owners)  # raises with what is there now
            raise
        except _Unsure as exc:
            self._undo(recs, f"{exc}")
        missing = [f"{owner} {dns.rdatatype.to_text(rdtype)}" for (owner, rdtype), want in self._groups(recs).items()
                   if not want <= self._at_primary(owner, rdtype)]
        if missing:
            self._undo(recs, f"server utama tidak menyajikan {', '.join(missing)} setelah pembaruan "
                             f"(hanya sebagian diterapkan)")

    def _at_primary(self, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> set[dns.rdata.Rdata]:
        return self._rrset_at(self.primary_endpoint(), owner, rdtype, tcp=True)

    def _refuse_busy(self, owners: Sequence[dns.name.Name]) -> None:
        busy: dict[str, list[str]] = {}
        for owner in owners:
            state = self.inspect(owner.to_text())
            if not state.free:
                busy[state.name] = list(state.lines) or state.describe()
        if busy:
            shown = "; ".join(f"{name}: {', '.join(lines)}" for name, lines in busy.items())
            raise NameInUse(f"nama sudah dipakai di DNS, tidak ada yang diubah ({shown})", busy)

    def _undo(self, records: Sequence[PlannedRecord], reason: str) -> None:
        try:
            removed = self.remove(records)
        except DnsError as exc:
            lines = "; ".join(r.line(self.zone) for r in records)
            raise DnsStateUnknown(f"{reason}. Pembatalan juga gagal ({exc}); periksa zona secara manual untuk: "
                                  f"{lines}", records) from exc
        raise RolledBack(f"{reason}. Semua rekaman permohonan ini sudah dibatalkan ({len(removed)} dihapus); "
                         f"zona kembali seperti semula.")

    def add(self, record: PlannedRecord) -> None:
        """One record: `apply` of a single-record plan (the first contract)."""
        self.apply([record])

    def holds(self, records: PlannedRecord | Sequence[PlannedRecord]) -> bool:
        """True if the primary holds exactly these records at their names/types (e.g. applied before a crash)."""
        return all(self._at_primary(owner, rdtype) == want for (owner, rdtype), want in self._groups(
            as_list(records)).items())

    def remove(self, records: PlannedRecord | Sequence[PlannedRecord]) -> list[PlannedRecord]:
        """Delete exactly these records (those of one request) in one update; returns those removed.

        Each RRset must hold exactly our values (RFC 2136 section 2.4.2 "RRset exists (value dependent)"), then
        only our RRs are deleted (section 2.5.4); records of other types at the same name stay. An RRset that
        is already gone is skipped; one that someone changed stops everything (`RecordsChanged`, nothing
        removed) so staff decide.
        """
        recs = as_list(records)
        if not recs:
            return []
        check_records(recs, zone=self.zone, reserved=self.reserved, max_records=self.max_records)
        todo: list[tuple[dns.name.Name, dns.rdatatype.RdataType, set[dns.rdata.Rdata]]] = []
        changed: list[str] = []
        for (owner, rdtype), want in self._groups(recs).items():
            have = self._at_primary(owner, rdtype)
            if not have:
                continue
            if have != want:
                changed.append(f"{owner} {dns.rdatatype.to_text(rdtype)} sekarang "
                               f"{', '.join(sorted(rd.to_text() for rd in have))}")
                continue
            todo.append((owner, rdtype, want))
        if changed:
            raise RecordsChanged(f"rekaman sudah diubah di luar subdomaind ({'; '.join(changed)}); tidak ada yang "
                                 f"dihapus. Periksa dan hapus secara manual bila perlu.")
        if not todo:
            return []
        update = self._update()
        for owner, _, want in todo:
            update.present(owner, dns.rdataset.from_rdata_list(0, list(want)))
            update.delete(owner, dns.rdataset.from_rdata_list(0, list(want)))
        try:
            self.send_update(update, ours=recs)
        except _Unsure as exc:
            left = [f"{owner} {dns.rdatatype.to_text(rdtype)}" for owner, rdtype, _ in todo
                    if self._at_primary(owner, rdtype)]
            if left:
                raise DnsError(f"{exc}; rekaman {', '.join(left)} masih ada") from exc
        done = {(owner, rdtype) for owner, rdtype, _ in todo}
        return [r for r in recs if (owner_name(r, self.origin), dns.rdatatype.from_text(r.rdtype.upper())) in done]

    # -- verification -------------------------------------------------------------------------------------

    def _serves(self, ep: Endpoint, groups: Groups, timeout: float) -> bool:
        try:
            return all(want <= self._rrset_at(ep, owner, rdtype, timeout=timeout)
                       for (owner, rdtype), want in groups.items())
        except DnsError:
            return False

    def _serve_pass(self, endpoints: Sequence[Endpoint], groups: Groups, timeout: float) -> dict[Endpoint, bool]:
        """Ask all servers at once, so a dead server costs one query timeout, not one per server."""
        if len(endpoints) == 1:
            return {endpoints[0]: self._serves(endpoints[0], groups, timeout)}
        with ThreadPoolExecutor(max_workers=min(len(endpoints), 16), thread_name_prefix="dns-verify") as pool:
            futures = {ep: pool.submit(self._serves, ep, groups, timeout) for ep in endpoints}
            return {ep: future.result() for ep, future in futures.items()}

    def serving(self, records: PlannedRecord | Sequence[PlannedRecord]) -> dict[str, bool]:
        """One pass over every authoritative server: does it serve every record?"""
        groups = self._groups(as_list(records))
        return {ep.label: ok for ep, ok in self._serve_pass(self.verify_endpoints(), groups, self.timeout).items()}

    def wait_served(self, records: PlannedRecord | Sequence[PlannedRecord], timeout: float) -> dict[str, bool]:
        """Ask every authoritative server (UDP without RD, TCP on truncation) until each serves every record,
        for at most ``timeout`` seconds; {server label: served}. A server that is not serving at the end is
        lagging or down: the records stay, the caller alerts staff (see the module docstring)."""
        groups = self._groups(as_list(records))
        deadline = time.monotonic() + timeout
        try:
            endpoints = self.verify_endpoints()
        except DnsError:
            return {f"NS zona {self.zone}": False}
        state = {ep.label: False for ep in endpoints}
        pending = list(endpoints)
        while True:
            left = deadline - time.monotonic()
            for ep, ok in self._serve_pass(pending, groups, min(self.timeout, max(left, 0.2))).items():
                if ok:
                    state[ep.label] = True
                    pending.remove(ep)
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return state
            time.sleep(min(0.25, left))
