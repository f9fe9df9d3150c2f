"""The settings the workflows read: one agency's officials, letters, signing, DNS, vouching and working time.

These are pydantic models so the one TOML file is checked in one pass; daemon/config.py composes them with
what only the daemon reads (mailbox logins, SMTP, metrics) into `Config` and reports every problem with its
key. Workflows read their settings from this module, never from the daemon's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def credential_path(path: Path) -> Path:
    """A relative secret path is a systemd credential name when the unit passes credentials
    (LoadCredential= sets $CREDENTIALS_DIRECTORY); otherwise the path as given."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(cred_dir) / path if not path.is_absolute() and cred_dir else path


class StrictModel(BaseModel):
    """A settings table: unknown keys are errors (a typo must not pass silently), values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(StrictModel):
    """A secret read from a file (systemd LoadCredential, a 0600 file) or an environment variable."""

    password_file: Path | None = None
    password_env: str | None = None

    def read_secret(self) -> str | None:
        if self.password_file is not None:
            return credential_path(self.password_file).read_text(encoding="utf-8").strip()
        if self.password_env is not None:
            return os.environ.get(self.password_env)
        return None


class DnsConfig(StrictModel):
    primary: str | None = None  # where updates go; None = the zone's SOA MNAME (RFC 2136 section 4)
    port: int = Field(53, ge=1, le=65535)
    tsig_key_name: str
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224"] = "hmac-sha256"
    tsig_secret_file: Path
    hosting_ip: str
    ttl: int = Field(3600, ge=60, le=604800)
    # Authoritative servers to verify against, "host" or "host:port"; empty = every NS of the zone.
    verify_servers: list[str] = []
    verify_timeout_seconds: float = Field(30.0, gt=0)
    name_servers: list[str] = []  # NS names told to the requester; empty = read from the zone

    def read_secret(self) -> str:
        return credential_path(self.tsig_secret_file).read_text(encoding="utf-8").strip()


class LetterSigningConfig(SecretSource):
    """The agency's signing certificate for letters (PAdES): a PKCS#12 file or a PKCS#11 token.

    The PKCS#12 password or the token PIN comes from `password_file` / `password_env` (a credential).
    `verify_url` is what the QR code in the signature block encodes; `{id}` becomes the letter's
    register id, `{sha256}` the SHA-256 of the letter before signing and `{number}` its number.
    Empty: the QR code carries the document id and hash themselves.
    """

    pkcs12_file: Path | None = None
    pkcs11_module: Path | None = None  # e.g. /usr/lib/softhsm/libsofthsm2.so, or the vendor's token library
    pkcs11_token: str = ""  # the token label
    pkcs11_key: str = ""  # the key (and certificate) label on the token
    verify_url: str = ""
    reason: str = "Surat dinas elektronik"

    @model_validator(mode="after")
    def _one_source(self) -> LetterSigningConfig:
        if self.pkcs12_file is not None and self.pkcs11_module is not None:
            raise ValueError("give pkcs12_file or pkcs11_module, not both")
        if self.pkcs11_module is not None and not (self.pkcs11_token and self.pkcs11_key):
            raise ValueError("pkcs11_module needs pkcs11_token and pkcs11_key (the labels on the token)")
        if (self.pkcs12_file or self.pkcs11_module) and self.password_file is None and self.password_env is None:
            raise ValueError("set password_file or password_env for the PKCS#12 password or token PIN")
        return self

    @property
    def configured(self) -> bool:
        return self.pkcs12_file is not None or self.pkcs11_module is not None


class LetterSignerConfig(StrictModel):
    """Who signs one kind of letter: the head's jabatan, or "a.n." the head with the signer's own jabatan,
    optionally "u.b." a lower official (Tata Naskah Dinas). Empty fields fall back to the agency's signer."""

    prefix: Literal["", "a.n.", "Plh.", "Plt."] = ""
    own_title: str = ""  # with "a.n.": the jabatan signing on behalf of the head ("Kepala Bidang Aplikasi Informatika")
    ub_title: str = ""  # "u.b.": the jabatan that signs for `own_title` ("Kepala Seksi Tata Kelola")
    name: str = ""
    rank: str = ""
    nip: str = ""

    @model_validator(mode="after")
    def _ub_needs_an(self) -> LetterSignerConfig:
        if self.ub_title and not (self.prefix == "a.n." and self.own_title):
            raise ValueError('"u.b." needs prefix = "a.n." and own_title (whom the u.b. signer signs for)')
        if self.own_title and self.prefix != "a.n.":
            raise ValueError('own_title is only printed with prefix = "a.n."')
        return self


class LetterConfig(StrictModel):
    """The kop surat and signature block of the agency's letters (Tata Naskah Dinas)."""

    kop: list[str] = []
    address_line: str = ""
    city: str = ""
    number_pattern: str = "555/{seq}/406.020/{year}"
    signer_title: str = "Kepala Dinas Komunikasi dan Informatika"
    signer_name: str = ""
    signer_rank: str = ""
    signer_nip: str = ""
    tembusan: list[str] = []
    logo: Path | None = None  # the coat of arms (lambang daerah) at the left of the kop, a PNG
    # Who signs each kind of letter ("final", "rejection", "incomplete"); unnamed kinds: the agency's signer.
    signers: dict[Literal["final", "rejection", "incomplete"], LetterSignerConfig] = {}
    signing: LetterSigningConfig = LetterSigningConfig()


