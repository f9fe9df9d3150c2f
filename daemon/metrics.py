"""Prometheus metrics for `[metrics] listen = "127.0.0.1:9464"`, served by prometheus-client.

Every figure is read from the database at scrape time (a custom collector), so it is right across restarts
and across several daemon processes on one PostgreSQL: messages taken in by kind, decisions, the outbox
queue and its failures, intake failures, failing automatic actions, and open and overdue requests per step.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import Config
from subdomaind.workflows.sop import load_sop
from subdomaind.workflows.store import Decision, Inbound, MailboxState, Outbox, Request, StepRun, utcnow
from subdomaind.workflows.worktime import calendar_for

log = logging.getLogger("subdomaind.metrics")


class StoreCollector(Collector):
    def __init__(self, config: Config, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions

    def describe(self) -> list[Metric]:
        return []  # families are known only at scrape time; skip the registration-time collect

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily("subdomaind_messages", "Inbound messages taken in, by kind and status",
                                       labels=["agency", "kind", "status"])
        decisions = CounterMetricFamily("subdomaind_decisions", "Decisions received, by word and acceptance",
                                        labels=["agency", "decision", "accepted"])
        outbox = GaugeMetricFamily("subdomaind_outbox_messages", "Outgoing mails by status", labels=["status"])
        outbox_failing = GaugeMetricFamily("subdomaind_outbox_retrying", "Queued mails that failed at least once")
        intake = GaugeMetricFamily("subdomaind_intake_failing", "1 while the mailbox cannot be read",
                                   labels=["agency", "mailbox"])
        intake_since = GaugeMetricFamily("subdomaind_intake_failing_seconds", "How long the mailbox has failed",
                                         labels=["agency", "mailbox"])
        actions = GaugeMetricFamily("subdomaind_actions_failing", "Automatic steps failing and retried",
                                    labels=["agency"])
        open_ = GaugeMetricFamily("subdomaind_requests_open", "Open requests by step", labels=["agency", "step"])
        overdue = GaugeMetricFamily("subdomaind_requests_overdue", "Open requests past the step's Mutu Baku",
                                    labels=["agency", "step"])
        now = utcnow()
        agencies = {a.id: a for a in self.config.agencies}
        with self.sessions() as s:
            for agency, kind, status, n in s.execute(
                    select(Inbound.agency, Inbound.kind, Inbound.status, func.count())
                    .group_by(Inbound.agency, Inbound.kind, Inbound.status)).all():
                messages.add_metric([agency, kind or "-", status or "-"], n)
            for agency, word, accepted, n in s.execute(
                    select(Request.agency, Decision.decision, Decision.accepted, func.count())
                    .join(Request, Request.id == Decision.request_id)
                    .group_by(Request.agency, Decision.decision, Decision.accepted)).all():
                decisions.add_metric([agency, word, "yes" if accepted else "no"], n)
            for status, n in s.execute(select(Outbox.status, func.count()).group_by(Outbox.status)).all():
                outbox.add_metric([status], n)
            outbox_failing.add_metric([], s.execute(select(func.count()).select_from(Outbox).where(
                Outbox.status == "queued", Outbox.attempts > 0)).scalar_one())
            for st in s.execute(select(MailboxState)).scalars():
                intake.add_metric([st.agency, st.mailbox], 1 if st.failing_since else 0)
                since = (now - _aware(st.failing_since)).total_seconds() if st.failing_since else 0.0
                intake_since.add_metric([st.agency, st.mailbox], since)
            failing: Counter[str] = Counter()
            for (agency,) in s.execute(
                    select(Request.agency).join(StepRun, StepRun.request_id == Request.id)
                    .where(StepRun.status == "open", StepRun.kind == "action", StepRun.last_error.is_not(None))):
                failing[agency] += 1
            for ag in agencies:
                actions.add_metric([ag], failing.get(ag, 0))
            opened: Counter[tuple[str, str]] = Counter()
            late: Counter[tuple[str, str]] = Counter()
            calendars: dict[str, Any] = {}
            for req, run in s.execute(
                    select(Request, StepRun).join(StepRun, StepRun.request_id == Request.id)
                    .where(Request.status == "open", StepRun.status == "open")).all():
                key = (req.agency, run.key)
                opened[key] += 1
                ag_cfg = agencies.get(req.agency)
                if ag_cfg is None:
                    continue
                step = load_sop(ag_cfg.sop).steps.get(run.key)
                if step is None or step.time is None:
                    continue
                cal = calendars.setdefault(req.agency, calendar_for(ag_cfg))
                if now > cal.deadline(_aware(run.opened_at), step.time):
                    late[key] += 1
            for key, n in sorted(opened.items()):
                open_.add_metric(list(key), n)
                overdue.add_metric(list(key), late.get(key, 0))
        yield from (messages, decisions, outbox, outbox_failing, intake, intake_since, actions, open_, overdue)


def _aware(at: Any) -> Any:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def serve(config: Config, sessions: sessionmaker[Session]) -> Any:
    """Start the HTTP endpoint in a thread; returns the server (its `shutdown()` stops it), or None when off."""
    listen = config.metrics.listen
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(config, sessions))
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    log.info("Prometheus metrics on http://%s/metrics", listen)
    return server
