"""Check everything the daemon will use before it starts, so a bad configuration is refused, not crashed on.

`load_checked(path)` is the one entry used by `check-config`, by the daemon's start (`run`, `once` and every
command that writes) and by SIGHUP: `load_config` (types and keys) and then `problems(cfg)`, which checks
what pydantic cannot: the secrets (present, non-empty, not readable by others; the TSIG secret a bare base64
string or a whole `tsig-keygen` stanza), the working time, every address (email-validator, syntax only,
never DNS), the hosting argv's placeholders, `state_dir`, the database driver, the letter's signer. Each
problem is one line, `key: what is wrong; how to fix it`.

Read-only commands (`status`, `show`, `digest --preview`, `quarantine list/show`) load with
`secrets=False`: staff who may not read the secrets still get a checked configuration.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import resource
import stat
import string
import sys
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from subdomaind.daemon.config import Config, ConfigError, _resolve_paths, load_config
from subdomaind.workflows.provision import DnsError, _split_hostport
from subdomaind.workflows.secretbox import SecretBox, SecretKeyError
from subdomaind.workflows.settings import credential_path
from subdomaind.workflows.textfiles import TextFileError, read_utf8
from subdomaind.workflows.worktime import CalendarError, calendar_for, load_overrides

HOSTING_PLACEHOLDERS = ("username", "fqdn", "ip", "subdomain")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224")
# The signer block of examples/*.toml: a copied example must not sign real letters with it.
PLACEHOLDER_SIGNERS = ("(nama kepala dinas)", "nama kepala dinas", "(nama pejabat)")
DEFAULT_CREDENTIALS = "credentials"  # /etc/subdomaind/credentials, the unit's LoadCredential= sources


def load_checked(path: str | Path, *, secrets: bool = True) -> Config:
    """The configuration at `path`, checked for everything the daemon uses; `ConfigError` otherwise."""
    use_default_credentials(path)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        # The SOP's roles and the like were refused; when the types are right, report ours in the same run.
        typed = _typed_only(path)
        raise ConfigError(exc.problems + (problems(typed, secrets=secrets) if typed is not None else [])) from None
    found = problems(cfg, secrets=secrets)
    if found:
        raise ConfigError(found)
    return cfg


def _typed_only(path: str | Path) -> Config | None:
    """The configuration when its keys and types are right (whatever else is wrong), else None."""
    try:
        data = tomllib.loads(read_utf8(path))
        _resolve_paths(data, Path(path).parent)
        return Config.model_validate(data)
    except (TextFileError, tomllib.TOMLDecodeError, ValidationError):
        return None


def use_default_credentials(config_path: str | Path) -> None:
    """Outside systemd, a bare secret name is looked up where the unit's LoadCredential= takes it from
    (`credentials/` beside the configuration), so `check-config` before the unit exists reads the same files."""
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return
    creds = Path(config_path).resolve().parent / DEFAULT_CREDENTIALS
    try:
        if creds.is_dir():
            os.environ["CREDENTIALS_DIRECTORY"] = str(creds)
    except OSError:
        pass


def problems(cfg: Config, *, secrets: bool = True) -> list[str]:
    out: list[str] = []
    for i, ag in enumerate(cfg.agencies):
        key = f"agency[{i}]"
        out += _addresses(key, ag)
        out += _working_time(key, ag)
        out += _signer(f"{key}.letter", ag.letter)
        out += _verify_servers(f"{key}.dns", ag.dns)
        if secrets:
            out += _mailbox_secret(f"{key}.imap", ag.imap)
            out += _oauth_secrets(f"{key}.imap.oauth", ag.imap)
            try:
                read_tsig(ag.dns)
            except ConfigError as exc:
                out += [f"{key}.dns.tsig_secret_file: {p}" for p in exc.problems]
    if secrets and cfg.smtp.user:
        out += _mailbox_secret("smtp", cfg.smtp)
        out += _oauth_secrets("smtp.oauth", cfg.smtp)
    if secrets:
        out += _pic_key(cfg)
    out += _hosting(cfg)
    out += _database(cfg)
    out += _metrics(cfg)
    if secrets:
        out += _state_dir(cfg)
    return out


# --- size -----------------------------------------------------------------------------------------

# Descriptors besides the mailboxes: database pool (5 + 10) and the lease connection, SMTP connections, the
# parser workers' pipes, metrics, spool files, journald, with room to spare.
BASE_DESCRIPTORS = 50


def descriptors_needed(cfg: Config) -> int:
    """About what the daemon opens: per agency its intake connection and, with IDLE, its watcher's."""
    return BASE_DESCRIPTORS + sum(2 if ag.imap.idle else 1 for ag in cfg.agencies)


