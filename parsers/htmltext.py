"""Turn an HTML mail body into plain text in which quoted parts stay quotes ("> " lines).

Why: reply trimming and the approval vocabulary read text, and a mail client's quote is only recognisable in
its HTML (a blockquote, Gmail's `gmail_quote`, Outlook's `divRplyFwdMsg` block). lxml (libxml2's HTML parser)
reads the HTML, however broken; this module only receives its element and text events and says which lines
are quoted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["html_to_text"]

_BLOCK_TAGS = frozenset(
    {
        "p", "div", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
        "pre", "section", "article", "header", "footer", "dd", "dt", "dl", "center", "address", "form",
        "fieldset", "tbody", "thead", "tfoot", "caption", "figure", "main", "nav", "aside",
    }
)
_VOID_TAGS = frozenset(
    {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "embed", "source", "track",
     "param", "keygen", "basefont", "frame", "isindex"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript", "xml", "o:p"})
# Containers whose content is the quoted original (client markers seen in real mail):
# Gmail `gmail_quote`, Yahoo `yahoo_quoted`, Thunderbird `moz-cite-prefix` (the attribution line before
# its `<blockquote type="cite">`), ProtonMail `protonmail_quote`, new Outlook's reference container.
_QUOTE_CLASS_RE = re.compile(
    r"(?:^|\s)(gmail_quote|gmail_quote_container|yahoo_quoted|ydp[0-9a-f]*yahoo_quoted|moz-cite-prefix|"
    r"protonmail_quote|zmail_extra|AppleOriginalContents)(?:\s|$)",
    re.IGNORECASE,
)
_QUOTE_ID_RE = re.compile(r"(mail-editor-reference-message-container|yahoo_quoted|isForwardContent)", re.I)
# Markers after which *everything* is the quoted original, though not nested inside them: Outlook's
# `divRplyFwdMsg` header block (OWA prefixes ids with "x_"), Zimbra's `<hr id="zwchr">`.
_QUOTE_REST_ID_RE = re.compile(r"(divRplyFwdMsg|zwchr|OLK_SRC_BODY_SECTION|appendonsend)", re.IGNORECASE)
_SIGNATURE_RE = re.compile(
    r"(?:^|\s|_)(gmail_signature|moz-signature|ms-outlook-mobile-signature|signature)(?:\s|$)", re.I
)
# No-break space is a space; zero-width and bidi marks (Outlook's dates are full of U+200E) are not text and
# would hide labels like "Dari:" from reply trimming.
_INVISIBLE_RE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACE_RE = re.compile(r"[\r\n\t ]+")
# Lone surrogates (undecodable bytes kept by the MIME reader) and NUL cannot go through libxml2.
_UNENCODABLE_RE = re.compile("[\x00\ud800-\udfff]")

_MAX_HTML_STACK = 512  # open elements tracked for quote depth; deeper nesting still yields its text


class _Lines:
    """lxml parser target: (quote depth, line) pairs from libxml2's start, end and text events.

    A target instead of a tree: no tree is built, and libxml2's limit on tree depth does not apply, so even
    absurdly nested mail yields its text. Comments and processing instructions have no handler: dropped.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self._buf: list[str] = []
        self._buf_depth = 0
        self._stack: list[tuple[str, int, bool]] = []  # (tag, quote increment, pre) per open element
        self._depth = 0
        self._quote_rest = False
        self._skip = 0
        self._pre = 0

    def _current_depth(self) -> int:
        return self._depth + (1 if self._quote_rest else 0)

    def _flush(self, force_blank: bool = False) -> None:
        text = "".join(self._buf)
        self._buf = []
        if self._pre:
            for piece in text.split("\n"):
                self.lines.append((self._buf_depth, piece.rstrip()))
            return
        text = " ".join(text.split())
        if text:
            self.lines.append((self._buf_depth, text))
        elif force_blank and self.lines and self.lines[-1][1]:
            self.lines.append((self._current_depth(), ""))

    def _emit(self, data: str) -> None:
        if not self._buf or not "".join(self._buf).strip():
            self._buf_depth = self._current_depth()
        self._buf.append(data)

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        tag = tag.lower()
        if tag in _SKIP_TAGS:
            self._skip += 1
            return
        if self._skip:
            return
        attrs = {k.lower(): v for k, v in attrib.items()}
        klass, ident = attrs.get("class", ""), attrs.get("id", "")
        if tag == "br":
            self._flush(force_blank=not "".join(self._buf).strip())
            return
        if tag == "hr":
            self._flush()
            if _QUOTE_REST_ID_RE.search(ident):
                self._quote_rest = True
            # Outlook renders its reply separator as this rule in the text part; keep the same cue.
            self.lines.append((self._current_depth(), "_" * 32))
            return
        if tag in ("td", "th"):
            self._emit(" ")
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag in _VOID_TAGS:
            return
        inc = 1 if tag == "blockquote" or _QUOTE_CLASS_RE.search(klass) or _QUOTE_ID_RE.search(ident) else 0
        if _QUOTE_REST_ID_RE.search(ident):
            self._flush()
            self._quote_rest = True
        if (_SIGNATURE_RE.search(klass) or _SIGNATURE_RE.search(ident)) and not self._current_depth():
            self._flush()
            # RFC 3676 section 4.3 signature separator, so reply trimming treats it like a text signature.
            self.lines.append((0, "-- "))
        if len(self._stack) < _MAX_HTML_STACK:
            self._stack.append((tag, inc, tag == "pre"))
            self._depth += inc
            self._pre += tag == "pre"
        if inc:
            self._flush()

    def end(self, tag: str) -> None:
        tag = tag.lower()
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip or tag in _VOID_TAGS:
            return
        if not any(t == tag for t, _, _ in self._stack):
            if tag in _BLOCK_TAGS:
                self._flush()
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        while self._stack:
            t, inc, pre = self._stack.pop()
            if inc:
                self._flush()
            self._depth -= inc
            self._pre -= pre
            if t == tag:
                break

    def data(self, data: str) -> None:
        if self._skip:
            return
        data = _INVISIBLE_RE.sub("", data.replace("\xa0", " "))
        if not self._pre:
            data = _SPACE_RE.sub(" ", data)
        self._emit(data)

    def close(self) -> list[tuple[int, str]]:
        self._flush()
        return self.lines


