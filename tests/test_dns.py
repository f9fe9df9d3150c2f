"""Safe DNS provisioning (`workflows/provision.py`) against real BIND: the session `bind` primary with the
documented update-policy (`tests/devkit/devservers.py` UPDATE_POLICY_TEMPLATE) and its `bind_secondary`.

Every check goes through real DNS queries. The zone's NS names point at 192.0.2.x, so every backend here is
given `primary` and `verify_servers` on 127.0.0.1, except the discovery test, which runs its own zone whose
NS names point at 127.0.0.1; an autouse guard fails any test that sends a packet anywhere else.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.query
import dns.rcode
import dns.update
import pytest

from subdomaind.workflows.provision import (
    DnsError,
    DnsStateUnknown,
    GuardRefused,
    NameInUse,
    PlanError,
    PlannedRecord,
    RecordsChanged,
    Rfc2136Dns,
    RolledBack,
    check_records,
    guard_update,
    plan_records,
    records_from_json,
    records_to_json,
)
from tests.devkit.devservers import Bind, free_port

pytestmark = pytest.mark.servers

ZONE = "trenggalekkab.go.id"
HOSTING_IP = "203.0.113.10"


def unique(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def backend(bind: Bind, *others: Bind, secret: str | None = None, key_name: str | None = None,
            **kw: Any) -> Rfc2136Dns:
    verify = [f"{bind.host}:{bind.port}", *(f"{o.host}:{o.port}" for o in others)]
    return Rfc2136Dns(zone=ZONE, primary=bind.host, port=bind.port, key_name=key_name or bind.key_name,
                      secret=secret or bind.secret, verify_servers=verify, timeout=2.0, **kw)


def a_record(label: str, ip: str = HOSTING_IP, ttl: int = 3600) -> PlannedRecord:
    return PlannedRecord(name=label, rdtype="A", value=ip, ttl=ttl)


def delegation(label: str, ttl: int = 3600) -> list[PlannedRecord]:
    return plan_records(label=label, zone=ZONE, hosting_ip=HOSTING_IP, ttl=ttl, fields={"nameservers": [
        {"name": f"ns1.{label}.{ZONE}", "ip": "203.0.113.20"},
        {"name": "ns2.example.net", "ip": "198.51.100.99"},  # out of the zone: no glue
    ]})


# The real server's own view, with the harness's key: "someone else" (staff at the console, another tool).
_real_tcp = dns.query.tcp


def other_operator(bind: Bind, build: Callable[[dns.update.UpdateMessage], object]) -> str:
    msg = dns.update.UpdateMessage(ZONE, keyring=bind.keyring)
    build(msg)
    return dns.rcode.to_text(_real_tcp(msg, bind.host, port=bind.port, timeout=5).rcode())


def rcode_of(bind: Bind, name: str, rdtype: str = "A") -> str:
    return dns.rcode.to_text(bind.query(name, rdtype, tcp=True).rcode())


def is_our_update(q: dns.message.Message) -> bool:
    """An update that changes something (not a prerequisite-only probe)."""
    return isinstance(q, dns.update.UpdateMessage) and bool(q.update)


def is_our_add(q: dns.message.Message) -> bool:
    return isinstance(q, dns.update.UpdateMessage) and bool(q.update) and q.update[0].deleting is None


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything here sends a packet to an address other than 127.0.0.1."""

    def checked(original: Callable[..., Any], pos: int) -> Callable[..., Any]:
        def wrapper(sock: socket.socket, *args: Any) -> Any:
            address = args[pos]
            if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
                raise AssertionError(f"packet to {address} (only 127.0.0.1 is allowed)")
            return original(sock, *args)

        return wrapper

    monkeypatch.setattr(socket.socket, "connect", checked(socket.socket.connect, 0))
    monkeypatch.setattr(socket.socket, "connect_ex", checked(socket.socket.connect_ex, 0))
    monkeypatch.setattr(socket.socket, "sendto", checked(socket.socket.sendto, -1))


