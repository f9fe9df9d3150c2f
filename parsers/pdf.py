"""Read one PDF attachment with pdfplumber: page text as records, bordered tables as rows, AcroForm values.

Bounded and total: at most `limits.max_pdf_pages` pages are read, a file whose compressed streams inflate
beyond `limits.max_decompressed_bytes` is refused before it is parsed, and anything a hostile or broken PDF
raises becomes a `Problem` on the field "lampiran", never a traceback.

Image data is never loaded: the form is in the text layer and the AcroForm, and a 20 MB scan read by
pdfminer cost two copies of its image stream (`_ImageBlindFile`).

Why pdfplumber for the AcroForm too: the fields are read from the document pdfplumber already parsed
(`pdf.doc.catalog`, pdfminer.six's documented AcroForm recipe), so a PDF is parsed once; pypdf's `get_fields`
would parse it again, key fields by their /TM mapping name, not inherit a parent's /V, and give nothing at all
past its field limit, where `_form_fields` keeps the first `_MAX_FORM_FIELDS`.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import pdfplumber
from pdfminer.pdftypes import PDFStream, resolve1
from pdfminer.psparser import PSLiteral
from pdfminer.utils import decode_text

from subdomaind.parsers.model import Limits, Problem

# pdfminer logs a warning for every oddity of a damaged file; a NullHandler keeps that off stderr unless the
# daemon configures logging (the same practice as mime.py for mail-parser).
logging.getLogger("pdfminer").addHandler(logging.NullHandler())

# Words further apart than this (in points) sit in different cells: "Nama Sub Domain      dinsos".
_CELL_GAP = 14.0
_LINE_TOLERANCE = 3.0
_MAX_FORM_FIELDS = 500
_MAX_FIELD_DEPTH = 12
# pdfminer reads content streams at roughly 1 MB/s: these keep one attachment to seconds, not minutes.
_MAX_PAGE_CONTENT_BYTES = 2 * 1024 * 1024
_MAX_TOTAL_CONTENT_BYTES = 6 * 1024 * 1024
_SCAN_PAGE_CHARS = 20  # a page with an image and fewer characters than this is a scan
_MAX_TABLE_EDGES = 2000  # rects + lines on a page beyond which table detection is skipped
_INFLATE_STEP = 4 * 1024 * 1024
# Input is fed to zlib in pieces of this size: on an error, and whenever output stops at _INFLATE_STEP, zlib
# keeps a copy of the input it has not consumed (a 20 MB stream that is not Flate at all cost 20 MB more).
_INFLATE_INPUT = 1024 * 1024
# Not the "stream" of "endstream": that match made the check jump from one stream's end to the next one's,
# so every second stream of a file went unchecked (tests/test_pdf_memory.py).
_STREAM_RE = re.compile(rb"(?<!end)stream\r?\n")
# A stream at least this long whose dictionary says /Subtype /Image is not read (see _ImageBlindFile).
_BLIND_MIN = 64 * 1024
_DICT_LOOKBACK = 4096
_IMAGE_DICT_RE = re.compile(rb"/Subtype\s*/Image(?![A-Za-z0-9])")


@dataclass(frozen=True)
class FormField:
    """One filled AcroForm field: its fully qualified name, value, and tooltip (/TU, the visible label)."""

    name: str
    value: str
    tooltip: str | None = None


@dataclass(frozen=True)
class PdfContent:
    records: tuple[tuple[str, ...], ...] = ()
    form_fields: tuple[FormField, ...] = ()  # filled fields only
    text_chars: int = 0  # characters in the text layer of the pages read
    scan_pages: tuple[int, ...] = ()  # 0-based pages with an image and (almost) no text: OCR candidates
    pages: int = 0  # pages in the file
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def readable(self) -> bool:
        return not any(p.field == "lampiran" and "tidak dapat" in p.reason for p in self.problems)


def _name(filename: str | None) -> str:
    return f"'{filename}'" if filename else "PDF"


def inflated_size_exceeds(data: bytes, limit: int) -> bool:
    """True when the Flate streams of `data` together inflate beyond `limit` bytes.

    Inflates stream by stream in bounded steps and drops the output, so a decompression bomb costs at most
    `limit` bytes of work and a few MB of memory.
    """
    total = 0
    pos = 0
    view = memoryview(data)
    while True:
        m = _STREAM_RE.search(data, pos)
        if m is None:
            return False
        start = m.end()
        end = data.find(b"endstream", start)
        if end < 0:
            end = len(data)
        total += _inflated_size(view, start, end, limit - total)
        if total > limit:
            return True
        pos = max(end, start) + 1


def _inflated_size(view: memoryview, start: int, end: int, budget: int) -> int:
    """What view[start:end] inflates to, counted up to just past `budget`; 0 bytes for what is not Flate
    (JPEG, raw), whose stored size is what it costs."""
    inflater = zlib.decompressobj()
    total = 0
    try:
        for at in range(start, end, _INFLATE_INPUT):
            total += len(inflater.decompress(view[at : min(at + _INFLATE_INPUT, end)], _INFLATE_STEP))
            # At the stream's end, bytes after it stay in unconsumed_tail for ever: stop on eof, and on a
            # step that yields nothing (found by bench/backlog.py --memory: intake hung on a scanned page).
            while inflater.unconsumed_tail and not inflater.eof and total <= budget:
                step = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
                if not step:
                    break
                total += len(step)
            if inflater.eof or total > budget:
                break
    except zlib.error:
        pass
    return total


class _ImageBlindFile(io.BytesIO):
    """The PDF for pdfminer, except the data of large image streams, which reads as empty.

    pdfminer reads a whole stream when it parses its object (`bytearray(fp.read(n))`, then `bytes()` of it:
    two copies, 42 MB for a 20 MB scan, measured by bench/backlog.py --memory) though text extraction never
    decodes an image: the page keeps the image's dictionary (size, colour space), which `page.images`
    reports. The stream's dictionary is found just before the read, after its object's "obj".
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)  # shares `data` until written, which pdfminer never does
        self._data = data

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= _BLIND_MIN:
            at = self.tell()
            head = self._data.rfind(b"obj", max(0, at - _DICT_LOOKBACK), at)
            if head >= 0 and _IMAGE_DICT_RE.search(self._data, head, at):
                self.seek(min(at + size, len(self._data)))
                return b""
        return super().read(size)