class AuthConfig(StrictModel):
    """Whether a decision must be vouched for by the receiving server (see workflows/vouch.py).

    Safe by default: unless `require = "none"` is written, a decision needs our MTA's Authentication-Results
    (with the pinned `authserv_id`) or a DKIM signature that verifies here. Without `authserv_id`,
    `authres_or_dkim` means DKIM checked here only."""

    require: Literal["none", "authres", "dkim", "authres_or_dkim"] = "authres_or_dkim"
    authserv_id: str | None = None  # our MTA's id in Authentication-Results, e.g. "mx.trenggalekkab.go.id"

    @model_validator(mode="after")
    def _pinned(self) -> AuthConfig:
        if self.require == "authres" and not self.authserv_id:
            raise ValueError("authserv_id is required when Authentication-Results are trusted")
        return self


class VocabularyConfig(StrictModel):
    """Per-agency reply keywords (parsers.model.Vocabulary); a list given here replaces that default list."""

    approve: list[str] | None = None
    reject: list[str] | None = None
    revise: list[str] | None = None
    problem: list[str] | None = None
    cancel: list[str] | None = None
    confirm: list[str] | None = None

    @field_validator("*")
    @classmethod
    def _words(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not w.strip() for w in v)):
            raise ValueError("a keyword list must name at least one non-empty word")
        return [w.strip().lower() for w in v] if v is not None else None


class AgencySettings(StrictModel):
    """One agency as the workflows see it; daemon.config.AgencyConfig adds its mailbox login."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{1,31}$")
    name: str
    zone: str
    sop: str
    address: str  # the office mailbox address: From of our mail, base of the Reply-To sub-address
    timezone: str = "Asia/Jakarta"
    ticket_prefix: str = Field("SD", pattern=r"^[A-Z]{1,6}$")
    dns: DnsConfig
    actors: dict[str, list[str]]
    # Acting officials (Plt/Plh): role -> addresses allowed to answer in that role's place.
    delegates: dict[str, list[str]] = {}
    # Officials' names by address ("Drs. Budi Santoso, M.Si."), for the history in step mails; the jabatan
    # comes from the SOP role. An address without a name is shown by its jabatan alone.
    names: dict[str, str] = {}
    digest_recipients: list[str] = []
    reserved_names: list[str] = []
    letter: LetterConfig = LetterConfig()
    username_pattern: str = "{subdomain}"
    auth: AuthConfig = AuthConfig()
    # Working time for Mutu Baku clocks (workflows/worktime.py): office hours, working weekdays (0 = Monday),
    # and a local override file of extra holidays / working days (TOML: libur = [...], masuk = [...]).
    office_start: str = Field("07:30", pattern=r"^\d{2}:\d{2}$")
    office_end: str = Field("16:00", pattern=r"^\d{2}:\d{2}$")
    office_weekdays: list[int] = [0, 1, 2, 3, 4]
    holiday_overrides: Path | None = None
    digest_time: str = Field("07:00", pattern=r"^\d{2}:\d{2}$")
    vocabulary: VocabularyConfig = VocabularyConfig()
    # The monthly report goes out on the first working day of each month, at digest_time.
    monthly_report: bool = True

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        v = v.strip().rstrip(".").lower()
        if "." not in v:
            raise ValueError("zone must be a domain such as trenggalekkab.go.id")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use Asia/Jakarta, Asia/Makassar or Asia/Jayapura)") from exc
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "@" not in v or "+" in v.split("@")[0]:
            raise ValueError("must be a plain address such as layanan@trenggalekkab.go.id")
        return v.lower()

    @field_validator("names")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for addr, name in v.items():
            if "@" not in addr or not name.strip():
                raise ValueError(f"{addr!r}: a name is given for an e-mail address, and is not empty")
        return {a.lower(): " ".join(n.split()) for a, n in v.items()}

    @field_validator("actors", "delegates")
    @classmethod
    def _actors(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, addrs in v.items():
            for a in addrs:
                if "@" not in a:
                    raise ValueError(f"{role}: {a!r} is not an e-mail address")
        return {role: [a.lower() for a in addrs] for role, addrs in v.items()}


class UnverifiedMailConfig(StrictModel):
    """Mail sent because of a message from a sender no official is (a unit, an outsider, a forger): at most
    this many per clock hour (UTC) for one sender address, for one sender domain, and for the whole agency.
    Over a cap, the message is handled and its request stored, but its mail is held and listed in the
    digest."""

    per_sender_per_hour: int = Field(30, ge=1)
    per_domain_per_hour: int = Field(60, ge=1)
    per_agency_per_hour: int = Field(200, ge=1)


class WorkflowConfig(StrictModel):
    undo_window_minutes: float = Field(10.0, ge=0)
    token_days: float = Field(7.0, gt=0)
    daily_cap_per_address: int = Field(50, ge=1)
    # Staff get one alert mail when intake has failed for this long (status shows it at once).
    intake_alert_minutes: float = Field(30.0, gt=0)
    quarantine_max_retries: int = Field(3, ge=1)
    unverified_mail: UnverifiedMailConfig = UnverifiedMailConfig()


class Settings(Protocol):
    """What the workflows read from the whole configuration (`daemon.config.Config` is one)."""

    @property
    def workflow(self) -> WorkflowConfig: ...
