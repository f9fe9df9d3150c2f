"""Provision an approved sub-domain: its DNS records, safely, plus the hosting account and its credentials.

The DNS part puts exactly the records of one approved request into the zone, or nothing, and never changes
anything else:

* `plan_records` turns a request into `PlannedRecord`s (A/AAAA, CNAME, or an NS delegation with glue) and
  validates every name and value;
* the guard (`check_records`, `guard_update`) refuses, before any packet leaves, a change that touches the zone
  apex, a name outside the zone, a reserved name, or that could delete or replace a record not created for
  the request;
* `Rfc2136Dns.apply` sends ONE RFC 2136 dynamic update signed with TSIG (RFC 8945), with RFC 2136 prerequisites
  that every owner name is not in use, so the server applies all of it or none of it; `remove` deletes exactly
  our records, with prerequisites that they still hold our values;
* `Rfc2136Dns.wait_served` checks every authoritative server of the zone (the NS RRset, RFC 1034 section 4.1)
  until each serves every record, within a bound.

Rollback rules (docs/DNS.md): a refused, failed, uncertain or partial update leaves nothing (apply removes
whatever of ours did land and raises `RolledBack`, or `DnsStateUnknown` if even that fails); a secondary
that lags behind keeps the record: `wait_served` reports it and the engine alerts staff and waits at a
check step.

`DnsBackend` and `HostingBackend` are the protocols the engine receives; `NoHosting` and `CommandHosting` are
the two hosting backends; `generate_password` and `make_username` make the account's credentials.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

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

from parsers.model import ParseOptions
from parsers.normalize import normalize_ip

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


# ----------------------------------------------------------------------------------------------------
# Records, plans and errors

#: The record types the daemon ever creates. The BIND update-policy grants the key A AAAA CNAME NS TXT
#: (daemon/devservers.py UPDATE_POLICY_TEMPLATE); the guard is narrower still.
ALLOWED_TYPES = frozenset({"A", "AAAA", "CNAME", "NS"})
#: Labels directly below the zone that are never given out (the parser's list: www, mail, ns1, ...).
RESERVED_NAMES: frozenset[str] = ParseOptions().reserved_names
#: The most records one request may add (an NS delegation of MAX_NAMESERVERS names, each with glue).
MAX_RECORDS = 24
MAX_NAMESERVERS = 8
TTL_MIN, TTL_MAX = 60, 604800
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")  # RFC 1035 section 2.3.1 / RFC 1123 host labels
_IN = dns.rdataclass.IN


class DnsError(Exception):
    """A DNS step failed; the message (Indonesian) is shown to staff as it is."""


class NameInUse(DnsError):
    """A name of the request already holds records (or names below it); nothing was changed.

    ``existing`` maps each busy owner name (absolute, with the trailing dot) to what is there, as zone lines.
    """

    def __init__(self, message: str, existing: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.existing: dict[str, list[str]] = {k: list(v) for k, v in (existing or {}).items()}


class GuardRefused(DnsError):
    """The guard refused a change before anything was sent (apex, outside the zone, reserved, destructive)."""


class RecordsChanged(DnsError):
    """Our records no longer hold the values we wrote (someone changed them); nothing was removed."""


class RolledBack(DnsError):
    """The update failed, was uncertain or only partly applied; whatever of it landed was removed again."""


class DnsStateUnknown(DnsError):
    """The update failed or was uncertain AND removing what may have landed failed too: check by hand.

    ``records`` are the request's records that may be in the zone now.
    """

    def __init__(self, message: str, records: Sequence[PlannedRecord]) -> None:
        super().__init__(message)
        self.records = list(records)


class PlanError(ValueError):
    """A request's fields cannot become valid DNS records; ``field`` names the form field, message in Indonesian."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PlannedRecord:
    name: str  # relative to the zone, e.g. "dinsos" or "ns1.dinsos" (glue); absolute only with a trailing dot
    rdtype: str  # "A", "AAAA", "CNAME", "NS"
    value: str  # an address, or an absolute host name with the trailing dot
    ttl: int

    def fqdn(self, zone: str) -> str:
        if self.name.endswith("."):
            return self.name
        zone = zone.rstrip(".")
        return f"{zone}." if self.name in ("", "@") else f"{self.name}.{zone}."

    def line(self, zone: str) -> str:
        return f"{self.fqdn(zone)} {self.ttl} IN {self.rdtype} {self.value}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rdtype": self.rdtype, "value": self.value, "ttl": self.ttl}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedRecord:
        return cls(name=str(data["name"]), rdtype=str(data["rdtype"]), value=str(data["value"]),
                   ttl=int(data["ttl"]))


