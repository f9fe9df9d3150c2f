"""Find labelled values in text: the label table, tolerant label matching, and text/table/HTML → hits.

The label table itself (label variants -> field) is data, parsers/labels.toml, read once at import as this
package's data. It is a data file like the SOP files, but it lives here rather than beside them in
workflows/sops/: what a label means is the parser's knowledge, and parsers/ never reads from the layers
above it (parsers <- workflows <- daemon).

A *record* is one line or one table row as a list of cells. `extract_records` walks records and returns raw
`Hit`s (canonical field, the label as written, the value as written); it neither normalises nor validates
(that is `parsers.normalize`) and does not choose between hits (that is `parsers.request`).

Labels match tolerantly (case, punctuation, word order, synonyms, small typos via rapidfuzz) but only when
the whole label part is a label: "Nama Sub Domain : dinsos" is a hit, a sentence that merely mentions a sub
domain is not.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from html.parser import HTMLParser
from importlib import resources

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from subdomaind.parsers.model import REQUEST_FIELDS


@dataclass(frozen=True)
class Hit:
    """One labelled value as written; `priority` orders hits of one field within a source (lower wins)."""

    field: str  # a REQUEST_FIELDS name, or letter_date / letter_subject / unit_head
    label: str | None  # the label as written
    value: str
    priority: int = 1
    group: str | None = None  # "tech" / "admin" / "pic": which person block the value sits in
    position: int = 0


@dataclass(frozen=True)
class Entry:
    """What a label means. field "" = a known label we deliberately ignore (office address, pangkat…)."""

    field: str
    priority: int = 1
    group: str | None = None  # the person block this label itself names ("Penanggung Jawab Teknis")
    generic: bool = False  # "Nama", "Email": means a unit or a person depending on the heading above
    heading: str | None = None  # the block it opens when it stands alone; "-" closes any block


# Under a unit heading a generic "Nama" is the unit's name; its phone and e-mail are the office's, not the
# PIC's, so they are dropped.
_UNIT_CONTEXT = {"pic_name": "unit"}


def _norm(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"[^0-9a-z]+", " ", t)
    t = re.sub(r"\bsubdomain\b", "sub domain", t)
    t = re.sub(r"\be mail\b", "email", t)
    t = re.sub(r"\bwhats app\b", "whatsapp", t)
    t = re.sub(r"\bno mor\b", "nomor", t)
    t = re.sub(r"\bpos el\b", "posel", t)
    return " ".join(t.split())


def _sorted_key(key: str) -> str:
    return " ".join(sorted(key.split()))


LABEL_FILE = "labels.toml"
# What a label may mean besides a request field; "" is a known label whose value we ignore.
EXTRA_FIELDS = ("letter_date", "letter_subject", "unit_head", "target_cname", "nameservers", "")
_GROUPS = frozenset({"tech", "admin", "pic"})
_BLOCKS = frozenset({*_GROUPS, "unit", "-"})


class LabelTableError(ValueError):
    """The label table does not say one clear thing; the message lists every `where: problem`."""


def load_label_table(text: str) -> tuple[list[tuple[str, Entry]], dict[str, str]]:
    """The labels in file order with what each means, and the headings with the block each opens. A label
    that means two things, or appears twice once folded, is refused: the first would win without a word."""
    data = tomllib.loads(text)
    problems: list[str] = []
    labels: list[tuple[str, Entry]] = []
    seen: dict[str, str] = {}
    for n, block in enumerate(data.get("label", []), 1):
        where = f"label #{n}"
        field = block.get("field")
        if field not in REQUEST_FIELDS and field not in EXTRA_FIELDS:
            problems.append(f"{where}: field {field!r} is not a field the parser knows")
        priority, group, generic = block.get("priority", 1), block.get("group"), block.get("generic", False)
        if type(priority) is not int or priority < 1:
            problems.append(f"{where}: priority must be a whole number from 1")
        if group is not None and group not in _GROUPS:
            problems.append(f"{where}: group {group!r} is not one of {sorted(_GROUPS)}")
        if not isinstance(generic, bool):
            problems.append(f"{where}: generic must be true or false")
        unknown = set(block) - {"field", "priority", "group", "generic", "labels"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        if not block.get("labels"):
            problems.append(f"{where}: no labels")
        for label in block.get("labels", []):
            key = _norm(label) if isinstance(label, str) else ""
            if not key:
                problems.append(f"{where}: label {label!r} is empty once folded")
            elif key in seen:
                problems.append(f"{where}: label {label!r} is already listed as {seen[key]!r}")
            else:
                seen[key] = label
                labels.append((label, Entry(str(field), priority, group, bool(generic))))
    headings = data.get("headings", {})
    for heading, opens in headings.items():
        if opens not in _BLOCKS:
            problems.append(f"heading {heading!r}: block {opens!r} is not one of {sorted(_BLOCKS)}")
    folded = [_norm(h) for h in headings]
    problems += [f"heading {h!r}: listed twice once folded" for h in headings if folded.count(_norm(h)) > 1]
    unknown = set(data) - {"label", "headings"}
    if unknown:
        problems.append(f"unknown tables {sorted(unknown)}")
    if problems:
        raise LabelTableError("; ".join(problems))
    return labels, dict(headings)


def _build() -> tuple[dict[str, Entry], dict[str, Entry]]:
    text = resources.files(__package__ or "parsers").joinpath(LABEL_FILE).read_text("utf-8")
    labels, headings = load_label_table(text)
    exact: dict[str, Entry] = {}
    for label, entry in labels:
        exact[_norm(label)] = replace(entry, heading=headings.get(label))
    for label, block in headings.items():
        key = _norm(label)
        if key in exact:
            exact[key] = replace(exact[key], heading=block)
        else:
            exact[key] = Entry("", heading=block)
    by_sorted = {_sorted_key(k): e for k, e in exact.items()}
    return exact, by_sorted


_EXACT, _BY_SORTED = _build()
_LONG_CHOICES = [k for k in _EXACT if len(k) >= 6]
_SHORT_CHOICES = [k for k in _EXACT if 3 <= len(k) <= 9]
_MAX_LABEL_CHARS = 64
_MAX_LABEL_WORDS = 8
_DECOR_RE = re.compile(r"[*_#\"“”]+|\(\s*\*+\s*\)|\*+\)|\(wajib(?: diisi)?\)|\(opsional\)", re.IGNORECASE)


@lru_cache(maxsize=16384)
def match_label(text: str) -> Entry | None:
    """The meaning of `text` if the whole of it is a label (tolerating case, order, synonyms and typos)."""
    raw = _DECOR_RE.sub(" ", text).strip()
    if not raw or len(raw) > _MAX_LABEL_CHARS:
        return None
    key = _norm(raw)
    if not key or not key[0].isalpha() or key.count(" ") >= _MAX_LABEL_WORDS:
        return None
    found = _EXACT.get(key) or _BY_SORTED.get(_sorted_key(key))
    if found:
        return found
    bare = _norm(re.sub(r"\([^)]*\)", " ", raw))  # "No. HP (aktif)" → "no hp"
    if bare and bare != key:
        found = _EXACT.get(bare) or _BY_SORTED.get(_sorted_key(bare))
        if found:
            return found
    return _fuzzy(key)


def _fuzzy(key: str) -> Entry | None:
    if len(key) >= 8:
        cutoff = 85 if len(key) >= 10 else 86
        best = process.extractOne(key, _LONG_CHOICES, scorer=fuzz.ratio, score_cutoff=cutoff)
        if best is None:
            best = process.extractOne(key, _LONG_CHOICES, scorer=fuzz.token_sort_ratio, score_cutoff=cutoff + 3)
        return _EXACT[best[0]] if best else None
    if len(key) >= 4:
        # Short labels: one edit or one swapped pair of letters ("emial", "jabtan"), same first letter.
        for choice in _SHORT_CHOICES:
            if choice[0] == key[0] and abs(len(choice) - len(key)) <= 1 and OSA.distance(key, choice) <= 1:
                return _EXACT[choice]
    return None


# --- records ----------------------------------------------------------------------------------------------

_QUOTE_RE = re.compile(r"^(?:\s*>)+\s?")
_BULLET_RE = re.compile(
    r"^\s*(?:[\-*•●▪◦·‣⁃○■□➢➤►]+\s*|\(?\d{1,2}[.)](?!\d)\s*|\(?[a-zA-Z][.)]\s+|\(?[ivxIVX]{1,4}[.)]\s+)+"
)
_CELL_SPLIT_RE = re.compile(r"\t+|\s{3,}|\s+\|\s+")
_ONLY_SEPARATOR_RE = re.compile(r"^[\s:=\-–—.|]*$")
_ONLY_NUMBER_RE = re.compile(r"^\(?(?:\d{1,2}|[a-zA-Z]|[ivxIVX]{1,4})[.)]?$")
_LEADING_SEP_RE = re.compile(r"^\s*(?::|：|=|[–—]|-(?=\s)|\.{3,}|…+)\s*")
_SEP_RE = re.compile(r"\s*(?::|：|=|\s[-–—]\s|[–—]|\.{3,}\s*:?|…+\s*:?)\s*")


def text_records(text: str) -> list[list[str]]:
    """Lines of plain text as records; tabs, runs of 3+ spaces and " | " split a line into cells."""
    records: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _QUOTE_RE.sub("", line.replace("\u00a0", " ")).rstrip()
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            stripped = stripped.strip("|")
        records.append([c for c in _CELL_SPLIT_RE.split(stripped)] if stripped else [])
    return records


def _clean_cells(cells: Sequence[str | None]) -> list[str]:
    out: list[str] = []
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        text = " ".join(str(cell).replace("\u00a0", " ").split())
        if i == 0 or not out:
            text = _BULLET_RE.sub("", text) if not _looks_like_value_start(text) else text
        if not text or _ONLY_SEPARATOR_RE.match(text) or _ONLY_NUMBER_RE.match(text):
            continue
        if out and text == out[-1]:
            continue  # merged table cells repeat their text
        out.append(text)
    return out


def _looks_like_value_start(text: str) -> bool:
    # A record that starts with an IP or a phone number keeps its digits; they are not list numbering.
    return bool(re.match(r"^(?:\+?\d[\d\s\-.]{6,}|\d{1,3}\.\d{1,3}\.)", text))


def _split_label(cell: str) -> tuple[Entry, str, str | None] | None:
    """(meaning, label as written, value or None) when the cell starts with a label."""
    for m in _SEP_RE.finditer(cell):
        if m.start() > _MAX_LABEL_CHARS:
            break
        if m.start() == 0:
            continue
        label = cell[: m.start()]
        entry = match_label(label)
        if entry is not None:
            value = _LEADING_SEP_RE.sub("", cell[m.end() :]).strip()
            return entry, _DECOR_RE.sub("", label).strip(" .") or label.strip(), value or None
    if len(cell) <= _MAX_LABEL_CHARS:
        entry = match_label(cell)
        if entry is not None:
            return entry, _DECOR_RE.sub("", cell).strip(" .:") or cell, None
    return None


def _parse_cells(cells: list[str]) -> list[tuple[Entry, str, str | None]]:
    items: list[tuple[Entry, str, str | None]] = []
    i = 0
    n = len(cells)
    while i < n:
        found = _split_label(cells[i])
        if found is None:
            i += 1
            continue
        entry, label, value = found
        if value is None and i + 1 < n:
            nxt = _split_label(cells[i + 1])
            # The next cell is this label's value unless it is itself a labelled pair, or a bare label with
            # more cells after it ("Nama | NIP | Jabatan" header rows).
            if nxt is None or (nxt[2] is None and i + 2 >= n):
                value = _LEADING_SEP_RE.sub("", cells[i + 1]).strip() or None
                i += 1
        items.append((entry, label, value))
        i += 1
    return items


_LETTER_START_RE = re.compile(r"^(?:nomor|no\.?\s*surat|yth\b|kepada\b|dengan hormat|hal\b|perihal)", re.I)
_MAX_VALUE_CHARS = 1000
_LETTERHEAD_RECORDS = 15  # a letter's Nomor / Yth line comes within this many lines of the top
_CONTINUABLE = frozenset({"purpose", "unit", "letter_subject", "pic_position"})


def extract_records(records: Iterable[Sequence[str | None]]) -> list[Hit]:
    """Every labelled value in the records, in order; see the module docstring."""
    hits: list[Hit] = []
    group: str | None = None
    pending: tuple[Entry, str] | None = None
    last_record_hit: int | None = None  # index into hits of a value that may wrap onto the next line
    letter_start: int | None = None  # hits before the letter's Nomor / Yth line sit in its letterhead
    seen_records = 0

    def emit(entry: Entry, label: str, value: str) -> None:
        field = entry.field
        if entry.generic and group == "unit":
            field = _UNIT_CONTEXT.get(field, "")
        if not field:
            return
        block = entry.group or (group if group in ("tech", "admin", "pic") else None)
        # No form value is this long; the cap keeps the splitting regexes linear on a hostile line.
        for hit in _expand(Hit(field, label, value[:_MAX_VALUE_CHARS], entry.priority, block, len(hits))):
            hits.append(replace(hit, position=len(hits)))

    for record in records:
        cells = _clean_cells(record)
        if not cells:
            # "Keperluan :" then a blank line: nothing was written; the next paragraph is not its value.
            pending = None
            last_record_hit = None
            continue
        seen_records += 1
        if letter_start is None and seen_records <= _LETTERHEAD_RECORDS and _LETTER_START_RE.match(cells[0]):
            letter_start = len(hits)
        items = _parse_cells(cells)
        if pending is not None:
            p_entry, p_label = pending
            pending = None
            if items:
                if p_entry.heading:
                    group = None if p_entry.heading == "-" else p_entry.heading
            elif not _CLOSING_RE.match(cells[0]):
                before = len(hits)
                emit(p_entry, p_label, " ".join(cells))
                last_record_hit = before if len(hits) > before else None
                continue
        if not items:
            prev = hits[last_record_hit] if last_record_hit is not None and last_record_hit < len(hits) else None
            if prev and prev.field in _CONTINUABLE and len(cells) == 1 and cells[0][:1].islower():
                hits[last_record_hit or 0] = replace(prev, value=f"{prev.value} {cells[0]}")
            else:
                last_record_hit = None
            continue
        last_record_hit = None
        for k, (entry, label, value) in enumerate(items):
            if value is not None:
                before = len(hits)
                emit(entry, label, value)
                last_record_hit = before if len(hits) > before else None
            elif entry.heading and not entry.field:
                group = None if entry.heading == "-" else entry.heading
            elif k == len(items) - 1:
                pending = (entry, label)
    if letter_start:
        # The letterhead's phone and e-mail are the office's, not the PIC's: rank them last.
        for i in range(letter_start):
            if hits[i].field in ("pic_email", "pic_phone") and hits[i].group is None:
                hits[i] = replace(hits[i], group="kop")
    return hits


# --- splitting compound values ----------------------------------------------------------------------------

_EMBEDDED_LABEL_RE = re.compile(r"[,;|]\s*([A-Za-z][A-Za-z ./()\-]{1,40}?)\s*:\s*")
_NIP_IN_TEXT_RE = re.compile(r"\(?\s*\bNIP\b\.?\s*[:.]?\s*((?:\d[\s.]?){17}\d)\s*\)?", re.IGNORECASE)
_BARE_NIP_RE = re.compile(r"(?<!\d)(\d{8}\s?\d{6}\s?\d\s?\d{3})(?!\d)")
_EMAIL_IN_TEXT_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_PHONE_IN_TEXT_RE = re.compile(r"(?<![\d+])(?:\+62|62|0)\s?8[\d\s\-.]{7,15}\d")
_ROLE_RE = re.compile(r"\s*[,(]?\s*\b(?:selaku|sebagai|jabatan)\b\s*:?\s*", re.IGNORECASE)
_DEGREE_RE = re.compile(
    r"^(?:[A-Z][A-Za-z]{0,4}\.\s?){1,4}[A-Za-z]{0,5}\.?$|^(?:ST|SE|SH|MT|MM|MSi|SKom|MKom|SPd|"
    r"SSos|SIP|MAP|AMd|Amd|PhD|MPd|MKes|SKM|SStP|MSc|BSc)\.?$"
)
_PERSON_FIELDS = frozenset({"pic_name", "pic_nip", "pic_position", "pic_email", "pic_phone"})


def _expand(hit: Hit) -> list[Hit]:
    """A hit plus what its value also carries: "…, Email: x" pairs, a NIP or phone inside a name line."""
    value = hit.value
    out: list[Hit] = []
    for m in reversed(list(_EMBEDDED_LABEL_RE.finditer(value))):
        entry = match_label(m.group(1))
        if entry is None:
            continue
        rest = value[m.end() :].strip()
        value = value[: m.start()].strip()
        if entry.field and rest:
            out.extend(_expand(Hit(entry.field, m.group(1).strip(), rest, entry.priority, hit.group)))
    hit = replace(hit, value=value)
    if hit.field == "pic_name":
        name, nip, position, email, phone = split_person(value)
        hit = replace(hit, value=name)
        for field, found in (
            ("pic_nip", nip),
            ("pic_position", position),
            ("pic_email", email),
            ("pic_phone", phone),
        ):
            if found:
                out.append(Hit(field, hit.label, found, hit.priority + 1, hit.group))
    elif hit.field in _PERSON_FIELDS:
        email_m = _EMAIL_IN_TEXT_RE.search(value) if hit.field != "pic_email" else None
        phone_m = _PHONE_IN_TEXT_RE.search(value) if hit.field != "pic_phone" else None
        if email_m:
            out.append(Hit("pic_email", hit.label, email_m.group(0), hit.priority + 2, hit.group))
        if phone_m:
            out.append(Hit("pic_phone", hit.label, phone_m.group(0), hit.priority + 2, hit.group))
    return [hit, *reversed(out)] if hit.value else list(reversed(out))


def split_person(value: str) -> tuple[str, str | None, str | None, str | None, str | None]:
    """(name, NIP, position, e-mail, phone) of one person line.

    "Lukman Hakim (NIP 19870412 201001 1 003), Pengelola Website" → name, NIP and position.
    """
    nip = email = phone = position = None
    m = _NIP_IN_TEXT_RE.search(value) or _BARE_NIP_RE.search(value)
    if m:
        nip = m.group(1)
        value = f"{value[: m.start()]} {value[m.end() :]}"
    m2 = _EMAIL_IN_TEXT_RE.search(value)
    if m2:
        email = m2.group(0)
        value = f"{value[: m2.start()]} {value[m2.end() :]}"
    m3 = _PHONE_IN_TEXT_RE.search(value)
    if m3:
        phone = m3.group(0)
        value = f"{value[: m3.start()]} {value[m3.end() :]}"
    value = re.sub(r"\(\s*[,;/\-]*\s*\)", " ", value)
    value = " ".join(value.split()).strip(" ,;/-")
    role = _ROLE_RE.search(value)
    if role and role.start() > 0:
        position = value[role.end() :].strip(" ,;)") or None
        value = value[: role.start()]
    else:
        parts = [p.strip() for p in value.split(",")]
        name_parts = [parts[0]]
        rest = [p for p in parts[1:] if p]
        while rest and _DEGREE_RE.match(rest[0].replace(" ", "")):
            name_parts.append(rest.pop(0))
        if rest:
            position = ", ".join(rest)
        value = ", ".join(name_parts)
    return value.strip(" ,;/-"), nip, position, email, phone


# --- things found without a "Label:" ----------------------------------------------------------------------

_HEAD_RE = re.compile(
    r"^(?:(?P<behalf>a\.?\s?n\.?|atas nama|plt\.?|plh\.?|pj\.?)\s+)?"
    r"(?P<jabatan>(?:kepala|sekretaris|camat|inspektur|direktur|lurah)\b[\w .,/&()\-]{0,90})$",
    re.IGNORECASE,
)
_ADDRESSEE_RE = re.compile(r"^(?:yth|kepada)\b", re.IGNORECASE)
_SIGNATURE_NEAR_RE = re.compile(r"\bNIP\b|\b(?:pembina|penata|pengatur|juru)\b", re.IGNORECASE)
_CLOSING_RE = re.compile(r"^(?:hormat kami|demikian|salam|terima ?kasih|wassalam|atas perhatian)", re.IGNORECASE)
_MONTHS = "Januari|Februari|Maret|April|Mei|Juni|Juli|Agustus|September|Oktober|November|Desember"
_PLACE_DATE_RE = re.compile(rf"^(?P<place>[A-Z][A-Za-z .]{{2,30}}),\s*(?P<date>\d{{1,2}}\s+(?:{_MONTHS})\s+\d{{4}})$")
_SMALL_WORDS = frozenset({"dan", "di", "ke", "dari", "pada", "untuk", "yang", "atau"})


def title_case(text: str) -> str:
    """ "KEPALA DINAS KOMUNIKASI DAN INFORMATIKA" → "Kepala Dinas Komunikasi dan Informatika"."""
    if not text.isupper():
        return text
    words = text.lower().split()
    return " ".join(w if (i and w in _SMALL_WORDS) else w[:1].upper() + w[1:] for i, w in enumerate(words))


def find_signatory(records: Sequence[Sequence[str | None]]) -> Hit | None:
    """The signatory's jabatan ("Kepala Dinas Sosial"): a short head-of-unit line just above a NIP line."""
    lines: list[str] = []
    for record in records:
        cells = [" ".join(str(c).split()) for c in record if c and str(c).strip()]
        lines.append(cells[-1] if cells else "")
    best: str | None = None
    best_closing: str | None = None
    after_closing = False
    previous = ""
    for i, line in enumerate(lines):
        text = line.strip(" ,")
        if _CLOSING_RE.match(text):
            after_closing = True
        m = _HEAD_RE.match(text)
        if (
            m
            and ":" not in text
            and not re.search(r"\d", text)
            and len(text.split()) <= 10
            and not _ADDRESSEE_RE.match(previous)
            and not _ADDRESSEE_RE.match(text)
        ):
            jabatan = title_case(m.group("jabatan").strip(" ,."))
            if m.group("behalf") and m.group("behalf").lower().startswith("pl"):
                jabatan = f"{m.group('behalf').strip().capitalize()} {jabatan}"
            window = [x for x in lines[i + 1 : i + 9] if x]
            if any(_SIGNATURE_NEAR_RE.search(x) for x in window):
                best = jabatan
            elif after_closing:
                best_closing = jabatan
        if text:
            previous = text
    found = best or best_closing
    return Hit("unit_head", "penandatangan", found, 1) if found else None