def read_pdf(data: bytes, limits: Limits, filename: str | None = None) -> PdfContent:
    """Records, filled form fields and the size of the text layer of one PDF; problems instead of errors."""
    if b"%PDF" not in data[:1024]:
        return PdfContent(problems=(Problem("lampiran", f"Lampiran {_name(filename)} bukan berkas PDF yang sah"),))
    if inflated_size_exceeds(data, limits.max_decompressed_bytes):
        return PdfContent(
            problems=(
                Problem(
                    "lampiran",
                    f"Lampiran {_name(filename)} tidak dapat diperiksa: isinya setelah dibuka melebihi "
                    f"{limits.max_decompressed_bytes // (1024 * 1024)} MB",
                ),
            )
        )
    try:
        return _read(data, limits, filename)
    except Exception as exc:  # pdfminer raises many types on hostile input; each one is a refusal
        kind = type(exc).__name__
        why = "dilindungi kata sandi" if "Password" in kind or "Encrypt" in kind else "rusak atau tidak lazim"
        return PdfContent(
            problems=(Problem("lampiran", f"Lampiran {_name(filename)} tidak dapat dibaca ({why}); mohon kirim ulang"),)
        )


def _read(data: bytes, limits: Limits, filename: str | None) -> PdfContent:
    problems: list[Problem] = []
    records: list[tuple[float, int, tuple[str, ...]]] = []
    chars = 0
    scans: list[int] = []
    with pdfplumber.open(_ImageBlindFile(data), pages=list(range(1, limits.max_pdf_pages + 1))) as pdf:
        total = _page_count(pdf)
        if total > limits.max_pdf_pages:
            problems.append(
                Problem(
                    "lampiran",
                    f"Lampiran {_name(filename)} berisi {total} halaman; hanya {limits.max_pdf_pages} "
                    f"halaman pertama yang diperiksa",
                )
            )
        form = _form_fields(pdf)
        offset = 0.0
        content_total = 0
        for page in pdf.pages[: limits.max_pdf_pages]:
            size = _content_bytes(page)
            content_total += size
            if size > _MAX_PAGE_CONTENT_BYTES or content_total > _MAX_TOTAL_CONTENT_BYTES:
                problems.append(
                    Problem(
                        "lampiran",
                        f"Halaman {page.page_number} lampiran {_name(filename)} terlalu rumit untuk dibaca",
                    )
                )
                continue
            chars += len(page.chars)
            if len(page.chars) < _SCAN_PAGE_CHARS and page.images:
                scans.append(page.page_number - 1)
            records.extend(_page_records(page, offset))
            offset += float(page.height) + 1.0
    records.sort(key=lambda r: (r[0], r[1]))
    return PdfContent(
        records=tuple(r[2] for r in records),
        form_fields=tuple(form),
        text_chars=chars,
        scan_pages=tuple(scans),
        pages=total,
        problems=tuple(problems),
    )


def _page_count(pdf: Any) -> int:
    try:
        count = resolve1(resolve1(pdf.doc.catalog.get("Pages")).get("Count"))
        if isinstance(count, int) and count >= 0:
            return count
    except Exception:  # a broken page tree still leaves the pages pdfplumber could open
        return len(pdf.pages)
    return len(pdf.pages)


def _content_bytes(page: Any) -> int:
    size = 0
    for stream in getattr(page.page_obj, "contents", None) or []:
        stream = resolve1(stream)
        if isinstance(stream, PDFStream):
            size += len(stream.get_data() or b"")
    return size