def records_to_json(records: Sequence[PlannedRecord]) -> list[dict[str, Any]]:
    return [r.to_json() for r in records]


def records_from_json(data: Any) -> list[PlannedRecord]:
    """Records stored by `records_to_json`, or by the first version (one record: name/rdtype/value/ttl keys),
    or a dict holding either under ``"records"`` (`Request.provisioned`)."""
    if isinstance(data, Mapping):
        if "records" in data:
            return records_from_json(data["records"])
        return [PlannedRecord.from_json(data)] if "name" in data else []
    return [PlannedRecord.from_json(d) for d in (data or [])]


def _as_list(records: PlannedRecord | Sequence[PlannedRecord]) -> list[PlannedRecord]:
    return [records] if isinstance(records, PlannedRecord) else list(records)


def _host_name(raw: str, field: str, what: str) -> str:
    """A host name as an absolute lower-case name with the trailing dot, every label LDH (RFC 1123 2.1)."""
    text = str(raw).strip().lower().rstrip(".")
    try:
        text = text.encode("idna").decode("ascii") if any(ord(c) > 127 for c in text) else text
    except UnicodeError as exc:
        raise PlanError(field, f"{what} '{raw}' bukan nama host yang sah") from exc
    labels = text.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels) or len(text) > 253:
        raise PlanError(field, f"{what} '{raw}' bukan nama host lengkap yang sah (contoh: ns1.dinsos.go.id)")
    return text + "."


def _address(raw: Any, field: str) -> tuple[str, str]:
    """(rdtype, address) for a public IPv4 (A) or IPv6 (AAAA) address; the parser's non-public ranges refused."""
    try:
        addr = ipaddress.ip_address(str(raw).strip())
    except ValueError as exc:
        raise PlanError(field, f"Alamat IP '{raw}' tidak sah (contoh: 203.0.113.10)") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise PlanError(field, f"Alamat IP {addr} adalah alamat IPv4 dalam bentuk IPv6; tulis alamat IPv4-nya")
    _, problem = normalize_ip(str(addr))  # the parser's rule: no private, loopback, multicast, ... addresses
    if problem is not None:
        raise PlanError(field, problem.reason)
    return ("AAAA" if addr.version == 6 else "A"), str(addr)


