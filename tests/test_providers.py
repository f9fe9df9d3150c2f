"""Mail provider presets: what `provider` sets, the OAuth settings checked, and IDLE re-issued within
RFC 2177's 29 minutes. (Gmail's labels-as-folders: tests/test_intake.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from subdomaind.daemon.config import ImapConfig, OAuthConfig, SmtpConfig


@pytest.mark.parametrize(("provider", "imap", "smtp"), [
    ("microsoft365", ("outlook.office365.com", 993, "implicit"), ("smtp.office365.com", 587, "starttls")),
    ("google", ("imap.gmail.com", 993, "implicit"), ("smtp.gmail.com", 587, "starttls")),
])
def test_provider_sets_host_port_and_tls(provider: str, imap: tuple[str, int, str], smtp: tuple[str, int, str]) -> None:
    i = ImapConfig.model_validate({"provider": provider, "user": "layanan@x.go.id", "password_file": "/p"})
    s = SmtpConfig.model_validate({"provider": provider, "user": "layanan@x.go.id", "password_file": "/p"})
    assert (i.host, i.port, i.tls) == imap and (s.host, s.port, s.tls) == smtp


def test_preset_gives_way_to_what_the_file_says() -> None:
    i = ImapConfig.model_validate({"provider": "google", "user": "u", "port": 1993, "processed_folder": "Selesai"})
    assert (i.host, i.port, i.processed_folder) == ("imap.gmail.com", 1993, "Selesai")
    assert ImapConfig.model_validate({"provider": "google", "user": "u"}).processed_folder is None
    z = ImapConfig.model_validate({"provider": "zimbra", "host": "mail.kab.go.id", "user": "u"})
    assert (z.port, z.tls) == (993, "implicit")
    with pytest.raises(ValidationError, match="host"):
        ImapConfig.model_validate({"provider": "zimbra", "user": "u"})  # Zimbra is the office's own server


def test_oauth_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"\[oauth\] table"):
        ImapConfig.model_validate({"provider": "microsoft365", "user": "u", "auth": "oauth2"})
    with pytest.raises(ValidationError, match="client_id"):
        OAuthConfig.model_validate({"provider": "microsoft365"})
    with pytest.raises(ValidationError, match="service_account"):
        OAuthConfig.model_validate({"provider": "microsoft365", "client_id": "x", "flow": "service_account"})
    with pytest.raises(ValidationError, match="token_url"):
        OAuthConfig.model_validate({"provider": "generic", "client_id": "x"})


def test_idle_is_reissued_within_29_minutes() -> None:
    """RFC 2177: a server may drop a client idle 30 minutes; the refresh is bounded below that."""
    assert ImapConfig.model_validate({"host": "h", "user": "u"}).idle_refresh_seconds == 600
    ImapConfig.model_validate({"host": "h", "user": "u", "idle_refresh_seconds": 1740})
    with pytest.raises(ValidationError):
        ImapConfig.model_validate({"host": "h", "user": "u", "idle_refresh_seconds": 1800})


def test_check_config_names_an_unreadable_or_open_oauth_secret(tmp_path: Path) -> None:
    from subdomaind.daemon.config import parse_config
    from subdomaind.daemon.validate import problems
    from tests.devkit.localoffice import config_data

    data = config_data(tmp_path)
    imap = data["agency"][0]["imap"]
    del imap["password_file"]
    secret = tmp_path / "m365-client-secret"
    imap.update(auth="oauth2", oauth={"provider": "microsoft365", "client_id": "x", "flow": "client_credentials",
                                      "client_secret_file": str(secret),
                                      "refresh_token_file": str(tmp_path / "belum-login")})
    cfg = parse_config(data)
    assert [p for p in problems(cfg) if "oauth" in p] == [
        f"agency[0].imap.oauth.client_secret_file: cannot read {secret}: No such file or directory"]
    secret.write_text("rahasia")
    secret.chmod(0o644)
    assert [p for p in problems(cfg) if "oauth" in p] == [
        f"agency[0].imap.oauth.client_secret_file: {secret} can be read by every user of this machine; "
        f"run: chmod 0600 {secret}"]
    secret.chmod(0o600)
    assert [p for p in problems(cfg) if "oauth" in p] == []  # the refresh token comes with `oauth login`
