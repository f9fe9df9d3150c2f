"""Read an official's decision from the new text of a reply (placeholder until the parsing issue lands)."""

from __future__ import annotations

from parsers.model import ParsedMessage, ReplyDecision, Vocabulary


def extract_reply(msg: ParsedMessage, vocabulary: Vocabulary) -> ReplyDecision:
    return ReplyDecision(decision="unclear", note=None, text=msg.text or "")