def descriptor_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def warnings(cfg: Config, limit: int | None = None) -> list[str]:
    """What would not stop the daemon today but will hurt at this size: said by check-config and at start."""
    out: list[str] = []
    need = descriptors_needed(cfg)
    have = descriptor_limit() if limit is None else limit
    if need > have:
        out.append(f"{len(cfg.agencies)} agencies need about {need} file descriptors, but this process may open "
                   f"only {have} (ulimit -n): set LimitNOFILE={max(8192, 2 * need)} in the unit "
                   f"(docs/PANDUAN.md, large deployment)")
    return out


# --- secrets --------------------------------------------------------------------------------------


def read_secret_file(path: Path) -> str:
    """A secret file's text: refused when missing, unreadable, empty, or readable by others."""
    p = credential_path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror}"]) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError([f"{p} is not a regular file"])
    if st.st_mode & 0o007:
        raise ConfigError([f"{p} can be read by every user of this machine; run: chmod 0600 {p}"])
    try:
        text = p.read_bytes().decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p} is not UTF-8 text; write the secret again as plain text"]) from None
    if not text:
        raise ConfigError([f"{p} is empty; write the secret into it"])
    return text


def _pic_key(cfg: Config) -> list[str]:
    """The key that seals PIC passwords at rest: readable, not readable by others, a valid key."""
    key_file = getattr(getattr(cfg, "secrets", None), "key_file", None)
    if key_file is None:
        return []  # daemon/config.py names the missing key
    try:
        read_secret_file(key_file)
        SecretBox.from_file(key_file)
    except ConfigError as exc:
        return [f"secrets.key_file: {p}" for p in exc.problems]
    except SecretKeyError as exc:
        return [f"secrets.key_file: {exc}"]
    return []


def _mailbox_secret(key: str, src: Any) -> list[str]:
    password_file = getattr(src, "password_file", None)
    password_env = getattr(src, "password_env", None)
    if password_file is not None:
        try:
            read_secret_file(password_file)
        except ConfigError as exc:
            return [f"{key}.password_file: {p}" for p in exc.problems]
    elif password_env is not None and password_env not in os.environ:
        return [f"{key}.password_env: environment variable {password_env} is not set"]
    elif password_env is not None and not os.environ[password_env].strip():
        return [f"{key}.password_env: environment variable {password_env} is empty"]
    return []


def _oauth_secrets(key: str, src: Any) -> list[str]:
    """With `auth = "oauth2"`: the client secret and the service account key, as any secret. The refresh
    token may still be missing (`subdomaind oauth login` writes it; until then the login says so), but a
    file that is there must be fit to hold it."""
    oauth = getattr(src, "oauth", None)
    if getattr(src, "auth", "password") != "oauth2" or oauth is None:
        return []
    out: list[str] = []
    for label in ("client_secret_file", "service_account_file", "refresh_token_file"):
        path = getattr(oauth, label)
        if path is None or (label == "refresh_token_file" and not credential_path(path).exists()):
            continue
        try:
            read_secret_file(path)
        except ConfigError as exc:
            out += [f"{key}.{label}: {p}" for p in exc.problems]
    return out


@dataclass(frozen=True)
class TsigKey:
    name: str | None  # from a pasted stanza; None for a bare secret
    algorithm: str
    secret: str


_STANZA = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(?P<body>.*?)\}\s*;?', re.S)
_ALGORITHM = re.compile(r'\balgorithm\s+"?([A-Za-z0-9-]+)"?\s*;')
_SECRET = re.compile(r'\bsecret\s+"([^"]*)"\s*;')


