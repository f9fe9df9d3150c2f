"""OAuth 2.0 logins (SASL XOAUTH2 and OAUTHBEARER, RFC 7628) to a real Dovecot whose passdb asks a real
introspection endpoint: IMAP and SMTP submission, an expired token refreshed, a revoked one refused in
plain words."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from subdomaind.daemon.config import ImapConfig, OAuthConfig, SmtpConfig, parse_config
from subdomaind.daemon.mailbox import ImapSource, MailSourceError, check_login, open_imap
from subdomaind.daemon.oauth import CachedTokens, GenericRefresh, LazyTokens, OAuthError, device_login, token_source
from subdomaind.daemon.outbox import SendError, SmtpTransport
from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import MailboxState, make_engine, make_sessionmaker
from tests.devkit.devservers import Bind, Dovecot, OAuthDovecot, OAuthServer, SmtpRelay
from tests.devkit.localoffice import config_data

pytestmark = pytest.mark.servers


def oauth_table(oauth: OAuthServer, refresh_file: Path, **extra: object) -> dict[str, object]:
    return {"provider": "generic", "token_url": f"{oauth.url}/token", "device_url": f"{oauth.url}/device",
            "client_id": oauth.client_id, "refresh_token_file": str(refresh_file), **extra}


def imap_cfg(server: OAuthDovecot, oauth: OAuthServer, user: str, refresh_file: Path,
             mechanism: str = "xoauth2") -> ImapConfig:
    return ImapConfig.model_validate({
        "host": server.host, "port": server.imap_port, "tls": "none", "user": user, "auth": "oauth2",
        "idle": False, "oauth": oauth_table(oauth, refresh_file, mechanism=mechanism)})


def new_user(server: OAuthDovecot, oauth: OAuthServer, tmp_path: Path, prefix: str = "layanan") -> tuple[str, Path]:
    mailbox = server.new_user(prefix)
    user = mailbox.address
    refresh = tmp_path / "refresh-token"
    refresh.write_text(oauth.issue_refresh(user))
    refresh.chmod(0o600)
    return user, refresh


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_imap_login_with_a_bearer_token_reads_the_mailbox(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                                          tmp_path: Path, mechanism: str) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    dovecot_oauth.deliver(user, b"From: a@example.test\r\nSubject: halo\r\nMessage-ID: <o1@x>\r\n\r\nisi\r\n")
    cfg = imap_cfg(dovecot_oauth, oauth_server, user, refresh, mechanism)
    before = oauth_server.introspections
    src = ImapSource(cfg, "", tokens=LazyTokens(cfg.oauth, user))  # type: ignore[arg-type]
    src.connect()
    try:
        got = src.fetch_new(0, 10)
    finally:
        src.close()
    assert len(got) == 1 and b"Subject: halo" in bytes(got[0][1])  # type: ignore[arg-type]
    assert oauth_server.introspections == before + 1  # Dovecot asked the endpoint: a real SASL exchange
    assert f"method={mechanism.upper()}" in dovecot_oauth.log_text()


def test_expired_token_is_refreshed_and_the_login_succeeds(dovecot_oauth: OAuthDovecot,
                                                           oauth_server: OAuthServer, tmp_path: Path) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    cfg = imap_cfg(dovecot_oauth, oauth_server, user, refresh)
    tokens = LazyTokens(cfg.oauth, user)  # type: ignore[arg-type]
    open_imap(cfg, "", tokens).logout()
    first = tokens.token()
    requests = oauth_server.token_requests
    # The issuer ends the token early (our cache still thinks it has an hour): Dovecot refuses it, the
    # token is dropped, a fresh one fetched, and the second AUTHENTICATE goes through.
    assert oauth_server.expire(user) == 1
    open_imap(cfg, "", tokens).logout()
    assert tokens.token() != first
    assert oauth_server.token_requests == requests + 1
    assert dovecot_oauth.auth_failures(user) == 1


def test_token_is_fetched_again_before_it_expires(oauth_server: OAuthServer) -> None:
    """Kept in memory, fetched again inside the margin before expiry (here: a 100 s token, 30 s margin)."""
    now = [0.0]
    user = "jam@oauth.test"
    fetch = GenericRefresh(f"{oauth_server.url}/token", oauth_server.client_id, None, oauth_server.issue_refresh(user))
    old_life = oauth_server.lifetime
    oauth_server.lifetime = 100
    try:
        tokens = CachedTokens(fetch, clock=lambda: now[0], margin=30)
        a = tokens.token()
        now[0] = 69
        assert tokens.token() == a and tokens.fetches == 1
        now[0] = 71
        assert tokens.token() != a and tokens.fetches == 2
    finally:
        oauth_server.lifetime = old_life


def test_revoked_token_is_refused_in_plain_words(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                                 tmp_path: Path) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    cfg = imap_cfg(dovecot_oauth, oauth_server, user, refresh)
    tokens = LazyTokens(cfg.oauth, user)  # type: ignore[arg-type]
    open_imap(cfg, "", tokens).logout()
    oauth_server.revoke(user)
    with pytest.raises(MailSourceError) as err:
        open_imap(cfg, "", tokens)
    assert err.value.kind == "auth"
    text = str(err.value)
    assert "dicabut" in text and "invalid_grant" in text and "b'" not in text
    assert "oauth login" in text


def smtp_cfg(server: OAuthDovecot, oauth: OAuthServer, user: str, refresh: Path, mechanism: str) -> SmtpConfig:
    return SmtpConfig.model_validate({
        "host": server.host, "port": server.submission_port, "tls": "none", "user": user, "auth": "oauth2",
        "oauth": oauth_table(oauth, refresh, mechanism=mechanism)})


def mail(sender: str, rcpt: str, subject: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = sender, rcpt, subject, f"<{os.urandom(6).hex()}@oauth.test>"
    m.set_content("Surat uji.")
    return m.as_bytes()


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_smtp_submission_with_a_bearer_token_delivers(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                                      dovecot: Dovecot, smtp_relay: SmtpRelay, tmp_path: Path,
                                                      mechanism: str) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    rcpt = dovecot.new_user("penerima")
    cfg = smtp_cfg(dovecot_oauth, oauth_server, user, refresh, mechanism)
    transport = SmtpTransport(cfg, None)
    try:
        transport.send(user, [rcpt.address], mail(user, rcpt.address, f"lewat submission {mechanism}"))
        # After an early expiry the next connection refreshes once and goes on.
        oauth_server.expire(user)
        transport.close()
        transport.send(user, [rcpt.address], mail(user, rcpt.address, "setelah kedaluwarsa"))
    finally:
        transport.close()
    subjects = [m for m in rcpt.messages() if b"Subject:" in m]
    assert len(subjects) == 2 and b"setelah kedaluwarsa" in subjects[1]
    assert "Successfully relayed message" in dovecot_oauth.log_text()


def test_smtp_with_a_revoked_token_is_a_plain_error(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                                    dovecot: Dovecot, tmp_path: Path) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    rcpt = dovecot.new_user("penerima")
    oauth_server.revoke(user)
    transport = SmtpTransport(smtp_cfg(dovecot_oauth, oauth_server, user, refresh, "xoauth2"), None)
    try:
        with pytest.raises(SendError) as err:
            transport.send(user, [rcpt.address], mail(user, rcpt.address, "tidak terkirim"))
    finally:
        transport.close()
    assert not err.value.permanent and "dicabut" in str(err.value)


def test_device_login_stores_the_refresh_token_0600(oauth_server: OAuthServer, tmp_path: Path) -> None:
    from subdomaind.daemon.oauth import store_refresh_token

    cfg = OAuthConfig.model_validate(oauth_table(oauth_server, tmp_path / "cred" / "rt"))
    shown: list[str] = []
    oauth_server.auto_approve = False
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the administrator signs in while we poll
        waits.append(seconds)
        if len(waits) == 2:
            oauth_server.approve_devices()

    try:
        token = device_login(cfg, shown.append, sleep=sleep)
    finally:
        oauth_server.auto_approve = True
    assert "WDJB-MJHT" in shown[0] and "/activate" in shown[0] and len(waits) == 2  # one poll pending
    store_refresh_token(tmp_path / "cred" / "rt", token)
    assert (tmp_path / "cred" / "rt").stat().st_mode & 0o777 == 0o600
    assert cfg.read_refresh_token() == token
    assert token_source(cfg, oauth_server.device_user).token().startswith("at-")


def test_missing_refresh_token_says_to_log_in(tmp_path: Path, oauth_server: OAuthServer) -> None:
    cfg = OAuthConfig.model_validate(oauth_table(oauth_server, tmp_path / "none"))
    with pytest.raises(OAuthError, match="oauth login"):
        LazyTokens(cfg, "x@oauth.test").token()


def oauth_daemon(tmp_path: Path, dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer, smtp_relay: SmtpRelay,
                 bind: Bind) -> tuple[Daemon, Any, str]:
    """A daemon whose mailbox logs in by OAuth (generic provider) to `dovecot_oauth`, in process."""
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    data = config_data(tmp_path / "office", imap_port=dovecot_oauth.imap_port, imap_user=user, mailbox=user,
                       smtp_port=smtp_relay.port, dns_port=bind.port, tsig_secret=bind.secret)
    imap = data["agency"][0]["imap"]
    del imap["password_file"]
    imap.update(auth="oauth2", idle=False, oauth=oauth_table(oauth_server, refresh))
    cfg = parse_config(data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    return Daemon(cfg, sessions), sessions, user


def mailbox_state(sessions: Any) -> MailboxState:
    with sessions() as s:
        return s.execute(select(MailboxState)).scalar_one()


def test_daemon_with_a_revoked_token_says_so_and_backs_off(tmp_path: Path, dovecot_oauth: OAuthDovecot,
                                                           oauth_server: OAuthServer, smtp_relay: SmtpRelay,
                                                           bind: Bind, caplog: pytest.LogCaptureFixture) -> None:
    d, sessions, user = oauth_daemon(tmp_path, dovecot_oauth, oauth_server, smtp_relay, bind)
    rt = d.runtimes["trenggalek"]
    try:
        d.run_once()
        assert rt.connected and mailbox_state(sessions).last_error is None
        oauth_server.revoke(user)
        rt.source.close()
        rt.connected = False
        failures = dovecot_oauth.auth_failures(user)
        d.run_once()
        d.run_once()  # within the backoff: no login tried
    finally:
        d.shutdown(flush_seconds=1)
    st = mailbox_state(sessions)
    assert st.last_error is not None and "dicabut" in st.last_error and "oauth login" in st.last_error
    assert st.backoff_until is not None
    assert 50 < (st.backoff_until - datetime.now(UTC)).total_seconds() <= 60
    assert dovecot_oauth.auth_failures(user) == failures + 1  # the old token once; no new one was had
    assert any("dicabut" in r.getMessage() and "retry in 60 s" in r.getMessage() for r in caplog.records)


def test_server_unavailable_backs_off_a_minute_not_a_storm(tmp_path: Path, dovecot_oauth: OAuthDovecot,
                                                           oauth_server: OAuthServer, smtp_relay: SmtpRelay,
                                                           bind: Bind) -> None:
    """Dovecot answers NO [UNAVAILABLE] (RFC 5530) when its token check is down, as Microsoft 365 does when
    it throttles a tenant: the mailbox waits a minute, doubling, instead of retrying every pass."""
    d, sessions, user = oauth_daemon(tmp_path, dovecot_oauth, oauth_server, smtp_relay, bind)
    oauth_server.introspection_down = True
    try:
        for _ in range(5):
            d.run_once()
    finally:
        oauth_server.introspection_down = False
        d.shutdown(flush_seconds=1)
    st = mailbox_state(sessions)
    assert st.last_error is not None and "membatasi koneksi" in st.last_error and "UNAVAILABLE" in st.last_error
    assert d.runtimes["trenggalek"].gate.refused == 1
    assert "Temporary authentication failure" in st.last_error or "UNAVAILABLE" in st.last_error


def test_login_checks_for_check_config_connect(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                               dovecot: Dovecot, tmp_path: Path) -> None:

    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    cfg = imap_cfg(dovecot_oauth, oauth_server, user, refresh)
    assert check_login(cfg, "", LazyTokens(cfg.oauth, user)) is None  # type: ignore[arg-type]
    assert SmtpTransport(smtp_cfg(dovecot_oauth, oauth_server, user, refresh, "oauthbearer"), None).check_login() is None
    # A password mailbox with the wrong password, and SMTP with a revoked token: why, in words.
    plain = dovecot.new_user("biasa")
    wrong = ImapConfig(host=dovecot.host, port=dovecot.imap_port, tls="none", user=plain.name)
    assert "ditolak" in (check_login(wrong, "salah") or "")
    assert check_login(wrong, plain.password) is None
    oauth_server.revoke(user)
    said = SmtpTransport(smtp_cfg(dovecot_oauth, oauth_server, user, refresh, "xoauth2"), None).check_login()
    assert said is not None and "dicabut" in said


def test_oauth_login_command_prints_the_code_and_stores_the_token(tmp_path: Path, oauth_server: OAuthServer,
                                                                  smtp_relay: SmtpRelay, bind: Bind) -> None:
    import subprocess

    from tests.devkit.localoffice import SUBDOMAIND, write_config

    refresh = tmp_path / "cred" / "imap-refresh-token"
    data = config_data(tmp_path / "office", smtp_port=smtp_relay.port, dns_port=bind.port, tsig_secret=bind.secret)
    imap = data["agency"][0]["imap"]
    del imap["password_file"]
    imap.update(auth="oauth2", oauth=oauth_table(oauth_server, refresh))
    path = write_config(tmp_path / "office" / "config.toml", data)
    done = subprocess.run([str(SUBDOMAIND), "--config", str(path), "oauth", "login", "--agency", "trenggalek"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "WDJB-MJHT" in done.stdout and "0600" in done.stdout and "Traceback" not in done.stderr
    assert refresh.stat().st_mode & 0o777 == 0o600 and refresh.read_text().startswith("rt-")
    wrong = subprocess.run([str(SUBDOMAIND), "--config", str(path), "oauth", "login", "--agency", "tidakada"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "tidak ada agency" in wrong.stderr and "Traceback" not in wrong.stderr


def test_google_service_account_with_domain_wide_delegation_logs_in(
        dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer, tmp_path: Path) -> None:
    """google-auth signs an RFC 7523 JWT naming the mailbox user (`sub`); the token it gets opens the
    mailbox. The key file's token_uri points at the local authorization server."""
    import json

    user = dovecot_oauth.new_user("layanan").address
    key_file = tmp_path / "google-service-account.json"
    key_file.write_text(json.dumps(oauth_server.add_service_account("subdomaind@uji.iam.gserviceaccount.com")))
    key_file.chmod(0o600)
    cfg = ImapConfig.model_validate({
        "provider": "google", "host": dovecot_oauth.host, "port": dovecot_oauth.imap_port, "tls": "none",
        "user": user, "auth": "oauth2",
        "oauth": {"provider": "google", "flow": "service_account", "service_account_file": str(key_file)}})
    tokens = LazyTokens(cfg.oauth, user)  # type: ignore[arg-type]
    open_imap(cfg, "", tokens).logout()
    assert oauth_server.live_tokens(user) == [tokens.token()]
    oauth_server.service_keys.clear()  # the delegation withdrawn in the Admin console
    oauth_server.expire(user)
    with pytest.raises(MailSourceError) as err:
        open_imap(cfg, "", tokens)
    assert err.value.kind == "auth" and "Google menolak" in str(err.value)