def _page_records(page: Any, offset: float) -> list[tuple[float, int, tuple[str, ...]]]:
    out: list[tuple[float, int, tuple[str, ...]]] = []
    boxes: list[tuple[float, float, float, float]] = []
    # Table detection is the costly part of pdfplumber; only pages that draw lines can hold a bordered table.
    if 4 <= len(page.rects) + len(page.lines) <= _MAX_TABLE_EDGES:
        for table in page.find_tables():
            boxes.append(table.bbox)
            top = float(table.bbox[1])
            for i, row in enumerate(table.extract()):
                cells = tuple(" ".join((c or "").split()) for c in row)
                if any(cells):
                    out.append((offset + top, i, cells))
    words = page.extract_words(x_tolerance=1.5, y_tolerance=_LINE_TOLERANCE, keep_blank_chars=False)
    if boxes:
        words = [w for w in words if not any(_inside(w, b) for b in boxes)]
    for top, cells in _lines(words):
        out.append((offset + top, 0, cells))
    return out


def _inside(word: dict[str, Any], box: tuple[float, float, float, float]) -> bool:
    cx = (float(word["x0"]) + float(word["x1"])) / 2
    cy = (float(word["top"]) + float(word["bottom"])) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _lines(words: list[dict[str, Any]]) -> list[tuple[float, tuple[str, ...]]]:
    """Words grouped into lines by their top, split into cells where the horizontal gap is wide."""
    lines: list[tuple[float, list[dict[str, Any]]]] = []
    for w in sorted(words, key=lambda w: (float(w["top"]), float(w["x0"]))):
        top = float(w["top"])
        if lines and abs(lines[-1][0] - top) <= _LINE_TOLERANCE:
            lines[-1][1].append(w)
        else:
            lines.append((top, [w]))
    out: list[tuple[float, tuple[str, ...]]] = []
    for top, ws in lines:
        ws.sort(key=lambda w: float(w["x0"]))
        cells: list[str] = []
        current: list[str] = []
        last_x1: float | None = None
        for w in ws:
            if last_x1 is not None and float(w["x0"]) - last_x1 > _CELL_GAP:
                cells.append(" ".join(current))
                current = []
            current.append(str(w["text"]))
            last_x1 = float(w["x1"])
        if current:
            cells.append(" ".join(current))
        out.append((top, tuple(cells)))
    return out


def _form_fields(pdf: Any) -> list[FormField]:
    """Filled AcroForm fields; their values live here, not in the page text."""
    acro = resolve1(pdf.doc.catalog.get("AcroForm"))
    if not isinstance(acro, dict):
        return []
    found: list[FormField] = []

    def walk(items: Any, prefix: str, depth: int, inherited: Any) -> None:
        items = resolve1(items)
        if depth > _MAX_FIELD_DEPTH or not isinstance(items, list):
            return
        for item in items:
            if len(found) >= _MAX_FORM_FIELDS:
                return
            node = resolve1(item)
            if not isinstance(node, dict):
                continue
            part = _text(node.get("T"))
            name = f"{prefix}.{part}" if prefix and part else (part or prefix)
            value = node.get("V", inherited)
            kids = resolve1(node.get("Kids"))
            # Kids with their own /T are child fields; kids without one are only the widgets of this field.
            if isinstance(kids, list) and any(isinstance(resolve1(k), dict) and "T" in resolve1(k) for k in kids):
                walk(kids, name, depth + 1, value)
                continue
            text = _value(value)
            if name and text:
                found.append(FormField(name, text, _text(node.get("TU")) or None))

    walk(acro.get("Fields"), "", 0, None)
    return found


def _text(value: Any) -> str:
    value = resolve1(value)
    if isinstance(value, bytes):
        return decode_text(value).strip()
    if isinstance(value, str):
        return value.strip()
    return ""


def _value(value: Any) -> str:
    value = resolve1(value)
    if isinstance(value, PSLiteral):
        name = value.name.decode("latin-1") if isinstance(value.name, bytes) else str(value.name)
        return "" if name in ("Off", "") else name
    if isinstance(value, list):
        return ", ".join(v for v in (_value(x) for x in value[:20]) if v)
    return _text(value)


#: At most this much of one PDF's text layer is kept for looking into (a letter's pages are a few KB each).
TEXT_LAYER_MAX = 200_000


def text_layer(data: bytes, limits: Limits) -> str:
    """The text layer of the first `max_pdf_pages` pages, as one string ("" when there is none or the file
    cannot be read): what a person reading the PDF would see, for looking into, not for fields."""
    if inflated_size_exceeds(data, limits.max_decompressed_bytes):
        return ""
    import pypdfium2 as pdfium  # comes with pdfplumber; pdfium reads a text layer in a few ms a page

    try:
        doc = pdfium.PdfDocument(data)
    except Exception:  # noqa: BLE001 - any unreadable PDF simply has no text to look into
        return ""
    try:
        texts: list[str] = []
        for i in range(min(len(doc), limits.max_pdf_pages)):
            page = doc[i]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
            if sum(map(len, texts)) > TEXT_LAYER_MAX:
                break
        return "\n".join(texts)[:TEXT_LAYER_MAX]
    except Exception:  # noqa: BLE001
        return "\n".join(texts)[:TEXT_LAYER_MAX]
    finally:
        doc.close()
