"""Build RFC 6068 `mailto:` links: a one-tap answer that opens a new mail with its address, subject and body
already filled in, which the daemon reads exactly like a typed reply.

Encoding (RFC 6068 section 2 and 5): header values are UTF-8, then percent-encoded; everything outside the
URI "unreserved" set is encoded, so no client can read a "+" as a space (the HTML-form convention the RFC
warns about), nor "&", "=", "?" or "#" as structure. A space is "%20" and a line break in the body is
"%0D%0A". The address keeps its "+" literally: RFC 6068 allows it in an addr-spec and names the sub-address
("bill+ietf@example.org") as the reason. Only `subject` and `body` are set: they are the two fields Gmail
(web and app), Outlook (desktop, web and mobile) and iOS Mail all honour; In-Reply-To and the like are
ignored by most clients, so the link carries what matches the answer in its address (the step token).
Bodies stay short: Outlook desktop receives the link through the shell, which caps a URL near 2,000
characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

# Longest link we hand out; a longer one is a bug (a note or a title that should not be in it).
MAX_LINK = 1800


def mailto(to: str, *, subject: str | None = None, body: str | None = None) -> str:
    """`mailto:to?subject=..&body=..` with RFC 6068 percent-encoding; empty fields are left out."""
    if not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+", to):
        raise ValueError(f"not a plain address for a mailto link: {to!r}")
    # In the addr-spec only "%" and the characters RFC 6068 leaves out of qchar need encoding.
    link = "mailto:" + quote(to, safe="@+.!$'*-_~")
    fields = [(name, value) for name, value in (("subject", subject), ("body", body)) if value]
    if fields:
        link += "?" + "&".join(f"{name}={_hfvalue(value)}" for name, value in fields)
    if len(link) > MAX_LINK:
        raise ValueError(f"mailto link of {len(link)} characters (keep the body short)")
    return link


def _hfvalue(value: str) -> str:
    # Section 5: line breaks MUST be written as %0D%0A whatever the platform writes.
    text = value.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return quote(text.encode("utf-8"), safe="")


@dataclass(frozen=True)
class AnswerLink:
    """One button: the word it sends, what it leads to, and the link."""

    word: str
    then: str
    href: str
    color: str


# The button colours of the mails: approve green, reject red, anything else the office blue.
BUTTON_COLORS: Mapping[str, str] = {"SETUJU": "#15803d", "TOLAK": "#b91c1c", "PERBAIKI": "#b45309"}
DEFAULT_COLOR = "#1e3a5f"


def answer_body(word: str) -> str:
    """The prefilled body: the word alone on the first line (what the reply parser reads), then an empty line
    where the official may write a note or a reason; nothing that could be read as a second decision."""
    return f"{word}\n\n"


def answer_links(address: str, ticket: str, title: str, answers: Iterable[Mapping[str, str]]) -> list[AnswerLink]:
    """The buttons for a step: one link per answer word (`{"word": "SETUJU", "then": "..."}`), each to the
    step's reply address with the ticket in the subject (so a person reading the mailbox knows the case)."""
    short = title if len(title) <= 80 else title[:77].rstrip() + "..."
    return [
        AnswerLink(word=a["word"], then=a["then"],
                   href=mailto(address, subject=f"{a['word']} [{ticket}] {short}", body=answer_body(a["word"])),
                   color=BUTTON_COLORS.get(a["word"], DEFAULT_COLOR))
        for a in answers
    ]