@contextlib.contextmanager
def no_packets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside the block, any attempt to send a packet fails the test (the guard must act before sending)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a packet was about to be sent")

    with monkeypatch.context() as m:
        for name in ("connect", "connect_ex", "sendto", "send", "sendall"):
            m.setattr(socket.socket, name, refuse)
        m.setattr(socket, "getaddrinfo", refuse)
        yield


# ----------------------------------------------------------------------------------------------------
# plan_records (no server)


def test_plan_each_kind() -> None:
    plan = plan_records(label="Dinsos", zone=ZONE, fields={}, hosting_ip=HOSTING_IP, ttl=3600)
    assert plan == [PlannedRecord("dinsos", "A", HOSTING_IP, 3600)]
    plan = plan_records(label="dinsos", zone=ZONE, fields={"target_ip": "2001:db8::10"}, hosting_ip=HOSTING_IP,
                        ttl=600)
    assert plan == [PlannedRecord("dinsos", "AAAA", "2001:db8::10", 600)]
    plan = plan_records(label="dinsos", zone=ZONE, fields={"target_cname": "Web.Example.NET."},
                        hosting_ip=HOSTING_IP, ttl=3600)
    assert plan == [PlannedRecord("dinsos", "CNAME", "web.example.net.", 3600)]
    plan = delegation("dinsos")
    assert plan == [
        PlannedRecord("dinsos", "NS", f"ns1.dinsos.{ZONE}.", 3600),
        PlannedRecord("dinsos", "NS", "ns2.example.net.", 3600),
        PlannedRecord("ns1.dinsos", "A", "203.0.113.20", 3600),
    ]
    # A name server elsewhere in the zone needs no glue (its address is ordinary zone data).
    plan = plan_records(label="dinsos", zone=ZONE, hosting_ip=HOSTING_IP, ttl=3600,
                        fields={"nameservers": [f"ns1.{ZONE}", {"name": "ns.dinsos." + ZONE, "ip": "2001:db8::53"}]})
    assert [r.line(ZONE) for r in plan] == [
        f"dinsos.{ZONE}. 3600 IN NS ns1.{ZONE}.",
        f"dinsos.{ZONE}. 3600 IN NS ns.dinsos.{ZONE}.",
        f"ns.dinsos.{ZONE}. 3600 IN AAAA 2001:db8::53",
    ]
    assert records_from_json(records_to_json(plan)) == plan
    assert records_from_json({"name": "x", "rdtype": "A", "value": HOSTING_IP, "ttl": 3600}) == [a_record("x")]
    for records in (plan, [a_record("dinsos")]):
        check_records(records, zone=ZONE)


