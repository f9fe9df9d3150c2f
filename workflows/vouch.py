"""Did the receiving server vouch for a reply's sender? Authentication-Results (RFC 8601) or our own DKIM check.

Where an agency's config asks for it (the default), a decision counts only if
- the topmost `Authentication-Results` header carrying our pinned authserv-id (the one our own MTA
  prepends; RFC 8601 section 5 has MTAs remove forged copies of their own id) says `dkim=pass` with a
  `header.d` aligned to the From domain, `spf=pass` with an aligned `smtp.mailfrom`, or `dmarc=pass`; or
- a DKIM signature on the message verifies here (dkimpy), with its `d=` aligned to the From domain.
Parsing uses `authres`, verification `dkimpy`; we only decide alignment (relaxed, as DMARC does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import authres
import dkim
from publicsuffixlist import PublicSuffixList

from subdomaind.parsers.model import ParsedMessage

log = logging.getLogger("subdomaind.vouch")

TxtLookup = Callable[..., bytes | None]


@dataclass(frozen=True)
class AuthPolicy:
    require: str = "none"  # none | authres | dkim | authres_or_dkim
    authserv_id: str | None = None


_PSL = PublicSuffixList()


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment (RFC 7489 3.1): the same organisational domain, by the Public Suffix List.

    A signature by a public suffix (d=go.id) aligns with nothing: go.id is not an organisation.
    """
    d, f = domain.lower().strip("."), from_domain.lower().strip(".")
    org = _PSL.privatesuffix(d) if d else None
    return org is not None and org == _PSL.privatesuffix(f)


def _authres_vouches(msg: ParsedMessage, authserv_id: str, from_domain: str) -> str | None:
    for value in msg.header_all("Authentication-Results"):
        try:
            header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
        except Exception:  # noqa: BLE001, S112 - a malformed header vouches for nothing
            continue
        if str(header.authserv_id).lower() != authserv_id.lower():
            continue
        # Only the topmost header with our id counts: it is the one our MTA added.
        for result in header.results:
            if str(result.result).lower() != "pass":
                continue
            props = {(p.type, p.name): str(p.value) for p in result.properties}
            method = str(result.method).lower()
            if method == "dkim" and aligned(props.get(("header", "d"), ""), from_domain):
                return "dkim=pass (Authentication-Results)"
            if method == "spf":
                mailfrom = props.get(("smtp", "mailfrom"), "")
                if aligned(mailfrom.rpartition("@")[2], from_domain):
                    return "spf=pass selaras (Authentication-Results)"
            if method == "dmarc" and aligned(props.get(("header", "from"), from_domain), from_domain):
                return "dmarc=pass (Authentication-Results)"
        return None
    return None


def _dkim_vouches(raw: bytes, from_domain: str, txt: TxtLookup | None) -> str | None:
    try:
        verifier = dkim.DKIM(raw)
        ok = verifier.verify(dnsfunc=txt) if txt is not None else verifier.verify()
    except Exception as exc:  # noqa: BLE001 - dkimpy raises many kinds; any of them means "not verified"
        log.info("DKIM verification failed: %s", exc)
        return None
    domain = (verifier.domain or b"").decode("ascii", "replace")
    if ok and aligned(domain, from_domain):
        return f"DKIM d={domain} terverifikasi"
    return None


def vouched(msg: ParsedMessage, raw: bytes, policy: AuthPolicy, txt: TxtLookup | None = None) -> tuple[bool, str]:
    """(True, how) when the sender is vouched for as the policy asks; (False, why not) otherwise."""
    if policy.require == "none":
        return True, "tidak diwajibkan"
    from_domain = (msg.from_addr or "").rpartition("@")[2]
    if not from_domain:
        return False, "alamat pengirim tidak ada"
    if policy.require in ("authres", "authres_or_dkim") and policy.authserv_id:
        how = _authres_vouches(msg, policy.authserv_id, from_domain)
        if how:
            return True, how
    if policy.require in ("dkim", "authres_or_dkim"):
        how = _dkim_vouches(raw, from_domain, txt)
        if how:
            return True, how
    return False, f"server penerima tidak menjamin pengirim {msg.from_addr} (kebijakan {policy.require})"
