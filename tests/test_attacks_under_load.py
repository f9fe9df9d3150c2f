"""The approval attacks of issue 4 under load (issue 7): forty requests, each met by one attack mixed with
the genuine decisions in one backlog. Every attack is refused with zero state change; every genuine
decision counts; nothing is handled twice."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.config import load_config
from daemon.devservers import Bind, Dovecot, SmtpRelay
from daemon.localoffice import UNVOUCHED, Office, parse_mail, reply_to
from daemon.service import Daemon
from workflows.db import upgrade
from workflows.store import Audit, Decision, Inbound, Request, make_engine, make_sessionmaker

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
    from daemon.localoffice import request_mail

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
