"""What the daemon holds for each agency, built from the configuration: its mailbox, its DNS, hosting and
signing services, its work calendar and SOP, its login gate; and what every job derives from it (the
parse options, the workflow context, the mailbox's checkpoint row).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from subdomaind.daemon.config import AgencyConfig, Config, LimitsConfig
from subdomaind.daemon.gate import LoginGate
from subdomaind.daemon.mailbox import ImapSource, MailSource
from subdomaind.daemon.oauth import LazyTokens, TokenSource
from subdomaind.daemon.outbox import SmtpTransport, Transport
from subdomaind.daemon.validate import read_tsig
from subdomaind.parsers.model import Limits, ParseOptions
from subdomaind.workflows.engine import Ctx, Services
from subdomaind.workflows.mailer import Mailer
from subdomaind.workflows.provision import CommandHosting, HostingBackend, NoHosting, Rfc2136Dns
from subdomaind.workflows.secretbox import SecretBox, SecretKeyError
from subdomaind.workflows.signing import load_signer
from subdomaind.workflows.sop import Sop, load_sop
from subdomaind.workflows.store import MailboxState, purge_freed_secrets, take_purge_secrets, utcnow
from subdomaind.workflows.worktime import WorkCalendar, calendar_for

log = logging.getLogger("subdomaind.service")

_DAEMON_LIMITS = {"parse_workers", "parse_timeout_seconds"}  # the daemon's, not the parser's (parsers.model.Limits)


def official_addresses(agency: AgencyConfig) -> frozenset[str]:
    """The officials and acting officials of the configuration."""
    return frozenset(a for addrs in (*agency.actors.values(), *agency.delegates.values()) for a in addrs)


def parse_options_for(agency: AgencyConfig, limits: LimitsConfig | None = None) -> ParseOptions:
    base = ParseOptions()
    reserved = frozenset(base.reserved_names | {n.lower() for n in agency.reserved_names})
    words = {k: tuple(v) for k, v in agency.vocabulary.model_dump().items() if v is not None}
    return ParseOptions(zone=agency.zone, reserved_names=reserved, mailbox_address=agency.address,
                        ticket_prefix=agency.ticket_prefix, vocabulary=replace(base.vocabulary, **words),
                        limits=Limits(**limits.model_dump(exclude=_DAEMON_LIMITS)) if limits is not None
                        else base.limits)


def build_services(config: Config, agency: AgencyConfig) -> Services:
    d = agency.dns
    key = read_tsig(d)  # a bare secret or a pasted tsig-keygen stanza (its algorithm wins)
    dns_backend = Rfc2136Dns(zone=agency.zone, primary=d.primary, port=d.port, key_name=d.tsig_key_name,
                             secret=key.secret, algorithm=key.algorithm,
                             verify_servers=d.verify_servers or None,
                             reserved=parse_options_for(agency).reserved_names)
    hosting: HostingBackend
    if config.hosting.backend == "command":
        hosting = CommandHosting(config.hosting.argv, secret_via=config.hosting.secret_via,
                                 timeout=config.hosting.timeout_seconds)
    else:
        hosting = NoHosting()
    # No certificate configured: letters go out unsigned (check-config warns); a broken one stops the start.
    signer = load_signer(agency.letter.signing, location=agency.letter.city)
    if signer is None:
        log.warning("agency %s: no signing certificate; letters go out unsigned", agency.id)
    elif (left := signer.not_after - utcnow()).days < 30:
        log.warning("agency %s: the letter signing certificate expires in %d day(s) (%s)", agency.id,
                    max(left.days, 0), signer.describe())
    return Services(dns=dns_backend, hosting=hosting, signer=signer)


def secret_box(config: Config) -> SecretBox:
    """The key that seals PIC passwords at rest; the configuration check made sure it is there."""
    if config.secrets.key_file is None:
        raise SecretKeyError("secrets.key_file is not set")
    return SecretBox.from_file(config.secrets.key_file)


@dataclass
class AgencyRuntime:
    agency: AgencyConfig
    source: MailSource
    services: Services
    calendar: WorkCalendar
    sop: Sop  # loaded once per configuration: a broken file on disk cannot stall the running daemon
    connected: bool = False
    gate: LoginGate = field(default_factory=LoginGate)
    tokens: TokenSource | None = None  # the mailbox's OAuth tokens, shared by intake and the watcher
    restored: bool = False
    # The local month ("2026-12") whose monthly report (of the month before) is settled, and when a
    # failed one may be tried again: so that a pass costs no query, and a failure no retry storm.
    report_month: str | None = None
    report_retry_at: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    lease_changed: threading.Event = field(default_factory=threading.Event)  # wakes its IDLE watcher
    watcher: ImapSource | None = None  # the IDLE connection, cut by `interrupt` on a stop or a lost lease
    idling: bool = False  # its watcher holds IDLE: the poll interval need not look at this mailbox

    @property
    def backoff_until(self) -> float:
        return self.gate.until

    @backoff_until.setter
    def backoff_until(self, value: float) -> None:
        self.gate.until = value


def build(config: Config, spool_dir: Path, *, transport: Transport | None = None,
          sources: Mapping[str, MailSource], services: Mapping[str, Services],
          ) -> tuple[Transport, dict[str, AgencyRuntime]]:
    """The SMTP transport and every agency's runtime; the given ones (tests, benches) win over the built."""
    smtp_password = config.smtp.read_secret() if config.smtp.user else None
    kept = config.state_dir / "oauth"  # rotated refresh tokens (daemon/oauth.py token_source)
    smtp_tokens = (LazyTokens(config.smtp.oauth, config.smtp.user, kept / "smtp-refresh-token")
                   if config.smtp.oauth and config.smtp.auth == "oauth2" and config.smtp.user else None)
    transport = transport or SmtpTransport(
        config.smtp, smtp_password, helo_name=config.agencies[0].address.rpartition("@")[2], tokens=smtp_tokens)
    runtimes: dict[str, AgencyRuntime] = {}
    for ag in config.agencies:
        tokens = (LazyTokens(ag.imap.oauth, ag.imap.user, kept / f"{ag.id}-imap-refresh-token")
                  if ag.imap.oauth and ag.imap.auth == "oauth2" else None)
        src = sources.get(ag.id) or ImapSource(
            ag.imap, "" if tokens else ag.imap.read_secret() or "", spool_dir, tokens)
        svc = services.get(ag.id) or build_services(config, ag)
        runtimes[ag.id] = AgencyRuntime(agency=ag, source=src, services=svc, calendar=calendar_for(ag),
                                        sop=load_sop(ag.sop), tokens=tokens)
    return transport, runtimes