def plan_records(
    *,
    label: str,
    zone: str,
    fields: Mapping[str, Any],
    hosting_ip: str,
    ttl: int,
    reserved: Iterable[str] = RESERVED_NAMES,
) -> list[PlannedRecord]:
    """The records one request needs, validated; raises `PlanError` (Indonesian message) when it cannot.

    * ``fields["nameservers"]`` (a list of ``{"name": ..., "ip": ...}``, or of names): an NS delegation of
      ``label`` (RFC 1034 section 4.2.1) plus glue A/AAAA records for the name servers that lie below
      ``label`` (only those need glue; for other names the ``ip`` is not used);
    * else ``fields["target_cname"]``: one CNAME (RFC 1034 section 3.6.2: no other data at the name);
    * else an A or AAAA record to ``fields["target_ip"]`` or the office's ``hosting_ip``.
    """
    zone = zone.strip().rstrip(".").lower()
    raw_label = str(label or "")
    name = raw_label.strip().lower()
    if name in ("", "@") or name == zone:
        raise PlanError("subdomain", "Nama sub domain kosong; puncak zona (apex) tidak dapat diberikan")
    if "." in name:
        raise PlanError("subdomain", f"Nama sub domain '{raw_label}' harus satu label tanpa titik, "
                                     f"misalnya 'dinsos' untuk dinsos.{zone}")
    if not _LABEL_RE.match(name):
        raise PlanError("subdomain", f"Nama sub domain '{raw_label}' tidak sah; gunakan huruf a-z, angka 0-9 dan "
                                     f"tanda hubung (tidak di awal atau akhir), paling banyak 63 karakter")
    if name in {r.lower() for r in reserved}:
        raise PlanError("subdomain", f"Nama sub domain '{name}' dicadangkan untuk layanan teknis dan tidak "
                                     f"dapat diberikan")
    fqdn = f"{name}.{zone}."
    if len(fqdn) > 254:
        raise PlanError("subdomain", f"Nama lengkap '{fqdn}' melebihi 253 karakter")
    if not TTL_MIN <= int(ttl) <= TTL_MAX:
        raise PlanError("ttl", f"TTL {ttl} di luar batas {TTL_MIN}-{TTL_MAX} detik")

    nameservers = fields.get("nameservers") or []
    cname = fields.get("target_cname")
    target_ip = fields.get("target_ip")
    if nameservers and (cname or target_ip):
        raise PlanError("nameservers", "Delegasi name server tidak dapat digabung dengan alamat IP atau CNAME: "
                                       "pilih salah satu")
    if cname and target_ip:
        raise PlanError("target_cname", "Isian alamat IP dan CNAME tidak dapat dipakai bersamaan: pilih salah satu")

    if nameservers:
        return _plan_delegation(name, zone, list(nameservers), int(ttl))
    if cname:
        target = _host_name(cname, "target_cname", "Tujuan CNAME")
        if target == fqdn:
            raise PlanError("target_cname", f"CNAME {fqdn} tidak boleh menunjuk ke dirinya sendiri")
        return [PlannedRecord(name=name, rdtype="CNAME", value=target, ttl=int(ttl))]
    rdtype, addr = _address(target_ip or hosting_ip, "target_ip" if target_ip else "hosting_ip")
    return [PlannedRecord(name=name, rdtype=rdtype, value=addr, ttl=int(ttl))]


def _plan_delegation(name: str, zone: str, nameservers: list[Any], ttl: int) -> list[PlannedRecord]:
    if len(nameservers) > MAX_NAMESERVERS:
        raise PlanError("nameservers", f"Paling banyak {MAX_NAMESERVERS} name server untuk satu delegasi")
    cut = dns.name.from_text(f"{name}.{zone}.")
    ns_records: list[PlannedRecord] = []
    glue: list[PlannedRecord] = []
    seen: set[str] = set()
    for entry in nameservers:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise PlanError("nameservers", "Setiap name server perlu nama, misalnya ns1.dinsos.trenggalekkab.go.id")
        host = _host_name(entry["name"], "nameservers", "Name server")
        if host in seen:
            raise PlanError("nameservers", f"Name server {host} tertulis lebih dari sekali")
        seen.add(host)
        host_name = dns.name.from_text(host)
        if host_name == cut:
            raise PlanError("nameservers", f"Name server tidak boleh bernama sama dengan sub domain {host}; "
                                           f"gunakan misalnya ns1.{host}")
        ns_records.append(PlannedRecord(name=name, rdtype="NS", value=host, ttl=ttl))
        if host_name.is_subdomain(cut):
            # Below the cut the parent must carry the address (glue), or nobody can reach the child's servers.
            ips = entry.get("ip") or entry.get("ips")
            if not ips:
                raise PlanError("nameservers", f"Name server {host} berada di dalam {cut} sehingga alamat IP-nya "
                                               f"(glue) wajib diisi")
            for ip in [ips] if isinstance(ips, str) else list(ips):
                rdtype, addr = _address(ip, "nameservers")
                glue.append(PlannedRecord(name=host_name.relativize(dns.name.from_text(zone)).to_text(),
                                          rdtype=rdtype, value=addr, ttl=ttl))
    return ns_records + glue


@dataclass(frozen=True)
class NameState:
    """What the primary holds at one owner name now."""

    name: str  # absolute, with the trailing dot
    status: Literal["free", "used", "below", "delegated"]
    lines: tuple[str, ...] = ()
    wildcard: bool = False  # answers seen were synthesized from a wildcard (RFC 4592): the name itself is free

    @property
    def free(self) -> bool:
        return self.status == "free"

    def describe(self) -> list[str]:
        if self.status == "free":
            return ["(nama belum dipakai; zona memiliki wildcard)" if self.wildcard else "(nama belum dipakai)"]
        if self.status == "below":
            return [f"(nama sudah dipakai: ada rekaman pada nama di bawah {self.name})"]
        head = "(nama berada di bawah delegasi yang sudah ada:)" if self.status == "delegated" else \
            "(nama sudah dipakai; rekaman yang ada tidak akan diubah:)"
        return [head, *(f"= {line}" for line in self.lines)]


