"""`make demo`: one request letter travels the whole Trenggalek SOP against real local servers.

Starts Dovecot (IMAP + LMTP), BIND 9, the office MTA (Postfix with OpenDKIM verifying the officials'
DKIM signatures and adding Authentication-Results) and an SMTP relay for the daemon's own mail on
127.0.0.1 under /tmp/subdomaind-demo-UID, runs the real `subdomaind run`, sends a sample request, plays
each official reading their mailbox and answering (their mail signed with their domain's test key, as
their MTA does), and prints every step, the final reply letter and the DNS answer. A forged reply is
refused on the way. Every letter is signed with a demo certificate (a local CA made for the run), and at
the end each letter PDF in every mailbox is checked with `pdfsig`. Nothing leaves this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.devkit import netguard  # noqa: E402
from tests.devkit.devservers import Bind, DkimKey, Dovecot, OpenDkim, Postfix, SmtpRelay, missing_binaries  # noqa: E402
from tests.devkit.localoffice import (  # noqa: E402
    DOMAIN,
    Office,
    body_text,
    nss_trusting,
    parse_mail,
    pdf_attachments,
    pdfsig,
    pdfsig_valid,
    reply_to,
)

ZONE_RECORDS = "ns1 IN A 192.0.2.1\nns2 IN A 192.0.2.2\nwww IN A 203.0.113.5\nmail IN A 203.0.113.6\n"
PLAN = [
    ("kadis", "SETUJU", "Kepala Dinas disposes the letter (SOP step 4)"),
    ("kabid", "SETUJU, lanjutkan ke Kasi Infrastruktur.", "Kabid e-Government routes it down"),
    ("kasi", "Setuju. Isian lengkap.", "Kasi Layanan Infrastruktur checks completeness (step 5)"),
    ("kasi", "SETUJU", "Kasi approves the draft reply letter (step 7)"),
    ("kabid", "SETUJU", "Kabid approves the draft (step 8)"),
    ("kadis", "SETUJU, silakan dikirim.", "Kepala Dinas approves sending it"),
]


def say(text: str) -> None:
    print(text, flush=True)


def forge(office: Office, role: str) -> str:
    """Someone outside holding a copy of the step mail answers it with the official's From: the office
    MTA finds no signature of the officials' domain, so the daemon refuses it. Returns the refusal."""
    official = office.officials[role]
    step_mail = office.wait_mail(official, lambda m: "Mohon keputusan" in str(m["Subject"]))
    subject = str(parse_mail(step_mail)["Subject"])
    ticket = re.search(r"\[([A-Z]+/\d{4}/\d{4})\]", subject)
    assert ticket is not None
    office.send(reply_to(step_mail, official.address, "SETUJU"), "penyusup@example.net")
    office.wait_until(lambda: "not_vouched" in office.cli("show", ticket.group(1), check=False).stdout)
    return "not_vouched (the office MTA did not vouch for the sender)"


