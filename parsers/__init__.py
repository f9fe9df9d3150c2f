"""Pure parsing of inbound mail: `parse(raw, options)` classifies one message and extracts what it carries.

Bytes in, frozen records (`parsers.model`) out; no database, network or clock anywhere in this package.

The readers (PDF, DOCX, OCR, phone numbers...) are imported on the first `parse`, not with the package: the
daemon's main process uses the records of `parsers.model` and leaves the reading to its parser workers
(daemon/parsing.py), and those libraries are a quarter of its memory (25 MB).
"""

from __future__ import annotations

from subdomaind.parsers.model import ParseOptions, ParseResult

__all__ = ["parse", "ParseOptions", "ParseResult"]


def parse(raw: bytes, options: ParseOptions | None = None) -> ParseResult:
    """Classify one message: bounce, auto-reply, reply to one of our mails, request, or unrelated.

    Never raises for bad input: an unreadable message is a result with kind "unreadable" and the reason.
    """
    from subdomaind.parsers.classify import parse as classify  # the readers (heavy) load with the first parse

    return classify(raw, options)
