"""Read one RFC 5322 message into a `ParsedMessage`: decoded headers, text and HTML bodies, attachments.

This module's one job is the MIME level: it turns bytes into decoded text and files, and refuses, with a
reason in Indonesian, what it cannot read or what would cost too much to read. It does not decide what a
message *means* (request, reply, bounce): `parsers.request`, `parsers.reply` and `parsers.autoreply` do.

Pure: bytes in, a frozen record out. A message that cannot be read raises `UnreadableMessage`; nothing
else escapes. The stdlib parser (compat32 policy, the most lenient one) builds the tree and is the MIME reader.
mail-parser (`mailparser`) has one role, through its public API: it reads the same tree for its defect
categories and for a Date when the stdlib cannot read the header. It is not the reader because it re-encodes
every attachment, and decoding of bodies and headers must never raise. An HTML-only body becomes text through
`parsers.htmltext` (lxml), which keeps quoted HTML recognisable as a quote.

Memory: the stdlib parser holds several copies of a message as str (about 10 bytes a byte of base64), so
in a message of 1 MB or more each long run of encoded body lines is cut out before the parse and read from
the raw bytes where it is used (`_find_holes`, `_Holes`): the tree and every result are the same, and a
20 MB attachment costs its decoded bytes, not 200 MB.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import email.utils
import io
import logging
import quopri
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message

import mailparser

from subdomaind.parsers.htmltext import html_to_text
from subdomaind.parsers.model import Attachment, Limits, ParsedMessage

__all__ = ["UnreadableMessage", "parse_mime", "html_to_text", "decode_header_value", "decode_bytes"]


class OverLimit(Exception):
    """Marker mixed into `UnreadableMessage` when a configured bound (size, parts, depth) was passed."""


class UnreadableMessage(Exception):
    """The bytes are not a message we can read; `str(exc)` is the reason (Indonesian, for the digest)."""




class MessageOverLimit(UnreadableMessage, OverLimit):
    """Unreadable because it is over a configured limit: the sender can be told to send it smaller."""

_MSGID_RE = re.compile(r"<[^<>\s]+>")
_ADDR_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")

# ---------------------------------------------------------------------------------------------------------
# Cheap pre-scan: refuse hostile structure before the stdlib parser builds a tree for it.
# ---------------------------------------------------------------------------------------------------------

# RFC 2046 section 5.1.1: boundary := 1*70 bchars; we accept up to 200 to be lenient with broken senders.
_BOUNDARY_RE = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_MESSAGE_CT_RE = re.compile(rb"^content-type:[ \t]*message/", re.IGNORECASE | re.MULTILINE)
_DELIMITER_RE = re.compile(rb"^--([^\n]{0,300})", re.MULTILINE)


def _prescan(raw: bytes, limits: Limits) -> None:
    """Refuse a message whose MIME structure is too big or too deep, in one linear pass over the bytes.

    The stdlib parser would happily build 10,000 parts, and recurses once per nesting level, so a crafted
    message costs time and stack before any limit could be checked on the tree. Counting the delimiter
    lines of every declared boundary (RFC 2046 section 5.1.1) bounds both without parsing.
    """
    boundaries = {(m.group(1) or m.group(2)).strip() for m in _BOUNDARY_RE.finditer(raw)}
    boundaries.discard(b"")
    if len(boundaries) > limits.max_parts:
        raise MessageOverLimit(f"terlalu banyak bagian MIME (lebih dari {limits.max_parts})")
    if len(_MESSAGE_CT_RE.findall(raw)) > limits.max_parts:
        raise MessageOverLimit(f"terlalu banyak pesan terlampir (lebih dari {limits.max_parts})")
    if not boundaries:
        return
    delimiters = 0
    stack: list[bytes] = []
    for m in _DELIMITER_RE.finditer(raw):
        body = m.group(1).rstrip(b" \t\r")
        closing = False
        if body in boundaries:
            token = body
        elif body.endswith(b"--") and body[:-2] in boundaries:
            token, closing = body[:-2], True
        else:
            continue
        delimiters += 1
        if delimiters > 2 * limits.max_parts + 2:
            raise MessageOverLimit(f"terlalu banyak bagian MIME (lebih dari {limits.max_parts})")
        if token in stack:
            # A delimiter of an outer boundary implicitly closes every inner multipart (RFC 2046 5.1.2).
            while stack and stack[-1] != token:
                stack.pop()
            if closing:
                stack.pop()
        elif not closing:
            stack.append(token)
            if len(stack) > limits.max_depth:
                raise MessageOverLimit(f"struktur MIME terlalu dalam (lebih dari {limits.max_depth} tingkat)")


# ---------------------------------------------------------------------------------------------------------
# Large bodies: kept out of the stdlib parser, read from the raw bytes where they are needed.
# ---------------------------------------------------------------------------------------------------------

# The stdlib parser decodes the whole message to a str, copies that into a StringIO (up to 4 bytes a
# character) and splits it into one str per line: a 20 MB base64 attachment costs about 200 MB there. So a
# long run of body lines is replaced by a one-line placeholder before parsing (`_find_holes` says why the
# parser cannot tell the two apart), and the run is read from `raw` when its payload is used.
_SKELETON_MIN_BYTES = 1 << 20  # a smaller message is parsed whole: there is little to save
_HOLE_MIN_BYTES = 64 << 10  # a shorter run stays in the message
_HOLE_MAX_HEADERISH_LINES = 64  # lines skipped at the start of a run before the run is given up
_LF_SLICE_BYTES = 1 << 20
_HOLE_TOKEN = "SubdomaindHole"
_HOLE_RE = re.compile(_HOLE_TOKEN + r"(\d{1,6})Z")
_HOLE_RE_B = re.compile(_HOLE_TOKEN.encode("ascii") + rb"(\d{1,6})Z")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
# The line after this newline ends a run: it is blank, or starts with "-" as every MIME delimiter does.
_BREAK_RE = re.compile(rb"\n(?=-|\r?\n)")
# What a run is made of: printable ASCII, tab and CRLF / LF line ends. The feedparser also ends a line at a
# lone CR (checked apart, as `_LONE_CR_RE`), and 8-bit octets would become surrogates in its str.
_RUN_CHARS_RE = re.compile(rb"[\t\n\r\x20-\x7e]*")
_LONE_CR_RE = re.compile(rb"\r(?!\n)")


def _find_holes(raw: bytes) -> list[tuple[int, int]]:
    """Byte spans of the long runs of body lines in `raw` that can be cut out before the stdlib parse.

    A run is a sequence of non-blank lines of printable ASCII (tab allowed, CRLF or LF line ends), none
    starting with "-", whose first line cannot be read as a header line (no ":", no leading white space, not
    "From "). Whatever the feedparser is doing when it reaches such a run (reading headers: the first line
    ends them; a leaf body, a preamble, an epilogue, a delivery-status block), it appends every line of the
    run to one text, and leaves that state only on a blank line or a line starting with "--", which the run
    does not hold. A placeholder line with the same properties therefore gives the same tree, the same
    defects, and texts equal to the original ones with the run replaced. A span ends before the line end of
    the run's last line (the parser strips that one from a payload followed by a boundary).
    """
    head = _HEAD_END_RE.search(raw)
    if head is None:
        return []
    spans: list[tuple[int, int]] = []
    start = head.end()
    for m in _BREAK_RE.finditer(raw, start - 1):
        if m.start() + 1 - start >= _HOLE_MIN_BYTES:
            _find_runs(raw, start, m.start() + 1, spans)
        nl = raw.find(b"\n", m.start() + 1)
        start = len(raw) if nl < 0 else nl + 1
    end = raw.rfind(b"\n", start) + 1
    if end - start >= _HOLE_MIN_BYTES:
        _find_runs(raw, start, end, spans)
    return spans


def _find_runs(raw: bytes, a: int, b: int, spans: list[tuple[int, int]]) -> None:
    """The runs in raw[a:b], whole non-blank lines none of which starts with "-" (see `_find_holes`)."""
    while b - a >= _HOLE_MIN_BYTES:
        clean = _RUN_CHARS_RE.match(raw, a, b)
        bad: int | None = clean.end() if clean is not None and clean.end() < b else None
        if raw.count(b"\r", a, b) != raw.count(b"\r\n", a, b):
            lone = _LONE_CR_RE.search(raw, a, b)
            if lone is not None and (bad is None or lone.start() < bad):
                bad = lone.start()
        stop = b if bad is None else max(a, raw.rfind(b"\n", a, bad) + 1)
        first = a
        for _ in range(_HOLE_MAX_HEADERISH_LINES):
            if first >= stop:
                break
            eol = raw.find(b"\n", first, stop)
            if raw[first] not in b" \t" and raw.find(b":", first, eol) < 0 and not raw.startswith(b"From ", first):
                break
            first = eol + 1
        else:
            first = stop
        end = stop - 1  # the last line's LF (or CRLF) stays in the message
        if end > first and raw[end - 1] == 0x0D:
            end -= 1
        if end - first >= _HOLE_MIN_BYTES:
            spans.append((first, end))
        if bad is None:
            return
        a = raw.find(b"\n", bad, b) + 1


class _Holes:
    """The runs cut out of a message before parsing, and the parts whose payload holds their placeholders.

    Only a leaf part's `_payload` keeps placeholders; one in a preamble or epilogue is filled in at once.
    """

    def __init__(self, raw: bytes, spans: list[tuple[int, int]]) -> None:
        self.raw = raw
        self.spans = spans
        self.parts: dict[int, Message] = {}

    def skeleton(self) -> bytes:
        view = memoryview(self.raw)
        pieces: list[bytes | memoryview] = []
        prev = 0
        for i, (start, end) in enumerate(self.spans):
            pieces.append(view[prev:start])
            pieces.append(f"{_HOLE_TOKEN}{i}Z".encode("ascii"))
            prev = end
        pieces.append(view[prev:])
        return b"".join(pieces)

    def locate(self, root: Message) -> bool:
        """Find every placeholder in the parsed tree; False unless each is in exactly one payload, once."""
        seen = [0] * len(self.spans)

        def count(text: str) -> bool:
            for m in _HOLE_RE.finditer(text):
                i = int(m.group(1))
                if i >= len(seen):
                    return False
                seen[i] += 1
            return True

        stack = [root]
        while stack:
            part = stack.pop()
            payload = getattr(part, "_payload", None)
            if isinstance(payload, list):
                stack.extend(c for c in payload if isinstance(c, Message))
            elif isinstance(payload, str) and _HOLE_TOKEN in payload:
                if not count(payload):
                    return False
                self.parts[id(part)] = part
            for attr in ("preamble", "epilogue"):
                value = getattr(part, attr, None)
                if isinstance(value, str) and _HOLE_TOKEN in value:
                    if not count(value):
                        return False
                    setattr(part, attr, self.fill(value))
        return all(n == 1 for n in seen)

    def region(self, i: int) -> memoryview:
        start, end = self.spans[i]
        return memoryview(self.raw)[start:end]

    def fill(self, text: str) -> str:
        """`text` with its placeholders replaced by the runs (ASCII, so exactly what the parser had made)."""
        return _HOLE_RE.sub(lambda m: bytes(self.region(int(m.group(1)))).decode("ascii"), text)

    def has(self, part: Message) -> bool:
        return id(part) in self.parts

    def payload_pieces(self, part: Message) -> list[bytes | memoryview] | None:
        """A holed part's payload bytes, as parsed from the whole message, in pieces: views of `raw` for
        the runs, bytes for the text around them. None for a part without placeholders."""
        payload = getattr(part, "_payload", None)
        if id(part) not in self.parts or not isinstance(payload, str):
            return None
        pieces: list[bytes | memoryview] = []
        prev = 0
        for m in _HOLE_RE.finditer(payload):
            pieces.append(payload[prev : m.start()].encode("ascii", "surrogateescape"))
            pieces.append(self.region(int(m.group(1))))
            prev = m.end()
        pieces.append(payload[prev:].encode("ascii", "surrogateescape"))
        return [p for p in pieces if len(p)]

    def within(self, root: Message) -> list[Message]:
        """The holed parts in the tree under `root` (itself included)."""
        out: list[Message] = []
        stack = [root]
        while stack:
            part = stack.pop()
            if id(part) in self.parts:
                out.append(part)
            payload = getattr(part, "_payload", None)
            if isinstance(payload, list):
                stack.extend(c for c in payload if isinstance(c, Message))
        return out

    @contextmanager
    def filled(self, parts: Iterable[Message]) -> Iterator[None]:
        """The parts' payloads as parsed from the whole message, for as long as the block runs."""
        saved: list[tuple[Message, str]] = []
        try:
            for part in parts:
                payload = getattr(part, "_payload", None)
                if isinstance(payload, str):
                    saved.append((part, payload))
                    part._payload = self.fill(payload)  # type: ignore[attr-defined]
            yield
        finally:
            for part, payload in saved:
                part._payload = payload  # type: ignore[attr-defined]

    def substitute(self, out: bytes, parts: list[Message]) -> bytes | None:
        """Serialised bytes of a tree holding `parts` with the runs put back, line ends written as LF.

        The BytesGenerator writes a leaf payload line by line with its own line end, so a run comes out
        with CRLF turned into LF. Multipart and message parts are written otherwise: None for those.
        """
        expected: set[int] = set()
        for part in parts:
            if part.get_content_maintype() in ("multipart", "message"):
                return None
            expected.update(int(m.group(1)) for m in _HOLE_RE.finditer(str(getattr(part, "_payload", ""))))
        found = [int(m.group(1)) for m in _HOLE_RE_B.finditer(out)]
        if sorted(found) != sorted(expected):
            return None
        buf = io.BytesIO()
        prev = 0
        for m in _HOLE_RE_B.finditer(out):
            buf.write(memoryview(out)[prev : m.start()])
            start, end = self.spans[int(m.group(1))]
            if self.raw.find(b"\r", start, end) < 0:
                buf.write(self.region(int(m.group(1))))
            else:
                # CRLF to LF a slice at a time; a slice ends after an LF, so no CRLF is cut in two (a run
                # holds no lone CR, and ends on a character of its last line).
                while start < end:
                    cut = min(end, start + _LF_SLICE_BYTES)
                    nl = self.raw.find(b"\n", cut, end)
                    cut = end if cut == end or nl < 0 else nl + 1
                    buf.write(self.raw[start:cut].replace(b"\r\n", b"\n"))
                    start = cut
            prev = m.end()
        buf.write(memoryview(out)[prev:])
        return buf.getvalue()


