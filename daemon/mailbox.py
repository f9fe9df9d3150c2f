"""The office mailbox over IMAP: fetch what is new since the last UID, mark what was handled, wait with IDLE.

`MailSource` is the small interface the service loop uses; `ImapSource` is the real one (imapclient).
Intake never re-reads the whole mailbox: it asks the server for `UID last+1:*` only (RFC 3501 6.4.8), and
never deletes: handled mail is flagged (and optionally moved), quarantined mail is moved to its folder.
"""

from __future__ import annotations

import imaplib
import logging
import re
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import imapclient
from imapclient.exceptions import IMAPClientError, LoginError

from subdomaind.daemon.config import ImapConfig
from subdomaind.daemon.oauth import OAuthError, TokenSource, sasl_initial
from subdomaind.workflows.rawmail import RawMail, Spooled, discard, open_spool

log = logging.getLogger("subdomaind.imap")

DONE_FLAG = b"$SubdomaindDone"
# One fetch takes at most this many bytes of mail (but always one message): a batch of scanned letters must
# not sit in memory at once.
FETCH_BYTES = 8 * 1024 * 1024
# A message larger than this is fetched in pieces of this size (RFC 3501 6.4.5 BODY.PEEK[]<offset.count>):
# a literal read whole costs the IMAP library several copies of it (about 4x: 112 MB for a 27 MB letter).
PIECE_BYTES = 1024 * 1024


def _has_new(responses: Sequence[object]) -> bool:
    """Whether untagged responses announce new mail (RFC 3501 7.3.1 EXISTS, 7.3.2 RECENT)."""
    return any(r[1] in (b"EXISTS", b"RECENT") for r in responses if isinstance(r, tuple) and len(r) > 1)


class MailSourceError(Exception):
    """The mailbox could not be reached or answered wrongly; the loop backs off and tries again.

    `kind` says which: "auth" (the server refused the password or token), "throttled" (the server asked
    us to come back later: Microsoft 365's BYE or "throttled" reply), or "network" (anything else). The
    message is in plain words, fit for the operator's log and `status`.
    """

    def __init__(self, message: str, kind: str = "network") -> None:
        super().__init__(message)
        self.kind = kind


_BYTES_REPR = re.compile(r"""b(['"])(.*?)\1""")


def plain_words(exc: BaseException | str) -> str:
    """An IMAP library's error as the server worded it: imaplib puts the server's bytes into the exception,
    whose text is then a Python bytes repr (b'[AUTHENTICATIONFAILED] ...'); the operator sees the words."""
    text = _BYTES_REPR.sub(lambda m: m.group(2), str(exc)).strip()
    return text or type(exc).__name__


def classify(exc: BaseException) -> str:
    """"auth", "throttled" or "network" for an error of the IMAP library (see MailSourceError.kind)."""
    text = plain_words(exc).lower()
    # RFC 5530 response codes ([UNAVAILABLE], [LIMIT]); Microsoft 365 words its throttling and connection
    # limits "Request is throttled", "Server Unavailable. 15" or a BYE "Connection is closed. 13".
    if any(w in text for w in ("throttl", "too many", "[unavailable]", "server busy", "server unavailable",
                               "limit exceeded", "[limit]", "connection is closed")):
        return "throttled"
    if isinstance(exc, LoginError) or "authenticationfailed" in text or "authenticate failed" in text \
            or "authorizationfailed" in text or "invalid credentials" in text:
        return "auth"
    return "network"


def describe(exc: BaseException, host: str, port: int) -> str:
    """The failure in words an operator can act on, with the server's own words after it."""
    kind = classify(exc)
    words = plain_words(exc)
    if kind == "auth":
        return f"login ke {host}:{port} ditolak: kata sandi atau token salah, kedaluwarsa atau dicabut ({words})"
    if kind == "throttled":
        return f"server {host}:{port} membatasi koneksi (throttled), dicoba lagi nanti ({words})"
    return f"server IMAP {host}:{port} tidak dapat dihubungi atau menjawab salah ({words})"


class MailSource(Protocol):
    folder: str

    def connect(self) -> None: ...
    def uidvalidity(self) -> int: ...
    def fetch_new(self, last_uid: int, limit: int, max_bytes: int = ...) -> list[tuple[int, RawMail]]: ...
    def mark_handled(self, uids: Sequence[int], *, quarantine: bool) -> None: ...
    def wait(self, timeout: float) -> bool: ...
    def close(self) -> None: ...

    @property
    def mode(self) -> str: ...


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates verified by default; a private CA only when configured (never verification off)."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def _sasl(client: imapclient.IMAPClient, mechanism: str, initial: bytes) -> None:
    """AUTHENTICATE with one initial response (RFC 3501 6.2.2). After a refused token the server sends an
    error challenge (RFC 7628 3.2.2: a JSON status); the answer to it is an empty line, then comes the NO."""
    sent = False

    def answer(_challenge: bytes) -> bytes:
        nonlocal sent
        if sent:
            return b""
        sent = True
        return initial

    try:
        client._imap.authenticate(mechanism.upper(), answer)
    except imaplib.IMAP4.error as exc:
        raise LoginError(plain_words(exc)) from exc