def find_place_date(records: Sequence[Sequence[str | None]]) -> Hit | None:
    """The letter date from the "Trenggalek, 12 November 2026" line beside the Nomor."""
    for record in records:
        for cell in record:
            if not cell:
                continue
            m = _PLACE_DATE_RE.match(" ".join(str(cell).split()))
            if m:
                return Hit("letter_date", m.group("place"), m.group("date"), 2)
    return None


# --- HTML -------------------------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "hr",
        "section",
        "article",
        "header",
        "footer",
        "center",
        "dt",
        "dd",
        "dl",
        "address",
        "table",
        "tbody",
        "thead",
        "tfoot",
        "caption",
        "form",
        "fieldset",
        "legend",
        "o:p",
    }
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "xml", "template", "noscript", "svg"})


class _HtmlRecords(HTMLParser):
    """HTML → records: table rows become cell lists (label-cell | value-cell), everything else lines.

    Layout tables (one cell wrapping the whole mail, as Outlook and Gmail signatures do) are unwrapped into
    their lines so the labels inside them are still one per record.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.records: list[list[str]] = []
        self._line: list[str] = []
        self._skip = 0
        # One frame per open <tr>: its cells, each a list of lines.
        self._rows: list[list[list[str]]] = []
        self._in_cell: list[bool] = []

    def _flush_line(self) -> None:
        text = " ".join("".join(self._line).replace("\u00a0", " ").split())
        self._line = []
        if self._rows and self._in_cell and self._in_cell[-1]:
            if text:
                self._rows[-1][-1].append(text)
            return
        if text:
            self.records.append(_CELL_SPLIT_RE.split(text) if "\t" in text else [text])
        else:
            self.records.append([])

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
            return
        if tag == "table" and self._rows and self._in_cell and self._in_cell[-1]:
            # A table inside a cell: the outer row is layout; emit what the cell holds so far as lines.
            self._flush_line()
            cell = self._rows[-1][-1]
            for line in cell:
                self.records.append([line])
            cell.clear()
            return
        if tag == "tr":
            self._flush_line()
            self._rows.append([])
            self._in_cell.append(False)
        elif tag in ("td", "th"):
            self._flush_line()
            if not self._rows:
                self._rows.append([])
                self._in_cell.append(False)
            self._rows[-1].append([])
            self._in_cell[-1] = True
        elif tag in _BLOCK_TAGS:
            self._flush_line()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self._flush_line()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
            return
        if tag in ("td", "th"):
            self._flush_line()
            if self._in_cell:
                self._in_cell[-1] = False
        elif tag == "tr":
            self._flush_line()
            self._end_row()
        elif tag in _BLOCK_TAGS:
            self._flush_line()

    def _end_row(self) -> None:
        if not self._rows:
            return
        cells = self._rows.pop()
        self._in_cell.pop()
        filled = [c for c in cells if c]
        if len(filled) >= 2 and all(len(c) == 1 for c in filled):
            self.records.append([c[0] for c in filled])
        elif len(filled) == 2 and len(filled[0]) == 1 and match_label(filled[0][0]) is not None:
            self.records.append([filled[0][0], " ".join(filled[1])])  # label | value over several lines
        else:
            for cell in filled:  # a layout row: its cells hold ordinary lines
                for line in cell:
                    self.records.append([line])

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._line.append(data)

    def close(self) -> None:
        super().close()
        self._flush_line()
        while self._rows:
            self._end_row()


def html_records(html: str) -> list[list[str]]:
    """Records from an HTML body (stdlib parser; no network, no scripts, remote content ignored)."""
    parser = _HtmlRecords()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):  # HTMLParser on badly broken markup
        pass
    return parser.records