def test_google_refresh_token_logs_in(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer, tmp_path: Path) -> None:
    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    secret = tmp_path / "client-secret"
    secret.write_text(oauth_server.client_secret)
    cfg = ImapConfig.model_validate({
        "provider": "google", "host": dovecot_oauth.host, "port": dovecot_oauth.imap_port, "tls": "none",
        "user": user, "auth": "oauth2",
        "oauth": {"provider": "google", "client_id": oauth_server.client_id, "client_secret_file": str(secret),
                  "refresh_token_file": str(refresh), "token_url": f"{oauth_server.url}/token",
                  "mechanism": "oauthbearer"}})
    assert check_login(cfg, "", LazyTokens(cfg.oauth, user)) is None  # type: ignore[arg-type]


@pytest.fixture
def trust_oauth_https(oauth_server: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> OAuthServer:
    """msal (requests) and urllib trust the local authorization server's CA, as they trust Microsoft's."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_server.ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(oauth_server.ca_file))
    return oauth_server


def m365_cfg(server: OAuthDovecot, oauth: OAuthServer, user: str, **table: object) -> ImapConfig:
    return ImapConfig.model_validate({
        "provider": "microsoft365", "host": server.host, "port": server.imap_port, "tls": "none", "user": user,
        "auth": "oauth2", "oauth": {"provider": "microsoft365", "tenant": "dinas-uji", "client_id": oauth.client_id,
                                    "authority": oauth.https_url, **table}})


def test_microsoft365_client_credentials_through_msal(dovecot_oauth: OAuthDovecot, trust_oauth_https: OAuthServer,
                                                      tmp_path: Path) -> None:
    """App-only access: msal's client credentials grant at the tenant's authority; a refused token makes
    msal ask again rather than answer from its own cache."""
    oauth = trust_oauth_https
    user = dovecot_oauth.new_user("layanan").address
    secret = tmp_path / "m365-client-secret"
    secret.write_text(oauth.client_secret + "\n")
    oauth.app_user = user  # the Exchange application access policy: this app, this mailbox
    cfg = m365_cfg(dovecot_oauth, oauth, user, flow="client_credentials", client_secret_file=str(secret))
    tokens = LazyTokens(cfg.oauth, user)  # type: ignore[arg-type]
    assert check_login(cfg, "", tokens) is None
    first = tokens.token()
    oauth.expire(user)
    assert check_login(cfg, "", tokens) is None
    assert tokens.token() != first


def test_microsoft365_refresh_token_through_msal_and_device_login(dovecot_oauth: OAuthDovecot,
                                                                  trust_oauth_https: OAuthServer,
                                                                  tmp_path: Path) -> None:
    oauth = trust_oauth_https
    user = dovecot_oauth.new_user("layanan").address
    oauth.device_user = user
    refresh = tmp_path / "imap-refresh-token"
    cfg = m365_cfg(dovecot_oauth, oauth, user, refresh_token_file=str(refresh))
    shown: list[str] = []
    from subdomaind.daemon.oauth import store_refresh_token

    store_refresh_token(refresh, device_login(cfg.oauth, shown.append, sleep=lambda _s: None))  # type: ignore[arg-type]
    assert "WDJB-MJHT" in shown[0]
    assert check_login(cfg, "", LazyTokens(cfg.oauth, user)) is None  # type: ignore[arg-type]
    oauth.revoke(user)
    said = check_login(cfg, "", LazyTokens(cfg.oauth, user))  # type: ignore[arg-type]
    assert said is not None and "dicabut" in said and "invalid_grant" in said


def test_a_rotated_refresh_token_is_kept_for_the_next_start(dovecot_oauth: OAuthDovecot, oauth_server: OAuthServer,
                                                            tmp_path: Path) -> None:
    """An issuer that rotates refresh tokens (RFC 6749 6, Microsoft 365 every time) retires the one in the
    credentials directory: the new one is kept 0600 under the state directory and used after a restart,
    until a later `oauth login` writes the configured file again."""
    import time

    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    keep = tmp_path / "state" / "oauth" / "trenggalek-imap-refresh-token"
    cfg = imap_cfg(dovecot_oauth, oauth_server, user, refresh)
    oauth_server.rotate = True
    try:
        assert check_login(cfg, "", LazyTokens(cfg.oauth, user, keep)) is None  # type: ignore[arg-type]
        assert keep.stat().st_mode & 0o777 == 0o600 and keep.read_text() != refresh.read_text()
        # The daemon restarts: the configured token is dead, the kept one works (and rotates again).
        assert check_login(cfg, "", LazyTokens(cfg.oauth, user, keep)) is None  # type: ignore[arg-type]
        assert "invalid_grant" in (check_login(cfg, "", LazyTokens(cfg.oauth, user)) or "")  # type: ignore[arg-type]
        time.sleep(0.05)
        refresh.write_text(oauth_server.issue_refresh(user))  # `oauth login` again: the newer file wins
        assert check_login(cfg, "", LazyTokens(cfg.oauth, user, keep)) is None  # type: ignore[arg-type]
    finally:
        oauth_server.rotate = False


def test_check_config_connect_logs_in_by_oauth(tmp_path: Path, dovecot_oauth: OAuthDovecot,
                                               oauth_server: OAuthServer, smtp_relay: SmtpRelay, bind: Bind) -> None:
    """`check-config --connect` logs in to the mailbox and to SMTP submission the way the daemon does."""
    import subprocess

    from tests.devkit.localoffice import SUBDOMAIND, write_config

    user, refresh = new_user(dovecot_oauth, oauth_server, tmp_path)
    data = config_data(tmp_path / "office", imap_port=dovecot_oauth.imap_port, imap_user=user, mailbox=user,
                       smtp_port=dovecot_oauth.submission_port, dns_port=bind.port, tsig_secret=bind.secret)
    imap = data["agency"][0]["imap"]
    del imap["password_file"]
    imap.update(auth="oauth2", oauth=oauth_table(oauth_server, refresh))
    data["smtp"].update(user=user, auth="oauth2", oauth=oauth_table(oauth_server, refresh, mechanism="oauthbearer"))
    path = write_config(tmp_path / "office" / "config.toml", data)

    def connect() -> list[str]:
        done = subprocess.run([str(SUBDOMAIND), "check-config", "--connect", str(path)], capture_output=True,
                              text=True, timeout=120)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        checks = [line for line in done.stdout.splitlines() if line.startswith(("OK ", "GAGAL"))]
        assert len(checks) > 2, (done.stdout, done.stderr)  # past the configuration's own warnings
        return checks[:2]

    imap_line, smtp_line = connect()
    assert imap_line.startswith("OK    IMAP") and "OAuth 2.0 XOAUTH2" in imap_line, imap_line
    assert smtp_line.startswith("OK    SMTP") and "(OAuth 2.0)" in smtp_line, smtp_line
    oauth_server.revoke(user)
    imap_line, smtp_line = connect()
    assert imap_line.startswith("GAGAL IMAP") and "dicabut" in imap_line and "oauth login" in imap_line, imap_line
    assert smtp_line.startswith("GAGAL SMTP") and "dicabut" in smtp_line, smtp_line
