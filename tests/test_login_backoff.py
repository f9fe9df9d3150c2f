"""A refused mailbox login backs off: intake and the IDLE watcher share one backoff per mailbox (a minute,
doubling to half an hour, reset by a login that works), counted in Dovecot's own auth log, with the reason
in plain words in the log and in mailbox_state for `status` and the digest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from subdomaind.daemon.service import AUTH_BACKOFF_MAX, LoginGate
from subdomaind.workflows.store import MailboxState, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, SmtpRelay
from tests.devkit.localoffice import Office


def test_gate_doubles_from_a_minute_to_half_an_hour_and_resets_on_success() -> None:
    now = [1000.0]
    gate = LoginGate(clock=lambda: now[0])
    delays = []
    for _ in range(7):
        assert gate.try_begin()
        assert not gate.try_begin()  # one login at a time: the other connection waits its turn
        delays.append(gate.failed("auth"))
        assert not gate.try_begin()  # nobody logs in before the backoff ends
        now[0] += delays[-1]
    assert delays == [60, 120, 240, 480, 960, 1800, 1800] and AUTH_BACKOFF_MAX == 1800
    assert gate.try_begin()
    gate.succeeded()
    assert gate.try_begin() and gate.failed("throttled") == 60  # reset by the login that worked


def test_network_failures_retry_sooner_than_refusals() -> None:
    gate = LoginGate(clock=lambda: 0.0)
    assert gate.try_begin()
    assert gate.failed("network") <= 2.0


@pytest.fixture
def wrong_password_office(tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay, bind: Bind) -> Iterator[Office]:
    office = Office.create(tmp_path / "office", dovecot, smtp_relay, bind)
    (tmp_path / "office" / "imap.pass").write_text("kata-sandi-salah\n")
    yield office
    if office.proc is not None and office.proc.poll() is None:
        office.stop()


pytestmark = pytest.mark.servers


def wait_for(check: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met; daemon log:\n{log()}")


def test_wrong_password_costs_one_login_then_waits_even_across_a_restart(wrong_password_office: Office) -> None:
    office = wrong_password_office
    name = office.mailbox.name
    before = office.dovecot.auth_failures(name)
    office.start()
    wait_for(lambda: office.dovecot.auth_failures(name) > before, 20, office.log)
    time.sleep(15)  # intake polls every 0.5 s and the IDLE watcher wants in too: neither may try again
    assert office.dovecot.auth_failures(name) - before == 1, office.log()
    log = office.log()
    assert "ditolak" in log and "b'" not in log and "AUTHENTICATIONFAILED" in log
    assert office.stop() == 0
    st = state_of(office)
    assert st is not None and st.last_error is not None and st.backoff_until is not None
    assert "kata sandi atau token salah" in st.last_error and "b'" not in st.last_error
    left = (st.backoff_until - datetime.now(UTC)).total_seconds()
    assert 20 < left <= 60
    shown = office.cli("status", "--json", check=False).stdout  # exit 1: a mailbox cannot be read
    assert "kata sandi atau token salah" in shown and "backoff_until" in shown
    words = office.cli("status", check=False).stdout
    assert "kata sandi atau token salah" in words and "dicoba lagi" in words and "b'" not in words, words
    # A restart (systemd's, after a crash) keeps to the backoff: no fresh burst.
    office.start()
    time.sleep(8)
    assert office.dovecot.auth_failures(name) - before == 1, office.log()
    assert "login backoff of the previous run holds" in office.log()


def state_of(office: Office) -> MailboxState | None:
    engine = make_engine(office_db_url(office))
    try:
        with make_sessionmaker(engine)() as s:
            return s.execute(select(MailboxState)).scalar_one_or_none()
    finally:
        engine.dispose()


def office_db_url(office: Office) -> str:
    from subdomaind.daemon.config import load_config

    return load_config(office.config_path).db_url


@pytest.mark.slow
def test_five_minutes_of_run_with_a_wrong_password_make_at_most_four_logins(
        wrong_password_office: Office, request: pytest.FixtureRequest) -> None:
    """The real thing, on the wall clock: `subdomaind run` for five minutes against a wrong password
    (`make soak`, `pytest -m slow`)."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("five minutes on the wall clock: run with `make soak` (pytest -m slow)")
    office = wrong_password_office
    name = office.mailbox.name
    before = office.dovecot.auth_failures(name)
    office.start()
    time.sleep(300)
    attempts = office.dovecot.auth_failures(name) - before
    assert office.stop() == 0
    assert 1 <= attempts <= 4, office.log()
    assert attempts == 3  # at 0 s, 60 s and 180 s; the next at 420 s


@pytest.mark.parametrize(("text", "kind"), [
    ("b'[AUTHENTICATIONFAILED] Authentication failed.'", "auth"),
    ("b'Request is throttled. Suggested Backoff Time: 6000 milliseconds'", "throttled"),
    ("Connection is closed. 13", "throttled"),
    ("b'[UNAVAILABLE] Temporary authentication failure. [mail:2026-12-06]'", "throttled"),
    ("socket error: EOF", "network"),
    ("Server shutting down.", "network"),
])
def test_server_words_are_sorted_and_shown_without_a_bytes_repr(text: str, kind: str) -> None:
    """The words Microsoft 365, Dovecot and Zimbra use (the first and fourth are Dovecot's own, quoted
    from its log above and in tests/test_oauth.py)."""
    import imaplib

    from subdomaind.daemon.mailbox import classify, plain_words

    exc = imaplib.IMAP4.abort(text) if kind != "auth" else imaplib.IMAP4.error(text)
    assert classify(exc) == kind
    assert "b'" not in plain_words(exc)
