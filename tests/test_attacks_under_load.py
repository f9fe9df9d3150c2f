"""The approval attacks under load: forty requests, each met by one attack mixed with
the genuine decisions in one backlog. Every attack is refused with zero state change; every genuine
decision counts; nothing is handled twice."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from subdomaind.daemon.config import load_config
from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import Audit, Decision, Inbound, Request, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import UNVOUCHED, Office, parse_mail, reply_to

pytestmark = pytest.mark.servers
REQUESTS = 40


def test_attacks_mixed_into_a_backlog_are_all_refused(dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    o = Office.create(Path(tempfile.mkdtemp(prefix="load-")), dovecot, smtp_relay, bind, auth=UNVOUCHED,
                      workflow={"daily_cap_per_address": 10000})
    cfg = load_config(o.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    d = Daemon(cfg, make_sessionmaker(engine))
    from tests.devkit.localoffice import request_mail

    for n in range(REQUESTS):
        dovecot.append(o.mailbox.name, request_mail(o.requester.address, f"ld{n}{secrets.token_hex(2)}",
                                                    to=o.mailbox.address))
    while d.run_once()["sent"]:  # 120 mails: the outbox sends at most 100 per pass
        pass
    kadis = o.officials["kadis"]
    step_mails = [raw for raw in kadis.messages() if "Mohon keputusan" in str(parse_mail(raw)["Subject"])]
    assert len(step_mails) == REQUESTS
    stranger = dovecot.new_user("orang")
    attackers = [stranger.address, o.requester.address, o.officials["kabid"].address]
    genuine_ids = set()
    attack_ids = set()
    for n, raw in enumerate(step_mails):
        attack = reply_to(raw, attackers[n % len(attackers)], "SETUJU")
        good = reply_to(raw, kadis.address, "SETUJU")
        attack_ids.add(str(parse_mail(attack)["Message-ID"]))
        genuine_ids.add(str(parse_mail(good)["Message-ID"]))
        # Half the attacks arrive before the genuine answer, half after (then as a replay on a closed step).
        for mail in ((attack, good) if n % 2 == 0 else (good, attack)):
            dovecot.append(o.mailbox.name, mail)
    d.run_once()
    while d.run_once()["sent"]:
        pass
    d.shutdown(flush_seconds=5)
    with d.sessions() as s:
        reqs = s.execute(select(Request)).scalars().all()
        assert len(reqs) == REQUESTS and all(r.step == "disposisi_kabid" for r in reqs)
        accepted = s.execute(select(Decision).where(Decision.accepted.is_(True))).scalars().all()
        assert sorted(dec.message_id for dec in accepted) == sorted(genuine_ids)
        refused = s.execute(select(Decision).where(Decision.accepted.is_(False))).scalars().all()
        assert {dec.message_id for dec in refused} == attack_ids
        for mid in attack_ids:
            assert s.execute(select(func.count()).select_from(Audit).where(Audit.message_id == mid)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(Inbound)).scalar_one() == REQUESTS * 3
    assert stranger.messages() == []  # the outsider is never answered


FORGED = 500
CAPS = {"per_sender_per_hour": 6, "per_domain_per_hour": 15, "per_agency_per_hour": 60}


@pytest.mark.parametrize("senders", ["500 addresses in 25 domains", "500 addresses in one domain", "one address",
                                     "the Kadis's address, forged"])
def test_forged_requests_send_mail_only_within_the_hourly_caps(
        senders: str, dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> None:
    """500 forged requests, from 500 addresses (in 25 domains, or in one) or all from one address: every
    request is stored, the mail they make us send stays within the per-sender, per-domain and per-agency
    caps (each binds in one case), the rest is held and listed in the digest. A forged `From:` naming an
    official (not vouched for, under the default `[agency.auth]`) is capped like any stranger."""
    from datetime import UTC, datetime, timedelta

    from subdomaind.workflows.digest import build_digest
    from subdomaind.workflows.mailer import CAP_NOTE
    from subdomaind.workflows.store import Outbox, SenderMailCount
    from tests.devkit.localoffice import request_mail

    forged_official = senders == "the Kadis's address, forged"
    o = Office.create(Path(tempfile.mkdtemp(prefix="caps-")), dovecot, smtp_relay, bind,
                      auth=None if forged_official else UNVOUCHED,
                      workflow={"daily_cap_per_address": 100000, "unverified_mail": CAPS})
    cfg = load_config(o.config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    d = Daemon(cfg, make_sessionmaker(engine))
    forgers = {"500 addresses in 25 domains": [f"f{n}@d{n % 25}.example" for n in range(FORGED)],
               "500 addresses in one domain": [f"f{n}@d0.example" for n in range(FORGED)],
               "one address": ["penyusup@d0.example"] * FORGED,
               "the Kadis's address, forged": [o.officials["kadis"].address] * FORGED}[senders]
    for n, forger in enumerate(forgers):
        dovecot.append(o.mailbox.name, request_mail(forger, f"pa{n}{secrets.token_hex(2)}", to=o.mailbox.address))
    before = len(smtp_relay.received)
    smtp_relay.deliver = False  # the relay takes every mail and keeps it: what it holds is what was sent
    try:
        while d.run_once()["messages"]:
            pass
        while d.run_once()["sent"]:
            pass
    finally:
        smtp_relay.deliver = True
    sent = smtp_relay.received[before:]
    d.shutdown(flush_seconds=5)
    with d.sessions() as s:
        assert s.execute(select(func.count()).select_from(Request)).scalar_one() == FORGED  # all stored
        rows = s.execute(select(Outbox)).scalars().all()
        held = [r for r in rows if r.status == "held"]
        assert all((r.last_error or "").startswith(CAP_NOTE) for r in held)
        counts = s.execute(select(SenderMailCount)).scalars().all()
        by_scope = {sc: max((c.count for c in counts if c.scope == sc), default=0)
                    for sc in ("sender", "domain", "agency")}
        agency = cfg.agencies[0]
        from subdomaind.workflows.sop import load_sop
        from subdomaind.workflows.worktime import calendar_for

        now = datetime.now(UTC)
        digest = build_digest(s, agency, load_sop(agency.sop), calendar_for(agency), now + timedelta(minutes=1),
                              now - timedelta(hours=2))
    print(f"\n{senders}: {FORGED} forged requests stored, {len(rows)} mails made, {len(sent)} sent, "
          f"{len(held)} held; most counted per sender {by_scope['sender']} (cap {CAPS['per_sender_per_hour']}), "
          f"per domain {by_scope['domain']} (cap {CAPS['per_domain_per_hour']}), "
          f"agency {by_scope['agency']} (cap {CAPS['per_agency_per_hour']})")
    assert len(sent) == len(rows) - len(held) == by_scope["agency"]
    assert by_scope["sender"] <= CAPS["per_sender_per_hour"]
    assert by_scope["domain"] <= CAPS["per_domain_per_hour"]
    assert by_scope["agency"] <= CAPS["per_agency_per_hour"]
    # Each forged address got at most its cap of mail, each forged domain at most its cap.
    to_forgers = [r for _f, rcpts, _raw in sent for r in rcpts if r.endswith(".example") or r in forgers]
    assert all(to_forgers.count(a) <= CAPS["per_sender_per_hour"] for a in set(to_forgers))
    binding = {"one address": "per_sender_per_hour", "the Kadis's address, forged": "per_sender_per_hour",
               "500 addresses in one domain": "per_domain_per_hour"}
    assert len(sent) == CAPS[binding.get(senders, "per_agency_per_hour")]
    assert digest["capped_total"] == len(held) and digest["capped"]
