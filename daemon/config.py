"""Load and check the one TOML configuration file: every problem reported with its key, secrets never inline.

`load_config(path)` returns a validated `Config` or raises `ConfigError` whose `problems` are
`"key.path: what is wrong"` lines; `subdomaind check-config` prints them and the daemon refuses to start
with the same text.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from subdomaind.workflows.settings import (
    AgencySettings,
    AuthConfig,
    DnsConfig,
    LetterConfig,
    LetterSignerConfig,
    LetterSigningConfig,
    SecretSource,
    UnverifiedMailConfig,
    VocabularyConfig,
    WorkflowConfig,
    credential_path,
)
from subdomaind.workflows.settings import StrictModel as _Strict
from subdomaind.workflows.sop import SopError, load_sop
from subdomaind.workflows.textfiles import TextFileError, read_utf8

# The agency's settings for the workflows live in workflows/settings.py; they are composed here and named
# from here too, so `from subdomaind.daemon.config import LetterConfig` keeps working.
__all__ = [
    "AgencyConfig", "AgencySettings", "AuthConfig", "Config", "ConfigError", "DnsConfig", "HostingConfig",
    "ImapConfig", "LetterConfig", "LetterSignerConfig", "LetterSigningConfig", "LimitsConfig", "MetricsConfig",
    "OAuthConfig", "ScaleConfig", "SecretSource", "SecretsConfig", "SmtpConfig", "UnverifiedMailConfig",
    "VocabularyConfig", "WorkflowConfig", "config_warnings", "load_config", "parse_config",
]

TlsMode = Literal["implicit", "starttls", "none"]


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _read_path(path: Path) -> str:
    return credential_path(path).read_text(encoding="utf-8").strip()


class OAuthConfig(_Strict):
    """OAuth 2.0 for a mailbox or SMTP login (daemon/oauth.py). Secrets come from files (or systemd
    credentials) or the environment, like passwords; never inline."""

    provider: Literal["microsoft365", "google", "generic"]
    # refresh_token: delegated, from `subdomaind oauth login`; client_credentials: app-only (Microsoft 365,
    # generic); service_account: Google domain-wide delegation.
    flow: Literal["refresh_token", "client_credentials", "service_account"] = "refresh_token"
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    client_id: str | None = None
    tenant: str | None = None  # Microsoft 365: the directory (tenant) id or domain
    # Microsoft 365: the sign-in host; a national cloud's (https://login.microsoftonline.us) in its place
    authority: str = "https://login.microsoftonline.com"
    token_url: str | None = None  # generic: the RFC 6749 token endpoint
    device_url: str | None = None  # generic: the RFC 8628 device authorization endpoint
    scope: str | None = None  # generic
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    refresh_token_file: Path | None = None  # also where `oauth login` stores it (mode 0600)
    refresh_token_env: str | None = None
    service_account_file: Path | None = None  # Google: the service account's JSON key

    @model_validator(mode="after")
    def _complete(self) -> OAuthConfig:
        if self.flow == "service_account" and (self.provider != "google" or self.service_account_file is None):
            raise ValueError("flow 'service_account' is for provider 'google' with service_account_file")
        if self.flow == "client_credentials" and self.provider == "google":
            raise ValueError("Google has no client credentials for mail: use flow 'service_account'")
        if self.provider == "generic" and not self.token_url:
            raise ValueError("provider 'generic' needs token_url")
        if self.provider != "google" and not self.client_id:
            raise ValueError("client_id is required (the application id of the app registration)")
        return self

    @staticmethod
    def resolved(path: Path | None) -> Path | None:
        return None if path is None else credential_path(path)

    def read_client_secret(self) -> str | None:
        if self.client_secret_file is not None:
            return _read_path(self.client_secret_file)
        return os.environ.get(self.client_secret_env) if self.client_secret_env else None

    def read_refresh_token(self) -> str | None:
        if self.refresh_token_file is not None:
            try:
                return _read_path(self.refresh_token_file) or None
            except FileNotFoundError:
                return None  # not logged in yet: `subdomaind oauth login` writes it
        return os.environ.get(self.refresh_token_env) if self.refresh_token_env else None


Provider = Literal["microsoft365", "google", "zimbra", "generic"]

# What `provider = "..."` sets unless the table says otherwise: the provider's servers, ports and TLS.
# Zimbra and generic servers are the office's own, so only the host is theirs to give.
IMAP_PRESETS: dict[str, dict[str, object]] = {
    "microsoft365": {"host": "outlook.office365.com", "port": 993, "tls": "implicit"},
    # Gmail shows labels as folders: a moved message keeps its other labels, so the processed mail stays
    # flagged where it is rather than copied to a label (it would show up under two names).
    "google": {"host": "imap.gmail.com", "port": 993, "tls": "implicit", "processed_folder": None},
    "zimbra": {"port": 993, "tls": "implicit"},
    "generic": {},
}
SMTP_PRESETS: dict[str, dict[str, object]] = {
    "microsoft365": {"host": "smtp.office365.com", "port": 587, "tls": "starttls"},
    "google": {"host": "smtp.gmail.com", "port": 587, "tls": "starttls"},
    "zimbra": {"port": 587, "tls": "starttls"},
    "generic": {},
}


def _apply_preset(data: object, presets: dict[str, dict[str, object]]) -> object:
    if isinstance(data, dict) and isinstance(data.get("provider"), str) and data["provider"] in presets:
        return {**presets[data["provider"]], **data}
    return data


class ImapConfig(SecretSource):
    provider: Provider | None = None
    auth: Literal["password", "oauth2"] = "password"
    oauth: OAuthConfig | None = None
    host: str
    port: int = Field(993, ge=1, le=65535)
    user: str
    tls: TlsMode = "implicit"
    ca_file: Path | None = None
    folder: str = "INBOX"
    quarantine_folder: str = "Karantina"
    processed_folder: str | None = None  # None: processed mail stays in the folder, flagged
    idle: bool = True
    poll_seconds: float = Field(30.0, gt=0)
    # RFC 2177 asks clients to re-issue IDLE at least every 29 minutes; we do it well before.
    idle_refresh_seconds: float = Field(600.0, gt=0, le=1740)
    timeout_seconds: float = Field(30.0, gt=0)

    _preset = model_validator(mode="before")(lambda data: _apply_preset(data, IMAP_PRESETS))

    @model_validator(mode="after")
    def _auth(self) -> ImapConfig:
        if self.auth == "oauth2" and self.oauth is None:
            raise ValueError("auth = 'oauth2' needs an [oauth] table (provider, client_id, ...)")
        return self


class SmtpConfig(SecretSource):
    provider: Provider | None = None
    auth: Literal["password", "oauth2"] = "password"
    oauth: OAuthConfig | None = None
    host: str
    port: int = Field(587, ge=1, le=65535)
    user: str | None = None
    tls: TlsMode = "starttls"
    ca_file: Path | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    # The name we give in EHLO; unset, the address domain of the first agency (never a lookup of our host).
    helo_name: str | None = None
    # Outbox retries: base * 2^(attempt-1), jittered, capped (a recovering server is not stampeded).
    retry_base_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    # Mails in flight at once, each on its own connection; 1 for a server that allows one per client.
    connections: int = Field(3, ge=1, le=16)
    # At most this many mails a minute toward the office MTA (unset: no limit): 548 digests at 07:00
    # must not trip the relay's rate limits or look like a burst of spam.
    max_per_minute: int | None = Field(None, ge=1)

    _preset = model_validator(mode="before")(lambda data: _apply_preset(data, SMTP_PRESETS))

    @model_validator(mode="after")
    def _auth(self) -> SmtpConfig:
        if self.auth == "oauth2" and (self.oauth is None or not self.user):
            raise ValueError("auth = 'oauth2' needs user and an [oauth] table (provider, client_id, ...)")
        return self


def config_warnings(cfg: Config, *, advice: bool = True) -> list[str]:
    """What is allowed but unsafe (`check-config` prints it), and with `advice` what is safe but could be
    better (the log at start): `"key.path: why"` lines."""
    warnings: list[str] = []
    for i, ag in enumerate(cfg.agencies):
        if ag.auth.require == "none":
            warnings.append(
                f"agency[{i}].auth.require: 'none': decisions are not vouched for by the mail server; anyone "
                "holding a copy of a step mail can approve with a forged From (the daily digest says so too)")
        elif advice and ag.auth.require == "authres_or_dkim" and not ag.auth.authserv_id:
            warnings.append(
                f"agency[{i}].auth.authserv_id: not set: only DKIM signatures verified here vouch for a sender; "
                "set the office MTA's authserv-id to trust its Authentication-Results (SPF, DMARC) too")
    return warnings


class AgencyConfig(AgencySettings):
    """One agency: its settings for the workflows (workflows/settings.py) and the mailbox it is read from."""

    imap: ImapConfig


class HostingConfig(_Strict):
    backend: Literal["none", "command"] = "none"
    argv: list[str] = []  # for "command": argv template, {username} {fqdn} {ip} {subdomain} substituted
    secret_via: Literal["stdin", "env"] = "stdin"
    timeout_seconds: float = Field(60.0, gt=0)


class LimitsConfig(_Strict):
    """What one message may cost to read (parsers.model.Limits); over a bound the sender is told, in Indonesian."""

    max_message_bytes: int = Field(40 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_parts: int = Field(200, ge=2)
    max_pdf_pages: int = Field(10, ge=1)
    max_ocr_pages: int = Field(3, ge=0)
    max_decompressed_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_depth: int = Field(20, ge=2)
    max_headers: int = Field(1000, ge=10)
    ocr: bool = True
    # Parser processes beside the main loop (0: parse in the daemon's own process), and how long one
    # message may take to parse before its worker is replaced and the message quarantined.
    parse_workers: int = Field(1, ge=0, le=16)
    parse_timeout_seconds: float = Field(120.0, gt=0)


class ScaleConfig(_Strict):
    """Many agencies in one process: how many mailbox logins may be under way at once (start-up, reconnects),
    so a restart does not open hundreds of TLS handshakes against one Dovecot in the same second."""

    login_concurrency: int = Field(8, ge=1, le=64)


class MetricsConfig(_Strict):
    """Prometheus metrics over HTTP (daemon/metrics.py); unset, no port is opened."""

    listen: str | None = Field(None, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


class SecretsConfig(_Strict):
    """The key that encrypts PIC passwords at rest (workflows/secretbox.py): a credential beside the IMAP,
    SMTP and TSIG secrets, never in the state directory that backups take. `subdomaind keygen FILE`."""

    key_file: Path | None = None


class Config(_Strict):
    state_dir: Path = Path("/var/lib/subdomaind")
    database_url: str | None = None
    smtp: SmtpConfig
    agencies: list[AgencyConfig] = Field(alias="agency", min_length=1)
    hosting: HostingConfig = HostingConfig()
    workflow: WorkflowConfig = WorkflowConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    scale: ScaleConfig = ScaleConfig()
    secrets: SecretsConfig = SecretsConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        ids = [a.id for a in self.agencies]
        if len(ids) != len(set(ids)):
            raise ValueError("agency ids must be unique")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'subdomaind.db'}"

    def agency(self, agency_id: str) -> AgencyConfig:
        for a in self.agencies:
            if a.id == agency_id:
                return a
        raise KeyError(agency_id)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item == "agency" and not parts:
            parts.append("agency")
        elif isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top)"


def parse_config(data: dict[str, object], base_dir: Path | None = None) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    problems = _semantic_problems(cfg, base_dir)
    if problems:
        raise ConfigError(problems)
    return cfg


def _semantic_problems(cfg: Config, base_dir: Path | None) -> list[str]:
    problems: list[str] = []
    for i, ag in enumerate(cfg.agencies):
        key = f"agency[{i}]"
        try:
            sop = load_sop(ag.sop)
        except SopError as exc:
            problems.append(f"{key}.sop: {exc}")
            sop = None
        if sop is not None:
            for role in sorted(sop.actor_roles()):
                if not ag.actors.get(role):
                    problems.append(f"{key}.actors.{role}: the SOP {ag.sop!r} needs an address for this role")
        for role in ag.delegates:
            if sop is not None and role not in sop.roles:
                problems.append(f"{key}.delegates.{role}: no such role in SOP {ag.sop!r}")
        if ag.imap.tls == "none" and not _loopback(ag.imap.host):
            problems.append(f"{key}.imap.tls: 'none' is only allowed to a loopback host, not {ag.imap.host!r}")
        if ag.imap.auth == "oauth2":
            pass  # its secrets: daemon/validate.py, with the others
        elif ag.imap.password_file is None and ag.imap.password_env is None:
            problems.append(f"{key}.imap: set password_file or password_env (never inline)")
        # Whether the secrets can be read is checked by daemon/validate.py: read-only commands need none.
        for label, path in (("imap.ca_file", ag.imap.ca_file),):
            if path is not None and not _readable(path):
                problems.append(f"{key}.{label}: cannot read {path}")
        try:
            ipaddress.ip_address(ag.dns.hosting_ip)
        except ValueError:
            problems.append(f"{key}.dns.hosting_ip: {ag.dns.hosting_ip!r} is not an IP address")
        if not ag.digest_recipients:
            problems.append(f"{key}.digest_recipients: name at least one staff address for the daily digest")
        problems += [f"{key}.letter.{p}" for p in _letter_problems(ag.letter)]
    if cfg.smtp.ca_file is not None and not _readable(cfg.smtp.ca_file):
        problems.append(f"smtp.ca_file: cannot read {cfg.smtp.ca_file}")
    if (cfg.smtp.user and cfg.smtp.auth == "password" and cfg.smtp.password_file is None
            and cfg.smtp.password_env is None):
        problems.append("smtp: a user is set; set password_file or password_env too")
    if cfg.smtp.tls == "none" and not _loopback(cfg.smtp.host):
        problems.append(f"smtp.tls: 'none' is only allowed to a loopback host, not {cfg.smtp.host!r}")
    if cfg.hosting.backend == "command" and not cfg.hosting.argv:
        problems.append("hosting.argv: the command backend needs an argv template")
    problems += _key_problems(cfg.secrets)
    return problems


def _letter_problems(letter: LetterConfig) -> list[str]:
    out: list[str] = []
    sig = letter.signing
    for label, path in (("logo", letter.logo), ("signing.pkcs12_file", sig.pkcs12_file),
                        ("signing.pkcs11_module", sig.pkcs11_module)):
        if path is not None and not _readable(path):
            out.append(f"{label}: cannot read {path}")
    if sig.configured and sig.password_file is not None and not _readable(sig.password_file):
        out.append(f"signing.password_file: cannot read {sig.password_file}")
    if sig.configured and sig.password_env is not None and sig.password_env not in os.environ:
        out.append(f"signing.password_env: environment variable {sig.password_env} is not set")
    return out


def _key_problems(sec: SecretsConfig) -> list[str]:
    # Whether the key file can be read is checked by daemon/validate.py: read-only commands need no secret.
    if sec.key_file is None:
        return ["secrets.key_file: name the key that encrypts PIC passwords at rest; create it with "
                "`subdomaind keygen /etc/subdomaind/credentials/pic-secret-key`"]
    return []


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable(path: Path) -> bool:
    try:
        with credential_path(path).open("rb"):
            return True
    except OSError:
        return False


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(read_utf8(path))
    except TextFileError as exc:
        raise ConfigError([str(exc)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    # Relative paths in the file are relative to the file, so a config dir can be moved whole.
    _resolve_paths(data, path.parent)
    return parse_config(data, path.parent)


_PATH_KEYS = {"password_file", "tsig_secret_file", "ca_file", "state_dir", "holiday_overrides", "key_file",
              "pkcs12_file", "logo", "client_secret_file", "refresh_token_file", "service_account_file"}


def _resolve_paths(node: object, base: Path) -> None:
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in _PATH_KEYS and isinstance(value, str) and not os.path.isabs(value):
                if key not in ("state_dir", "holiday_overrides", "logo") and os.environ.get("CREDENTIALS_DIRECTORY") \
                        and "/" not in value:
                    continue  # a bare credential name: looked up in $CREDENTIALS_DIRECTORY
                node[key] = str((base / value).resolve())
            else:
                _resolve_paths(value, base)
    elif isinstance(node, list):
        for item in node:
            _resolve_paths(item, base)
