"""A test configuration for the Trenggalek agency, pointed at whatever servers the test runs."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from daemon.config import Config, parse_config

DOMAIN = "trenggalekkab.go.id"
ACTORS = {
    "sekretaris": [f"sekretaris@{DOMAIN}"],
    "kadis": [f"kadis@{DOMAIN}"],
    "kabid": [f"kabid@{DOMAIN}"],
    "kasi": [f"kasi@{DOMAIN}"],
}
STAFF = f"staf@{DOMAIN}"
MAILBOX = f"layanan@{DOMAIN}"


def make_config(
    base: Path,
    *,
    imap_port: int = 10143,
    imap_user: str = "layanan",
    smtp_port: int = 10025,
    dns_port: int = 10053,
    tsig_secret: str | None = None,
    database_url: str | None = None,
    workflow: dict[str, Any] | None = None,
    agency_extra: dict[str, Any] | None = None,
    hosting: dict[str, Any] | None = None,
) -> Config:
    base.mkdir(parents=True, exist_ok=True)
    (base / "imap.pass").write_text("secret-layanan\n")
    secret_file = base / "tsig.secret"
    secret_file.write_text(tsig_secret or base64.b64encode(secrets.token_bytes(32)).decode())
    agency: dict[str, Any] = {
        "id": "trenggalek",
        "name": "Dinas Komunikasi dan Informatika Kabupaten Trenggalek",
        "zone": DOMAIN,
        "sop": "trenggalek",
        "address": MAILBOX,
        "imap": {"host": "127.0.0.1", "port": imap_port, "user": imap_user, "tls": "none",
                 "password_file": str(base / "imap.pass"), "poll_seconds": 0.2},
        "dns": {"primary": "127.0.0.1", "port": dns_port, "tsig_key_name": "subdomaind",
                "tsig_secret_file": str(secret_file), "hosting_ip": "203.0.113.10", "ttl": 300,
                "verify_timeout_seconds": 3},
        "actors": ACTORS,
        "digest_recipients": [STAFF],
        "letter": {"kop": ["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"],
                   "city": "Trenggalek", "signer_name": "Drs. Contoh Pejabat, M.Si",
                   "signer_nip": "197106091992011002", "tembusan": ["Sekretaris Daerah Kabupaten Trenggalek"]},
        **(agency_extra or {}),
    }
    data: dict[str, Any] = {
        "state_dir": str(base / "state"),
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none"},
        "agency": [agency],
        "workflow": {"undo_window_minutes": 0, **(workflow or {})},
    }
    if database_url:
        data["database_url"] = database_url
    if hosting:
        data["hosting"] = hosting
    return parse_config(data)