def format_diff(records: Sequence[PlannedRecord], zone: str, states: Mapping[str, NameState | str]) -> str:
    """The dry-run diff for the approval mail: "+ <record>" lines, each owner name followed by its state.

    ``states`` maps absolute owner names to a `NameState` or to a text (e.g. why it could not be checked).
    """
    out: list[str] = []
    owners: list[str] = []
    for r in records:
        if r.fqdn(zone).lower() not in owners:
            owners.append(r.fqdn(zone).lower())
    for owner in owners:
        out.extend(f"+ {r.line(zone)}" for r in records if r.fqdn(zone).lower() == owner)
        state = states.get(owner)
        if isinstance(state, NameState):
            out.extend(f"  {line}" for line in state.describe())
        elif state:
            out.append(f"  ({state})")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# The guard: checked on every planned change and on every update message before it is sent


def _owner(record: PlannedRecord, origin: dns.name.Name) -> dns.name.Name:
    name = record.name.strip()
    if name in ("", "@"):
        return origin
    try:
        return dns.name.from_text(name, origin)
    except dns.exception.DNSException as exc:
        raise GuardRefused(f"pengaman DNS menolak: nama '{record.name}' tidak sah ({exc})") from exc


def _check_owner(owner: dns.name.Name, origin: dns.name.Name, reserved: frozenset[str]) -> str:
    """The top label (the one directly below the zone); refuses the apex, other zones, reserved and odd names."""
    zone = origin.to_text()
    if not owner.is_subdomain(origin):
        raise GuardRefused(f"pengaman DNS menolak: {owner} berada di luar zona {zone}")
    if owner == origin:
        raise GuardRefused(f"pengaman DNS menolak: perubahan pada puncak zona {zone} (apex: SOA, NS, dan "
                           f"rekaman lain di sana) tidak pernah dilakukan subdomaind")
    labels = [label.decode("ascii", "replace").lower() for label in owner.relativize(origin).labels]
    for label in labels:
        if not _LABEL_RE.match(label):
            raise GuardRefused(f"pengaman DNS menolak: label '{label}' pada {owner} bukan label nama host "
                               f"yang sah (huruf a-z, angka, tanda hubung; tanpa wildcard)")
    zone_labels = [label.lower() for label in origin.labels[:-1]]
    if len(labels) > len(zone_labels) and labels[-len(zone_labels):] == [z.decode("ascii") for z in zone_labels]:
        raise GuardRefused(f"pengaman DNS menolak: {owner} memuat nama zona dua kali; nama harus relatif "
                           f"terhadap zona (misalnya 'dinsos')")
    top = labels[-1]
    if top in reserved:
        raise GuardRefused(f"pengaman DNS menolak: nama '{top}' dicadangkan untuk layanan teknis zona {zone}")
    return top


Entry = tuple[dns.name.Name, dns.rdatatype.RdataType, dns.rdata.Rdata]  # (owner, rdtype, rdata)
Groups = dict[tuple[dns.name.Name, dns.rdatatype.RdataType], set[dns.rdata.Rdata]]  # (owner, rdtype) -> rdata


