"""A whole office on local throwaway servers, for `make demo` and the end-to-end tests.

Mailbox users for the office, each official, the requester and staff on a `devservers.Dovecot`; a config
file pointing at the local servers; the real `subdomaind run` as a subprocess; and the people's side: a
request letter sent by SMTP, and officials who read their mailbox over IMAP and answer by SMTP.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import os
import secrets
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import tomli_w

from subdomaind.daemon.config import Config, parse_config
from subdomaind.workflows.secretbox import write_key_file
from tests.devkit.devservers import Bind, DkimKey, Dovecot, MailUser, Postfix, SmtpRelay

DOMAIN = "trenggalekkab.go.id"
ROLES = ("sekretaris", "kadis", "kabid", "kasi")
ACTORS = {role: [f"{role}@{DOMAIN}"] for role in ROLES}
STAFF = f"staf@{DOMAIN}"
MAILBOX = f"layanan@{DOMAIN}"
SUBDOMAIND = Path(sys.executable).with_name("subdomaind")
DEMO_LOGO = Path(__file__).resolve().parents[2] / "examples" / "lambang-contoh.png"

# --- configuration --------------------------------------------------------------------------------

LOCAL_SENDER_CAPS = {"per_sender_per_hour": 1_000_000, "per_domain_per_hour": 1_000_000,
                     "per_agency_per_hour": 1_000_000}


def config_data(
    base: Path,
    *,
    agency_id: str = "trenggalek",
    sop: str = "trenggalek",
    zone: str = DOMAIN,
    imap_port: int = 10143,
    imap_user: str = "layanan",
    imap_password: str = "secret-layanan",  # noqa: S107 - a throwaway local test server
    mailbox: str = MAILBOX,
    actors: dict[str, list[str]] | None = None,
    staff: list[str] | None = None,
    smtp_port: int = 10025,
    dns_port: int = 10053,
    tsig_secret: str | None = None,
    database_url: str | None = None,
    workflow: dict[str, Any] | None = None,
    agency_extra: dict[str, Any] | None = None,
    hosting: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    signing: bool = False,
) -> dict[str, Any]:
    """A Trenggalek configuration pointing at local servers; secrets written to files beside it. `auth`
    is `[agency.auth]`; without it the code's default applies (decisions must be vouched for).

    With `signing`, a demo CA and signing certificate are made under `base/tte` and every letter is signed,
    with the placeholder coat of arms in the kop.
    """
    base.mkdir(parents=True, exist_ok=True)
    (base / "imap.pass").write_text(imap_password + "\n")
    secret_file = base / "tsig.secret"
    secret_file.write_text(tsig_secret or base64.b64encode(secrets.token_bytes(32)).decode())
    for f in (base / "imap.pass", secret_file):
        f.chmod(0o600)  # secrets readable by others are refused (daemon/validate.py)
    key_file = base / "pic-secret.key"
    if not key_file.exists():
        write_key_file(key_file)
    agency: dict[str, Any] = {
        "id": agency_id,
        "name": "Dinas Komunikasi dan Informatika " + ("Kabupaten Trenggalek" if sop == "trenggalek"
                                                         else "Provinsi Kalimantan Barat"),
        "zone": zone,
        "sop": sop,
        "address": mailbox,
        "imap": {"host": "127.0.0.1", "port": imap_port, "user": imap_user, "tls": "none",
                 "password_file": str(base / "imap.pass"), "poll_seconds": 0.5},
        "dns": {"primary": "127.0.0.1", "port": dns_port, "tsig_key_name": "subdomaind",
                "tsig_secret_file": str(secret_file), "hosting_ip": "203.0.113.10", "ttl": 300,
                # Named explicitly: the zone's NS names point at documentation addresses, never to be asked.
                "verify_servers": [f"127.0.0.1:{dns_port}"], "verify_timeout_seconds": 3},
        "actors": {role: list(addrs) for role, addrs in (actors or ACTORS).items()},
        "digest_recipients": list(staff or [STAFF]),
        "letter": {"kop": ["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"],
                   "city": "Trenggalek", "signer_name": "Drs. Contoh Pejabat, M.Si",
                   "signer_nip": "197106091992011002", "tembusan": ["Sekretaris Daerah Kabupaten Trenggalek"]},
        **({"auth": auth} if auth is not None else {}),
        **(agency_extra or {}),
    }
    if signing:
        from subdomaind.workflows.signing import make_demo_pki

        pki = make_demo_pki(base / "tte", signer_name="Drs. Contoh Pejabat, M.Si",
                            organization=agency["name"])
        agency["letter"] = {**agency["letter"], "logo": str(DEMO_LOGO), "signing": {
            "pkcs12_file": str(pki.pkcs12), "password_file": str(pki.password_file),
            "verify_url": f"https://tte.{zone}/verifikasi/{{id}}"}}
    data: dict[str, Any] = {
        "state_dir": str(base / "state"),
        # Local servers restart in milliseconds: retry after a second, not half a minute.
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "retry_base_seconds": 1,
                 "retry_max_seconds": 10},
        "agency": [agency],
        # One requester address sends every request of a test module (and the load tests hundreds): the
        # hourly caps on mail caused by unverified senders are lifted here; the tests of the caps set them.
        "workflow": {"undo_window_minutes": 0, "unverified_mail": LOCAL_SENDER_CAPS, **(workflow or {})},
        "secrets": {"key_file": str(key_file)},
    }
    if database_url:
        data["database_url"] = database_url
    if hosting:
        data["hosting"] = hosting
    return data


def make_config(base: Path, **kwargs: Any) -> Config:
    return parse_config(config_data(base, **kwargs))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


# --- checking signed letters as a recipient would ------------------------------------------------------


def nss_trusting(ca_pem: Path, directory: Path) -> Path:
    """An NSS database (what pdfsig reads trust from) that trusts `ca_pem` for signed documents."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{directory}", "--empty-password"], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["certutil", "-A", "-d", f"sql:{directory}", "-n", "demo-ca", "-t", "C,C,C", "-i", str(ca_pem)],
                   check=True, capture_output=True, timeout=60)
    return directory