def make_ctx(session: Session, config: Config, rt: AgencyRuntime, *, clock: Callable[[], datetime],
             box: SecretBox) -> Ctx:
    """The workflow context of one transaction of one agency."""
    agency = rt.agency
    return Ctx(
        session=session,
        config=config,
        agency=agency,
        sop=rt.sop,
        mailer=Mailer(agency_id=agency.id, agency_name=agency.name, address=agency.address,
                      zone=agency.zone, clock=clock,
                      daily_cap=config.workflow.daily_cap_per_address, box=box,
                      uncapped=official_addresses(agency)),
        services=rt.services,
        clock=clock,
        parse_options=parse_options_for(agency, config.limits),
        calendar=rt.calendar,
        box=box,
    )


def mailbox_state(s: Session, rt: AgencyRuntime) -> MailboxState:
    """The mailbox's row (UID checkpoint, login failures), created at its first use."""
    st = s.get(MailboxState, (rt.agency.id, rt.source.folder))
    if st is None:
        st = MailboxState(agency=rt.agency.id, mailbox=rt.source.folder, uidvalidity=0, last_uid=0)
        s.add(st)
        s.flush()
    return st


def purge_if_needed(sessions: sessionmaker[Session], s: Session) -> None:
    """After a transaction that scrubbed a password (a rejection), push it out of the WAL too."""
    if take_purge_secrets(s):
        purge_freed_secrets(sessions.kw["bind"])
