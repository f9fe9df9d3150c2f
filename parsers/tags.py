"""Find our own markers in a message: the ticket tag in the subject and the step token in a sub-address.

The ticket tag is `[SD/2026/0042]` (prefix per agency). The step token rides in the Reply-To
sub-address we send (`layanan+t<26 base32>@zone`), the capability Mailman and Discourse use for replies.
"""

from __future__ import annotations

import re

from subdomaind.parsers.model import ParsedMessage

TOKEN_RE = re.compile(r"\+(t[a-z2-7]{26})@", re.IGNORECASE)


def ticket_re(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\b(" + re.escape(prefix) + r"/\d{4}/\d{4,6})\b", re.IGNORECASE)


def find_ticket(msg: ParsedMessage, prefix: str = "SD") -> str | None:
    """The ticket named in the subject, else in the first lines of the body."""
    pattern = ticket_re(prefix)
    for text in (msg.subject or "", (msg.text or "")[:2000]):
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def find_token(msg: ParsedMessage) -> str | None:
    """The step token from the addresses the reply was sent to (To, Cc, Delivered-To), lower-case."""
    for addr in (*msg.delivered_to, *msg.to, *msg.cc):
        m = TOKEN_RE.search(addr + "@") if "@" not in addr else TOKEN_RE.search(addr)
        if m:
            return m.group(1).lower()
    return None