def parse_tsig(text: str, where: str, default_algorithm: str) -> TsigKey:
    """A TSIG secret file: the bare base64 secret, or the whole `tsig-keygen` output pasted in."""
    text = text.strip()
    m = _STANZA.search(text)
    if m:
        alg = _ALGORITHM.search(m.group("body"))
        sec = _SECRET.search(m.group("body"))
        if sec is None:
            raise ConfigError([f"{where}: the key stanza has no line secret \"...\";"])
        name, secret = m.group(1).rstrip("."), sec.group(1).strip()
        algorithm = alg.group(1).lower() if alg else default_algorithm
    else:
        name, secret, algorithm = None, text, default_algorithm
    if algorithm not in TSIG_ALGORITHMS:
        raise ConfigError([f"{where}: algorithm {algorithm!r} is not supported (use {', '.join(TSIG_ALGORITHMS)})"])
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise ConfigError([f"{where}: not a TSIG secret: write the base64 secret alone or the whole output of "
                           f"`tsig-keygen -a hmac-sha256 subdomaind`"])
    return TsigKey(name=name, algorithm=algorithm, secret=secret)


def read_tsig(dns: Any) -> TsigKey:
    """The agency's TSIG key from `tsig_secret_file` (`ConfigError` on any problem); the algorithm and
    secret of a pasted stanza win over the config, a different key name is refused."""
    text = read_secret_file(dns.tsig_secret_file)
    key = parse_tsig(text, str(credential_path(dns.tsig_secret_file)), dns.tsig_algorithm)
    if key.name is not None and key.name.lower() != str(dns.tsig_key_name).rstrip(".").lower():
        raise ConfigError([f"{credential_path(dns.tsig_secret_file)}: the pasted key is named {key.name!r} but "
                           f"tsig_key_name is {dns.tsig_key_name!r}; make them the same"])
    return key


# --- addresses, time, letter ----------------------------------------------------------------------