def pdfsig(path: Path, nss_dir: Path | None = None) -> str:
    """`pdfsig`'s report on a PDF (poppler-utils). It exits 0 even for a bad signature: read the lines."""
    argv = ["pdfsig", *(["-nssdir", f"sql:{nss_dir}"] if nss_dir else []), str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


def pdfsig_valid(report: str) -> bool:
    """One valid signature over the whole file, by a trusted certificate."""
    return ("Signature Validation: Signature is Valid." in report and "Total document signed" in report
            and "Certificate Validation: Certificate is Trusted." in report)


def pdf_attachments(raw: bytes) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each PDF attached to a mail."""
    out: list[tuple[str, bytes]] = []
    for part in parse_mail(raw).walk():
        if part.get_content_type() == "application/pdf":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                out.append((part.get_filename() or "lampiran.pdf", data))
    return out


# --- the people's mail ----------------------------------------------------------------------------

REQUEST_BODY = """Dengan hormat,

Bersama ini kami mengajukan permohonan pembuatan sub domain untuk Dinas Sosial.

Nama Sub Domain : {label}
Unit Kerja : Dinas Sosial Kabupaten Trenggalek
Nama Penanggung Jawab : Lukman Hakim
NIP : 19870412 201001 1 003
Jabatan : Pengelola Website
Email : {pic}
No. HP : 0812-3456-7890
Keperluan : Situs informasi layanan bantuan sosial
Nomor Surat : 555/123/406.012/2026

Demikian permohonan kami, atas perhatian Bapak/Ibu kami sampaikan terima kasih.

Kepala Dinas Sosial
"""


def request_mail(sender: str, label: str = "dinsos", *, to: str = MAILBOX, pic: str | None = None,
                 body: str | None = None) -> bytes:
    """A unit's request letter with the form in the body, as a clerk would type it."""
    msg = EmailMessage()
    msg["From"] = f"Dinas Sosial <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"Permohonan Sub Domain {label}.{DOMAIN}"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="dinsos.example")
    msg.set_content(body if body is not None else REQUEST_BODY.format(label=label, pic=pic or sender))
    return msg.as_bytes()


def hand_pdf(objects: Sequence[bytes]) -> bytes:
    """A PDF from its numbered objects' bodies (object 1 the catalog), with its cross-reference table:
    written by hand for the hostile and the very large letters of the tests and benches, which a PDF library
    would refuse to make or take a minute over."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def text_pdf(content: bytes, *, xobjects: bytes = b"", extra: Sequence[bytes] = ()) -> bytes:
    """One page whose content stream is `content` (text operators in Helvetica, font /F1); `xobjects` names
    the page's XObjects among the `extra` objects, numbered from 6."""
    resources = b"/Font << /F1 5 0 R >>" + (b" /XObject << " + xobjects + b" >>" if xobjects else b"")
    return hand_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << " + resources
        + b" >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *extra,
    ])