def login(client: imapclient.IMAPClient, cfg: ImapConfig, password: str, tokens: TokenSource | None) -> None:
    """Log in by password, or by OAuth 2.0 (SASL XOAUTH2 / OAUTHBEARER): a refused token is dropped and a
    fresh one tried once more (it may have been revoked or expired early), then the refusal stands."""
    if cfg.auth != "oauth2":
        client.login(cfg.user, password)
        return
    if tokens is None or cfg.oauth is None:
        raise LoginError("auth = oauth2 tanpa sumber token")
    mechanism = cfg.oauth.mechanism
    for attempt in (1, 2):
        token = tokens.token()
        try:
            _sasl(client, mechanism, sasl_initial(mechanism, cfg.user, token, cfg.host, cfg.port))
            return
        except LoginError:
            tokens.invalidate()
            if attempt == 2:
                raise


def open_imap(cfg: ImapConfig, password: str, tokens: TokenSource | None = None) -> imapclient.IMAPClient:
    """A logged-in connection to the mailbox (TLS as configured); `MailSourceError` in plain words.
    `check-config --connect` uses it as is."""
    ctx = tls_context(str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls != "none" else None
    client: imapclient.IMAPClient | None = None
    try:
        client = imapclient.IMAPClient(
            cfg.host, port=cfg.port, ssl=cfg.tls == "implicit",
            ssl_context=ctx if cfg.tls == "implicit" else None, timeout=cfg.timeout_seconds,
        )
        if cfg.tls == "starttls":
            client.starttls(ctx)
        login(client, cfg, password, tokens)
    except OAuthError as exc:
        _drop(client)
        raise MailSourceError(f"token OAuth untuk {cfg.user} tidak didapat: {exc}", "auth") from exc
    except (TimeoutError, OSError, IMAPClientError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        _drop(client)
        raise MailSourceError(describe(exc, cfg.host, cfg.port), classify(exc)) from exc
    return client


def check_login(cfg: ImapConfig, password: str, tokens: TokenSource | None = None) -> str | None:
    """Log in to the mailbox, open its folder and log out: None when that worked, else why, in plain words.
    `check-config --connect` calls it."""
    try:
        client = open_imap(cfg, password, tokens)
    except MailSourceError as exc:
        return str(exc)
    try:
        client.select_folder(cfg.folder, readonly=True)
    except (TimeoutError, OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
        return f"folder {cfg.folder!r} tidak dapat dibuka: {plain_words(exc)}"
    finally:
        _drop_politely(client)
    return None


def _drop_politely(client: imapclient.IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - a dead connection cannot log out; we drop it either way
        _drop(client)


def _drop(client: imapclient.IMAPClient | None) -> None:
    if client is not None:
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001 - a half-open connection is dropped either way
            log.debug("IMAP shutdown failed", exc_info=True)


class ImapSource:
    def __init__(self, cfg: ImapConfig, password: str, spool_dir: Path | None = None,
                 tokens: TokenSource | None = None) -> None:
        self.cfg = cfg
        self.password = password
        self.tokens = tokens  # OAuth 2.0 access tokens (daemon/oauth.py) when cfg.auth is "oauth2"
        self.spool_dir = spool_dir  # where a large message is gathered; None: the system's temp directory
        self.folder = cfg.folder
        self.client: imapclient.IMAPClient | None = None
        self._uidvalidity = 0
        self._idle_ok = False

    @property
    def mode(self) -> str:
        return "idle" if self._idle_ok else "polling"

    def connect(self) -> None:
        self.close()
        cfg = self.cfg
        client = open_imap(cfg, self.password, self.tokens)
        try:
            for folder in (cfg.quarantine_folder, cfg.processed_folder):
                if folder and not client.folder_exists(folder):
                    client.create_folder(folder)
            info = client.select_folder(self.folder)
        except (TimeoutError, OSError, IMAPClientError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            _drop(client)
            raise MailSourceError(describe(exc, cfg.host, cfg.port), classify(exc)) from exc
        self.client = client
        self._uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        self._idle_ok = cfg.idle and client.has_capability("IDLE")

    def _c(self) -> imapclient.IMAPClient:
        if self.client is None:
            raise MailSourceError("not connected")
        return self.client

    def uidvalidity(self) -> int:
        return self._uidvalidity

    def fetch_new(self, last_uid: int, limit: int, max_bytes: int = FETCH_BYTES) -> list[tuple[int, RawMail]]:
        """The next messages after `last_uid`, in UID order: at most `limit`, and no more than `max_bytes`
        of them unless the first alone is larger. One over PIECE_BYTES comes as a file in the spool
        directory (`Spooled`), which the caller discards once the message is stored."""
        c = self._c()
        try:
            # NOOP first: it makes the server sync the selected mailbox, so mail that arrived since this
            # connection's last command is in the search below (RFC 3501 6.1.2).
            c.noop()
            # "last+1:*" always matches the highest message even when it is older (RFC 3501 6.4.8),
            # so the result is filtered; the server never walks the whole mailbox for us.
            uids = sorted(u for u in c.search([b"UID", f"{last_uid + 1}:*"]) if u > last_uid)[:limit]
            if not uids:
                return []
            sizes = {uid: int(item.get(b"RFC822.SIZE", 0)) for uid, item in c.fetch(uids, [b"RFC822.SIZE"]).items()}
            chosen: list[int] = []
            total = 0
            for uid in uids:
                if chosen and total + sizes.get(uid, 0) > max_bytes:
                    break
                chosen.append(uid)
                total += sizes.get(uid, 0)
            small = [u for u in chosen if sizes.get(u, 0) <= PIECE_BYTES]
            data = c.fetch(small, [b"BODY.PEEK[]"]) if small else {}
            out: list[tuple[int, RawMail]] = []
            try:
                for uid in chosen:
                    if uid in small:
                        body = data.get(uid, {}).get(b"BODY[]")
                        if body is not None:
                            out.append((uid, bytes(body)))
                    elif (spooled := self._fetch_in_pieces(uid, sizes[uid])) is not None:
                        out.append((uid, spooled))
            except BaseException:
                discard([raw for _uid, raw in out])  # a fetch cut short leaves no file behind
                raise
        except (TimeoutError, OSError, IMAPClientError) as exc:
            raise MailSourceError(f"IMAP fetch: {plain_words(exc)}", classify(exc)) from exc
        return out

    def _fetch_in_pieces(self, uid: int, size: int) -> Spooled | None:
        # The pieces go to a file, which the main process never reads whole (workflows/rawmail.py): joined
        # in memory (or grown in a bytearray), a 27 MB letter was held twice at the end of its fetch.
        c = self._c()
        spool, path = open_spool(self.spool_dir, "fetch")
        got = 0
        try:
            with spool:
                while got < size:
                    item = f"BODY.PEEK[]<{got}.{PIECE_BYTES}>".encode()
                    data = c.fetch([uid], [item]).get(uid, {})
                    # The server names the answer BODY[]<offset> (RFC 3501 7.4.2).
                    piece = next((v for k, v in data.items() if k.startswith(b"BODY[]")), None)
                    if not piece:
                        break
                    spool.write(piece)
                    got += len(piece)
                    del piece, data
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if not got:
            path.unlink(missing_ok=True)
            return None
        return Spooled(path, got)

    def mark_handled(self, uids: Sequence[int], *, quarantine: bool) -> None:
        """Flag what was handled (one STORE for the lot), then move it to its folder where one is set."""
        if not uids:
            return
        c = self._c()
        uids = list(uids)
        try:
            c.add_flags(uids, [b"\\Seen", DONE_FLAG])
            target = self.cfg.quarantine_folder if quarantine else self.cfg.processed_folder
            if target:
                if c.has_capability("MOVE"):
                    c.move(uids, target)
                else:
                    c.copy(uids, target)
                    c.add_flags(uids, [b"\\Deleted"])  # no EXPUNGE: the copy stays until staff decide
        except (TimeoutError, OSError, IMAPClientError) as exc:
            raise MailSourceError(f"IMAP mark: {plain_words(exc)}", classify(exc)) from exc

    def wait(self, timeout: float) -> bool:
        """Wait for new mail up to `timeout` seconds: IDLE (RFC 2177) where offered, else sleep.

        One IDLE command is held the whole time: other untagged responses (flag changes, expunges, the
        server's "still here") are read and IDLE goes on; it ends when a message arrives, at `timeout`, or
        when `interrupt` cuts the connection. The caller keeps `timeout` below the 29 minutes RFC 2177 allows.
        """
        c = self._c()
        if not self._idle_ok:
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + timeout
        arrived = False
        try:
            c.idle()
            try:
                while not arrived and (left := deadline - time.monotonic()) > 0:
                    got = c.idle_check(timeout=left)
                    arrived = _has_new(got)
                    # Nothing read before the timeout: the server closed the connection (imapclient
                    # returns an empty list at EOF). Likewise a BYE. IDLE ends; idle_done finds out which.
                    if (not got and time.monotonic() < deadline - 0.05) or any(
                            isinstance(r, tuple) and r and r[0] == b"BYE" for r in got):
                        break
            finally:
                # Dovecot often reports EXISTS just as IDLE ends: those responses come back from
                # idle_done() and must count too (RFC 2177), or the mail waits for the next poll.
                _text, tail = c.idle_done()
                arrived = arrived or _has_new(tail)
        except (TimeoutError, OSError, IMAPClientError) as exc:
            raise MailSourceError(f"IMAP IDLE: {plain_words(exc)}", classify(exc)) from exc
        return arrived

    def interrupt(self) -> None:
        """From another thread: end a `wait` now by shutting the socket (a stop, or the lease went elsewhere)."""
        c = self.client
        if c is None:
            return
        try:
            c.socket().shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            log.debug("IMAP interrupt failed", exc_info=True)

    def close(self) -> None:
        if self.client is not None:
            _drop_politely(self.client)
            self.client = None
