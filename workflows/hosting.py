"""The hosting account of an approved sub-domain: the backends that create it, and its credentials.

Why its own module: account creation runs an operator's command and handles the PIC's password, which has
nothing to do with DNS; `generate_password` and `make_username` live here because only the account uses them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
from typing import Protocol

# No look-alike characters (0/O, 1/l/I) so the PIC can type it from a printed letter.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_LENGTH = 20


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        # At least one of each class, so panels with composition rules accept it.
        if any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw):
            return pw


def make_username(pattern: str, subdomain: str, pic_name: str | None, taken: set[str]) -> str:
    """A unique username from the pattern (`{subdomain}`, `{pic}` = first name), lower-case, [a-z0-9_]."""
    first = re.sub(r"[^a-z0-9]", "", (pic_name or "").split()[0].lower()) if pic_name and pic_name.split() else ""
    base = pattern.format(subdomain=subdomain, pic=first or "admin")
    base = re.sub(r"[^a-z0-9_]", "_", base.lower()).strip("_")[:28] or "user"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


class HostingError(Exception):
    pass


class HostingBackend(Protocol):
    name: str

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str: ...


class NoHosting:
    """DNS only: the account is the sub-domain's management username, nothing is created elsewhere."""

    name = "none"

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str:
        return "tidak ada akun hosting (hanya DNS)"


class CommandHosting:
    """Runs an operator-given argv template without a shell; the password goes on stdin or in the env."""

    name = "command"

    def __init__(self, argv: list[str], *, secret_via: str = "stdin", timeout: float = 60.0) -> None:  # noqa: S107
        self.argv = argv
        self.secret_via = secret_via
        self.timeout = timeout

    def create(self, *, username: str, password: str, fqdn: str, ip: str, subdomain: str) -> str:
        values = {"username": username, "fqdn": fqdn, "ip": ip, "subdomain": subdomain}
        # Substitution per argument: a value can never split into more arguments or reach a shell.
        try:
            argv = [arg.format(**values) for arg in self.argv]
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise HostingError(f"templat argv perintah akun hosting salah ({type(exc).__name__}: {exc}); "
                               f"yang dikenal: {{username}} {{fqdn}} {{ip}} {{subdomain}}") from exc
        # A minimal environment: the daemon's own (CREDENTIALS_DIRECTORY with the IMAP, SMTP and TSIG
        # secrets among it) is none of the panel command's business.
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME") if k in os.environ}
        stdin = None
        if self.secret_via == "env":
            env["SUBDOMAIND_PASSWORD"] = password
        else:
            stdin = password + "\n"
        try:
            # Its own process group: on timeout the whole group is killed, so a child the script started
            # cannot keep our pipes open and hang us past the timeout.
            proc_ = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, shell=False, start_new_session=True)
        except OSError as exc:
            raise HostingError(f"perintah akun hosting tidak dapat dijalankan: {exc.strerror}") from exc
        try:
            stdout, stderr = proc_.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc_.pid, signal.SIGKILL)
            proc_.communicate()
            raise HostingError(f"perintah akun hosting melewati batas waktu {self.timeout:.0f} detik dan "
                               f"dihentikan") from exc
        proc = subprocess.CompletedProcess(argv, proc_.returncode, stdout, stderr)
        out = (proc.stdout + proc.stderr).replace(password, "********")[-2000:]
        if proc.returncode != 0:
            raise HostingError(f"perintah akun hosting gagal (kode {proc.returncode}): {out.strip()}")
        return out.strip()
