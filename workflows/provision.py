"""Provision an approved sub-domain: the contracts the engine holds, and every provisioning name in one place.

Why this module: the engine, the service and the tests take provisioning from here, while the work is split by
job so each part stays short to read:

* workflows/dnsplan.py: the records of one request (`plan_records`, `PlannedRecord`) and the guard
  (`check_records`, `guard_update`), pure rules that refuse a change touching the zone apex, a name outside
  the zone, a reserved name, or anything not created for the request;
* workflows/dnsupdate.py: `Rfc2136Dns`, the RFC 2136 client (one TSIG-signed update, all or nothing; exact
  removal; verification on every authoritative server); rollback rules in docs/DNS.md;
* workflows/hosting.py: the hosting backends (`NoHosting`, `CommandHosting`) and the account's credentials
  (`generate_password`, `make_username`).

`DnsBackend` and `GuardedDnsBackend` are the DNS contracts the engine receives; `HostingBackend` is the hosting one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from subdomaind.workflows.dnsplan import (
    ALLOWED_TYPES,
    CLASS_IN,
    MAX_NAMESERVERS,
    MAX_RECORDS,
    RESERVED_NAMES,
    TTL_MAX,
    TTL_MIN,
    DnsError,
    DnsStateUnknown,
    Entry,
    Groups,
    GuardRefused,
    NameInUse,
    NameState,
    PlanError,
    PlannedRecord,
    RecordsChanged,
    RolledBack,
    as_list,
    check_records,
    format_diff,
    guard_update,
    owner_name,
    plan_records,
    record_entries,
    records_from_json,
    records_to_json,
)

# `_split_hostport` too: daemon/validate.py checks the configured server specs with the client's own parser.
from subdomaind.workflows.dnsupdate import Endpoint, Rfc2136Dns, _split_hostport
from subdomaind.workflows.hosting import (
    PASSWORD_ALPHABET,
    PASSWORD_LENGTH,
    CommandHosting,
    HostingBackend,
    HostingError,
    NoHosting,
    generate_password,
    make_username,
)

__all__ = [
    "ALLOWED_TYPES", "CLASS_IN", "MAX_NAMESERVERS", "MAX_RECORDS", "PASSWORD_ALPHABET", "PASSWORD_LENGTH",
    "RESERVED_NAMES", "TTL_MAX", "TTL_MIN", "CommandHosting", "DnsBackend", "DnsError", "DnsStateUnknown",
    "Endpoint", "Entry", "Groups", "GuardRefused", "GuardedDnsBackend", "HostingBackend", "HostingError",
    "NameInUse", "NameState", "NoHosting", "PlanError", "PlannedRecord", "RecordsChanged", "RolledBack",
    "Rfc2136Dns", "_split_hostport", "as_list", "check_records", "format_diff", "generate_password",
    "guard_update", "make_username", "owner_name", "plan_records", "record_entries", "records_from_json",
    "records_to_json",
]


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
