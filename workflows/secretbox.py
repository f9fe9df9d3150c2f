"""Keep the PIC's password encrypted at rest: AES-256-GCM with a key from the credentials directory.

Between provisioning and the credential mail the password is in the database twice: in `pending_secrets`
and, once queued, in the credential mail's bytes in `outbox_raw`. Both hold only ciphertext sealed by
`SecretBox`, so a database file, its WAL or a backup without the key file never reveals a password. The
key lives beside the IMAP/SMTP/TSIG secrets (`[secrets] key_file`, a systemd credential), never in the
state directory that backups take.

Each value is bound to where it is stored by the AEAD's associated data (`pending:<request id>`, the
outbox Message-ID), so a ciphertext copied onto another row does not open there (NIST SP 800-38D).
The key file holds 32 random bytes in base64; `subdomaind keygen FILE` writes one, mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from subdomaind.workflows.settings import credential_path

KEY_BYTES = 32
NONCE_BYTES = 12  # 96-bit random nonces: far below the 2^32 messages per key SP 800-38D section 8.3 allows
PREFIX = b"sdbox1:"  # marks sealed bytes; anything else was written before sealing existed


class SecretKeyError(Exception):
    """The key file is missing, unreadable or not a key; the message says which and how to make one."""


class SealedValueError(Exception):
    """A sealed value does not open with this key (another key, or the value was altered)."""


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def write_key_file(path: Path) -> None:
    """Create a new key file, mode 0600 from the start; never overwrite one (its values would be lost)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(new_key_text() + "\n")


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        real = credential_path(path)  # a bare name is a systemd credential, like the other secrets
        try:
            text = real.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise SecretKeyError(f"cannot read {real}: {why}; create it with `subdomaind keygen {real}`") from None
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"{real} is not a base64 key; create one with `subdomaind keygen FILE`") from None
        try:
            return cls(key)
        except SecretKeyError as exc:
            raise SecretKeyError(f"{real}: {exc}") from None

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A key that lives only in this process (tests that never restart)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def seal(self, data: bytes, where: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, data, where.encode()))

    def open(self, data: bytes, where: str) -> bytes:
        """The plain bytes; bytes that were never sealed (written before sealing existed) come back as
        they are."""
        if not data.startswith(PREFIX):
            return data
        try:
            blob = base64.b64decode(data[len(PREFIX):], validate=True)
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], where.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedValueError("sealed with another key, or altered") from None

    def seal_text(self, text: str, where: str) -> str:
        return self.seal(text.encode("utf-8"), where).decode("ascii")

    def open_text(self, value: str, where: str) -> str:
        return self.open(value.encode("utf-8"), where).decode("utf-8")