@pytest.mark.parametrize(
    ("label", "fields", "field", "words"),
    [
        ("", {}, "subdomain", "apex"),
        ("@", {}, "subdomain", "apex"),
        ("dinsos.kominfo", {}, "subdomain", "satu label"),
        ("-dinsos", {}, "subdomain", "tidak sah"),
        ("din_sos", {}, "subdomain", "tidak sah"),
        ("www", {}, "subdomain", "dicadangkan"),
        ("ns1", {}, "subdomain", "dicadangkan"),
        ("dinsos", {"target_ip": "10.1.2.3"}, "target_ip", "privat"),
        ("dinsos", {"target_ip": "127.0.0.1"}, "target_ip", "loopback"),
        ("dinsos", {"target_ip": "bukan-ip"}, "target_ip", "tidak sah"),
        ("dinsos", {"target_ip": HOSTING_IP, "target_cname": "web.example.net"}, "target_cname", "bersamaan"),
        ("dinsos", {"target_cname": "localhost"}, "target_cname", "nama host lengkap"),
        ("dinsos", {"target_cname": f"dinsos.{ZONE}"}, "target_cname", "dirinya sendiri"),
        ("dinsos", {"nameservers": [{"name": f"ns1.dinsos.{ZONE}"}]}, "nameservers", "glue"),
        ("dinsos", {"nameservers": [{"name": f"dinsos.{ZONE}", "ip": "203.0.113.20"}]}, "nameservers", "sama"),
        ("dinsos", {"nameservers": ["ns1.example.net", "ns1.example.net."]}, "nameservers", "lebih dari sekali"),
        ("dinsos", {"nameservers": ["ns1.example.net"], "target_ip": HOSTING_IP}, "nameservers", "salah satu"),
        ("dinsos", {"nameservers": [{"ip": "203.0.113.20"}]}, "nameservers", "perlu nama"),
    ],
)
def test_plan_refuses_bad_requests(label: str, fields: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(PlanError) as info:
        plan_records(label=label, zone=ZONE, fields=fields, hosting_ip=HOSTING_IP, ttl=3600)
    assert info.value.field == field
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Each record kind, applied in one update and served by every authoritative server


@pytest.mark.parametrize(
    ("fields", "rdtype", "value"),
    [
        ({}, "A", HOSTING_IP),
        ({"target_ip": "2001:db8::10"}, "AAAA", "2001:db8::10"),
        ({"target_cname": "web.example.net"}, "CNAME", "web.example.net."),
    ],
)
def test_each_record_kind_is_applied_and_served_everywhere(
    bind: Bind, bind_secondary: Bind, fields: dict[str, Any], rdtype: str, value: str
) -> None:
    label = unique()
    dns_ = backend(bind, bind_secondary)
    plan = plan_records(label=label, zone=ZONE, fields=fields, hosting_ip=HOSTING_IP, ttl=3600)
    assert dns_.diff_text(plan) == f"+ {label}.{ZONE}. 3600 IN {rdtype} {value}\n  (nama belum dipakai)"
    serial = bind.serial()
    dns_.apply(plan)
    assert bind.serial() == serial + 1  # one update for the whole request
    state = dns_.wait_served(plan, timeout=5)
    assert state == {f"127.0.0.1:{bind.port}": True, f"127.0.0.1:{bind_secondary.port}": True}
    for server in (bind, bind_secondary):
        assert server.addresses(label, rdtype) == [value]
    assert dns_.holds(plan)
    assert dns_.existing(label) == [f"{label}.{ZONE}. 3600 IN {rdtype} {value}"]
    diff = dns_.diff_text(plan)
    assert "(nama sudah dipakai; rekaman yang ada tidak akan diubah:)" in diff
    assert f"= {label}.{ZONE}. 3600 IN {rdtype} {value}" in diff


def test_ns_delegation_with_glue_is_served_as_a_referral(bind: Bind, bind_secondary: Bind) -> None:
    label = unique("unit")
    dns_ = backend(bind, bind_secondary)
    plan = delegation(label)
    assert dns_.diff_text(plan).splitlines() == [
        f"+ {label}.{ZONE}. 3600 IN NS ns1.{label}.{ZONE}.",
        f"+ {label}.{ZONE}. 3600 IN NS ns2.example.net.",
        "  (nama belum dipakai)",
        f"+ ns1.{label}.{ZONE}. 3600 IN A 203.0.113.20",
        "  (nama belum dipakai)",
    ]
    serial = bind.serial()
    dns_.apply(plan)
    assert bind.serial() == serial + 1
    assert all(dns_.wait_served(plan, timeout=5).values())
    for server in (bind, bind_secondary):
        referral = server.query(f"www.{label}", "A")
        assert referral.rcode() == dns.rcode.NOERROR and not referral.answer
        assert not referral.flags & dns.flags.AA  # the parent hands the name off (RFC 1034 4.3.2)
        ns = {rd.to_text() for rrset in referral.authority for rd in rrset}
        assert ns == {f"ns1.{label}.{ZONE}.", "ns2.example.net."}
        glue = {(rrset.name.to_text(), rd.to_text()) for rrset in referral.additional for rd in rrset}
        assert glue == {(f"ns1.{label}.{ZONE}.", "203.0.113.20")}
    assert dns_.holds(plan)
    # A second request can no longer take the name or anything below it.
    with pytest.raises(NameInUse):
        dns_.apply([a_record(label)])


def test_legacy_single_record_calls_still_work(bind: Bind) -> None:
    label = unique()
    dns_ = backend(bind)
    record = a_record(label, "203.0.113.11")
    dns_.add(record)
    assert dns_.serving(record) == {f"127.0.0.1:{bind.port}": True}
    assert dns_.wait_served(record, 2) == {f"127.0.0.1:{bind.port}": True}
    assert dns_.name_servers() == [f"ns1.{ZONE}", f"ns2.{ZONE}"]
    assert dns_.remove(record) == [record]
    assert rcode_of(bind, label) == "NXDOMAIN"


# ----------------------------------------------------------------------------------------------------
# Nothing that exists is ever replaced


def test_occupied_name_is_refused_and_left_alone(bind: Bind) -> None:
    label = unique()
    dns_ = backend(bind)
    dns_.apply([a_record(label, "203.0.113.11")])
    serial = bind.serial()
    with pytest.raises(NameInUse) as info:
        dns_.apply([a_record(label, "203.0.113.12")])
    assert info.value.existing == {f"{label}.{ZONE}.": [f"{label}.{ZONE}. 3600 IN A 203.0.113.11"]}
    with pytest.raises(NameInUse):
        dns_.apply([PlannedRecord(label, "CNAME", "web.example.net.", 3600)])
    assert bind.addresses(label) == ["203.0.113.11"]
    assert bind.serial() == serial

    # `www` exists in the zone; even with the reserved list emptied, the name check refuses it.
    unguarded = backend(bind, reserved=())
    with pytest.raises(NameInUse) as info:
        unguarded.apply([a_record("www", "203.0.113.99")])
    assert info.value.existing[f"www.{ZONE}."] == [f"www.{ZONE}. 300 IN A 203.0.113.5"]
    assert bind.addresses("www") == ["203.0.113.5"]

    # A name with records below it (an empty non-terminal) is taken too.
    parent = unique()
    assert other_operator(bind, lambda u: u.add(f"app.{parent}", 300, "A", "203.0.113.13")) == "NOERROR"
    serial = bind.serial()
    with pytest.raises(NameInUse, match="di bawah"):
        dns_.apply(delegation(parent))
    assert bind.addresses(f"app.{parent}") == ["203.0.113.13"]
    assert rcode_of(bind, parent, "NS") == "NOERROR" and not bind.query(parent, "NS").answer
    assert bind.serial() == serial


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ([a_record("@")], "puncak zona"),
        ([a_record("")], "puncak zona"),
        ([PlannedRecord("@", "NS", "ns.evil.example.", 3600)], "puncak zona"),
        ([a_record("dinsos.example.com.")], "di luar zona"),
        ([a_record("trenggalekkab.go.id.evil.example.")], "di luar zona"),
        ([a_record(f"dinsos.{ZONE}")], "dua kali"),
        ([a_record("www")], "dicadangkan"),
        ([a_record("mail")], "dicadangkan"),
        ([a_record("x.ns1")], "dicadangkan"),
        ([a_record("*.dinsos")], "wildcard"),
        ([a_record("_dmarc")], "bukan label"),
        ([PlannedRecord("dinsos", "MX", f"10 mail.{ZONE}.", 3600)], "MX"),
        ([PlannedRecord("dinsos", "TXT", '"x"', 3600)], "TXT"),
        ([PlannedRecord("dinsos", "CNAME", "www", 3600)], "berakhiran titik"),
        ([a_record("dinsos"), PlannedRecord("dinsos", "CNAME", "web.example.net.", 3600)], "CNAME"),
        ([a_record("dinsos"), a_record("dinkes")], "satu sub domain"),
        ([a_record("dinsos", ttl=5)], "TTL"),
        ([a_record("dinsos", ip="999.1.1.1")], "bukan A yang sah"),
        ([PlannedRecord("dinsos", "NS", "ns1.example.net.", 3600), a_record("dinsos")], "delegasi"),
        ([PlannedRecord("dinsos", "NS", "ns1.example.net.", 3600), a_record("app.dinsos")], "glue"),
        ([], "tidak ada rekaman"),
    ],
)
def test_guard_refuses_before_any_packet(
    bind: Bind, monkeypatch: pytest.MonkeyPatch, records: list[PlannedRecord], words: str
) -> None:
    serial = bind.serial()
    for dns_ in (backend(bind),
                 # nothing configured: even server discovery would send packets, so the guard must come first
                 Rfc2136Dns(zone=ZONE, key_name=bind.key_name, secret=bind.secret)):
        with no_packets(monkeypatch):
            for call in (dns_.apply, dns_.remove) if records else (dns_.apply,):
                with pytest.raises(GuardRefused) as info:
                    call(records)
                assert words in str(info.value)
                assert str(info.value).startswith("pengaman DNS menolak")
            assert "DITOLAK" in dns_.diff_text(records)
    assert bind.serial() == serial
    assert bind.addresses("www") == ["203.0.113.5"]
    assert bind.addresses("@", "NS") == [f"ns1.{ZONE}.", f"ns2.{ZONE}."]


