"""The records of one approved request and the guard on them: plan, validate, refuse before anything is sent.

Why its own module: the plan and the guard are pure rules (no sockets), checked on every change by the RFC 2136
client (workflows/dnsupdate.py) and read by the engine; keeping them apart keeps the rules short to audit.

* `plan_records` turns a request into `PlannedRecord`s (A/AAAA, CNAME, or an NS delegation with glue) and
  validates every name and value;
* the guard (`check_records`, `guard_update`) refuses, before any packet leaves, a change that touches the zone
  apex, a name outside the zone, a reserved name, or that could delete or replace a record not created for
  the request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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

from subdomaind.parsers.model import ParseOptions
from subdomaind.parsers.normalize import normalize_ip

#: The record types the daemon ever creates. The BIND update-policy grants the key A AAAA CNAME NS TXT
#: (tests/devkit/devservers.py UPDATE_POLICY_TEMPLATE); the guard is narrower still.
ALLOWED_TYPES = frozenset({"A", "AAAA", "CNAME", "NS"})
#: Labels directly below the zone that are never given out (the parser's list: www, mail, ns1, ...).
RESERVED_NAMES: frozenset[str] = ParseOptions().reserved_names
#: The most records one request may add (an NS delegation of MAX_NAMESERVERS names, each with glue).
MAX_RECORDS = 24
MAX_NAMESERVERS = 8
TTL_MIN, TTL_MAX = 60, 604800
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")  # RFC 1035 section 2.3.1 / RFC 1123 host labels
CLASS_IN = dns.rdataclass.IN


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


def as_list(records: PlannedRecord | Sequence[PlannedRecord]) -> list[PlannedRecord]:
    """One record or several, as a list (the backends accept both)."""
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


def owner_name(record: PlannedRecord, origin: dns.name.Name) -> dns.name.Name:
    """The record's absolute owner name; refused (`GuardRefused`) when it is not a valid name."""
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


def record_entries(records: Sequence[PlannedRecord], origin: dns.name.Name, reserved: frozenset[str]) -> list[Entry]:
    """Each record as (owner, rdtype, rdata), every one checked by the guard's per-record rules."""
    out: list[Entry] = []
    for r in records:
        owner = owner_name(r, origin)
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
            rdata = dns.rdata.from_text(CLASS_IN, rdtype_text, r.value, origin=origin, relativize=False)
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
    entries = record_entries(list(records), origin, frozenset(n.lower() for n in reserved))
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
        elif rrset.rdclass == CLASS_IN:
            value_prereq.setdefault((name, rrset.rdtype), set()).update(rrset)
    ours_entries = set(record_entries(list(ours), origin, reserved_set)) if ours else set()
    ours_groups: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], set[dns.rdata.Rdata]] = {}
    for owner, rdtype, rd in ours_entries:
        ours_groups.setdefault((owner, rdtype), set()).add(rd)
    adds: list[Entry] = []
    deletes = 0
    for rrset in update.update:
        owner = rrset.name.derelativize(origin)
        _check_owner(owner, origin, reserved_set)
        type_text = dns.rdatatype.to_text(rrset.rdtype)
        if rrset.deleting is None and rrset.rdclass == CLASS_IN:
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