def _read_tree(raw: bytes) -> tuple[Message, _Holes | None]:
    """The stdlib (compat32) tree of `raw`; a large message is parsed with its long runs cut out."""
    if len(raw) >= _SKELETON_MIN_BYTES and _HOLE_TOKEN.encode("ascii") not in raw:
        spans = _find_holes(raw)
        if spans:
            holes = _Holes(raw, spans)
            skeleton = holes.skeleton()
            msg = email.message_from_bytes(skeleton, policy=email.policy.compat32)
            del skeleton
            if holes.locate(msg):
                return msg, holes
            _log.debug("placeholders not where expected, parsing the whole message")
    return email.message_from_bytes(raw, policy=email.policy.compat32), None


# ---------------------------------------------------------------------------------------------------------
# Charsets and transfer encodings: decode what we can, fall back, never raise.
# ---------------------------------------------------------------------------------------------------------

# Labels that mean "we don't know": decode by sniffing instead of by name.
_UNKNOWN_CHARSETS = frozenset({"", "unknown", "unknown-8bit", "x-unknown", "default", "none", "charset"})
# WHATWG Encoding Standard: the ISO-8859-1 / ASCII labels are decoded as windows-1252 by every browser and
# mail client, because senders mislabel cp1252 text ("smart quotes") as Latin-1 all the time.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "windows-1252": "cp1252",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-sjis": "shift_jis",
    "tis-620": "cp874",
}
# Codecs that are not text charsets, and must never be applied to mail text by name.
_NOT_TEXT_CODECS = frozenset({"base64", "hex", "rot13", "zlib", "bz2", "quopri", "uu", "punycode", "idna"})