def _check_shape(entries: Sequence[Entry], origin: dns.name.Name, max_records: int) -> None:
    """Rules for the set of records one request adds (the server would silently drop some of them otherwise)."""
    if not entries:
        raise GuardRefused("pengaman DNS menolak: tidak ada rekaman")
    if len(entries) > max_records:
        raise GuardRefused(f"pengaman DNS menolak: {len(entries)} rekaman dalam satu permohonan, paling banyak "
                           f"{max_records}")
    if len(set(entries)) != len(entries):
        raise GuardRefused("pengaman DNS menolak: rekaman yang sama tertulis dua kali")
    tops = {owner.relativize(origin).labels[-1].lower() for owner, _, _ in entries}
    if len(tops) != 1:
        raise GuardRefused("pengaman DNS menolak: satu pembaruan hanya untuk satu sub domain, bukan "
                           + ", ".join(sorted(t.decode("ascii", "replace") for t in tops)))
    types: dict[dns.name.Name, set[dns.rdatatype.RdataType]] = {}
    for owner, rdtype, _ in entries:
        types.setdefault(owner, set()).add(rdtype)
    cuts = {owner for owner, kinds in types.items() if dns.rdatatype.NS in kinds}
    ns_targets = {rd.target for _, rdtype, rd in entries if rdtype == dns.rdatatype.NS}  # type: ignore[attr-defined]
    for owner, kinds in types.items():
        if dns.rdatatype.CNAME in kinds and len(kinds) > 1:
            # RFC 1034 section 3.6.2; RFC 2136 section 3.4.2.2 would make the server silently ignore one of them.
            raise GuardRefused(f"pengaman DNS menolak: CNAME pada {owner} tidak boleh disertai rekaman lain")
        if owner in cuts and kinds != {dns.rdatatype.NS}:
            raise GuardRefused(f"pengaman DNS menolak: titik delegasi {owner} hanya boleh berisi NS")
        below = [cut for cut in cuts if owner != cut and owner.is_subdomain(cut)]
        # Below a zone cut only glue is meaningful (RFC 1034 section 4.2.1): addresses of the NS targets.
        if below and (not kinds <= {dns.rdatatype.A, dns.rdatatype.AAAA} or owner not in ns_targets):
            raise GuardRefused(f"pengaman DNS menolak: di bawah delegasi {below[0]} hanya boleh ada glue "
                               f"(alamat name server delegasi itu), bukan {owner}")


def _entries(records: Sequence[PlannedRecord], origin: dns.name.Name, reserved: frozenset[str]) -> list[Entry]:
    out: list[Entry] = []
    for r in records:
        owner = _owner(r, origin)
        _check_owner(owner, origin, reserved)
        rdtype_text = str(r.rdtype).upper()
        if rdtype_text not in ALLOWED_TYPES:
            raise GuardRefused(f"pengaman DNS menolak: jenis rekaman {r.rdtype} pada {owner} tidak dibuat "
                               f"subdomaind (hanya {', '.join(sorted(ALLOWED_TYPES))})")
        if not TTL_MIN <= r.ttl <= TTL_MAX:
            raise GuardRefused(f"pengaman DNS menolak: TTL {r.ttl} pada {owner} di luar {TTL_MIN}-{TTL_MAX}")
        if rdtype_text in ("CNAME", "NS") and not r.value.endswith("."):
            raise GuardRefused(f"pengaman DNS menolak: tujuan {rdtype_text} '{r.value}' harus nama lengkap "
                               f"berakhiran titik")
        try:
            rdata = dns.rdata.from_text(_IN, rdtype_text, r.value, origin=origin, relativize=False)
        except (dns.exception.DNSException, ValueError) as exc:
            raise GuardRefused(f"pengaman DNS menolak: nilai '{r.value}' bukan {rdtype_text} yang sah") from exc
        out.append((owner, dns.rdatatype.from_text(rdtype_text), rdata))
    return out


def check_records(
    records: Sequence[PlannedRecord],
    *,
    zone: str,
    reserved: Iterable[str] = RESERVED_NAMES,
    max_records: int = MAX_RECORDS,
) -> list[Entry]:
    """The guard on planned records: raises `GuardRefused` for the apex, a name outside the zone, a reserved
    name, a type we never create, or a set the server would apply only in part. Sends nothing."""
    origin = dns.name.from_text(zone.rstrip(".") + ".")
    entries = _entries(list(records), origin, frozenset(n.lower() for n in reserved))
    _check_shape(entries, origin, max_records)
    return entries


