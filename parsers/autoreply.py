"""Recognise auto-replies (RFC 3834) and bounces (RFC 3464 DSNs) (placeholder until the parsing issue lands)."""

from __future__ import annotations

from parsers.model import AutoReplyInfo, BounceInfo, ParsedMessage


def detect_bounce(msg: ParsedMessage) -> BounceInfo | None:
    return None


def detect_auto_reply(msg: ParsedMessage) -> AutoReplyInfo | None:
    auto = (msg.header("Auto-Submitted") or "").strip().lower()
    if auto and auto != "no":
        return AutoReplyInfo(reason=f"Auto-Submitted: {auto}")
    return None
