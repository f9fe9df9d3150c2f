"""OAuth 2.0 access tokens for the mailbox and SMTP logins, and the SASL strings that carry them.

`TokenSource` is the small interface IMAP and SMTP use: `token()` gives a live access token (kept in memory,
fetched again shortly before it expires), `invalidate()` drops it after the server refused it so the next
login fetches a fresh one. Three providers: Microsoft 365 (msal: client credentials or a refresh token),
Google Workspace (google-auth: a service account with domain-wide delegation, or a refresh token), and any
RFC 6749 token endpoint (refresh token grant, section 6). `device_login` runs the device authorization
grant (RFC 8628) that `subdomaind oauth login` uses to obtain a refresh token once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from subdomaind.daemon.config import OAuthConfig

log = logging.getLogger("subdomaind.oauth")

# A token is fetched again this long before the expiry its issuer gave: a login that starts just before
# the expiry must not carry a token that dies on the way.
REFRESH_MARGIN_SECONDS = 300.0
HTTP_TIMEOUT_SECONDS = 30.0

MICROSOFT_AUTHORITY = "https://login.microsoftonline.com/"
MICROSOFT_SCOPES = {
    # Delegated (refresh token): the mailbox user's own rights. App-only (client credentials): ".default"
    # grants what the app registration was given, limited by an Exchange application access policy.
    "delegated": ["https://outlook.office365.com/IMAP.AccessAsUser.All",
                  "https://outlook.office365.com/SMTP.Send", "offline_access"],
    "app": ["https://outlook.office365.com/.default"],
}
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_DEVICE_URL = "https://oauth2.googleapis.com/device/code"


class OAuthError(Exception):
    """No token could be had; the message says why in plain words (shown to the operator as is)."""


class TokenSource(Protocol):
    def token(self) -> str: ...
    def invalidate(self) -> None: ...


@dataclass(frozen=True)
class Fetched:
    access_token: str
    expires_in: float  # seconds from now
    refresh_token: str | None = None  # a rotated refresh token, when the issuer sent one


class CachedTokens:
    """One access token in memory, fetched through `fetch` when there is none or it is about to expire.

    Thread-safe: intake and the IDLE watcher log in to the same mailbox from two threads.
    """

    def __init__(self, fetch: Callable[[], Fetched], *, clock: Callable[[], float] = time.monotonic,
                 margin: float = REFRESH_MARGIN_SECONDS) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetches = 0

    def token(self) -> str:
        with self._lock:
            # A short-lived token (below twice the margin) is used for half its life instead.
            if self._token is None or self._clock() >= self._expires_at:
                got = self._fetch()
                self.fetches += 1
                life = max(0.0, got.expires_in)
                self._token = got.access_token
                self._expires_at = self._clock() + max(life - self._margin, life / 2)
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires_at = 0.0


def xoauth2(user: str, token: str) -> bytes:
    """Google's and Microsoft's XOAUTH2 initial response (unencoded; IMAP/SMTP clients base64 it)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, host: str, port: int) -> bytes:
    """RFC 7628 section 3.1 initial response: the GS2 header names the user (a=), then host, port, token."""
    return f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


# --- providers --------------------------------------------------------------------------------------------


def _post_form(url: str, fields: dict[str, str]) -> dict[str, Any]:
    """One RFC 6749 token request (form-encoded POST, JSON answer); an error answer in plain words."""
    body = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - the URL comes from the config
                                 headers={"Content-Type": "application/x-www-form-urlencoded",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as resp:  # noqa: S310
            return dict(json.loads(resp.read().decode("utf-8")))
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read().decode("utf-8", "replace"))
        except ValueError:
            answer = {}
        return {"error": answer.get("error", f"HTTP {exc.code}"),
                "error_description": answer.get("error_description", "")}
    except (OSError, ValueError) as exc:
        raise OAuthError(f"server token {url} tidak dapat dihubungi: {exc}") from exc


def _check(answer: dict[str, Any], where: str) -> Fetched:
    if "access_token" not in answer:
        error = answer.get("error", "jawaban tanpa access_token")
        text = answer.get("error_description") or ""
        if error == "invalid_grant":
            raise OAuthError(f"{where}: izin OAuth sudah dicabut atau kedaluwarsa (invalid_grant); "
                             f"jalankan `subdomaind oauth login` lagi. {text}".strip())
        raise OAuthError(f"{where}: token ditolak ({error}). {text}".strip())
    return Fetched(str(answer["access_token"]), float(answer.get("expires_in", 3600)),
                   answer.get("refresh_token"))