def _lines(html: str) -> list[tuple[int, str]]:
    data = _UNENCODABLE_RE.sub("\ufffd", html).encode("utf-8")
    if not data.strip():
        return []
    # Imported here: lxml is 6 MB resident, and a parser worker that only ever sees plain-text mail, PDFs and
    # body forms never needs it (tests/test_pdf_memory.py).
    from lxml import etree

    target = _Lines()
    # Comments and processing instructions dropped; `huge_tree` lifts libxml2's limits on text size.
    parser = etree.HTMLParser(target=target, remove_comments=True, remove_pis=True, huge_tree=True,
                              encoding="utf-8")
    try:
        lines: list[tuple[int, str]] = etree.fromstring(data, parser)
    except (etree.LxmlError, ValueError):  # libxml2 recovers from nearly anything; keep the text read so far
        return target.close()
    return lines


def html_to_text(html: str) -> str:
    """Plain text from HTML, with quoted containers turned into "> " lines so reply trimming works on text.

    Blockquotes and the quote containers of Gmail, Outlook, Thunderbird, Yahoo and Zimbra are prefixed with
    one "> " per nesting level; a signature container is preceded by the "-- " separator.
    """
    lines: list[str] = []
    for depth, line in _lines(html):
        if line == "-- ":
            lines.append(line)  # the RFC 3676 separator keeps its trailing space
            continue
        prefixed = ("> " * depth + line).rstrip() if line else (">" * depth)
        if not prefixed and lines and not lines[-1]:
            continue  # collapse runs of blank lines
        lines.append(prefixed)
    return "\n".join(lines).strip("\n")