def _codec_for(charset: str | None) -> str | None:
    """The Python codec for a declared charset label, or None for unknown, missing or non-text labels."""
    label = (charset or "").strip().strip('"').strip("'").lower()
    if "*" in label:  # RFC 2231 language suffix ("utf-8*id")
        label = label.split("*", 1)[0]
    if label in _UNKNOWN_CHARSETS:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    if name in _NOT_TEXT_CODECS or name.endswith("_codec"):
        return None
    return name


def decode_bytes(data: bytes, charset: str | None = None) -> tuple[str, str | None]:
    """Decode body or header bytes; returns (text, defect) where defect names a fallback that was needed.

    Order: the declared charset (strictly), then UTF-8 (strictly), then windows-1252, then Latin-1, which
    never fails. A declared UTF-8 body with a few bad bytes keeps its UTF-8 (with U+FFFD) instead of being
    turned into mojibake as a whole.
    """
    codec = _codec_for(charset)
    if codec is not None:
        try:
            return data.decode(codec), None
        except (UnicodeError, LookupError, ValueError):
            pass
    declared = (charset or "").strip() or "tidak ada"
    try:
        text = data.decode("utf-8")
        return text, (None if declared == "tidak ada" else f"charset {declared} diganti utf-8")
    except UnicodeDecodeError:
        pass
    if codec == "utf-8":
        lossy = data.decode("utf-8", "replace")
        if any(ord(c) > 0x7F and c != "\ufffd" for c in lossy):
            return lossy, "utf-8 rusak, bita yang salah diganti"
    try:
        return data.decode("cp1252"), f"charset {declared} diganti windows-1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), f"charset {declared} diganti latin-1"