class GenericRefresh:
    """RFC 6749 section 6: a refresh token exchanged at the token endpoint for an access token."""

    def __init__(self, token_url: str, client_id: str, client_secret: str | None, refresh_token: str,
                 scope: str | None = None) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.scope = scope
        self.on_rotate: Callable[[str], None] = _ignore

    def __call__(self) -> Fetched:
        fields = {"grant_type": "refresh_token", "refresh_token": self.refresh_token, "client_id": self.client_id}
        if self.client_secret:
            fields["client_secret"] = self.client_secret
        if self.scope:
            fields["scope"] = self.scope
        got = _check(_post_form(self.token_url, fields), self.token_url)
        if got.refresh_token and got.refresh_token != self.refresh_token:
            self.refresh_token = got.refresh_token  # rotated (RFC 6749 section 6): the old one may be dead now
            self.on_rotate(got.refresh_token)
        return got


class GenericClientCredentials:
    """RFC 6749 section 4.4: the client's own credentials for an access token (app-only access)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.token_url, self.client_id, self.client_secret, self.scope = token_url, client_id, client_secret, scope

    def __call__(self) -> Fetched:
        fields = {"grant_type": "client_credentials", "client_id": self.client_id,
                  "client_secret": self.client_secret}
        if self.scope:
            fields["scope"] = self.scope
        return _check(_post_form(self.token_url, fields), self.token_url)


class Microsoft365:
    """msal: app-only client credentials (needs an Exchange application access policy and the mailbox
    registered as a service principal), or a delegated refresh token from `subdomaind oauth login`."""

    def __init__(self, tenant: str, client_id: str, client_secret: str | None, refresh_token: str | None,
                 authority: str = MICROSOFT_AUTHORITY) -> None:
        # msal (heavy) only for a Microsoft 365 login
        import msal

        self.refresh_token = refresh_token
        self.on_rotate: Callable[[str], None] = _ignore
        url = authority.rstrip("/") + "/" + tenant
        # Instance discovery asks login.microsoftonline.com about the authority: only for its own clouds.
        known = authority.rstrip("/") + "/" == MICROSOFT_AUTHORITY
        self._app: Any
        if refresh_token is None and not client_secret:
            raise OAuthError("Microsoft 365 tanpa refresh token membutuhkan client secret (client credentials)")
        if client_secret:
            self._app = msal.ConfidentialClientApplication(client_id, authority=url, client_credential=client_secret,
                                                           instance_discovery=known)
        else:
            self._app = msal.PublicClientApplication(client_id, authority=url, instance_discovery=known)

    def __call__(self) -> Fetched:
        try:
            if self.refresh_token is None:
                # msal answers from its own cache while a token lives; we ask only when ours was refused
                # or is about to expire, so the cached one is dropped first.
                cache = self._app.token_cache
                for old in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
                    cache.remove_at(old)
                answer = self._app.acquire_token_for_client(scopes=MICROSOFT_SCOPES["app"])
            else:
                answer = self._app.acquire_token_by_refresh_token(
                    self.refresh_token, scopes=[s for s in MICROSOFT_SCOPES["delegated"] if s != "offline_access"])
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors; a bad authority a ValueError
            raise OAuthError(f"Microsoft 365 tidak dapat dihubungi: {exc}") from exc
        got = _check(dict(answer or {}), "Microsoft 365")
        if got.refresh_token and self.refresh_token is not None and got.refresh_token != self.refresh_token:
            # Each use gives a new refresh token; the first one dies 90 days after it was issued.
            self.refresh_token = got.refresh_token
            self.on_rotate(got.refresh_token)
        return got


class Google:
    """google-auth: a service account acting as the mailbox user (domain-wide delegation), or the user's
    own refresh token."""

    def __init__(self, user: str, *, service_account_file: Path | None, client_id: str | None,
                 client_secret: str | None, refresh_token: str | None, token_url: str = GOOGLE_TOKEN_URL) -> None:
        self._creds: Any
        if service_account_file is not None:
            # google-auth (heavy) only for a Google login
            from google.oauth2 import service_account

            try:
                self._creds = service_account.Credentials.from_service_account_file(
                    str(service_account_file), scopes=[GOOGLE_SCOPE], subject=user)
            except (OSError, ValueError) as exc:
                raise OAuthError(f"berkas service account {service_account_file} tidak dapat dibaca: {exc}") from exc
        else:
            # google-auth (heavy) only for a Google login
            from google.oauth2 import credentials

            if not (refresh_token and client_id):
                raise OAuthError("Google membutuhkan service_account_file, atau client_id dan refresh token")
            self._creds = credentials.Credentials(None, refresh_token=refresh_token, token_uri=token_url,
                                                  client_id=client_id, client_secret=client_secret,
                                                  scopes=[GOOGLE_SCOPE])

    def __call__(self) -> Fetched:
        # google-auth (heavy) only for a Google login
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        try:
            self._creds.refresh(Request())
        except google.auth.exceptions.RefreshError as exc:
            raise OAuthError(f"Google menolak memberi token: {exc}. Periksa delegasi domain atau jalankan "
                             "`subdomaind oauth login` lagi.") from exc
        except google.auth.exceptions.TransportError as exc:
            raise OAuthError(f"Google tidak dapat dihubungi: {exc}") from exc
        expiry = self._creds.expiry
        life = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds() if expiry else 3600.0
        return Fetched(str(self._creds.token), life)


def _ignore(_token: str) -> None:
    return None


def _newest_refresh_token(cfg: OAuthConfig, keep: Path | None) -> str | None:
    """The configured refresh token, or the rotated one kept in `keep` when that was written later (a
    fresh `oauth login` writes the configured file, and then wins)."""
    configured = cfg.read_refresh_token()
    if keep is None or not keep.exists():
        return configured
    path = cfg.resolved(cfg.refresh_token_file)
    try:
        newer = path is None or not path.exists() or keep.stat().st_mtime >= path.stat().st_mtime
        return (keep.read_text(encoding="utf-8").strip() or configured) if newer else configured
    except OSError:
        return configured


def _keeper(keep: Path | None) -> Callable[[str], None]:
    def save(token: str) -> None:
        if keep is None:
            return
        try:
            store_refresh_token(keep, token)
        except OSError as exc:  # the token in memory still works; only a restart would need the file
            log.warning("rotated refresh token could not be kept in %s: %s", keep, exc.strerror)

    return save


def token_source(cfg: OAuthConfig, user: str, keep: Path | None = None) -> CachedTokens:
    """The token source a mailbox's or SMTP's `[oauth]` table describes; secrets read now (files or
    systemd credentials, like passwords). A refresh token the issuer rotates is kept in `keep` (mode 0600,
    under the state directory: the credentials directory is read-only to the service)."""
    secret = cfg.read_client_secret()
    refresh = _newest_refresh_token(cfg, keep)
    fetch: Callable[[], Fetched]
    if cfg.provider == "microsoft365":
        if not cfg.client_id:
            raise OAuthError("Microsoft 365 membutuhkan client_id (Application ID dari pendaftaran aplikasi)")
        if cfg.flow != "client_credentials" and not refresh:
            raise OAuthError("refresh token belum ada: jalankan `subdomaind oauth login --agency ID`")
        fetch = Microsoft365(cfg.tenant or "organizations", cfg.client_id, secret,
                             None if cfg.flow == "client_credentials" else refresh, cfg.authority)
    elif cfg.provider == "google":
        fetch = Google(user, service_account_file=cfg.resolved(cfg.service_account_file),
                       client_id=cfg.client_id, client_secret=secret, refresh_token=refresh,
                       token_url=cfg.token_url or GOOGLE_TOKEN_URL)
    else:
        if not cfg.token_url or not cfg.client_id:
            raise OAuthError("penyedia generic membutuhkan token_url dan client_id")
        if cfg.flow == "client_credentials":
            if not secret:
                raise OAuthError("client credentials membutuhkan client secret")
            fetch = GenericClientCredentials(cfg.token_url, cfg.client_id, secret, cfg.scope)
        else:
            if not refresh:
                raise OAuthError("refresh token belum ada: jalankan `subdomaind oauth login --agency ID`")
            fetch = GenericRefresh(cfg.token_url, cfg.client_id, secret, refresh, cfg.scope)
    if isinstance(fetch, GenericRefresh | Microsoft365):
        fetch.on_rotate = _keeper(keep)
    return CachedTokens(fetch)


# --- device authorization grant (RFC 8628) ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceEndpoints:
    device_url: str
    token_url: str
    scope: str


def device_endpoints(cfg: OAuthConfig) -> DeviceEndpoints:
    if cfg.provider == "microsoft365":
        base = f"{cfg.authority.rstrip('/')}/{cfg.tenant or 'organizations'}/oauth2/v2.0"
        return DeviceEndpoints(f"{base}/devicecode", f"{base}/token", " ".join(MICROSOFT_SCOPES["delegated"]))
    if cfg.provider == "google":
        return DeviceEndpoints(GOOGLE_DEVICE_URL, GOOGLE_TOKEN_URL, GOOGLE_SCOPE)
    if not (cfg.device_url and cfg.token_url):
        raise OAuthError("penyedia generic membutuhkan device_url dan token_url untuk login perangkat")
    return DeviceEndpoints(cfg.device_url, cfg.token_url, cfg.scope or "")


def device_login(cfg: OAuthConfig, show: Callable[[str], None], *,
                 sleep: Callable[[float], None] = time.sleep, max_wait: float = 900.0) -> str:
    """Ask for a device code, show the URL and code to the administrator, poll until they have signed in
    (RFC 8628 section 3.4-3.5, honouring `interval` and `slow_down`); the refresh token."""
    if not cfg.client_id:
        raise OAuthError("client_id belum diisi di [oauth]")
    ends = device_endpoints(cfg)
    fields = {"client_id": cfg.client_id}
    if ends.scope:
        fields["scope"] = ends.scope
    secret = cfg.read_client_secret()
    answer = _post_form(ends.device_url, fields)
    if "device_code" not in answer:
        raise OAuthError(f"kode perangkat tidak diberikan: {answer.get('error')} {answer.get('error_description', '')}")
    url = answer.get("verification_uri") or answer.get("verification_url")
    show(f"Buka {url} lalu masukkan kode {answer['user_code']} dan masuk sebagai pemilik kotak surat.")
    interval = float(answer.get("interval", 5))
    waited = 0.0
    while waited < min(max_wait, float(answer.get("expires_in", max_wait))):
        sleep(interval)
        waited += interval
        poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": str(answer["device_code"]), "client_id": cfg.client_id}
        if secret:
            poll["client_secret"] = secret
        got = _post_form(ends.token_url, poll)
        error = got.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error:
            raise OAuthError(f"login perangkat gagal: {error} {got.get('error_description', '')}".strip())
        if not got.get("refresh_token"):
            raise OAuthError("server tidak memberi refresh token (untuk Microsoft 365: scope offline_access)")
        return str(got["refresh_token"])
    raise OAuthError("waktu login perangkat habis; jalankan perintah ini lagi")


def store_refresh_token(path: Path, token: str) -> None:
    """Write the refresh token readable by its owner only (0600), replacing the old one atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new directory: the owner's only
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def sasl_initial(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The raw initial response of the configured mechanism."""
    if mechanism == "oauthbearer":
        return oauthbearer(user, token, host, port)
    return xoauth2(user, token)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LazyTokens:
    """A `TokenSource` built at the first login, not at start: a secret or refresh token still missing
    (before `subdomaind oauth login`) is then a refused login with its reason, under the login backoff,
    instead of a daemon that cannot start."""

    def __init__(self, cfg: OAuthConfig, user: str, keep: Path | None = None) -> None:
        self.cfg = cfg
        self.user = user
        self.keep = keep  # where a rotated refresh token is kept (token_source)
        self._lock = threading.Lock()
        self._inner: CachedTokens | None = None

    def _source(self) -> CachedTokens:
        with self._lock:
            if self._inner is None:
                try:
                    self._inner = token_source(self.cfg, self.user, self.keep)
                except OSError as exc:
                    raise OAuthError(f"rahasia OAuth tidak dapat dibaca: {exc}") from exc
            return self._inner

    def token(self) -> str:
        return self._source().token()

    def invalidate(self) -> None:
        if self._inner is not None:
            self._inner.invalidate()
