"""Throwaway real servers on loopback for the tests and `make demo`.

Every server here listens on 127.0.0.1 only, on a free port above 1024, and keeps every file in its own
directory below the ``base`` directory the caller passes (the tests pass a ``tempfile.mkdtemp()``, the demo
``./var/demo``). Nothing under /etc is written (named only reads its built-in ``/etc/bind/bind.keys``), and
no traffic goes to any address other than 127.0.0.1: BIND runs with ``recursion no``, ``dnssec-validation
no``, and ``notify no`` or ``notify explicit`` with loopback-only ``also-notify``; host names are set
explicitly everywhere, so there are no ``getfqdn()`` DNS lookups either.

* :class:`Dovecot` -- IMAP (optionally with STARTTLS) and LMTP, Maildir storage, one passwd-file per user.
* :class:`Bind` -- ``named`` as primary for one zone, TSIG key limited by :data:`UPDATE_POLICY_TEMPLATE`,
  or (:meth:`Bind.secondary`) as a secondary that transfers the zone from a primary and can be frozen.
* :class:`Postgres` -- a throwaway PostgreSQL cluster in the foreground.
* :class:`SmtpRelay` -- an in-process aiosmtpd server that relays every message into Dovecot over LMTP.
* :class:`Postfix` with :class:`OpenDkim` -- the office's inbound MTA: verifies DKIM signatures (test keys
  made by :class:`DkimKey`), adds Authentication-Results, delivers into Dovecot over LMTP.

Each class has ``start()``, ``stop()``, ``restart()`` (same ports, same data), context-manager support and
``log_text()`` for diagnostics. When run as root, Dovecot and PostgreSQL drop to their Debian system users
(``dovecot``/``dovenull`` and ``postgres``), so ``base`` and all its parents must be world-traversable
(mode 0755; a bare ``tempfile.mkdtemp()`` is 0700, chmod it). Every server process is started under
``setpriv --pdeathsig=SIG`` so that the kernel stops it when the *thread* that started it dies, even by
SIGKILL: start servers from the main thread (or from a thread that outlives them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.zone
import imapclient

LOOPBACK = "127.0.0.1"

#: The BIND ``update-policy`` that the daemon's TSIG key needs, and no more: names strictly below the zone
#: (``*.zone`` never matches the apex, so the apex SOA, NS and everything else there stay untouchable), any
#: depth (``ns1.unit.zone`` glue for a delegation), and only these record types. Render it with
#: :func:`render_update_policy`, i.e.
#: ``string.Template(UPDATE_POLICY_TEMPLATE).substitute(key_name=..., zone=...)``
#: (``zone`` without the trailing dot).
UPDATE_POLICY_TEMPLATE = """update-policy {
    grant "${key_name}" wildcard "*.${zone}." A AAAA CNAME NS TXT;
};"""

#: Apt packages that provide the binaries :func:`missing_binaries` looks for.
APT_PACKAGES = ("dovecot-imapd dovecot-lmtpd dovecot-submissiond bind9 bind9-utils bind9-dnsutils postgresql "
                "util-linux postfix opendkim opendkim-tools")

_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_READY_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_USER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SQL_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# ----------------------------------------------------------------------------------------------------
# helpers


def render_update_policy(zone: str, key_name: str = "subdomaind") -> str:
    """:data:`UPDATE_POLICY_TEMPLATE` filled in for ``zone`` (with or without the trailing dot)."""
    return string.Template(UPDATE_POLICY_TEMPLATE).substitute(key_name=key_name, zone=zone.rstrip("."))


def free_port(udp_too: bool = False) -> int:
    """A TCP port on 127.0.0.1 that is free right now (and free on UDP too if ``udp_too``).

    The kernel picks it from the ephemeral range; there is a tiny window before the server binds it.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)


def postgres_bindir() -> Path | None:
    """The directory of ``initdb``/``postgres``: the newest ``/usr/lib/postgresql/*/bin``, else from PATH."""
    dirs = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "postgres").exists()]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    if dirs:
        return max(dirs, key=version)
    found = _which("initdb")
    return Path(found).resolve().parent if found else None


def missing_binaries(*servers: str) -> list[str]:
    """Names of the binaries that ``servers`` (any of "dovecot", "bind", "postgres", "postfix"; all but
    "postfix" if none) need."""
    wanted = set(servers) or {"dovecot", "bind", "postgres"}
    need = ["setpriv"]
    if "dovecot" in wanted:
        need += ["dovecot", "doveconf"]
    if "bind" in wanted:
        need += ["named", "named-checkconf"]
    missing = [b for b in need if _which(b) is None]
    if "postfix" in wanted:
        need += ["postfix", "opendkim", "script"]
    if "postgres" in wanted:
        bindir = postgres_bindir()
        missing += [b for b in ("initdb", "postgres") if bindir is None or not (bindir / b).exists()]
    return missing


def _make_dir(base: Path, prefix: str) -> Path:
    base = Path(base).absolute()
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=base))
    path.chmod(0o755)
    return path


def _check_traversable(path: Path, user: str) -> None:
    """Fail clearly if system user ``user`` cannot reach ``path`` (as with a 0700 ``mkdtemp`` parent)."""
    pw = pwd.getpwnam(user)
    groups = {pw.pw_gid} | {g.gr_gid for g in _groups_of(user)}
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise PermissionError(
                f"{p} (mode {stat.S_IMODE(st.st_mode):04o}) is not traversable by the system user {user!r} "
                f"that the server runs as; chmod 0755 it or use a base directory under a world-traversable "
                f"parent (a bare tempfile.mkdtemp() is 0700)"
            )


def _groups_of(user: str) -> list[Any]:
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]


def _is_root() -> bool:
    return os.geteuid() == 0