def _surrogate_bytes(value: str) -> bytes:
    """The raw bytes behind a compat32 header string (8-bit octets arrive as lone surrogates)."""
    return value.encode("ascii", "surrogateescape") if _has_surrogates(value) else value.encode("utf-8")


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in value)


# RFC 2047 section 2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
# RFC 2047 section 6.2: whitespace between two adjacent encoded-words is not displayed.
_EW_GAP_RE = re.compile(r"(\?=)[ \t\r\n]+(=\?)")


def _decode_encoded_word(charset: str, enc: str, text: str) -> str | None:
    try:
        if enc in "bB":
            cleaned = re.sub(r"[^A-Za-z0-9+/=]", "", text)
            cleaned = cleaned.rstrip("=")
            cleaned += "=" * (-len(cleaned) % 4)
            data = base64.b64decode(cleaned) if cleaned else b""
        else:
            data = quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=False)
    except (binascii.Error, ValueError):
        return None
    return decode_bytes(data, charset)[0]


def decode_header_value(value: str) -> str:
    """One header value as display text: unfolded, 8-bit octets decoded, RFC 2047 encoded-words decoded.

    Broken encoded-words (unknown charset, bad base64) are decoded as far as possible or left as written;
    this never raises.
    """
    # RFC 5322 section 2.2.3: unfolding removes CRLF before WSP.
    value = re.sub(r"\r?\n(?=[ \t])", "", value).replace("\r", "").replace("\n", " ")
    if _has_surrogates(value):
        value = decode_bytes(_surrogate_bytes(value), None)[0]
    if "=?" in value:
        value = _EW_GAP_RE.sub(r"\1\2", value)

        def _sub(m: re.Match[str]) -> str:
            decoded = _decode_encoded_word(m.group(1), m.group(2), m.group(3))
            return m.group(0) if decoded is None else decoded

        value = _ENCODED_WORD_RE.sub(_sub, value)
    return " ".join(value.replace("\x00", "").split())


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name, lower-case address) pairs from raw address headers; names decoded after splitting.

    Decoding encoded-words before splitting would turn "=?utf-8?q?Doe=2C_John?=" into two addresses.
    """
    raw = [re.sub(r"\r?\n(?=[ \t])", "", v) for v in values]
    out: list[tuple[str, str]] = []
    try:
        pairs = email.utils.getaddresses(raw)
    except Exception:  # a pathological header must not make the whole message unreadable
        pairs = []
    for name, addr in pairs:
        addr = decode_header_value(addr).strip().strip("<>").lower()
        if not addr or "@" not in addr:
            continue
        out.append((decode_header_value(name).strip().strip('"').strip(), addr))
    if not out:
        # getaddresses gives up on some broken headers ("Budi <budi@x" ...): pick the addresses out.
        for v in raw:
            for m in _ADDR_RE.finditer(decode_header_value(v)):
                out.append(("", m.group(0).lower()))
    return out


_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------
# The tree walk.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Walked:
    part: Message
    depth: int
    in_attached_message: bool
    in_attachment: bool


def _walk(root: Message, limits: Limits) -> list[_Walked]:
    """Every part of the tree, depth-first in document order, without recursion (see `_prescan`)."""
    out: list[_Walked] = []
    stack: list[_Walked] = [_Walked(root, 0, False, False)]
    while stack:
        item = stack.pop()
        out.append(item)
        if len(out) > limits.max_parts:
            raise MessageOverLimit(f"terlalu banyak bagian MIME (lebih dari {limits.max_parts})")
        if item.depth > limits.max_depth:
            raise MessageOverLimit(f"struktur MIME terlalu dalam (lebih dari {limits.max_depth} tingkat)")
        part = item.part
        ctype = _content_type(part)
        if not part.is_multipart() or ctype in ("message/delivery-status", "message/global-delivery-status"):
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        attached_message = ctype.startswith("message/")
        in_attachment = item.in_attachment or _disposition(part) == "attachment"
        children = [
            _Walked(c, item.depth + 1, item.in_attached_message or attached_message, in_attachment)
            for c in payload
            if isinstance(c, Message)
        ]
        stack.extend(reversed(children))
    return out


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "application/octet-stream"


def _disposition(part: Message) -> str | None:
    try:
        value = part.get_content_disposition()
    except Exception:
        return None
    return value.lower() if isinstance(value, str) else None


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # RFC 2231 parameters with an unknown charset raise LookupError in the stdlib
        name = part.get_param("filename", header="content-disposition") or part.get_param("name")  # type: ignore[assignment]
        name = name if isinstance(name, str) else None
    if not name:
        return None
    name = decode_header_value(str(name))
    return name or None


def _payload_bytes(part: Message, defects: list[str], holes: _Holes | None = None) -> bytes:
    """The decoded payload of a leaf part (base64 / quoted-printable / 7bit / 8bit / binary)."""
    cte = str(part.get("Content-Transfer-Encoding", "") or "").strip().lower()
    # The stored payload, not get_payload(): compat32 turns 8-bit octets into U+FFFD on that path, and the
    # charset decision belongs to `decode_bytes`, which knows more fallbacks.
    raw = getattr(part, "_payload", None)
    raw_bytes: bytes | memoryview
    held = holes.payload_pieces(part) if holes is not None else None
    if held is not None:
        # Straight from the message bytes, without a str or a copy of the run where that can be helped.
        core = _base64_core(held) if cte == "base64" else None
        if core is not None:
            try:
                return binascii.a2b_base64(core)
            except (binascii.Error, ValueError):
                pass  # the same error on the whole payload, whose repair follows
        raw_bytes = held[0] if len(held) == 1 else b"".join(held)
    elif isinstance(raw, bytes):
        raw_bytes = raw
    elif isinstance(raw, str):
        if _has_surrogates(raw):
            raw_bytes = raw.encode("ascii", "surrogateescape")
        else:
            raw_bytes = raw.encode("utf-8", "surrogatepass")
    else:
        return b""
    if cte == "base64":
        try:
            return binascii.a2b_base64(raw_bytes)
        except (binascii.Error, ValueError):
            pass
        # RFC 2045 section 6.8: the encoded text is a multiple of 4 characters; a truncated transfer leaves
        # a tail we cannot decode. Keep what decodes and say what was lost.
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", bytes(raw_bytes))
        rem = len(cleaned) % 4
        # 2 or 3 leftover characters still carry 1 or 2 whole octets; 1 leftover carries none.
        cleaned = cleaned[:-1] if rem == 1 else cleaned + b"=" * ((4 - rem) % 4)
        defects.append("base64 terpotong")
        try:
            return binascii.a2b_base64(cleaned) if cleaned else b""
        except (binascii.Error, ValueError):
            defects.append("base64 rusak")
            return b""
    if cte == "quoted-printable":
        try:
            return quopri.decodestring(raw_bytes)
        except (ValueError, binascii.Error):
            defects.append("quoted-printable rusak")
            return bytes(raw_bytes)
    if cte and cte not in ("7bit", "8bit", "binary"):
        try:
            if held is not None and holes is not None:
                with holes.filled([part]):
                    data = part.get_payload(decode=True)
            else:
                data = part.get_payload(decode=True)
        except Exception:
            data = None
        if isinstance(data, bytes):
            return data
        defects.append(f"Content-Transfer-Encoding tidak dikenal: {cte[:40]}")
    return bytes(raw_bytes)


def _base64_core(pieces: list[bytes | memoryview]) -> memoryview | None:
    """The one run of a payload whose other pieces are only white space, which `a2b_base64` skips (its
    non-strict mode discards every byte outside the alphabet and the pad without a change of state)."""
    views = [p for p in pieces if isinstance(p, memoryview)]
    if len(views) != 1 or any(not isinstance(p, memoryview) and p.strip(b" \t\r\n") for p in pieces):
        return None
    return views[0]


def _part_text(part: Message, data: bytes, ctype: str, defects: list[str]) -> str:
    try:
        charset = part.get_param("charset")
    except Exception:
        charset = None
    charset_str = charset if isinstance(charset, str) else None
    if charset_str is None and ctype == "text/html":
        m = _META_CHARSET_RE.search(data[:4096])
        if m:
            charset_str = m.group(1).decode("ascii", "replace")
    text, defect = decode_bytes(data, charset_str)
    if defect:
        defects.append(defect)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _serialise_message(part: Message, holes: _Holes | None = None) -> bytes:
    """The bytes of an attached message/rfc822 (for the forward and bounce readers, and for storage)."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
    if inner is None:
        return b""
    held = holes.within(inner) if holes is not None else []
    if holes is not None and held:
        # Serialise the tree as parsed, then put the runs in place of their placeholders; a part the
        # generator writes otherwise than line by line gets its payload filled in for the call instead.
        try:
            out: bytes | None = inner.as_bytes(policy=email.policy.compat32.clone(linesep="\n"))
        except Exception:
            out = None
        done = holes.substitute(out, held) if out is not None else None
        if done is not None:
            return done
        with holes.filled(held):
            return _serialise_inner(inner)
    return _serialise_inner(inner)


