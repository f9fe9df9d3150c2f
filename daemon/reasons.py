"""A stored failure reason as the operator reads it."""

from __future__ import annotations

import re

_BYTES_REPR = re.compile(r"\bb'(.*?)'")


def plain_reason(text: str | None) -> str:
    """A stored failure reason as words: the first line, without Python's b'...' around a server's reply."""
    first = (text or "").strip().splitlines()
    return _BYTES_REPR.sub(r"\1", first[0]) if first else "tanpa keterangan"