def _spawn(
    argv: Sequence[str],
    log_path: Path,
    pdeathsig: str,
    *,
    user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` under ``setpriv --pdeathsig`` with stdout+stderr appended to ``log_path``."""
    setpriv = _which("setpriv")
    if setpriv is None:
        raise FileNotFoundError("setpriv (util-linux) not found")
    extra: dict[str, Any] = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        extra = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [setpriv, f"--pdeathsig={pdeathsig}", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **extra,
        )


def _tail(path: Path, limit: int = 200_000) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _wait_ready(
    proc: subprocess.Popen[bytes] | None,
    check: Callable[[], bool],
    what: str,
    log_text: Callable[[], str],
    timeout: float = _READY_TIMEOUT,
) -> None:
    """Poll ``check`` every 20 ms until it is true; fail fast if ``proc`` exits, fail at the deadline.

    On failure the process (group) is killed, so that a failed start leaves nothing running.
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode} during start-up:\n{log_text()}")
            try:
                if check():
                    return
            except (OSError, EOFError, dns.exception.DNSException):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n{log_text()}")
            time.sleep(0.02)
    except BaseException:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        raise


def _terminate(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = _STOP_TIMEOUT) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _children(pid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) child processes of ``pid`` as (pid, command line), from /proc."""
    found: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_text = Path(entry.path, "stat").read_text()
            fields = stat_text[stat_text.rindex(")") + 2 :].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, ValueError):
            continue
        found.append((int(entry.name), cmdline.decode("utf-8", "replace")))
    return found


def _greeting(port: int, prefix: bytes, timeout: float = 1.0) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        data = b""
        while b"\n" not in data:
            chunk = s.recv(512)
            if not chunk:
                return False
            data += chunk
        return data.startswith(prefix)


def lmtp_send(
    host: str, port: int, mail_from: str, rcpts: Iterable[str], raw: bytes, timeout: float = 10.0
) -> dict[str, tuple[int, bytes]]:
    """One LMTP transaction on a new connection; the final (code, text) per recipient."""
    with smtplib.LMTP(host, port, local_hostname="localhost", timeout=timeout) as lmtp:
        return lmtp_transaction(lmtp, mail_from, rcpts, raw)


def lmtp_transaction(
    lmtp: smtplib.LMTP, mail_from: str, rcpts: Iterable[str], raw: bytes
) -> dict[str, tuple[int, bytes]]:
    """MAIL, RCPT..., DATA on an open LMTP connection; the final (code, text) per recipient (RCPT
    refusals, per-recipient DATA replies).

    Stdlib ``smtplib.LMTP.sendmail`` reads only the first of LMTP's per-recipient DATA replies (RFC 2033
    section 4.2 gives one per accepted recipient); this reads them all.
    """
    results: dict[str, tuple[int, bytes]] = {}
    lmtp.ehlo_or_helo_if_needed()
    code, text = lmtp.mail(mail_from)
    if code != 250:
        lmtp.rset()
        raise smtplib.SMTPSenderRefused(code, text, mail_from)
    accepted: list[str] = []
    for rcpt in rcpts:
        code, text = lmtp.rcpt(rcpt)
        if code in (250, 251):
            accepted.append(rcpt)
        else:
            results[rcpt] = (code, text)
    if not accepted:
        lmtp.rset()
        return results
    return results | lmtp_data(lmtp, accepted, raw)


def lmtp_data(lmtp: smtplib.LMTP, accepted: Sequence[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
    """DATA for a transaction whose `accepted` recipients were taken: one reply per recipient, in order
    (RFC 2033 section 4.2)."""
    results = {accepted[0]: lmtp.data(raw)}
    for rcpt in accepted[1:]:
        results[rcpt] = lmtp.getreply()
    return results


class LmtpPool:
    """Open LMTP connections kept for reuse: a new connection per mail costs Dovecot a process hand-off and
    a greeting; two per mail (a RCPT probe, then the delivery) were 7.3 ms of CPU per mail between the relay
    and Dovecot, one pooled transaction per mail 4 ms (docs/PERFORMANCE.md)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._idle: list[smtplib.LMTP] = []
        self._lock = threading.Lock()

    def acquire(self) -> smtplib.LMTP:
        """A connection ready for a transaction (a pooled one if it still answers, else a new one)."""
        with self._lock:
            lmtp = self._idle.pop() if self._idle else None
        if lmtp is not None:
            try:
                lmtp.ehlo_or_helo_if_needed()
                if lmtp.noop()[0] == 250:
                    return lmtp
            except (OSError, smtplib.SMTPException):
                pass
            lmtp.close()
        lmtp = smtplib.LMTP(self.host, self.port, local_hostname="localhost", timeout=self.timeout)
        lmtp.ehlo_or_helo_if_needed()
        return lmtp

    def release(self, lmtp: smtplib.LMTP, *, ok: bool = True) -> None:
        if not ok:
            lmtp.close()
            return
        with self._lock:
            self._idle.append(lmtp)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for lmtp in idle:
            try:
                lmtp.quit()
            except (OSError, smtplib.SMTPException):
                lmtp.close()


def _write_tls(directory: Path, hosts: Sequence[str] = (LOOPBACK, "localhost")) -> tuple[Path, Path, Path]:
    """A fresh trustme CA plus a server cert for ``hosts``: (ca.pem, cert.pem with chain, key.pem)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="subdomaind test CA")
    cert = ca.issue_cert(*hosts)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class _Started:
    """`with server:` starts it and stops it, whatever the block raised."""

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server(_Started):
    """Process bookkeeping shared by the servers: directory, ``running``."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, base: Path, prefix: str) -> None:
        self.dir = _make_dir(base, prefix)
        self.host = LOOPBACK
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _terminate(self.proc, self.stop_signal)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def log_text(self) -> str:  # pragma: no cover - overridden
        return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {state} dir={self.dir}>"


# ----------------------------------------------------------------------------------------------------
# Dovecot


class Dovecot(_Server):
    """Dovecot IMAP + LMTP with Maildirs; folders ``Archive``, ``Karantina`` and ``Sent`` are auto-created.

    Users live in one passwd-file per user (``users/NAME``), so :meth:`add_user` takes effect at once, also
    while the server runs. (Dovecot re-reads a changed passwd-file at most once per second: with one *shared*
    file, a user added in the same second as the previous lookup is unknown until the next second.)
    ``recipient_delimiter = +``: LMTP mail for ``name+detail@domain`` lands in user ``name``'s INBOX. With a
    single RCPT in the LMTP transaction Dovecot adds ``Delivered-To: name+detail@domain``; with several RCPTs
    it adds no Delivered-To at all. Users log in as ``name`` or ``name@domain``.
    """

    name = "dovecot"
    FOLDERS = ("Archive", "Karantina", "Sent")

    def __init__(self, base: Path, domain: str, tls: bool = False) -> None:
        super().__init__(base, "dovecot")
        self.domain = domain
        self.tls = tls
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self.ca_file: Path | None = None
        self._passwords: dict[str, str] = {}
        self._lock = threading.Lock()
        self.conf_path = self.dir / "dovecot.conf"
        self.users_dir = self.dir / "users"
        self.mail_dir = self.dir / "mail"
        self.users_dir.mkdir(mode=0o755)
        self.mail_dir.mkdir(mode=0o755)
        self._rootless = not _is_root()
        if self._rootless:
            self._run_user = pwd.getpwuid(os.getuid()).pw_name
        else:
            self._run_user = "dovecot"
            _check_traversable(self.dir, "dovecot")
            pw = pwd.getpwnam("dovecot")
            os.chown(self.mail_dir, pw.pw_uid, pw.pw_gid)
        if tls:
            self.ca_file, self._cert_file, self._key_file = _write_tls(self.dir / "tls")
        self.conf_path.write_text(self._config())

    def address(self, user: str, detail: str | None = None) -> str:
        """``user@domain`` or ``user+detail@domain``."""
        return f"{user}+{detail}@{self.domain}" if detail else f"{user}@{self.domain}"

    def _config(self) -> str:
        d = self.dir
        if self._rootless:
            import grp

            group = grp.getgrgid(os.getgid()).gr_name
            users = (
                f"default_internal_user = {self._run_user}\ndefault_internal_group = {group}\n"
                f"default_login_user = {self._run_user}\nmail_uid = {self._run_user}\nmail_gid = {group}\n"
            )
            chroot = "  chroot =\n"
        else:
            users = (
                "default_internal_user = dovecot\ndefault_internal_group = dovecot\n"
                "default_login_user = dovenull\nfirst_valid_uid = 1\nmail_uid = dovecot\nmail_gid = dovecot\n"
            )
            chroot = ""
        if self.tls:
            tls = f"ssl = yes\nssl_cert = <{self._cert_file}\nssl_key = <{self._key_file}\nssl_min_protocol = TLSv1.2\n"
        else:
            tls = "ssl = no\n"
        mailboxes = "".join(
            f"  mailbox {name} {{\n    auto = subscribe\n{use}  }}\n"
            for name, use in (
                ("Archive", "    special_use = \\Archive\n"),
                ("Karantina", ""),
                ("Sent", "    special_use = \\Sent\n"),
            )
        )
        return f"""# generated by tests/devkit/devservers.py
protocols = imap lmtp
listen = {LOOPBACK}
base_dir = {d}/run
state_dir = {d}/state
instance_name = subdomaind-dovecot-{self.imap_port}
log_path = {d}/dovecot.log
hostname = mail.{self.domain}
import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS DOVECOT_HOSTDOMAIN=mail.{self.domain}
postmaster_address = postmaster@{self.domain}
{tls}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
{users}mail_location = maildir:~/Maildir
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {self.users_dir}/%n
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {self.users_dir}/%n
  default_fields = home={self.mail_dir}/%n
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = {LOOPBACK}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# A large deployment keeps two connections per agency open (intake and IDLE): 548 agencies need more
# than the default 1024 imap processes and 1000 stats clients (docs/PANDUAN.md, large deployment).
service imap {{
  process_limit = 4096
}}
service stats {{
  client_limit = 10000
}}
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {LOOPBACK}
    port = {self.lmtp_port}
  }}
}}
"""

    def add_user(self, name: str, password: str | None = None) -> str:
        """Create mailbox user ``name`` (works while running); returns the password (random if not given)."""
        if not _USER_RE.match(name):
            raise ValueError(f"bad user name {name!r}: lower-case letters, digits, '.', '_', '-'")
        password = password or secrets.token_urlsafe(12)
        if ":" in password or "\n" in password:
            raise ValueError("password must not contain ':' or a newline")
        with self._lock:
            old = self._passwords.get(name)
            if old is not None and old != password:
                raise ValueError(f"user {name!r} already exists with another password")
            path = self.users_dir / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
            tmp.chmod(0o644)
            tmp.replace(path)
            self._passwords[name] = password
        return password

    def new_user(self, prefix: str = "u", password: str | None = None) -> MailUser:
        """A fresh user with a unique name (``prefix`` + random hex), added at once."""
        name = f"{prefix}{secrets.token_hex(5)}"
        return MailUser(name, self.add_user(name, password), self.address(name), self)

    def password(self, user: str) -> str:
        try:
            return self._passwords[user.split("@")[0]]
        except KeyError:
            raise KeyError(f"no user {user!r}: call add_user() first") from None

    def start(self) -> None:
        if self.running:
            return
        binary = _which("dovecot")
        if binary is None:
            raise FileNotFoundError("dovecot not found (apt-get install dovecot-imapd dovecot-lmtpd)")
        self.proc = _spawn([binary, "-F", "-c", str(self.conf_path)], self.dir / "master.log", "TERM")
        _wait_ready(
            self.proc,
            lambda: _greeting(self.imap_port, b"* OK") and _greeting(self.lmtp_port, b"220"),
            "dovecot",
            self.log_text,
        )

    def stop(self) -> None:
        """SIGTERM the master, which stops its children; then SIGKILL the master and its ``log`` child.

        A graceful Dovecot stop takes ~1.0 s: once the workers are gone the master waits for its ``log``
        process in a loop that sleeps a whole second. All mail is on disk by then, so once ``log`` is the
        only child left (and has had 20 ms to write the last lines) the process group is killed: ~0.05 s.
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            children = _children(proc.pid)
            if all(cmd.endswith("/log") for _pid, cmd in children):
                time.sleep(0.02)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        _terminate(proc, signal.SIGKILL, timeout=5)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "run" / "master.pid").unlink()  # a stale pid file could match a reused pid

    def log_text(self) -> str:
        return _tail(self.dir / "master.log") + _tail(self.dir / "dovecot.log")

    # -- helpers for tests ---------------------------------------------------------------------------------

    def auth_failures(self, user: str) -> int:
        """How many logins of ``user`` (``name`` or ``name@domain``) the auth process refused, from its log
        (``auth_verbose``): passwd-file password mismatches and oauth2 token refusals."""
        text = _tail(self.dir / "dovecot.log", 50_000_000)
        return sum(1 for line in text.splitlines()
                   if (f"({user}," in line or f"({user}@" in line)
                   and ("Password mismatch" in line or "oauth2 failed" in line))

    def imap_client(self, user: str, password: str | None = None, timeout: float = 10.0) -> imapclient.IMAPClient:
        """A logged-in plain-text IMAP connection (``ssl=False``); the caller logs out (or uses ``with``)."""
        client = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user, password if password is not None else self.password(user))
        except BaseException:
            client.shutdown()
            raise
        return client

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The raw RFC 822 bytes of every message in ``folder``, in UID order (flags are not touched)."""
        with self.imap_client(user) as client:
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search("ALL"))
            if not uids:
                return []
            data = client.fetch(uids, [b"BODY.PEEK[]"])
            return [bytes(data[uid][b"BODY[]"]) for uid in uids]

    def deliver(
        self, rcpt: str | Sequence[str], raw: bytes, mail_from: str = "sender@example.test"
    ) -> dict[str, tuple[int, bytes]]:
        """Deliver ``raw`` over LMTP; raises ``smtplib.SMTPRecipientsRefused`` if any recipient failed."""
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        results = lmtp_send(self.host, self.lmtp_port, mail_from, rcpts, raw)
        failed = {r: status for r, status in results.items() if status[0] >= 300}
        if failed:
            raise smtplib.SMTPRecipientsRefused(failed)
        return results

    def append(self, user: str, raw: bytes, folder: str = "INBOX", flags: Sequence[str | bytes] = ()) -> int | None:
        """IMAP APPEND ``raw`` to ``folder``; returns the new UID (from APPENDUID) if the server gave one."""
        with self.imap_client(user) as client:
            response = client.append(folder, raw, flags=tuple(flags))
        match = re.search(rb"APPENDUID \d+ (\d+)", response if isinstance(response, bytes) else b"")
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class MailUser:
    """A mailbox user of a :class:`Dovecot` (see :meth:`Dovecot.new_user`)."""

    name: str
    password: str
    address: str
    server: Dovecot = field(repr=False)

    def plus(self, detail: str) -> str:
        """The ``name+detail@domain`` address, delivered to this user's INBOX."""
        return self.server.address(self.name, detail)

    def imap(self) -> imapclient.IMAPClient:
        return self.server.imap_client(self.name, self.password)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.server.messages(self.name, folder)


# ----------------------------------------------------------------------------------------------------
# BIND


class Bind(_Server):
    """``named`` serving ``zone`` on 127.0.0.1:``port`` (UDP+TCP) as primary, or as secondary of a primary.

    The primary's zone is SOA + NS (``ns`` names, relative to the zone) + ``records`` (zone-file lines,
    relative names allowed). Dynamic updates need TSIG key ``key_name`` and are limited by
    :data:`UPDATE_POLICY_TEMPLATE`; zone transfers (AXFR/IXFR) need the same key.
    """

    name = "named"

    def __init__(
        self,
        base: Path,
        zone: str,
        records: str = "",
        key_name: str = "subdomaind",
        algorithm: str = "hmac-sha256",
        *,
        ns: Sequence[str] = ("ns1", "ns2"),
        secondary_of: Bind | None = None,
    ) -> None:
        super().__init__(base, "named-secondary" if secondary_of else "named")
        self.zone = zone.rstrip(".").lower()
        self.origin = dns.name.from_text(self.zone)
        self.primary: Bind | None = secondary_of
        self.key_name: str = key_name
        self.algorithm: str = algorithm
        if secondary_of is not None:
            self.zone, self.origin = secondary_of.zone, secondary_of.origin
            self.key_name, self.algorithm = secondary_of.key_name, secondary_of.algorithm
            self.secret: str = secondary_of.secret
        else:
            self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.records = records
        self.ns = tuple(ns)
        self.port = free_port(udp_too=True)
        self.frozen = False
        self._notify_ports: list[int] = []
        self.conf_path = self.dir / "named.conf"
        self.zone_file = self.dir / f"{self.zone}.zone"
        self.secret_file = self.dir / "tsig.secret"
        self.secret_file.write_text(self.secret + "\n")
        self.secret_file.chmod(0o600)
        if secondary_of is None:
            self.zone_file.write_text(self._zone_text())
        self._write_conf()

    @classmethod
    def secondary(cls, base: Path, primary: Bind) -> Bind:
        """A second ``named`` that serves ``primary``'s zone as a secondary (AXFR+NOTIFY over loopback)."""
        return cls(base, primary.zone, secondary_of=primary)

    @property
    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        return dns.tsigkeyring.from_text({self.key_name: (self.algorithm, self.secret)})

    @property
    def update_policy(self) -> str:
        return render_update_policy(self.zone, self.key_name)

    def _zone_text(self) -> str:
        z = self.zone
        ns = "".join(f"@ IN NS {n if n.endswith('.') else f'{n}.{z}.'}\n" for n in self.ns)
        return (
            f"$ORIGIN {z}.\n$TTL 300\n"
            f"@ IN SOA {self.ns[0]}.{z}. hostmaster.{z}. ( 2024010101 3600 600 86400 300 )\n"
            f"{ns}{self.records.strip()}\n"
        )

    def _write_conf(self) -> None:
        d = self.dir
        key = f'key "{self.key_name}" {{\n    algorithm {self.algorithm};\n    secret "{self.secret}";\n}};\n'
        if self.primary is not None and not self.frozen:
            zone = (
                f'zone "{self.zone}" {{\n    type secondary;\n'
                f'    primaries {{ {LOOPBACK} port {self.primary.port} key "{self.key_name}"; }};\n'
                f"    allow-notify {{ {LOOPBACK}; }};\n    notify no;\n}};\n"
            )
        else:
            if self.frozen:  # serve the snapshot taken by freeze_secondary(), and refuse all updates
                policy = "allow-update { none; };"
                notify = "notify no;"
            else:
                policy = self.update_policy.replace("\n", "\n    ")
                targets = "".join(f" {LOOPBACK} port {p};" for p in self._notify_ports)
                notify = f"notify explicit;\n    also-notify {{{targets} }};" if targets else "notify no;"
            zone = (
                f'zone "{self.zone}" {{\n    type primary;\n    file "{self.zone_file}";\n'
                f"    {notify}\n    {policy}\n}};\n"
            )
        self.conf_path.write_text(
            f"""// generated by tests/devkit/devservers.py
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ {LOOPBACK}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ {LOOPBACK}; }};
    allow-transfer {{ key "{self.key_name}"; }};
    dnssec-validation no;
    notify no;
    notify-delay 0;
    notify-source {LOOPBACK};
    transfer-source {LOOPBACK};
    query-source address {LOOPBACK};
}};
controls {{ }};
{key}{zone}"""
        )

    def start(self) -> None:
        if self.running:
            return
        if self.primary is not None and not self.frozen and not self.primary.running:
            raise RuntimeError("start the primary before its secondary")
        if self.primary is not None and self.port not in self.primary._notify_ports:
            self.primary._notify_ports.append(self.port)
            self.primary._write_conf()
            if self.primary.running:
                self.primary.restart()
        named = _which("named")
        if named is None:
            raise FileNotFoundError("named not found (apt-get install bind9)")
        log = self.dir / "named.log"
        offset = log.stat().st_size if log.exists() else 0
        self.proc = _spawn([named, "-g", "-4", "-n", "1", "-c", str(self.conf_path)], log, "TERM")
        want = self.primary.serial() if self.primary is not None and not self.frozen else None
        _wait_ready(self.proc, lambda: self._loaded(offset, want), self.name, self.log_text)

    def _loaded(self, log_offset: int, want_serial: int | None) -> bool:
        """named logs "running" once it listens; then the zone must answer (with ``want_serial`` or newer)."""
        with open(self.dir / "named.log", "rb") as f:
            f.seek(log_offset)
            text = f.read()
        if b"not loaded due to errors" in text:
            raise RuntimeError(f"named could not load zone {self.zone}:\n{self.log_text()}")
        if b"\nrunning" not in text and b" running\n" not in text:
            return False
        serial = self.serial(timeout=0.5)
        return want_serial is None or serial >= want_serial

    def log_text(self) -> str:
        return _tail(self.dir / "named.log")

    # -- helpers for tests ---------------------------------------------------------------------------------

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 2.0) -> dns.message.Message:
        """Ask this server (no RD flag). ``name`` is relative to the zone, or absolute with a trailing dot."""
        qname = dns.name.from_text(name, self.origin)
        q = dns.message.make_query(qname, rdtype)
        q.flags &= ~dns.flags.RD
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, self.host, port=self.port, timeout=timeout)

    def addresses(self, name: str, rdtype: str = "A") -> list[str]:
        """The rdata texts of ``name``/``rdtype`` as this server serves them (empty if none)."""
        answer = self.query(name, rdtype).answer
        return sorted(
            rd.to_text() for rrset in answer for rd in rrset if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        )

    def serial(self, timeout: float = 2.0) -> int:
        """The zone's SOA serial as served now; raises if the server does not serve the zone."""
        response = self.query("@", "SOA", timeout=timeout)
        if response.rcode() != dns.rcode.NOERROR or not response.answer:
            raise dns.exception.DNSException(f"SOA query: {dns.rcode.to_text(response.rcode())}")
        return int(response.answer[0][0].serial)

    def wait_serial(self, serial: int, timeout: float = 5.0) -> None:
        """Wait until this server serves ``serial`` or newer (a secondary after a NOTIFY: within ~0.5 s)."""
        deadline = time.monotonic() + timeout
        current: int | str = "nothing"
        while True:
            with contextlib.suppress(dns.exception.DNSException, OSError):
                current = self.serial(timeout=0.2)
                if current >= serial:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} on port {self.port} serves serial {current}, not {serial}")
            time.sleep(0.02)

    def freeze_secondary(self) -> None:
        """Make this secondary lag: it keeps serving exactly what it serves now and ignores the primary.

        Implementation: AXFR a snapshot from this server, restart it as a stand-alone primary of that snapshot
        (``allow-update { none; }``, same port). :meth:`thaw_secondary` undoes it.
        """
        if self.primary is None:
            raise RuntimeError("freeze_secondary() is for a secondary (Bind.secondary())")
        if self.frozen:
            return
        xfr = dns.query.xfr(
            self.host,
            self.origin,
            port=self.port,
            keyring=self.keyring,
            keyalgorithm=self.algorithm,
            lifetime=10,
            relativize=False,
        )
        snapshot = dns.zone.from_xfr(xfr, relativize=False)
        self.zone_file.write_text(snapshot.to_text(relativize=False))
        self.stop()
        self.frozen = True
        self._write_conf()
        self.start()

    def thaw_secondary(self) -> None:
        """Resume transfers from the primary; returns once this server serves the primary's serial."""
        if not self.frozen:
            return
        self.stop()
        self.frozen = False
        self._write_conf()
        self.start()

    @contextlib.contextmanager
    def frozen_secondary(self) -> Iterator[Bind]:
        """``with secondary.frozen_secondary(): ...`` -- frozen inside the block, thawed after it."""
        self.freeze_secondary()
        try:
            yield self
        finally:
            self.thaw_secondary()


# ----------------------------------------------------------------------------------------------------
# PostgreSQL


class Postgres(_Server):
    """A throwaway PostgreSQL cluster (``initdb`` once, then ``postgres`` in the foreground), trust auth.

    As root, ``initdb`` and ``postgres`` run as the ``postgres`` system user; otherwise as the current user.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(self, base: Path, user: str = "test") -> None:
        super().__init__(base, "postgres")
        self.user = user
        self.port = free_port()
        self.data_dir = self.dir / "data"
        bindir = postgres_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self._run_user: str | None = None
        if _is_root():
            self._run_user = "postgres"
            _check_traversable(self.dir, "postgres")
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def dsn(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return self.url("postgres")

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def libpq_dsn(self) -> str:
        """libpq/psycopg form of :attr:`dsn`."""
        return self.url("postgres", "postgresql")

    def _env(self) -> dict[str, str]:
        return {"PATH": _SBIN_PATH, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}

    def start(self) -> None:
        if self.running:
            return
        log = self.dir / "postgres.log"
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = _spawn(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ],
                log,
                "TERM",
                user=self._run_user,
                cwd=self.dir,
                env=self._env(),
            )
            if initdb.wait(120) != 0:
                raise RuntimeError(f"initdb failed with status {initdb.returncode}:\n{self.log_text()}")
        self.proc = _spawn(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            log,
            "INT",
            user=self._run_user,
            cwd=self.dir,
            env=self._env(),
        )
        _wait_ready(self.proc, self._accepts, "postgres", self.log_text)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.libpq_dsn, connect_timeout=1) as conn:
                conn.execute("select 1")
        except psycopg.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (drops an existing one first); returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        if not _SQL_NAME_RE.match(name):
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.libpq_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.libpq_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_text(self) -> str:
        return _tail(self.dir / "postgres.log")


# ----------------------------------------------------------------------------------------------------
# SMTP relay


class _RelayHandler:
    """aiosmtpd handler, a proxy into Dovecot LMTP: each SMTP transaction runs as one LMTP transaction on a
    pooled connection (MAIL at the first RCPT, each RCPT answered with LMTP's own reply, DATA relayed), and a
    copy of each accepted message is kept."""

    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.relay.deliver:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"

        def rcpt() -> tuple[int, bytes]:
            lmtp = getattr(session, "lmtp", None)
            if lmtp is None:
                lmtp = self.relay.pool.acquire()
                code, text = lmtp.mail(envelope.mail_from or "")
                if code != 250:
                    self.relay.pool.release(lmtp, ok=False)
                    return code, text
                session.lmtp = lmtp
            return lmtp.rcpt(address)

        try:
            code, text = await asyncio.to_thread(rcpt)
        except (OSError, smtplib.SMTPException) as exc:
            self._drop(session)
            self.relay._log(f"RCPT {address}: LMTP failed: {exc!r}")
            return "451 4.4.1 LMTP relay unavailable, try again later"
        self.relay._log(f"RCPT {address}: {code} {text!r}")
        if code in (250, 251):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        return f"{code} {text.decode('utf-8', 'replace')}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw: bytes = envelope.original_content or envelope.content
        mail_from: str = envelope.mail_from or ""
        rcpts: list[str] = list(envelope.rcpt_tos)
        if not self.relay.deliver:
            self.relay._store(mail_from, rcpts, raw)
            return "250 2.0.0 Message accepted"
        lmtp = getattr(session, "lmtp", None)
        session.lmtp = None

        if lmtp is None:
            return "503 5.5.1 Error: need RCPT command"
        try:
            results = await asyncio.to_thread(lmtp_data, lmtp, rcpts, raw)
        except (OSError, smtplib.SMTPException) as exc:
            self.relay.pool.release(lmtp, ok=False)
            self.relay._log(f"DATA from <{mail_from}> to {rcpts}: LMTP failed: {exc!r}")
            return "451 4.4.1 LMTP relay unavailable, try again later"
        self.relay.pool.release(lmtp)
        failed = {r: s for r, s in results.items() if s[0] >= 300}
        self.relay._log(f"DATA from <{mail_from}> to {rcpts}: {results}")
        if len(failed) == len(rcpts):
            code, text = next(iter(failed.values()))
            return f"{code} {text.decode('utf-8', 'replace')}"
        self.relay._store(mail_from, rcpts, raw)
        return "250 2.0.0 Message accepted for delivery"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self._drop(session, reset=True)
        return "250 OK"

    def _drop(self, session: Any, *, reset: bool = False) -> None:
        lmtp = getattr(session, "lmtp", None)
        session.lmtp = None
        if lmtp is not None:
            try:
                if reset:
                    lmtp.rset()
                self.relay.pool.release(lmtp, ok=reset)
            except (OSError, smtplib.SMTPException):
                self.relay.pool.release(lmtp, ok=False)


class SmtpRelay(_Started):
    """An in-process aiosmtpd SMTP server on 127.0.0.1:``port`` that relays every message into Dovecot LMTP.

    RCPT TO is checked against LMTP at once, so an unknown mailbox gets Dovecot's ``550 5.1.1`` as the SMTP
    reply (and LMTP DATA failures come back as the DATA reply). Every accepted message is appended to
    ``received`` as ``(mail_from, rcpts, raw)``. ``stop()``/``start()`` reuse the same port (SMTP down for a
    while). With ``deliver`` off it accepts and keeps every message without passing it on (a bench's SMTP
    server that measures the daemon, not Dovecot's delivery). With ``tls=True`` STARTTLS is offered (not
    required), with a trustme CA in ``ca_file``.
    """

    name = "smtp-relay"

    def __init__(self, lmtp_host: str, lmtp_port: int, tls: bool = False, *, base: Path | None = None) -> None:
        self.lmtp_host = lmtp_host
        self.lmtp_port = lmtp_port
        self.tls = tls
        self.host = LOOPBACK
        self.port = free_port()
        self.dir = _make_dir(base, "smtp") if base is not None else Path(tempfile.mkdtemp(prefix="smtp-"))
        self.received: list[tuple[str, list[str], bytes]] = []
        self.pool = LmtpPool(lmtp_host, lmtp_port)
        self.deliver = True
        self._cond = threading.Condition()
        self._events: list[str] = []
        self._controller: Any = None
        self.ca_file: Path | None = None
        self._tls_context: ssl.SSLContext | None = None
        if tls:
            self.ca_file, cert_file, key_file = _write_tls(self.dir / "tls")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert_file, key_file)
            self._tls_context = ctx

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            return
        from aiosmtpd.controller import Controller

        kwargs: dict[str, Any] = {
            "decode_data": False,
            "enable_SMTPUTF8": True,
            "ident": "subdomaind test relay",
            "server_hostname": "localhost",  # else aiosmtpd calls socket.getfqdn(), which may query DNS
        }
        if self._tls_context is not None:
            kwargs.update(tls_context=self._tls_context, require_starttls=False)
        controller = Controller(_RelayHandler(self), hostname=self.host, port=self.port, ready_timeout=10, **kwargs)
        deadline = time.monotonic() + 5
        while True:  # the port can be briefly busy right after stop()
            try:
                controller.start()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._controller = controller
        self._log(f"listening on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            self.pool.close()
            self._log("stopped")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _store(self, mail_from: str, rcpts: list[str], raw: bytes) -> None:
        with self._cond:
            self.received.append((mail_from, rcpts, raw))
            self._cond.notify_all()

    def _log(self, line: str) -> None:
        with self._cond:
            self._events.append(f"{time.strftime('%H:%M:%S')} {line}")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, list[str], bytes]]:
        """Wait until ``received`` holds at least ``count`` messages; returns a copy of it."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{len(self.received)} of {count} messages after {timeout} s")
            return list(self.received)

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self._events) + "\n"

    def __repr__(self) -> str:
        return f"<SmtpRelay {'running' if self.running else 'stopped'} port={self.port}>"


# ----------------------------------------------------------------------------------------------------
# The office MTA: Postfix with OpenDKIM as its milter


@dataclass(frozen=True)
class DkimKey:
    """A test DKIM key of one domain (RSA 2048, RFC 6376): it signs the mail of that domain's users, and
    its public half is what a verifier is given as the domain's ``selector._domainkey`` TXT record."""

    domain: str
    selector: str
    private_pem: bytes

    @classmethod
    def generate(cls, domain: str, selector: str = "test") -> DkimKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        return cls(domain, selector, pem)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt(self) -> str:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.private_pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"

    def sign(self, raw: bytes) -> bytes:
        """``raw`` with a DKIM-Signature (rsa-sha256, relaxed/relaxed) prepended, as the domain's MTA adds it."""
        import dkim

        headers = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references"]
        signature = dkim.sign(raw, self.selector.encode(), self.domain.encode(), self.private_pem,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=headers)
        return signature + raw


class OpenDkim(_Server):
    """OpenDKIM as a verifying milter (``Mode v``) on 127.0.0.1:``port``: it checks each DKIM signature
    against the keys given (``TestPublicKeys``: no DNS is asked), removes any Authentication-Results that
    carry its own ``authserv_id`` (RFC 8601 section 5) and adds its own. Run as root it drops to the
    ``opendkim`` user."""

    name = "opendkim"

    def __init__(self, base: Path, authserv_id: str, keys: Iterable[DkimKey] = ()) -> None:
        super().__init__(base, "opendkim")
        self.authserv_id = authserv_id
        self.port = free_port()
        self.conf_path = self.dir / "opendkim.conf"
        (self.dir / "testkeys.txt").write_text("".join(f"{k.record_name} {k.txt}\n" for k in keys))
        user = "UserID opendkim:opendkim\n" if _is_root() else ""
        self.conf_path.write_text(
            f"Mode v\nSocket inet:{self.port}@{LOOPBACK}\nPidFile {self.dir}/opendkim.pid\n{user}"
            f"AuthservID {authserv_id}\nSyslog no\nAlwaysAddARHeader yes\nOn-NoSignature accept\n"
            f"On-BadSignature accept\nOn-KeyNotFound accept\nOn-DNSError accept\n"
            f"TestPublicKeys {self.dir}/testkeys.txt\n")
        if _is_root():
            _check_traversable(self.dir, "opendkim")

    def start(self) -> None:
        if self.running:
            return
        binary = _which("opendkim")
        if binary is None:
            raise FileNotFoundError("opendkim not found (apt-get install opendkim opendkim-tools)")
        self.proc = _spawn([binary, "-f", "-x", str(self.conf_path)], self.dir / "opendkim.log", "TERM")

        def listening() -> bool:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                return True

        _wait_ready(self.proc, listening, "opendkim", self.log_text)

    def stop(self) -> None:
        # OpenDKIM takes seconds to finish after SIGTERM; nothing of it needs to be kept.
        _terminate(self.proc, signal.SIGKILL)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "opendkim.pid").unlink()

    def log_text(self) -> str:
        return _tail(self.dir / "opendkim.log")


class Postfix(_Server):
    """Postfix as the office's inbound MTA on 127.0.0.1:``port``, with its own config directory, queue and
    log under its directory (no system instance or file is touched). Mail for ``domain`` (sub-addresses
    included) goes through the ``milter`` (OpenDKIM, which adds Authentication-Results) and is delivered by
    LMTP into Dovecot; mail for any other domain is refused. Headers are not rewritten and nothing is
    added but ``Received`` and the milter's header, so the mail arrives as a real office MTA passes it on.
    Needs root (``postfix start-fg``); its daemons drop to the ``postfix`` user."""

    name = "postfix"

    def __init__(self, base: Path, domain: str, lmtp_host: str, lmtp_port: int, milter: OpenDkim) -> None:
        super().__init__(base, "postfix")
        self.domain = domain
        self.milter = milter
        self.port = free_port()
        self.etc = self.dir / "etc"
        self.spool = self.dir / "spool"
        data = self.dir / "data"
        for d in (self.etc, self.spool, data):
            d.mkdir(mode=0o755)
        if _is_root():
            _check_traversable(self.dir, "postfix")
            pw = pwd.getpwnam("postfix")
            os.chown(data, pw.pw_uid, pw.pw_gid)
        self.log_path = self.dir / "postfix.log"
        (self.etc / "main.cf").write_text(f"""# generated by tests/devkit/devservers.py
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {data}
maillog_file = {self.log_path}
maillog_file_prefixes = {self.dir}
syslog_name = subdomaind-postfix-{self.port}
mail_owner = postfix
myhostname = {milter.authserv_id}
mydomain = {domain}
myorigin = {domain}
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relay_domains = {domain}
relay_recipient_maps =
relay_transport = lmtp:inet:{lmtp_host}:{lmtp_port}
default_transport = error:this test MTA delivers only to {domain}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_milters = inet:{LOOPBACK}:{milter.port}
non_smtpd_milters =
milter_default_action = tempfail
local_header_rewrite_clients =
always_add_missing_headers = no
message_size_limit = 104857600
biff = no
smtp_dns_support_level = disabled
smtputf8_enable = yes
""")
        (self.etc / "master.cf").write_text(f"""# generated by tests/devkit/devservers.py
{LOOPBACK}:{self.port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
""")

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        binary = _which("postfix")
        if binary is None:
            raise FileNotFoundError("postfix not found (apt-get install postfix)")
        # Postfix reports a fatal start-up error only to syslog when stderr is no terminal: `script` gives
        # it one, so that the error lands in the exception.
        return subprocess.run(["script", "-qec", " ".join([binary, "-c", str(self.etc), *args]), "/dev/null"],
                              capture_output=True, timeout=60, check=False)

    def start(self) -> None:
        if self.running:
            return
        if not _is_root():
            raise PermissionError("the Postfix test server must be started by root")
        check = self._postfix("check")  # also makes the queue directories with their owners
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stdout.decode(errors='replace')}")
        binary = _which("postfix")
        assert binary is not None
        self.proc = _spawn([binary, "-c", str(self.etc), "start-fg"], self.dir / "master.log", "TERM")
        _wait_ready(self.proc, lambda: _greeting(self.port, b"220"), "postfix", self.log_text)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._postfix("stop")
        _terminate(self.proc, signal.SIGTERM)
        self.proc = None

    def log_text(self) -> str:
        return _tail(self.dir / "master.log") + _tail(self.log_path)

    def flushed(self, timeout: float = 10.0) -> None:
        """Wait until the queue is empty (every accepted message delivered or bounced)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(any(d.iterdir()) for name in ("incoming", "active", "deferred", "maildrop")
                       if (d := self.spool / name).is_dir()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"postfix queue not empty after {timeout} s:\n{self.log_text()[-3000:]}")


# ----------------------------------------------------------------------------------------------------
# OAuth 2.0: an authorization server and a Dovecot that checks bearer tokens with it


@dataclass
class _Grant:
    user: str
    expires: float  # epoch seconds
    revoked: bool = False


class OAuthServer(_Server):
    """An in-process OAuth 2.0 authorization server on 127.0.0.1:``port`` for the tests and the demo.

    * ``/token`` (RFC 6749): ``refresh_token``, ``client_credentials`` and the device code grant (RFC 8628)
      issue access tokens that live ``lifetime`` seconds;
    * ``/device`` (RFC 8628 3.1): a device code, approved at once or after :meth:`approve_devices`;
    * ``/introspect`` (RFC 7662), which Dovecot's ``passdb oauth2`` asks: ``active`` only for a token that
      was issued, has not expired and was not revoked.

    :meth:`issue_refresh`, :meth:`expire`, :meth:`revoke` and :meth:`revoke_user` let a test change the
    tokens while the servers run; ``token_requests`` and ``introspections`` count the calls.
    """

    name = "oauth"

    def __init__(self, client_id: str = "subdomaind-test", client_secret: str = "rahasia-klien",  # noqa: S107 - a test server's
                 lifetime: float = 3600.0, *, base: Path) -> None:
        super().__init__(base, "oauth")
        # The same endpoints over HTTPS on ``tls_port`` (``https_url``), trustme CA in ``ca_file``: msal
        # talks to nothing else. Dovecot asks the plain ``url``.
        self.tls_port = free_port()
        self.ca_file, cert_file, key_file = _write_tls(self.dir / "tls")
        self._cert = (cert_file, key_file)
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.port = free_port()
        self._lock = threading.Lock()
        self.access: dict[str, _Grant] = {}
        self.refresh: dict[str, str] = {}  # refresh token -> user
        self.app_user: str | None = None  # whom client credentials act for (app-only access)
        self.devices: dict[str, tuple[str, bool]] = {}  # device code -> (user, approved)
        self.device_user = "admin@example.test"
        self.auto_approve = True
        self.rotate = False  # each refresh answers with a new refresh token and retires the old one
        self.introspection_down = False  # answer 503: Dovecot then says [UNAVAILABLE], as a throttled server
        self.service_keys: dict[str, Any] = {}  # service account e-mail -> its public key (RFC 7523 grant)
        self.token_requests = 0
        self.introspections = 0
        self._events: list[str] = []
        self._httpd: Any = None
        self._https: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- the token table ---------------------------------------------------------------------------------

    def issue_refresh(self, user: str) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self._lock:
            self.refresh[token] = user
        return token

    def issue_access(self, user: str, lifetime: float | None = None) -> str:
        token = "at-" + secrets.token_urlsafe(16)
        with self._lock:
            self.access[token] = _Grant(user, time.time() + (self.lifetime if lifetime is None else lifetime))
        return token

    def live_tokens(self, user: str) -> list[str]:
        now = time.time()
        with self._lock:
            return [t for t, g in self.access.items() if g.user == user and not g.revoked and g.expires > now]

    def expire(self, user: str) -> int:
        """Every access token of ``user`` expires now (its refresh tokens stay good)."""
        with self._lock:
            grants = [g for g in self.access.values() if g.user == user]
            for g in grants:
                g.expires = 0
        return len(grants)

    def revoke(self, user: str) -> None:
        """The user's consent withdrawn: access and refresh tokens dead alike."""
        with self._lock:
            for g in self.access.values():
                if g.user == user:
                    g.revoked = True
            for t in [t for t, u in self.refresh.items() if u == user]:
                del self.refresh[t]
            if self.app_user == user:
                self.app_user = None

    def add_service_account(self, email: str) -> dict[str, str]:
        """A service account key (Google's JSON key file format) whose JWTs this server accepts, acting
        for any user named in ``sub`` (domain-wide delegation); remove it from ``service_keys`` to revoke."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        with self._lock:
            self.service_keys[email] = key.public_key()
        return {"type": "service_account", "project_id": "uji", "private_key_id": secrets.token_hex(8),
                "private_key": pem, "client_email": email, "client_id": str(secrets.randbelow(10**20)),
                "token_uri": f"{self.url}/token"}

    def _jwt_user(self, assertion: str) -> str | None:
        """RFC 7523 2.1: the JWT signed by a known service account, for this token endpoint; whom it acts for."""
        import jwt

        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
            with self._lock:
                public = self.service_keys.get(issuer)
            if public is None:
                return None
            # google-auth names Google's own token endpoint as the audience wherever it sends the JWT.
            claims = jwt.decode(assertion, public, algorithms=["RS256"],
                                audience=[f"{self.url}/token", "https://oauth2.googleapis.com/token"])
        except jwt.PyJWTError:
            return None
        return str(claims.get("sub") or issuer)

    def approve_devices(self) -> None:
        with self._lock:
            self.devices = {code: (user, True) for code, (user, _ok) in self.devices.items()}

    # -- HTTP --------------------------------------------------------------------------------------------

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/introspect":
            with self._lock:
                self.introspections += 1
                if self.introspection_down:
                    return 503, {"error": "temporarily_unavailable"}
                grant = self.access.get(form.get("token", ""))
                if grant is None or grant.revoked or grant.expires <= time.time():
                    return 200, {"active": False}
                return 200, {"active": True, "username": grant.user, "scope": "mail", "exp": int(grant.expires)}
        if path == "/device":
            if form.get("client_id") != self.client_id:
                return 400, {"error": "invalid_client"}
            code = secrets.token_urlsafe(12)
            with self._lock:
                self.devices[code] = (self.device_user, self.auto_approve)
            return 200, {"device_code": code, "user_code": "WDJB-MJHT", "verification_uri": f"{self.url}/activate",
                         "expires_in": 600, "interval": 1}
        if path != "/token":
            return 404, {"error": "not_found"}
        with self._lock:
            self.token_requests += 1
        grant_type = form.get("grant_type")
        if form.get("client_id") != self.client_id and grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 401, {"error": "invalid_client"}
        if grant_type == "refresh_token":
            with self._lock:
                user = self.refresh.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "refresh token revoked or unknown"}
            if self.rotate:
                with self._lock:
                    del self.refresh[form["refresh_token"]]
                return 200, {"access_token": self.issue_access(user), "token_type": "Bearer",
                             "expires_in": int(self.lifetime), "refresh_token": self.issue_refresh(user)}
        elif grant_type == "client_credentials":
            if form.get("client_secret") != self.client_secret or self.app_user is None:
                return 401, {"error": "invalid_client"}
            user = self.app_user
        elif grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            found = self._jwt_user(form.get("assertion", ""))
            if found is None:
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            user = found
        elif grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            with self._lock:
                entry = self.devices.get(form.get("device_code", ""))
            if entry is None:
                return 400, {"error": "expired_token"}
            if not entry[1]:
                return 400, {"error": "authorization_pending"}
            user = entry[0]
            with self._lock:
                del self.devices[form["device_code"]]
            return 200, {"access_token": self.issue_access(user), "token_type": "Bearer",
                         "expires_in": int(self.lifetime), "refresh_token": self.issue_refresh(user)}
        else:
            return 400, {"error": "unsupported_grant_type"}
        return 200, {"access_token": self.issue_access(user), "token_type": "Bearer", "expires_in": int(self.lifetime)}

    def start(self) -> None:
        if self._httpd is not None:
            return
        import json
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                # OpenID Connect discovery (msal reads the token endpoint from it), for any tenant path.
                if not self.path.endswith("/.well-known/openid-configuration"):
                    self._send(404, {"error": "not_found"})
                    return
                base = server.https_url if self.server is server._https else server.url
                self._send(200, {"issuer": base, "token_endpoint": f"{base}/token",
                                 "authorization_endpoint": f"{base}/authorize",
                                 "device_authorization_endpoint": f"{base}/device"})

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("utf-8")))
                path = self.path.split("?")[0]
                # Tenant-prefixed endpoints (/TENANT/oauth2/v2.0/token) as Microsoft's.
                path = "/" + path.rsplit("/", 1)[-1] if path.endswith(("/token", "/devicecode")) else path
                status, body = server._answer("/device" if path == "/devicecode" else path, form)
                self._send(status, body)
                server._log(f"{self.path} {form.get('grant_type', '')} -> {status}")

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                return

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._https = ThreadingHTTPServer((self.host, self.tls_port), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self._cert)
        self._https.socket = ctx.wrap_socket(self._https.socket, server_side=True)
        for httpd in (self._httpd, self._https):
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, name="oauth-server", daemon=True).start()

    def stop(self) -> None:
        for httpd in (self._httpd, self._https):
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()
        self._httpd = self._https = None

    def _log(self, line: str) -> None:
        with self._lock:
            self._events.append(f"{time.strftime('%H:%M:%S')} {line}")

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self._events[-200:]) + "\n"


class OAuthDovecot(Dovecot):
    """A :class:`Dovecot` whose IMAP and submission logins take OAuth 2.0 bearer tokens (SASL XOAUTH2 and
    OAUTHBEARER, RFC 7628), each checked at ``oauth``'s introspection endpoint (``passdb oauth2``,
    ``auth_cache_size = 0`` so a revoked token fails at once). PLAIN logins still work for the passwd-file
    users that the test helpers (:meth:`append`, :meth:`messages`) use. The submission service relays to
    ``relay_port`` (an :class:`SmtpRelay`), as trusted.
    """

    def __init__(self, base: Path, domain: str, oauth: OAuthServer, relay_port: int) -> None:
        self.oauth = oauth
        self.relay_port = relay_port
        self.submission_port = free_port()
        super().__init__(base, domain)
        (self.dir / "oauth2.conf.ext").write_text(
            f"introspection_url = {oauth.url}/introspect\nintrospection_mode = post\n"
            "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
            "scope = mail\ntimeout_msecs = 5000\n")
        (self.dir / "oauth2.conf.ext").chmod(0o644)

    def _config(self) -> str:
        conf = super()._config()
        conf = conf.replace("protocols = imap lmtp\n", "protocols = imap lmtp submission\n")
        conf = conf.replace("auth_mechanisms = plain login\n",
                            "auth_mechanisms = plain login xoauth2 oauthbearer\nauth_cache_size = 0\n")
        start = conf.index("passdb {")
        end = conf.index("service imap-login {")
        auth = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.dir}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%n {self.users_dir}/%n
}}
userdb {{
  driver = static
  args = home={self.mail_dir}/%n allow_all_users=yes
}}
"""
        submission = f"""service submission-login {{
  inet_listener submission {{
    address = {LOOPBACK}
    port = {self.submission_port}
  }}
}}
submission_relay_host = {LOOPBACK}
submission_relay_port = {self.relay_port}
submission_relay_trusted = yes
"""
        return conf[:start] + auth + conf[end:] + submission