def guard_update(
    update: dns.update.UpdateMessage,
    *,
    zone: str,
    reserved: Iterable[str] = RESERVED_NAMES,
    ours: Sequence[PlannedRecord] = (),
    max_records: int = MAX_RECORDS,
) -> None:
    """The guard on an RFC 2136 update message, run before every send (octoDNS-style: refuse, don't ask).

    Allowed are exactly two shapes. An ADD of records of one request, every owner name protected by the
    prerequisite "name is not in use" (RFC 2136 section 2.4.5), so nothing that exists can be replaced. Or a
    DELETE of individual RRs (class NONE, section 2.5.4) that are all in ``ours`` (the records created for the
    request), each RRset protected by "RRset exists (value dependent)" (section 2.4.2) with exactly our values.
    Deleting an RRset or a name (class ANY), the apex, other zones, reserved names: refused. An update with
    prerequisites only (a probe) changes nothing and passes.
    """
    origin = dns.name.from_text(zone.rstrip(".") + ".")
    reserved_set = frozenset(n.lower() for n in reserved)
    if not update.zone or update.zone[0].name != origin:
        raise GuardRefused(f"pengaman DNS menolak: pembaruan ditujukan ke zona lain, bukan {origin}")
    absent: set[dns.name.Name] = set()
    value_prereq: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], set[dns.rdata.Rdata]] = {}
    for rrset in update.prerequisite:
        name = rrset.name.derelativize(origin)
        if rrset.rdclass == dns.rdataclass.NONE and rrset.rdtype == dns.rdatatype.ANY:
            absent.add(name)
        elif rrset.rdclass == _IN:
            value_prereq.setdefault((name, rrset.rdtype), set()).update(rrset)
    ours_entries = set(_entries(list(ours), origin, reserved_set)) if ours else set()
    ours_groups: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], set[dns.rdata.Rdata]] = {}
    for owner, rdtype, rd in ours_entries:
        ours_groups.setdefault((owner, rdtype), set()).add(rd)
    adds: list[Entry] = []
    deletes = 0
    for rrset in update.update:
        owner = rrset.name.derelativize(origin)
        _check_owner(owner, origin, reserved_set)
        type_text = dns.rdatatype.to_text(rrset.rdtype)
        if rrset.deleting is None and rrset.rdclass == _IN:
            if type_text not in ALLOWED_TYPES:
                raise GuardRefused(f"pengaman DNS menolak: jenis rekaman {type_text} pada {owner} tidak dibuat "
                                   f"subdomaind")
            if owner not in absent:
                raise GuardRefused(f"pengaman DNS menolak: menambah {type_text} pada {owner} tanpa prasyarat "
                                   f"'nama belum dipakai' (RFC 2136) dapat mengganti rekaman yang sudah ada")
            if not TTL_MIN <= rrset.ttl <= TTL_MAX:
                raise GuardRefused(f"pengaman DNS menolak: TTL {rrset.ttl} pada {owner} di luar batas")
            adds.extend((owner, rrset.rdtype, rd) for rd in rrset)
        elif rrset.deleting == dns.rdataclass.NONE:
            for rd in rrset:
                if (owner, rrset.rdtype, rd) not in ours_entries:
                    raise GuardRefused(f"pengaman DNS menolak: menghapus {owner} {type_text} {rd} yang tidak "
                                       f"dibuat untuk permohonan ini")
            if value_prereq.get((owner, rrset.rdtype)) != ours_groups.get((owner, rrset.rdtype)):
                raise GuardRefused(f"pengaman DNS menolak: menghapus {owner} {type_text} tanpa prasyarat bahwa "
                                   f"rekaman itu masih berisi nilai yang kita tulis (RFC 2136 bagian 2.4.2)")
            deletes += len(rrset)
        else:
            raise GuardRefused(f"pengaman DNS menolak: menghapus seluruh {type_text if rrset.rdtype else ''} "
                               f"pada {owner} (juga rekaman milik pihak lain) tidak pernah dilakukan subdomaind")
    if adds and deletes:
        raise GuardRefused("pengaman DNS menolak: menambah dan menghapus dalam satu pembaruan")
    if adds:
        _check_shape(adds, origin, max_records)
    if deletes > max_records:
        raise GuardRefused(f"pengaman DNS menolak: {deletes} rekaman dihapus sekaligus, paling banyak {max_records}")


# ----------------------------------------------------------------------------------------------------
# Backends


class DnsBackend(Protocol):
    """The first contract (one record at a time); `GuardedDnsBackend` is the one the engine should use."""

    zone: str

    def existing(self, name: str, /) -> list[str]: ...
    def add(self, record: PlannedRecord, /) -> None: ...
    def remove(self, record: PlannedRecord, /) -> object: ...
    def serving(self, record: PlannedRecord, /) -> dict[str, bool]: ...
    def name_servers(self) -> list[str]: ...