def _serialise_inner(inner: Message) -> bytes:
    try:
        return inner.as_bytes(policy=email.policy.compat32.clone(linesep="\n"))
    except Exception:
        try:
            return inner.as_string().encode("utf-8", "surrogateescape")
        except Exception:
            return b""


def _serialise_status(part: Message, holes: _Holes | None = None) -> bytes:
    """message/delivery-status (RFC 3464 section 2.1): header blocks, one per-message then per-recipient."""
    payload = part.get_payload()
    if holes is not None and isinstance(payload, str) and holes.has(part):
        payload = holes.fill(payload)
    blocks: list[str] = []
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                blocks.append("\n".join(f"{k}: {decode_header_value(str(v))}" for k, v in block.raw_items()))
    elif isinstance(payload, str):
        blocks.append(payload)
    return "\n\n".join(blocks).encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------------------
# Forwards: who wrote the message the secretary forwarded.
# ---------------------------------------------------------------------------------------------------------

_FWD_SUBJECT_RE = re.compile(r"^\s*(?:(?:re|aw|balas)\s*:\s*)*(fwd?|fw|tr|wg|terusan|trs|penerusan)\s*:", re.I)
_FWD_MARKER_RE = re.compile(
    r"^\s*-{2,}\s*(forwarded message|pesan terusan|pesan diteruskan|pesan yang diteruskan|"
    r"mensaje reenviado|message transféré|weitergeleitete nachricht)\s*-{2,}\s*$"
    r"|^\s*(begin forwarded message|awal pesan (?:yang )?(?:diteruskan|terusan))\s*:\s*$",
    re.IGNORECASE,
)
_ORIGINAL_MARKER_RE = re.compile(
    r"^\s*-{2,}\s*(original message|pesan asli)\s*-{2,}\s*$|^\s*_{10,}\s*$", re.IGNORECASE
)
_FROM_LINE_RE = re.compile(r"^\s*\*?\s*(from|dari)\s*:\s*\*?\s*(.+?)\s*$", re.IGNORECASE)
_OTHER_HEADER_LINE_RE = re.compile(
    r"^\s*\*?\s*(sent|date|to|subject|cc|dikirim|tanggal|kepada|subjek|perihal|terkirim|tembusan)\s*:",
    re.IGNORECASE,
)
_QUOTE_PREFIX_RE = re.compile(r"^(?:\s*>)+\s?")