def scanned_pdf(text: bytes, image: bytes, *, width: int, height: int, image_filter: str) -> bytes:
    """One page: a text layer (`text`, the content stream's text operators) over a "scanned" image stored
    with `image_filter` (DCTDecode as scanners write it, or FlateDecode)."""
    return text_pdf(text + b" q 400 0 0 400 100 200 cm /Im1 Do Q", xobjects=b"/Im1 6 0 R", extra=[
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
        b"/Filter /%s /Length %d >>\nstream\n" % (width, height, image_filter.encode(), len(image))
        + image + b"\nendstream",
    ])


def parse_mail(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_text(raw: bytes) -> str:
    part = parse_mail(raw).get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def reply_to(original: bytes, sender: str, text: str) -> bytes:
    """A reply as a mail client makes it: To = the Reply-To, threading headers, the original quoted
    below a Gmail-style Indonesian header."""
    orig = parse_mail(original)
    quoted = "\n".join("> " + line for line in body_text(original).splitlines())
    msg = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
    msg["From"] = sender
    msg["To"] = parseaddr(str(orig["Reply-To"] or orig["From"]))[1]
    msg["Subject"] = "Re: " + str(orig["Subject"])
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg["In-Reply-To"] = str(orig["Message-ID"])
    # RFC 5322 3.6.4: the parent's References, then the parent's Message-ID.
    msg["References"] = " ".join(x for x in (str(orig["References"] or ""), str(orig["Message-ID"])) if x)
    msg.set_content(f"{text}\n\nPada {orig['Date']} Layanan Sub Domain <{parseaddr(str(orig['From']))[1]}> "
                    f"menulis:\n{quoted}\n")
    return msg.as_bytes()


AUTHSERV_ID = "mx.trenggalekkab.go.id"
# `[agency.auth]` of a test that is not about vouching and hands its mail to Dovecot without an MTA that
# could vouch: said explicitly, since the default asks for vouching.
UNVOUCHED: dict[str, Any] = {"require": "none"}


def vouched_by(mta: Postfix) -> dict[str, Any]:
    """`[agency.auth]` trusting the Authentication-Results of `mta` (its OpenDKIM's authserv-id), as in
    production."""
    return {"require": "authres_or_dkim", "authserv_id": mta.milter.authserv_id}


def vouch(raw: bytes, sender: str, authserv: str = AUTHSERV_ID) -> bytes:
    """What our own MTA would prepend to a genuine mail (RFC 8601 Authentication-Results)."""
    domain = sender.rpartition("@")[2]
    return (f"Authentication-Results: {authserv}; dkim=pass header.d={domain}; "
            f"spf=pass smtp.mailfrom={sender}\r\n").encode() + raw


# --- the office -----------------------------------------------------------------------------------


@dataclass
class Office:
    base: Path
    dovecot: Dovecot
    relay: SmtpRelay
    bind: Bind
    mailbox: MailUser
    officials: dict[str, MailUser]
    requester: MailUser
    staff: MailUser
    config_path: Path
    data: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    answered: dict[str, int] = field(default_factory=dict)
    # In-process mode: called while waiting for mail, instead of a background `subdomaind run`.
    pump: Callable[[], object] | None = None
    # The office MTA that people's mail goes through (Postfix + OpenDKIM), and the key with which the
    # officials' domain signs its users' mail. Without an MTA, people's mail goes through `relay`.
    mta: Postfix | None = None
    dkim: DkimKey | None = None

    @classmethod
    def create(cls, base: Path, dovecot: Dovecot, relay: SmtpRelay, bind: Bind, *,
               database_url: str | None = None, roles: tuple[str, ...] = ROLES, mta: Postfix | None = None,
               dkim: DkimKey | None = None, **extra: Any) -> Office:
        """The office; with `mta` (and the officials' `dkim` key), people's mail goes through the office
        MTA and decisions are vouched for by its Authentication-Results, unless `auth` says otherwise."""
        mailbox = dovecot.new_user("layanan")
        officials = {r: dovecot.new_user(r) for r in roles}
        requester = dovecot.new_user("dinsos")
        staff = dovecot.new_user("staf")
        if mta is not None:
            extra.setdefault("auth", vouched_by(mta))
        data = config_data(
            base, imap_port=dovecot.imap_port, imap_user=mailbox.name, imap_password=mailbox.password,
            mailbox=mailbox.address, actors={r: [u.address] for r, u in officials.items()},
            staff=[staff.address], smtp_port=relay.port, dns_port=bind.port, tsig_secret=bind.secret,
            database_url=database_url, **extra,
        )
        path = write_config(base / "config.toml", data)
        return cls(base, dovecot, relay, bind, mailbox, officials, requester, staff, path, data, mta=mta,
                   dkim=dkim)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SUBDOMAIND), "--config", str(self.config_path), *args], capture_output=True,
                              text=True, timeout=120, check=check)

    def start(self) -> None:
        log = (self.base / "daemon.log").open("ab")
        self.proc = subprocess.Popen([str(SUBDOMAIND), "--config", str(self.config_path), "run"],
                                     stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc = None

    def log(self) -> str:
        path = self.base / "daemon.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def send(self, raw: bytes, sender: str, rcpts: list[str] | None = None) -> None:
        msg = parse_mail(raw)
        to = rcpts or [parseaddr(a)[1] for a in str(msg["To"]).split(",")]
        # smtplib fixes line ends only for str; SMTP wants CRLF (RFC 5321 2.3.8).
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.dkim is not None and sender.rpartition("@")[2].lower() == self.dkim.domain:
            # The sender's own domain sends it: its outbound MTA signs (RFC 6376). A forger, sending from
            # another envelope address, has no key of that domain.
            raw = self.dkim.sign(raw)
        host, port = (self.mta.host, self.mta.port) if self.mta is not None else (self.relay.host, self.relay.port)
        with smtplib.SMTP(host, port, timeout=10) as s:
            s.sendmail(sender, to, raw)

    def send_request(self, label: str, **kwargs: Any) -> bytes:
        raw = request_mail(self.requester.address, label, to=self.mailbox.address, **kwargs)
        self.send(raw, self.requester.address)
        return raw

    def wait_mail(self, user: MailUser, match: Callable[[EmailMessage], bool], *, after: int = 0,
                  timeout: float = 30.0) -> bytes:
        """The first message in `user`'s INBOX past index `after` that `match` accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pump is not None:
                self.pump()
            for raw in user.messages()[after:]:
                if match(parse_mail(raw)):
                    return raw
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"no matching mail for {user.address} within {timeout}s; daemon log:\n{self.log()}")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.pump is not None:
                self.pump()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; daemon log:\n{self.log()}")
            time.sleep(0.2)

    def decide(self, role: str, word: str, *, timeout: float = 30.0) -> bytes:
        """As the official of `role`: wait for the next mail asking for a decision, and answer it."""
        user = self.officials[role]
        raw = self.wait_mail(user, lambda m: "Mohon keputusan" in str(m["Subject"]),
                             after=self.answered.get(role, 0), timeout=timeout)
        self.answered[role] = user.messages().index(raw) + 1
        self.send(reply_to(raw, user.address, word), user.address)
        return raw