def _replace_www(u: dns.update.UpdateMessage) -> None:
    u.replace("www", 300, "A", "203.0.113.99")


def _add_www_unprotected(u: dns.update.UpdateMessage) -> None:
    u.add("www", 300, "A", "203.0.113.99")


def _add_protected_by_wrong_name(u: dns.update.UpdateMessage) -> None:
    u.absent("other")
    u.add("www", 300, "A", "203.0.113.99")


def _delete_name(u: dns.update.UpdateMessage) -> None:
    u.delete("www")


def _delete_rrset(u: dns.update.UpdateMessage) -> None:
    u.delete("www", "A")


def _delete_one_rr_not_ours(u: dns.update.UpdateMessage) -> None:
    u.present("www", "A", "203.0.113.5")
    u.delete("www", "A", "203.0.113.5")


def _delete_ours_without_value_prerequisite(u: dns.update.UpdateMessage) -> None:
    u.delete("dinsos", "A", HOSTING_IP)


def _add_and_delete(u: dns.update.UpdateMessage) -> None:
    u.present("dinsos", "A", HOSTING_IP)
    u.delete("dinsos", "A", HOSTING_IP)
    u.absent("dinkes")
    u.add("dinkes", 300, "A", HOSTING_IP)


def _apex_ns(u: dns.update.UpdateMessage) -> None:
    u.absent("@")
    u.add("@", 300, "NS", "ns.evil.example.")


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (_replace_www, "menghapus seluruh"),
        (_add_www_unprotected, "tanpa prasyarat"),
        (_add_protected_by_wrong_name, "tanpa prasyarat"),
        (_delete_name, "menghapus seluruh"),
        (_delete_rrset, "menghapus seluruh"),
        (_delete_one_rr_not_ours, "tidak dibuat untuk permohonan ini"),
        (_delete_ours_without_value_prerequisite, "tanpa prasyarat"),
        (_add_and_delete, "menambah dan menghapus"),
        (_apex_ns, "puncak zona"),
    ],
)
def test_guard_refuses_updates_that_could_replace_or_delete(
    bind: Bind, monkeypatch: pytest.MonkeyPatch, build: Callable[[dns.update.UpdateMessage], None], words: str
) -> None:
    dns_ = backend(bind, reserved=())  # the reserved list is not what stops these
    update = dns.update.UpdateMessage(ZONE, keyring=bind.keyring)
    build(update)
    serial = bind.serial()
    with no_packets(monkeypatch), pytest.raises(GuardRefused, match=words):
        dns_.send_update(update, ours=[a_record("dinsos")])
    assert bind.serial() == serial
    assert bind.addresses("www") == ["203.0.113.5"]