def _parse_from_line(value: str) -> tuple[str | None, str | None]:
    value = value.replace("[mailto:", "<").replace("]", ">") if "[mailto:" in value else value
    value = re.sub(r"<mailto:([^>]+)>", r"<\1>", value)
    m = re.search(r"<\s*([^<>\s]+@[^<>\s]+)\s*>", value)
    if m:
        addr = m.group(1).lower()
        name = value[: m.start()].strip().strip('"').strip("'").strip() or None
        return addr, name
    m2 = _ADDR_RE.search(value)
    if m2:
        name = (value[: m2.start()] + value[m2.end() :]).strip(" \"'()") or None
        return m2.group(0).lower(), name
    return None, value.strip().strip('"') or None


def _forward_in_text(text: str, subject_is_forward: bool) -> tuple[str | None, str | None] | None:
    lines = [_QUOTE_PREFIX_RE.sub("", ln) for ln in text.split("\n")[:2000]]
    for i, line in enumerate(lines):
        marker = bool(_FWD_MARKER_RE.match(line))
        if not marker and subject_is_forward and _ORIGINAL_MARKER_RE.match(line):
            marker = True
        if marker:
            for j in range(i + 1, min(i + 12, len(lines))):
                m = _FROM_LINE_RE.match(lines[j])
                if m:
                    value = m.group(2)
                    if "<" in value and ">" not in value and j + 1 < len(lines):
                        value += lines[j + 1].strip()  # Gmail wraps a long "From:" inside the <address>
                    return _parse_from_line(value)
            continue
        # Outlook's forward has no marker line in some versions: a "From:/Dari:" block under a FW subject.
        if subject_is_forward:
            m = _FROM_LINE_RE.match(line)
            if m and any(_OTHER_HEADER_LINE_RE.match(x) for x in lines[i + 1 : i + 6]):
                return _parse_from_line(m.group(2))
    return None


# ---------------------------------------------------------------------------------------------------------
# mail-parser: defects and Date.
# ---------------------------------------------------------------------------------------------------------

_log = logging.getLogger(__name__)
# mail-parser logs a warning for every part type it does not handle (e.g. text/rfc822-headers in a DSN);
# a NullHandler keeps that off stderr unless the daemon configures logging (library logging practice).
logging.getLogger("mailparser").addHandler(logging.NullHandler())


