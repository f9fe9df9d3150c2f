"""Extract the request form's canonical fields from a message (placeholder until the parsing issue lands)."""

from __future__ import annotations

from parsers.model import ParsedMessage, ParseOptions, RequestFields


def extract_request(msg: ParsedMessage, opts: ParseOptions) -> RequestFields | None:
    """The request fields found anywhere in the message, or None when it does not look like a request."""
    return None
