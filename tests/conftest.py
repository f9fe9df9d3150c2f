"""Session-scoped real servers on 127.0.0.1 for the integration tests (see `tests/devkit/devservers.py`).

Each server starts once per session, on first use, in one temporary directory (kept when
``SUBDOMAIND_KEEP_SERVERS=1``). Per-test state is cheap: a fresh mailbox user (`unique_user`, `make_user`),
a fresh DNS name, a fresh database (`postgres.create_database`). After every test, a server that the test
stopped (or froze) is started (or thawed) again, so fault tests can stop servers freely. A failing test's
report carries the log tail of each server fixture it used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.devkit import netguard
from tests.devkit.devservers import (
    APT_PACKAGES,
    Bind,
    DkimKey,
    Dovecot,
    MailUser,
    OAuthDovecot,
    OAuthServer,
    OpenDkim,
    Postfix,
    Postgres,
    SmtpRelay,
    missing_binaries,
)

DOMAIN = "trenggalekkab.go.id"
ZONE = DOMAIN
ZONE_RECORDS = """\
ns1   IN A 192.0.2.1
ns2   IN A 192.0.2.2
www   IN A 203.0.113.5
mail  IN A 203.0.113.6
"""

AUTHSERV_ID = f"mx.{DOMAIN}"
Server = Dovecot | Bind | Postgres | SmtpRelay | OpenDkim | Postfix | OAuthServer
_STARTED: list[Server] = []


def _require(server: str) -> None:
    missing = missing_binaries(server)
    if missing:
        pytest.fail(
            f"the {server} tests need {', '.join(missing)}, which is not installed. "
            f"`make test` installs it "
            f"(apt-get install -y --no-install-recommends --no-upgrade {APT_PACKAGES}).",
            pytrace=False,
        )


# Nothing in the suite may reach past loopback: guard this process and every daemon the tests start.
netguard.guard_this_process_and_children()


def _started(server: Server) -> Server:
    server.start()
    _STARTED.append(server)
    return server


@pytest.fixture(scope="session")
def servers_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="subdomaind-servers-"))
    root.chmod(0o755)  # Dovecot and PostgreSQL drop to system users that must reach their directories
    yield root
    if not os.environ.get("SUBDOMAIND_KEEP_SERVERS"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(servers_root: Path) -> Iterator[Dovecot]:
    """Dovecot IMAP + LMTP for `trenggalekkab.go.id`, plain text (no TLS)."""
    _require("dovecot")
    server = Dovecot(servers_root, DOMAIN)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def dovecot_tls(servers_root: Path) -> Iterator[Dovecot]:
    """Dovecot offering STARTTLS on its IMAP port; trust `dovecot_tls.ca_file`."""
    _require("dovecot")
    server = Dovecot(servers_root, DOMAIN, tls=True)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def bind(servers_root: Path) -> Iterator[Bind]:
    """named, primary for `trenggalekkab.go.id`, TSIG key `subdomaind` (`bind.secret`, `bind.secret_file`)."""
    _require("bind")
    server = Bind(servers_root, ZONE, ZONE_RECORDS)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def bind_secondary(servers_root: Path, bind: Bind) -> Iterator[Bind]:
    """A second named serving the zone as a secondary of `bind` (NOTIFY + IXFR); can be frozen per test."""
    server = Bind.secondary(servers_root, bind)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def smtp_relay(servers_root: Path, dovecot: Dovecot) -> Iterator[SmtpRelay]:
    """SMTP on 127.0.0.1:`smtp_relay.port` relaying into `dovecot` over LMTP; no TLS."""
    relay = SmtpRelay(dovecot.host, dovecot.lmtp_port, base=servers_root)
    with _started(relay):
        yield relay


@pytest.fixture(scope="session")
def smtp_relay_tls(servers_root: Path, dovecot: Dovecot) -> Iterator[SmtpRelay]:
    """Like `smtp_relay` but offering STARTTLS; trust `smtp_relay_tls.ca_file`."""
    relay = SmtpRelay(dovecot.host, dovecot.lmtp_port, tls=True, base=servers_root)
    with _started(relay):
        yield relay


@pytest.fixture(scope="session")
def dkim_key() -> DkimKey:
    """The officials' domain's test DKIM key: their mail is signed with it, and the office MTA knows it."""
    return DkimKey.generate(DOMAIN)


@pytest.fixture(scope="session")
def postfix(servers_root: Path, dovecot: Dovecot, dkim_key: DkimKey) -> Iterator[Postfix]:
    """The office MTA: Postfix on 127.0.0.1:`postfix.port` with OpenDKIM (`postfix.milter`) verifying the
    officials' DKIM signatures and adding `Authentication-Results: mx.trenggalekkab.go.id`, then LMTP into
    `dovecot`."""
    _require("postfix")
    milter = _started(OpenDkim(servers_root, AUTHSERV_ID, [dkim_key]))
    server = Postfix(servers_root, DOMAIN, dovecot.host, dovecot.lmtp_port, milter)
    with _started(server):
        yield server
    milter.stop()


@pytest.fixture(scope="session")
def postgres(servers_root: Path) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster; `postgres.create_database(name)` returns a SQLAlchemy URL."""
    _require("postgres")
    server = Postgres(servers_root)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def oauth_server(servers_root: Path) -> Iterator[OAuthServer]:
    """An OAuth 2.0 authorization server (token, device and introspection endpoints) on loopback."""
    server = OAuthServer(base=servers_root)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def dovecot_oauth(servers_root: Path, oauth_server: OAuthServer, smtp_relay: SmtpRelay) -> Iterator[OAuthDovecot]:
    """Dovecot whose IMAP and submission logins take bearer tokens checked at `oauth_server`
    (passdb oauth2); submission relays to `smtp_relay`, which delivers into `dovecot`."""
    _require("dovecot")
    if not Path("/usr/lib/dovecot/submission").exists():
        pytest.fail("the OAuth tests need dovecot-submissiond (`make test` installs it)", pytrace=False)
    server = OAuthDovecot(servers_root, "m365.trenggalekkab.go.id", oauth_server, smtp_relay.port)
    with _started(server):
        yield server


@pytest.fixture
def make_user(dovecot: Dovecot) -> Callable[..., MailUser]:
    """Factory: ``make_user(server=None, prefix="u")`` adds a fresh user to `server` (default `dovecot`)."""

    def make(server: Dovecot | None = None, prefix: str = "u") -> MailUser:
        return (server or dovecot).new_user(prefix)

    return make


@pytest.fixture
def unique_user(dovecot: Dovecot) -> MailUser:
    """A fresh mailbox user on `dovecot` (empty INBOX, Archive, Karantina, Sent)."""
    return dovecot.new_user()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in this process gets its logging set up on the stream pytest captured; the
    next test, and the servers' threads, must not log into that closed stream."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:  # the CLI's; pytest's own are subclasses it removes itself
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _heal_servers() -> Iterator[None]:
    """After each test, restart any session server the test stopped and thaw a frozen secondary."""
    yield
    for server in _STARTED:
        if isinstance(server, Bind) and server.frozen:
            server.thaw_secondary()
        elif not server.running:
            server.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Dovecot | Bind | Postgres | SmtpRelay | Postfix | OAuthServer):
                report.sections.append((f"{name} log (tail)", value.log_text()[-6000:]))
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reaches a real server as `servers`, whatever its module says.

    `make test-fast` deselects that marker, so the mark must follow the fixtures a test really uses
    (all of them hang off `servers_root`), not a module-level declaration that can be forgotten.
    """
    for item in items:
        if "servers_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.servers)