def _mailparser_view(msg: Message, holes: _Holes | None = None) -> tuple[list[str], datetime | None]:
    """Defect categories and the Date as mail-parser reads them; its failure is a defect, never a crash.

    Of what it reports, only its charset check of body text (`CharsetDecodeDefect`) reads a payload's content,
    so the holed parts it may read as body text are filled for the time it reads the tree; a file (a part with
    a name, or marked as an attachment) keeps its placeholder and costs nothing.
    """
    bodies = [] if holes is None else [p for p in holes.within(msg) if _may_be_body(p)]
    try:
        with holes.filled(bodies) if holes is not None else nullcontext():
            mp = mailparser.MailParser(msg)
            categories = sorted(str(c) for c in mp.defects_categories)
            date = mp.date if isinstance(mp.date, datetime) else None
        if date is not None and date.tzinfo is None:
            date = date.replace(tzinfo=UTC)  # mail-parser normalises to naive UTC
        return categories, date
    except Exception as exc:  # any library failure degrades to our own reading of the message
        _log.debug("mail-parser failed: %r", exc)
        return [f"mail-parser gagal: {type(exc).__name__}"], None


def _may_be_body(part: Message) -> bool:
    """A part mail-parser may decode as body text: unnamed and not an attachment, or inline text."""
    disposition = (part.get_content_disposition() or "").lower()
    if disposition == "inline" and part.get_content_type() in ("text/plain", "text/html"):
        return True
    return part.get_filename() is None and disposition != "attachment"


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return dt


_BODY_DELIMITER_RE = re.compile(rb"^--([^\s]{1,200}?)(--)?[ \t]*\r?$", re.MULTILINE)
_HEADER_BOUNDARY_RE = re.compile(rb'boundary\s*=\s*(?:"[^"\r\n]*"|[^\s;]*)', re.IGNORECASE)


def _repair_boundary(raw: bytes, msg: Message, limits: Limits) -> tuple[Message, _Holes | None] | None:
    """Re-read a multipart whose declared boundary never occurs, with the delimiter the body actually uses.

    Senders (and hand-edited mail) get this wrong; the stdlib then sees one text blob full of MIME headers.
    RFC 2046 section 5.1.1 delimiters are "--" + boundary at the start of a line, so the first such line
    that repeats is a safe guess; the guess is re-checked by the same limits as any message.
    """
    if not _content_type(msg).startswith("multipart/") or isinstance(msg.get_payload(), list):
        return None
    split = re.search(rb"\r?\n\r?\n", raw)
    if not split:
        return None
    head, body = raw[: split.start()], raw[split.start() :]
    seen: dict[bytes, int] = {}
    token: bytes | None = None
    for m in _BODY_DELIMITER_RE.finditer(body):
        seen[m.group(1)] = seen.get(m.group(1), 0) + 1
        if seen[m.group(1)] >= 2:
            token = m.group(1)
            break
    if token is None:
        return None
    quoted = b'boundary="' + token.replace(b'"', b"") + b'"'
    if _HEADER_BOUNDARY_RE.search(head):
        head = _HEADER_BOUNDARY_RE.sub(lambda _m: quoted, head, count=1)
    else:
        head = re.sub(rb"(?im)^(content-type:[^\r\n]*)", lambda m: m.group(1) + b"; " + quoted, head, count=1)
    fixed = head + body
    try:
        _prescan(fixed, limits)
        again, holes = _read_tree(fixed)
    except (UnreadableMessage, RecursionError):
        return None
    except Exception:  # the repair is a best effort; the unrepaired message is still readable
        return None
    return (again, holes) if isinstance(again.get_payload(), list) else None


# ---------------------------------------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------------------------------------

_NOT_WHITESPACE_RE = re.compile(rb"[^ \t\n\r\x0b\x0c]")
_ESSENTIAL_HEADERS = ("from", "subject", "message-id", "date", "to", "sender", "return-path")