class GuardedDnsBackend(DnsBackend, Protocol):
    """All records of a request at once: dry-run diff, atomic apply, exact remove, verification everywhere."""

    def diff_text(self, records: Sequence[PlannedRecord], /) -> str: ...
    def apply(self, records: Sequence[PlannedRecord], /) -> None: ...
    def holds(self, records: Sequence[PlannedRecord], /) -> bool: ...
    def remove(self, records: PlannedRecord | Sequence[PlannedRecord], /) -> list[PlannedRecord]: ...
    def serving(self, records: PlannedRecord | Sequence[PlannedRecord], /) -> dict[str, bool]: ...
    def wait_served(self, records: PlannedRecord | Sequence[PlannedRecord], timeout: float, /) -> dict[str, bool]: ...


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
                if rrset.name == owner and rrset.rdtype == rdtype and rrset.rdclass == _IN:
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
        recs = _as_list(records)
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
        for owner, rdtype, rd in _entries(list(records), self.origin, self.reserved):
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
        recs = _as_list(records)
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
            _as_list(records)).items())

    def remove(self, records: PlannedRecord | Sequence[PlannedRecord]) -> list[PlannedRecord]:
        """Delete exactly these records (those of one request) in one update; returns those removed.

        Each RRset must hold exactly our values (RFC 2136 section 2.4.2 "RRset exists (value dependent)"), then
        only our RRs are deleted (section 2.5.4); records of other types at the same name stay. An RRset that
        is already gone is skipped; one that someone changed stops everything (`RecordsChanged`, nothing
        removed) so staff decide.
        """
        recs = _as_list(records)
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
        return [r for r in recs if (_owner(r, self.origin), dns.rdatatype.from_text(r.rdtype.upper())) in done]

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
        groups = self._groups(_as_list(records))
        return {ep.label: ok for ep, ok in self._serve_pass(self.verify_endpoints(), groups, self.timeout).items()}

    def wait_served(self, records: PlannedRecord | Sequence[PlannedRecord], timeout: float) -> dict[str, bool]:
        """Ask every authoritative server (UDP without RD, TCP on truncation) until each serves every record,
        for at most ``timeout`` seconds; {server label: served}. A server that is not serving at the end is
        lagging or down: the records stay, the caller alerts staff (see the module docstring)."""
        groups = self._groups(_as_list(records))
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

    def __init__(self, argv: list[str], *, secret_via: str = "stdin", timeout: float = 60.0) -> None:  # noqa: S107
        self.argv = argv
        self.secret_via = secret_via
        self.timeout = timeout

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str:
        values = {"username": username, "fqdn": fqdn, "ip": ip, "subdomain": subdomain}
        # Substitution per argument: a value can never split into more arguments or reach a shell.
        try:
            argv = [arg.format(**values) for arg in self.argv]
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise HostingError(f"templat argv perintah akun hosting salah ({type(exc).__name__}: {exc}); "
                               f"yang dikenal: {{username}} {{fqdn}} {{ip}} {{subdomain}}") from exc
        # A minimal environment: the daemon's own (CREDENTIALS_DIRECTORY with the IMAP, SMTP and TSIG
        # secrets among it) is none of the panel command's business.
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME") if k in os.environ}
        stdin = None
        if self.secret_via == "env":
            env["SUBDOMAIND_PASSWORD"] = password
        else:
            stdin = password + "\n"
        try:
            # Its own process group: on timeout the whole group is killed, so a child the script started
            # cannot keep our pipes open and hang us past the timeout.
            proc_ = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, shell=False, start_new_session=True)
        except OSError as exc:
            raise HostingError(f"perintah akun hosting tidak dapat dijalankan: {exc.strerror}") from exc
        try:
            stdout, stderr = proc_.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc_.pid, signal.SIGKILL)
            proc_.communicate()
            raise HostingError(f"perintah akun hosting melewati batas waktu {self.timeout:.0f} detik dan "
                               f"dihentikan") from exc
        proc = subprocess.CompletedProcess(argv, proc_.returncode, stdout, stderr)
        out = (proc.stdout + proc.stderr).replace(password, "********")[-2000:]
        if proc.returncode != 0:
            raise HostingError(f"perintah akun hosting gagal (kode {proc.returncode}): {out.strip()}")
        return out.strip()