def test_guard_refuses_an_update_for_another_zone() -> None:
    update = dns.update.UpdateMessage("example.com")
    update.absent("x")
    update.add("x", 300, "A", HOSTING_IP)
    with pytest.raises(GuardRefused, match="zona lain"):
        guard_update(update, zone=ZONE)


# ----------------------------------------------------------------------------------------------------
# Verification and lag


def test_lagging_secondary_is_reported_within_the_bound_and_the_record_kept(
    bind: Bind, bind_secondary: Bind
) -> None:
    label = unique("lag")
    dns_ = backend(bind, bind_secondary)
    plan = [a_record(label)]
    primary, secondary = f"127.0.0.1:{bind.port}", f"127.0.0.1:{bind_secondary.port}"
    with bind_secondary.frozen_secondary():
        dns_.apply(plan)
        started = time.monotonic()
        state = dns_.wait_served(plan, timeout=1.5)
        elapsed = time.monotonic() - started
        assert state == {primary: True, secondary: False}
        assert 1.4 <= elapsed < 4.0  # bounded: waited for the lagging server, then gave up
        assert bind.addresses(label) == [HOSTING_IP]  # kept: the engine alerts staff and waits at a check step
        assert bind_secondary.addresses(label) == []
    assert dns_.wait_served(plan, timeout=5) == {primary: True, secondary: True}