def parse_mime(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    """Read one message; raise `UnreadableMessage` (reason in Indonesian) when it cannot or may not be read."""
    try:
        return _parse_mime(raw, limits or Limits(), nested=False)
    except UnreadableMessage:
        raise
    except RecursionError as exc:
        raise MessageOverLimit("struktur MIME terlalu dalam") from exc
    except MemoryError as exc:
        raise MessageOverLimit("pesan terlalu besar untuk dibaca") from exc
    except Exception as exc:  # a library failing on hostile input is an unreadable message, not a crash
        raise UnreadableMessage(f"pesan tidak dapat dibaca ({type(exc).__name__})") from exc


def _parse_mime(raw: bytes, limits: Limits, nested: bool) -> ParsedMessage:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise UnreadableMessage("masukan bukan bita")
    raw = bytes(raw)
    if _NOT_WHITESPACE_RE.search(raw) is None:  # `not raw.strip()`, without copying the message
        raise UnreadableMessage("pesan kosong")
    if len(raw) > limits.max_message_bytes:
        raise MessageOverLimit(f"pesan terlalu besar ({len(raw)} bita, batas {limits.max_message_bytes})")
    _prescan(raw, limits)
    try:
        msg, holes = _read_tree(raw)
    except RecursionError as exc:
        raise MessageOverLimit("struktur MIME terlalu dalam") from exc
    except Exception as exc:  # the compat32 parser is lenient; this is a last resort
        raise UnreadableMessage(f"struktur MIME tidak dapat dibaca: {type(exc).__name__}") from exc

    repaired = _repair_boundary(raw, msg, limits)
    recovery: list[str] = []
    if repaired is not None:
        msg, holes = repaired
        recovery.append("boundary MIME tidak cocok, diperbaiki dari isi pesan")

    raw_headers = list(msg.raw_items())
    if len(raw_headers) > limits.max_headers:
        raise MessageOverLimit(f"terlalu banyak header (lebih dari {limits.max_headers})")
    headers = tuple((str(k), decode_header_value(str(v))) for k, v in raw_headers)
    names = {k.lower() for k, _ in headers}
    if not names.intersection(_ESSENTIAL_HEADERS):
        raise UnreadableMessage("tidak ada header surel (From/Subject/Date)")

    walked = _walk(msg, limits)
    defects: list[str] = list(recovery)
    for w in walked:
        for d in getattr(w.part, "defects", []) or []:
            defects.append(type(d).__name__)

    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    attached_from: tuple[str | None, str | None] | None = None
    attached_messages: list[ParsedMessage] = []
    total_attachment_bytes = 0
    for w in walked:
        part = w.part
        ctype = _content_type(part)
        disposition = _disposition(part)
        if ctype.startswith("message/") and ctype not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            if ctype in ("message/rfc822", "message/global") or part.is_multipart():
                data = _serialise_message(part, holes)
            else:
                data = _payload_bytes(part, defects, holes)
            if not data:
                continue
            if len(data) > limits.max_attachment_bytes:
                raise MessageOverLimit(f"lampiran pesan terlalu besar ({len(data)} bita)")
            attachments.append(Attachment(filename=_filename(part), content_type=ctype, data=data))
            if not w.in_attached_message and not nested and ctype in ("message/rfc822", "message/global"):
                inner = _read_attached(data, limits)
                if inner is not None:
                    attached_messages.append(inner)
                    if attached_from is None and inner.from_addr:
                        attached_from = (inner.from_addr, inner.from_name)
            continue
        if part.is_multipart() and ctype not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            data = _serialise_status(part, holes)
        else:
            data = _payload_bytes(part, defects, holes)
        filename = _filename(part)
        text_part = ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename
        if text_part and w.in_attached_message:
            continue  # the attached message's own text: read through `attached_messages`, not a file
        is_body = text_part and not w.in_attachment
        if is_body and ctype == "text/plain" and text is None:
            text = _part_text(part, data, ctype, defects)
            continue
        if is_body and ctype == "text/html" and html is None:
            html = _part_text(part, data, ctype, defects)
            continue
        if not data and not filename:
            continue
        if len(data) > limits.max_attachment_bytes:
            raise MessageOverLimit(f"lampiran {filename or ctype} terlalu besar ({len(data)} bita)")
        total_attachment_bytes += len(data)
        if total_attachment_bytes > limits.max_decompressed_bytes:
            raise MessageOverLimit("total lampiran terlalu besar")
        attachments.append(Attachment(filename=filename, content_type=ctype, data=data))

    if html is not None and (text is None or not text.strip()):
        text = html_to_text(html)

    mp_defects, mp_date = _mailparser_view(msg, holes)
    defects.extend(d for d in mp_defects if d not in defects)

    def first(name: str) -> str | None:
        for k, v in headers:
            if k.lower() == name:
                return v
        return None

    def all_raw(name: str) -> list[str]:
        return [str(v) for k, v in raw_headers if str(k).lower() == name]

    from_pairs = _addresses(all_raw("from"))
    from_name, from_addr = (from_pairs[0][0], from_pairs[0][1]) if from_pairs else ("", "")
    if not from_addr:
        sender = _addresses(all_raw("sender"))
        if sender:
            from_name, from_addr = sender[0]

    mid = first("message-id")
    mid_m = _MSGID_RE.search(mid) if mid else None
    irt = first("in-reply-to")
    irt_m = _MSGID_RE.search(irt) if irt else None
    refs = " ".join(v for k, v in headers if k.lower() == "references")
    subject = first("subject")

    forwarded: tuple[str | None, str | None] | None = None
    subject_is_forward = bool(subject and _FWD_SUBJECT_RE.match(subject))
    is_report = _content_type(msg) == "multipart/report"
    if text:
        forwarded = _forward_in_text(text, subject_is_forward)
    if forwarded is None and attached_from is not None and not is_report:
        forwarded = attached_from

    date = _parse_date(first("date")) or mp_date
    return ParsedMessage(
        message_id=(mid_m.group(0) if mid_m else (mid or None)),
        from_addr=from_addr or None,
        from_name=from_name or None,
        to=tuple(a for _, a in _addresses(all_raw("to"))),
        cc=tuple(a for _, a in _addresses(all_raw("cc"))),
        reply_to=tuple(a for _, a in _addresses(all_raw("reply-to"))),
        delivered_to=tuple(a for _, a in _addresses(all_raw("delivered-to"))),
        subject=subject,
        date=date,
        in_reply_to=(irt_m.group(0) if irt_m else None),
        references=tuple(_MSGID_RE.findall(refs)),
        headers=headers,
        text=text,
        html=html,
        attachments=tuple(attachments),
        defects=tuple(dict.fromkeys(defects)),
        forwarded_from=forwarded[0] if forwarded else None,
        forwarded_name=forwarded[1] if forwarded else None,
        attached_messages=tuple(attached_messages),
    )


def _read_attached(data: bytes, limits: Limits) -> ParsedMessage | None:
    """An attached message, read one level deep; an unreadable one stays just a file."""
    try:
        return _parse_mime(data, limits, nested=True)
    except UnreadableMessage:
        return None
    except Exception:  # the outer message stays readable whatever the attached one does
        return None