def address_problem(address: str) -> str | None:
    """Why `address` is not a usable e-mail address (syntax only: no DNS lookup), or None."""
    try:
        validate_email(address, check_deliverability=False, test_environment=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _addresses(key: str, ag: Any) -> list[str]:
    found: list[tuple[str, str]] = [(f"{key}.address", ag.address)]
    for field in ("actors", "delegates"):
        for role, addrs in (getattr(ag, field, None) or {}).items():
            found += [(f"{key}.{field}.{role}", a) for a in addrs]
    found += [(f"{key}.digest_recipients", a) for a in ag.digest_recipients]
    out = []
    for where, a in found:
        why = address_problem(a)
        if why:
            out.append(f"{where}: {a!r} is not an e-mail address ({why})")
    return out


_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")


def _clock(where: str, value: str) -> tuple[int | None, str | None]:
    m = _HHMM.match(str(value))
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        return None, f"{where}: {value!r} is not a time of day; write HH:MM between 00:00 and 23:59"
    return int(m.group(1)) * 60 + int(m.group(2)), None


def _working_time(key: str, ag: Any) -> list[str]:
    out = []
    start, p1 = _clock(f"{key}.office_start", ag.office_start)
    end, p2 = _clock(f"{key}.office_end", ag.office_end)
    _, p3 = _clock(f"{key}.digest_time", ag.digest_time)
    out += [p for p in (p1, p2, p3) if p]
    if start is not None and end is not None and end <= start:
        out.append(f"{key}.office_end: {ag.office_end} is not after office_start {ag.office_start}")
    days = list(ag.office_weekdays)
    if not days or any(not 0 <= d <= 6 for d in days):
        out.append(f"{key}.office_weekdays: {days} must name days 0 (Monday) to 6 (Sunday), at least one")
    if ag.holiday_overrides is not None:
        try:
            load_overrides(ag.holiday_overrides)
        except CalendarError as exc:
            out.append(f"{key}.holiday_overrides: {exc}")
    if not out:
        try:
            calendar_for(ag)
        except (CalendarError, ValueError) as exc:
            out.append(f"{key}: working time: {exc}")
    return out


def nip_problem(nip: str) -> str | None:
    """Why `nip` is not an 18-digit NIP (birth date, appointment month, sex 1/2, sequence), or None."""
    digits = re.sub(r"[\s.]", "", nip)
    if not re.fullmatch(r"\d{18}", digits):
        return "a NIP has 18 digits"
    try:
        date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return f"digits 1-8 ({digits[:8]}) are not a birth date YYYYMMDD"
    if not (1 <= int(digits[12:14]) <= 12) or int(digits[8:12]) < 1950:
        return f"digits 9-14 ({digits[8:14]}) are not an appointment month YYYYMM"
    if digits[14] not in "12":
        return "digit 15 must be 1 or 2"
    if digits[15:] == "000":
        return "the last three digits (sequence) cannot be 000"
    return None


def _signer(key: str, letter: Any) -> list[str]:
    out = []
    name = str(getattr(letter, "signer_name", "") or "").strip()
    if not name or name.lower() in PLACEHOLDER_SIGNERS or (name.startswith("(") and name.endswith(")")):
        out.append(f"{key}.signer_name: {name or '(empty)'!r} is a placeholder; write the name of the official "
                   f"who signs the reply letters")
    nip = str(getattr(letter, "signer_nip", "") or "").strip()
    why = nip_problem(nip)
    if why:
        out.append(f"{key}.signer_nip: {nip or '(empty)'!r} is not a valid NIP: {why}")
    return out


def _verify_servers(key: str, dns: Any) -> list[str]:
    out = []
    for spec in dns.verify_servers:
        try:
            _split_hostport(spec, dns.port)
        except DnsError as exc:
            out.append(f"{key}.verify_servers: {exc}")
    return out


# --- hosting, database, state ---------------------------------------------------------------------


def argv_problems(argv: list[str]) -> list[str]:
    """Each argument's placeholders must be {username} {fqdn} {ip} {subdomain}, written plainly."""
    out = []
    for n, arg in enumerate(argv):
        try:
            fields = [(f, spec, conv) for _lit, f, spec, conv in string.Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            out.append(f"hosting.argv[{n}]: {arg!r}: {exc} (write a literal brace as {{{{ or }}}})")
            continue
        for f, spec, conv in fields:
            if f not in HOSTING_PLACEHOLDERS or spec or conv:
                out.append(f"hosting.argv[{n}]: {arg!r}: unknown placeholder {{{f}{'!' + conv if conv else ''}"
                           f"{':' + spec if spec else ''}}} (known: "
                           f"{', '.join('{' + p + '}' for p in HOSTING_PLACEHOLDERS)})")
    return out


def _hosting(cfg: Config) -> list[str]:
    h = cfg.hosting
    if h.backend != "command" or not h.argv:
        return []
    out = argv_problems(list(h.argv))
    prog = Path(h.argv[0])
    if prog.is_absolute() and not (prog.is_file() and os.access(prog, os.X_OK)):
        out.append(f"hosting.argv[0]: {prog} is not an executable file")
    return out


def _database(cfg: Config) -> list[str]:
    if not cfg.database_url:
        return []
    try:
        url = make_url(cfg.database_url)
        dialect = url.get_dialect()
    except ArgumentError:
        return ["database_url: not a database URL (e.g. postgresql+psycopg://subdomaind@db.example/subdomaind)"]
    except NoSuchModuleError:
        return [f"database_url: unknown database kind {cfg.database_url.split(':', 1)[0]!r} "
                f"(use postgresql+psycopg:// or sqlite:///)"]
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = url.get_driver_name()
        package = "'subdomaind[postgres]'" if driver == "psycopg" else driver
        pip = Path(sys.executable).with_name("pip")
        return [f"database_url: the {driver} driver is not installed; run: {pip} install {package}"]
    return []


def _metrics(cfg: Config) -> list[str]:
    listen = getattr(getattr(cfg, "metrics", None), "listen", None)
    if not listen:
        return []
    port = int(listen.rpartition(":")[2])
    if not 0 < port < 65536:
        return [f"metrics.listen: port {port} is not between 1 and 65535 (e.g. 127.0.0.1:9464)"]
    return []


def _state_dir(cfg: Config) -> list[str]:
    d = cfg.state_dir
    if d.exists():
        if not d.is_dir():
            return [f"state_dir: {d} exists and is not a directory"]
        return []
    parent = d.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"state_dir: {d} does not exist and cannot be created under {parent}"]
    return []