def test_dead_servers_are_reported_not_raised_within_the_bound(bind: Bind, bind_secondary: Bind) -> None:
    label = unique()
    dead = [free_port(udp_too=True) for _ in range(3)]
    dns_ = Rfc2136Dns(zone=ZONE, primary=bind.host, port=bind.port, key_name=bind.key_name, secret=bind.secret,
                      verify_servers=[f"127.0.0.1:{p}" for p in (bind.port, bind_secondary.port, *dead)], timeout=2.0)
    dns_.apply([a_record(label)])
    bind_secondary.stop()
    started = time.monotonic()
    state = dns_.wait_served([a_record(label)], timeout=1.0)
    assert time.monotonic() - started < 2.0  # the servers are asked in parallel: 4 dead ones cost one timeout
    assert state == {f"127.0.0.1:{bind.port}": True, f"127.0.0.1:{bind_secondary.port}": False,
                     **{f"127.0.0.1:{p}": False for p in dead}}


# ----------------------------------------------------------------------------------------------------
# A failed, uncertain or partial update leaves nothing


def test_second_half_refused_leaves_nothing(bind: Bind, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone takes the glue name between our dry run and our update: the server checks the prerequisites of
    the whole update first (RFC 2136 3.2), so the NS half is not applied either."""
    label = unique("unit")
    dns_ = backend(bind)

    def racing_tcp(q: dns.message.Message, where: str, **kw: Any) -> dns.message.Message:
        if is_our_update(q):
            assert other_operator(bind, lambda u: u.add(f"ns1.{label}", 300, "A", "198.51.100.7")) == "NOERROR"
        return _real_tcp(q, where, **kw)

    monkeypatch.setattr(dns.query, "tcp", racing_tcp)
    with pytest.raises(NameInUse) as info:
        dns_.apply(delegation(label))
    monkeypatch.undo()
    assert f"ns1.{label}.{ZONE}." in info.value.existing
    assert bind.addresses(f"ns1.{label}") == ["198.51.100.7"]  # theirs, not our 203.0.113.20
    assert rcode_of(bind, label, "NS") == "NOERROR" and bind.addresses(label, "NS") == []  # only a name below
    assert bind.query(f"www.{label}", "A").rcode() == dns.rcode.NXDOMAIN  # no delegation: no referral


def test_uncertain_update_is_rolled_back(bind: Bind, monkeypatch: pytest.MonkeyPatch) -> None:
    """The update reached the server but the answer was lost: apply removes what landed."""
    label = unique("unit")
    dns_ = backend(bind)

    def lost_answer(q: dns.message.Message, where: str, **kw: Any) -> dns.message.Message:
        response = _real_tcp(q, where, **kw)
        if is_our_add(q):
            assert response.rcode() == dns.rcode.NOERROR
            raise dns.exception.Timeout
        return response

    monkeypatch.setattr(dns.query, "tcp", lost_answer)
    with pytest.raises(RolledBack, match="sudah dibatalkan"):
        dns_.apply(delegation(label))
    monkeypatch.undo()
    assert rcode_of(bind, label, "NS") == "NXDOMAIN"
    assert rcode_of(bind, f"ns1.{label}") == "NXDOMAIN"


def test_partial_update_is_rolled_back(bind: Bind, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server said NOERROR but does not serve all of it (RFC 2136 3.4.2.2 lets it drop additions
    silently; here someone deletes the glue right away): the rest is removed again."""
    label = unique("unit")
    dns_ = backend(bind)

    def partial(q: dns.message.Message, where: str, **kw: Any) -> dns.message.Message:
        response = _real_tcp(q, where, **kw)
        if is_our_add(q):
            assert other_operator(bind, lambda u: u.delete(f"ns1.{label}", "A")) == "NOERROR"
        return response

    monkeypatch.setattr(dns.query, "tcp", partial)
    with pytest.raises(RolledBack, match="hanya sebagian"):
        dns_.apply(delegation(label))
    monkeypatch.undo()
    assert rcode_of(bind, label, "NS") == "NXDOMAIN"
    assert rcode_of(bind, f"ns1.{label}") == "NXDOMAIN"


def test_failed_rollback_reports_the_records_to_check(bind: Bind, monkeypatch: pytest.MonkeyPatch) -> None:
    label = unique()
    dns_ = backend(bind)

    def answer_lost_then_server_gone(q: dns.message.Message, where: str, **kw: Any) -> dns.message.Message:
        response = _real_tcp(q, where, **kw)
        if is_our_update(q):
            bind.stop()
            raise dns.exception.Timeout
        return response

    monkeypatch.setattr(dns.query, "tcp", answer_lost_then_server_gone)
    with pytest.raises(DnsStateUnknown, match="periksa zona secara manual") as info:
        dns_.apply([a_record(label)])
    monkeypatch.undo()
    assert info.value.records == [a_record(label)]
    bind.start()
    assert bind.addresses(label) == [HOSTING_IP]  # it had landed: the report was right to ask for a check
    assert dns_.remove([a_record(label)]) == [a_record(label)]


# ----------------------------------------------------------------------------------------------------
# remove()


def test_remove_removes_only_our_records(bind: Bind) -> None:
    label = unique()
    dns_ = backend(bind)
    ours = [a_record(label)]
    dns_.apply(ours)
    assert other_operator(bind, lambda u: u.add(label, 300, "TXT", '"milik dinas"')) == "NOERROR"
    serial = bind.serial()
    assert dns_.remove(ours) == ours
    assert bind.serial() == serial + 1
    assert bind.addresses(label) == []
    assert bind.addresses(label, "TXT") == ['"milik dinas"']
    assert bind.addresses("www") == ["203.0.113.5"]
    assert dns_.remove(ours) == []  # already gone: nothing to do, no error

    unit = unique("unit")
    plan = delegation(unit)
    dns_.apply(plan)
    assert dns_.remove(plan) == plan
    assert rcode_of(bind, unit, "NS") == "NXDOMAIN"
    assert rcode_of(bind, f"ns1.{unit}") == "NXDOMAIN"


def test_remove_leaves_records_that_someone_changed(bind: Bind) -> None:
    label = unique()
    dns_ = backend(bind)
    dns_.apply([a_record(label)])
    assert other_operator(bind, lambda u: u.add(label, 300, "A", "203.0.113.77")) == "NOERROR"
    serial = bind.serial()
    with pytest.raises(RecordsChanged, match="tidak ada yang dihapus"):
        dns_.remove([a_record(label)])
    assert bind.addresses(label) == [HOSTING_IP, "203.0.113.77"]
    assert bind.serial() == serial
    assert not dns_.holds([a_record(label)])


# ----------------------------------------------------------------------------------------------------
# Failures: TSIG, server down


def test_wrong_tsig_secret_is_a_clear_error(bind: Bind) -> None:
    label = unique()
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(DnsError) as info:
        backend(bind, secret=wrong).apply([a_record(label)])
    text = str(info.value)
    assert "kunci TSIG 'subdomaind'" in text and "tanda tangan tidak cocok" in text
    assert "Tidak ada yang diubah" in text and wrong not in text
    with pytest.raises(DnsError, match="tidak dikenal"):
        backend(bind, key_name="bukan-kunci").apply([a_record(label)])
    with pytest.raises(DnsError, match="base64"):
        backend(bind, secret="bukan base64!")
    assert rcode_of(bind, label) == "NXDOMAIN"


def test_bind_down_is_a_dns_error(bind: Bind) -> None:
    label = unique()
    dns_ = backend(bind)
    dns_.apply([a_record(label)])
    bind.stop()
    for call in (lambda: dns_.apply([a_record(unique())]), lambda: dns_.remove([a_record(label)]),
                 lambda: dns_.existing(label), dns_.name_servers):
        with pytest.raises(DnsError, match="tidak dapat dihubungi") as info:
            call()
        assert "koneksi ditolak" in str(info.value)
    started = time.monotonic()
    assert dns_.wait_served([a_record(label)], timeout=0.5) == {f"127.0.0.1:{bind.port}": False}
    assert time.monotonic() - started < 3
    assert "tidak dapat diperiksa" in dns_.diff_text([a_record(unique())])


# ----------------------------------------------------------------------------------------------------
# Wildcards and discovery


def test_wildcard_answers_do_not_count_as_a_taken_name(bind: Bind) -> None:
    area = unique("w")
    assert other_operator(bind, lambda u: u.add(f"*.{area}", 300, "A", "203.0.113.66")) == "NOERROR"
    dns_ = backend(bind)
    name = f"dinsos.{area}"
    assert bind.addresses(name) == ["203.0.113.66"]  # synthesized (RFC 4592)
    state = dns_.inspect(name)
    assert state.free and state.wildcard
    assert dns_.existing(name) == []
    assert dns_.diff_text([a_record(name)]).endswith("(nama belum dipakai; zona memiliki wildcard)")
    dns_.apply([a_record(name)])
    assert bind.addresses(name) == [HOSTING_IP]
    assert bind.addresses(f"lain.{area}") == ["203.0.113.66"]


def test_primary_and_servers_are_discovered_from_soa_and_ns(servers_root: Path) -> None:
    zone = "ngawikab.go.id"
    with Bind(servers_root, zone, "ns1 IN A 127.0.0.1\nns2 IN A 127.0.0.1\n") as own:
        # No primary configured: the SOA MNAME (ns1) is looked up through the configured verify server.
        dns_ = Rfc2136Dns(zone=zone, port=own.port, key_name=own.key_name, secret=own.secret,
                          verify_servers=[f"127.0.0.1:{own.port}"], timeout=2.0)
        ep = dns_.primary_endpoint()
        assert (ep.label, ep.address, ep.port) == (f"ns1.{zone}:{own.port}", "127.0.0.1", own.port)
        label = unique()
        dns_.apply([PlannedRecord(label, "A", HOSTING_IP, 3600)])
        assert own.addresses(label) == [HOSTING_IP]
        # No verify servers configured: every address of the zone's NS RRset, read from the primary.
        dns_ = Rfc2136Dns(zone=zone, primary="127.0.0.1", port=own.port, key_name=own.key_name,
                          secret=own.secret, timeout=2.0)
        assert [(e.label, e.address) for e in dns_.verify_endpoints()] == [(f"ns1.{zone}:{own.port}", "127.0.0.1")]
        assert dns_.name_servers() == [f"ns1.{zone}", f"ns2.{zone}"]
        assert dns_.wait_served([PlannedRecord(label, "A", HOSTING_IP, 3600)], 2) == {f"ns1.{zone}:{own.port}": True}