def main() -> int:
    netguard.guard_this_process_and_children()  # 127.0.0.1 only, here and in the daemons started
    missing = missing_binaries("dovecot", "bind", "postfix")
    if missing:
        say(f"missing: {', '.join(missing)} - run `make demo` (it installs them)")
        return 1
    # Not under the clone: a home directory is 0700 on Debian 12 and Dovecot's and BIND's users could not
    # reach their files there. A fixed name per user, so the next run clears the last one.
    base = Path(tempfile.gettempdir()) / f"subdomaind-demo-{os.getuid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)
    started = time.monotonic()
    key = DkimKey.generate(DOMAIN)
    with Dovecot(base, DOMAIN) as dovecot, Bind(base, DOMAIN, ZONE_RECORDS) as bind, \
            OpenDkim(base, f"mx.{DOMAIN}", [key]) as milter, \
            Postfix(base, DOMAIN, dovecot.host, dovecot.lmtp_port, milter) as mta:
        relay = SmtpRelay(dovecot.host, dovecot.lmtp_port, base=base)
        relay.start()
        office = Office.create(base / "office", dovecot, relay, bind, mta=mta, dkim=key, signing=True)
        say(f"Local servers up: IMAP 127.0.0.1:{dovecot.imap_port}, office MTA (Postfix + OpenDKIM) "
            f"127.0.0.1:{mta.port}, SMTP relay for the daemon 127.0.0.1:{relay.port}, "
            f"DNS 127.0.0.1:{bind.port} (zone {DOMAIN}); config {office.config_path}")
        office.start()
        try:
            label = "dinsos"
            say(f"\n1. Dinas Sosial ({office.requester.address}) emails its request for {label}.{DOMAIN}")
            office.send_request(label)
            ack = office.wait_mail(office.requester, lambda m: "diterima" in str(m["Subject"]))
            subject = str(parse_mail(ack)["Subject"])
            ticket = re.search(r"\[([A-Z]+/\d{4}/\d{4})\]", subject)
            say(f"   <- acknowledgement to the unit: \"{subject}\"")
            note = office.wait_mail(office.officials["sekretaris"], lambda m: "Pemberitahuan" in str(m["Subject"]))
            say(f"   -> Sekretaris informed (step 3): \"{parse_mail(note)['Subject']}\"")
            for n, (role, word, what) in enumerate(PLAN, start=2):
                if n == 2:
                    forged = forge(office, role)
                    say(f"   !! a forged SETUJU with From: {office.officials[role].address}, sent from outside, "
                        f"is refused: {forged}")
                step_mail = office.decide(role, word)
                say(f"\n{n}. {what}")
                say(f"   -> {office.officials[role].address} was asked: \"{parse_mail(step_mail)['Subject']}\"")
                say(f"   <- they replied: \"{word}\"")
            final = office.wait_mail(office.requester, lambda m: "telah aktif" in str(m["Subject"]))
            say(f"\n{len(PLAN) + 2}. The unit receives the reply letter: \"{parse_mail(final)['Subject']}\"\n")
            say("-" * 78)
            say(body_text(final).rstrip())
            say("-" * 78)
            creds = office.wait_mail(office.requester, lambda m: "Kata sandi akun" in str(m["Subject"]))
            say(f"   <- the password goes to the PIC alone, in its own mail after the letter: "
                f"\"{parse_mail(creds)['Subject']}\" (to {parse_mail(creds)['To']})")
            office.send(reply_to(final, office.requester.address, "BERHASIL, sudah dapat kami gunakan."),
                        office.requester.address)
            say(f"{len(PLAN) + 3}. The unit's IT admin replies \"BERHASIL\": the request is closed")
            office.wait_until(lambda: "konfigurasi" not in office.cli("status").stdout)
            answer = bind.addresses(label)
            say(f"\nDNS: {label}.{DOMAIN} A -> {', '.join(answer) or '(none)'} "
                f"(asked BIND at 127.0.0.1:{bind.port})")
            if ticket:
                say(f"\n$ subdomaind show {ticket.group(1)}")
                say(office.cli("show", ticket.group(1)).stdout.rstrip())
            ok = bool(answer) and check_letters(office, base)
        finally:
            rc = office.stop()
            relay.stop()
    say(f"\nDemo finished in {time.monotonic() - started:.1f} s (daemon exit code {rc}). "
        f"Everything it made is under {base}.")
    return 0 if ok and rc == 0 else 1


def check_letters(office: Office, base: Path) -> bool:
    """Every letter PDF in every demo mailbox, checked with pdfsig against the demo CA (and kept on disk)."""
    nss = nss_trusting(office.base / "tte" / "ca.pem", base / "nssdb")
    out = base / "letters"
    out.mkdir(exist_ok=True)
    users = [office.mailbox, office.requester, office.staff, *office.officials.values()]
    good = bad = 0
    say("\nLetters in the mailboxes, checked with pdfsig (the demo CA trusted):")
    for user in users:
        for raw in user.messages():
            for name, data in pdf_attachments(raw):
                if not name.startswith(("surat-", "konsep-surat-")):
                    continue  # the blank request form, or the unit's own attachments: not our letters
                path = out / f"{user.name}-{name}"
                path.write_bytes(data)
                valid = pdfsig_valid(pdfsig(path, nss))
                good, bad = good + valid, bad + (not valid)
                say(f"   {'OK ' if valid else 'BAD'} {path.relative_to(base)}")
    say(f"   {good} signed and valid, {bad} not")
    return good > 0 and bad == 0


if __name__ == "__main__":
    raise SystemExit(main())
