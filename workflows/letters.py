"""Compose the office's official letters (surat dinas, Tata Naskah Dinas) and render them as text, HTML and PDF.

One source of wording: `build_letter(kind, ctx)` renders `templates/letters/<kind>.j2`, which only *sets
variables*; the body output of the template is ignored. The variables a letter template sets:

==================  ======================================================================================
``subject``         the e-mail subject (required)
``hal``             the letter's Hal (required)
``sifat``           default "Biasa"
``lampiran``        default "-"
``yth``             the addressee's jabatan, after "Yth." (default: the unit head, else "Kepala <unit>")
``di``              the addressee's place, after "di" (default: the kop city, else "Tempat")
``pembuka``         paragraphs before the details table (required)
``rincian``         the details table: a list of ``[label, value]`` or ``[label, value, "kode"]`` rows
                    ("kode" prints the value in a fixed-width font: user names, host names)
``isi``             paragraphs after the details table
``penutup``         the closing paragraph (required)
==================  ======================================================================================

Paragraph blocks (``pembuka``, ``isi``, ``penutup``) are split on blank lines; the lines of one paragraph are
joined with single spaces, so a template may wrap freely. A paragraph starting with ``1.`` … ``99.`` or
``a.`` … ``z.`` is a list item, printed with a hanging indent. Every value taken from `ctx` is cleaned before
the template sees it (control characters removed, whitespace collapsed to single spaces, length bounded), so
user text can neither start a paragraph nor be evaluated: ``{{ 7*7 }}`` in a unit name stays literally that.
The HTML and PDF renderers escape every string again, whatever built the `Letter`.

The signature block comes from `LetterConfig` (``signer_*``), overridden per kind of letter by
``[agency.letter.signers.<kind>]`` (Tata Naskah Dinas "a.n." and "u.b.": who signs on the head's behalf).
An acting or delegated signer is given with ``ctx["signer"]``, a mapping with any of ``prefix`` ("a.n.",
"Plh." or "Plt."), ``own_title`` (with "a.n.": the signer's own jabatan, e.g. "Sekretaris"), ``ub_title``,
``name``, ``rank`` and ``nip``.

`Letter.render_pdf(signer)` leaves room under the jabatan for the signature and, given a
`workflows.signing.LetterSigner`, signs the PDF (PAdES) with the visible stamp in that room; without one
the room stays for a wet signature.
"""

from __future__ import annotations

import html
import io
import re
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import jinja2.sandbox
import reportlab
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_JUSTIFY, TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    HRFlowable,
    Image,
    KeepTogether,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from subdomaind.workflows.mailer import format_tanggal
from subdomaind.workflows.settings import LetterConfig
from subdomaind.workflows.signing import LetterSigner, SignatureBox, Stamp, content_hash, qr_payload

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
KINDS: tuple[str, ...] = ("final", "rejection", "incomplete")
SIGNER_PREFIXES: tuple[str, ...] = ("a.n.", "Plh.", "Plt.")
_NUMBER_WORDS = ("nol", "satu", "dua", "tiga", "empat", "lima", "enam", "tujuh", "delapan", "sembilan", "sepuluh")
ELECTRONIC_NOTE = "(ditandatangani secara elektronik pada berkas PDF terlampir)"
TEXT_WIDTH = 72  # characters per line of the plain-text letter

_LIST_ITEM_RE = re.compile(r"^(\d{1,2}|[a-z])\.\s+")
_ACTING_RE = re.compile(r"^\s*(?:a\.?\s?n\.?|plh\.?|plt\.?)\s+", re.IGNORECASE)
_MAX_VALUE = 300
_MAX_NOTE = 1500
_FONT_SIZE = 11.0


# --- the letter ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """The kaki surat: jabatan (with a.n./Plh./Plt. when given), name, pangkat and NIP."""

    title: str  # the jabatan the letter is signed as ("Kepala Dinas Komunikasi dan Informatika")
    agency: str = ""  # the rest of the office's name, printed under the title ("Kabupaten Trenggalek")
    name: str = ""
    rank: str = ""
    nip: str = ""
    prefix: str = ""  # "", "a.n.", "Plh." or "Plt."
    own_title: str = ""  # with "a.n.": the signer's own jabatan, printed under the head's
    ub_title: str = ""  # "u.b.": the jabatan signing for `own_title`, printed under "u.b."

    def jabatan_lines(self) -> tuple[str, ...]:
        """The jabatan lines as printed, the last one ending with a comma."""
        first = f"{self.prefix} {self.title}".strip() if self.prefix else self.title
        lines = [line for line in (first, self.agency) if line]
        if self.prefix == "a.n." and self.own_title:
            lines.append(self.own_title)
            if self.ub_title:
                lines += ["u.b.", self.ub_title]
        if lines:
            lines[-1] = lines[-1].rstrip(",") + ","
        return tuple(lines)

    def nip_line(self) -> str:
        return f"NIP. {format_nip(self.nip)}" if self.nip else ""


@dataclass(frozen=True)
class Letter:
    """One surat dinas in structured parts; `to_text`, `to_html` and `to_pdf` lay the same parts out."""

    kind: str
    subject: str  # the e-mail subject
    kop: tuple[str, ...]
    address_line: str
    place_date: str  # "Trenggalek, 21 November 2026"
    nomor: str
    sifat: str
    lampiran: str
    hal: str
    addressee: str  # the jabatan after "Yth."
    addressee_place: str  # the place after "di"
    opening: tuple[str, ...]  # paragraphs before the details table
    details: tuple[tuple[str, str], ...]  # (label, value) rows
    body: tuple[str, ...]  # paragraphs after the details table
    closing: str
    signature: Signature
    tembusan: tuple[str, ...] = ()
    code_labels: frozenset[str] = field(default_factory=frozenset)  # rows whose value prints fixed-width
    logo: Path | None = None  # the coat of arms at the left of the kop (PDF only)
    draft: bool = False  # a konsep for approval: marked KONSEP
    electronic: bool = False  # its PDF is signed electronically: the text and HTML say so where a pen would sign

    @property
    def paragraphs(self) -> tuple[str, ...]:
        """Every paragraph of the batang tubuh in order (the table sits between opening and body)."""
        return (*self.opening, *self.body, self.closing)

    # -- plain text --

    def to_text(self) -> str:
        w = TEXT_WIDTH
        out: list[str] = ["KONSEP".rjust(w), ""] if self.draft else []
        out += [line.center(w).rstrip() for line in self.kop]
        if self.address_line:
            out.extend(line.center(w).rstrip() for line in textwrap.wrap(self.address_line, w))
        out += ["=" * w, ""]
        rows = [("Nomor", self.nomor or "-"), ("Sifat", self.sifat), ("Lampiran", self.lampiran), ("Hal", self.hal)]
        first = f"{'Nomor':<8} : {self.nomor or '-'}"
        if self.place_date and len(first) + 2 + len(self.place_date) <= w:
            out.append(first + self.place_date.rjust(w - len(first)))
        else:
            if self.place_date:
                out += [self.place_date.rjust(w), ""]
            out.append(first)
        for label, value in rows[1:]:
            out.extend(_hanging(f"{label:<8} : ", value, w))
        out += ["", *_hanging("Yth. ", self.addressee, w), "di", f"    {self.addressee_place}", ""]
        for para in self.opening:
            out += [*_wrap_paragraph(para, w), ""]
        if self.details:
            lw = min(max(len(label) for label, _ in self.details), 30)
            for label, value in self.details:
                out.extend(_hanging(f"    {label:<{lw}} : ", value, w))
            out.append("")
        for para in self.body:
            out += [*_wrap_paragraph(para, w), ""]
        out += [*_wrap_paragraph(self.closing, w), "", ""]
        indent = " " * 30
        sig = self.signature
        for line in sig.jabatan_lines():
            out.extend(textwrap.wrap(line, w, initial_indent=indent, subsequent_indent=indent))
        if self.electronic:
            out += ["", *textwrap.wrap(ELECTRONIC_NOTE, w, initial_indent=indent, subsequent_indent=indent), ""]
        else:
            out += ["", "", ""]
        out.extend(indent + line for line in (sig.name, sig.rank, sig.nip_line()) if line)
        if self.tembusan:
            out += ["", "Tembusan:"]
            for i, item in enumerate(self.tembusan, 1):
                lead = "Yth. " if i == 1 else "     "
                number = f"{i}. " if len(self.tembusan) > 1 else ""
                out.extend(_hanging(lead + number, item, w))
        return "\n".join(out).rstrip() + "\n"

    # -- HTML --

    def to_html(self) -> str:
        """A whole HTML document for an e-mail body: tables and inline styles only, every value escaped."""
        tmpl = _html_env().get_template("letters/_letter.html.j2")
        paragraphs = [
            [_split_item(p) for p in part] for part in (self.opening, self.body)
        ]
        return tmpl.render(
            letter=self,
            opening=paragraphs[0],
            body=paragraphs[1],
            jabatan=self.signature.jabatan_lines(),
            electronic_note=ELECTRONIC_NOTE if self.electronic else "",
            nip_line=self.signature.nip_line(),
        )

    # -- PDF --

    def to_pdf(self, signer: LetterSigner | None = None, *, doc_id: str = "") -> bytes:
        """The letter as an A4 PDF, signed when a signer is given."""
        return self.render_pdf(signer, doc_id=doc_id).data

    def render_pdf(self, signer: LetterSigner | None = None, *, doc_id: str = "") -> RenderedPdf:
        """The letter as an A4 PDF: kop with a double rule, header, body, signature block, tembusan.

        With `signer`, the PDF is signed (PAdES) and the stamp fills the room under the jabatan; its QR code
        carries the signer's verification URL filled with `doc_id`, the hash of the unsigned PDF and the
        number. `content_sha256` is that hash (what a verification page looks the letter up by).
        """
        fonts = pdf_fonts()
        indent = 2.8 * cm  # the body lines up with the value column of Nomor/Hal
        st = _styles(fonts, indent)
        buf = io.BytesIO()

        def later_page(canvas: Canvas, doc_: Any) -> None:
            canvas.saveState()
            canvas.setFont(fonts[0], 10)
            canvas.drawCentredString(A4[0] / 2, A4[1] - 1.0 * cm, f"- {doc_.page} -")
            canvas.restoreState()

        def first_page(canvas: Canvas, doc_: Any) -> None:
            if self.draft:  # in the top margin: a konsep has the same layout as the letter it becomes
                canvas.saveState()
                canvas.setFont(fonts[1], 12)
                canvas.drawRightString(A4[0] - 2.0 * cm, A4[1] - 0.8 * cm, "KONSEP")
                canvas.restoreState()

        doc = a4_document(
            buf,
            title=self.hal,
            author=" ".join(self.kop[-1:]) or self.signature.title,
            subject=self.subject,
            later_pages=later_page,
            first_page=first_page,
        )
        width = doc.width
        story: list[Flowable] = kop_flowables(self.kop, self.address_line, width, logo=self.logo)
        story.append(Spacer(1, 0.3 * cm))

        def cell(text: str, style: ParagraphStyle) -> Paragraph:
            return Paragraph(_pdf_escape(text), style)

        date_width = min(max(stringWidth(_pdf_clean(self.place_date), fonts[0], _FONT_SIZE) + 8, 4 * cm), 8 * cm)
        value_width = width - indent - date_width
        head_rows = [
            [cell("Nomor", st["body"]), cell(":", st["body"]), cell(self.nomor or "-", st["left"]),
             cell(self.place_date, st["right"])],
            [cell("Sifat", st["body"]), cell(":", st["body"]), cell(self.sifat, st["left"]), ""],
            [cell("Lampiran", st["body"]), cell(":", st["body"]), cell(self.lampiran, st["left"]), ""],
            [cell("Hal", st["body"]), cell(":", st["body"]), cell(self.hal, st["left"]), ""],
        ]
        head = Table(head_rows, colWidths=[indent - 0.4 * cm, 0.4 * cm, value_width, date_width])
        head_style = _plain_table()
        for row in (1, 2, 3):  # below the date line, the values may run the whole width
            head_style.add("SPAN", (2, row), (3, row))
        head.setStyle(head_style)
        story += [head, Spacer(1, 0.35 * cm)]

        to_rows = [
            [cell("Yth.", st["left"]), cell(self.addressee, st["left"])],
            [cell("di", st["left"]), ""],
            ["", cell(self.addressee_place, st["left"])],
        ]
        to = Table(to_rows, colWidths=[1.0 * cm, width - 1.0 * cm])
        to.setStyle(_plain_table())
        story += [to, Spacer(1, 0.35 * cm)]

        body_width = width - indent
        story += _pdf_paragraphs(self.opening, st)
        if self.details:
            # An empty first column carries the indent (a split table keeps its columns, not its alignment);
            # a long row splits across pages.
            rows: list[list[Any]] = []
            for label, value in self.details:
                style = st["code"] if label in self.code_labels else st["left"]
                rows.append(["", cell(label, st["left"]), cell(value, style)])
            label_width = min(max(stringWidth(_pdf_clean(label), fonts[0], _FONT_SIZE) for label, _ in self.details)
                              + 12, body_width * 0.5)
            table = Table(rows, colWidths=[indent, label_width, body_width - label_width], splitInRow=1)
            table.setStyle(
                TableStyle(
                    [
                        ("GRID", (1, 0), (-1, -1), 0.5, colors.HexColor("#808080")),
                        ("BACKGROUND", (1, 0), (1, -1), colors.HexColor("#f0f0f0")),
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        ("TOPPADDING", (0, 0), (-1, -1), 2),
                        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
                        ("LEFTPADDING", (0, 0), (-1, -1), 5),
                        ("LEFTPADDING", (0, 0), (0, -1), 0),
                        ("RIGHTPADDING", (0, 0), (0, -1), 0),
                    ]
                )
            )
            story += [table, Spacer(1, 0.3 * cm)]
        story += _pdf_paragraphs(self.body, st)
        closing = Paragraph(_pdf_escape(self.closing), st["para"])

        sig = self.signature
        sig_width = 8.4 * cm
        sig_cells: list[Flowable] = [Paragraph(_pdf_escape(line), st["center"]) for line in sig.jabatan_lines()]
        spots: list[SignatureBox] = []
        sig_cells.append(_SignatureSpot(sig_width, 1.9 * cm, spots))
        if sig.name:
            sig_cells.append(Paragraph(f"<u>{_pdf_escape(sig.name)}</u>", st["center_bold"]))
        sig_cells += [Paragraph(_pdf_escape(x), st["center"]) for x in (sig.rank, sig.nip_line()) if x]
        sig_table = Table([["", sig_cells]], colWidths=[width - sig_width, sig_width])
        sig_table.setStyle(_plain_table())
        story.append(KeepTogether([closing, Spacer(1, 0.2 * cm), sig_table]))

        if self.tembusan:
            numbered = len(self.tembusan) > 1
            rows = [[cell("Tembusan:", st["left"]), "", ""]]
            for i, item in enumerate(self.tembusan, 1):
                rows.append([cell("Yth." if i == 1 else "", st["left"]), cell(f"{i}." if numbered else "", st["left"]),
                             cell(item, st["left"])])
            number_width = 0.7 * cm if numbered else 0.0
            tembusan = Table(rows, colWidths=[1.0 * cm, number_width, width - 1.0 * cm - number_width],
                             hAlign="LEFT")
            tembusan_style = _plain_table()
            tembusan_style.add("SPAN", (0, 0), (2, 0))
            tembusan.setStyle(tembusan_style)
            story.append(KeepTogether([Spacer(1, 0.4 * cm), tembusan]))

        doc.build(story)
        unsigned = buf.getvalue()
        digest = content_hash(unsigned)
        if signer is None:
            return RenderedPdf(unsigned, digest, signed=False)
        stamp = Stamp(lines=self.stamp_lines(signer.holder),
                      qr=qr_payload(signer.verify_url, doc_id=doc_id or digest[:16], sha256=digest, number=self.nomor))
        return RenderedPdf(signer.sign(unsigned, spots[-1] if spots else None, stamp), digest, signed=True)

    def stamp_lines(self, holder: str) -> tuple[str, ...]:
        """The words of the visible signature, next to its QR code. The name, pangkat and NIP of the official
        are printed under it as in every surat dinas; the stamp names the certificate's holder."""
        if self.draft:
            lines = ["KONSEP untuk persetujuan: belum", "ditandatangani pejabat.", "Segel elektronik:", holder]
        else:
            lines = ["Ditandatangani secara elektronik", "dengan sertifikat:", holder]
        lines += [self.place_date, "Pindai kode QR untuk verifikasi."]
        return tuple(_ascii(line) for line in lines if line)


@dataclass(frozen=True)
class RenderedPdf:
    data: bytes
    content_sha256: str  # SHA-256 of the PDF before signing
    signed: bool


class _SignatureSpot(Flowable):
    """Empty room for the signature; records where it landed (page, rectangle) for the signature stamp."""

    def __init__(self, width: float, height: float, spots: list[SignatureBox]) -> None:
        super().__init__()
        self.width, self.height, self._spots = width, height, spots

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        x, y = self.canv.absolutePosition(0, 0)
        self._spots.append(SignatureBox(self.canv.getPageNumber() - 1, x + 4, y, x + self.width - 4, y + self.height))


# --- building a letter from the engine's context ----------------------------------------------------------


def build_letter(kind: str, ctx: Mapping[str, Any], *, agency_id: str | None = None) -> Letter:
    """The letter of `kind` ("final", "rejection", "incomplete") for the engine's `ctx`.

    `ctx` holds what `workflows.engine.letter_context` builds (for rejection and incomplete letters:
    `summary` plus `note`/`by`/`letter`/...); every key is optional. A password in `ctx` is never
    printed: the PIC receives it in a mail of its own, and a letter only says so.
    With `agency_id`, `templates/<agency_id>/letters/<kind>.j2` is used when it exists.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown letter kind {kind!r}; expected one of {', '.join(KINDS)}")
    data = template_context(ctx)
    module = _letter_env(agency_id).get_template(f"letters/{kind}.j2").make_module(data)
    exported = {k: getattr(module, k) for k in dir(module) if not k.startswith("_")}
    for required in ("subject", "hal", "pembuka", "penutup"):
        if not str(exported.get(required) or "").strip():
            raise ValueError(f"letters/{kind}.j2 does not set {required!r}")

    cfg: LetterConfig = ctx.get("letter") or LetterConfig()
    agency_name = clean(ctx.get("agency_name"))
    details: list[tuple[str, str]] = []
    code_labels: set[str] = set()
    for row in exported.get("rincian") or ():
        if not isinstance(row, list | tuple) or len(row) < 2:
            raise ValueError(f"letters/{kind}.j2: a rincian row must be [label, value], got {row!r}")
        label, value = _one_line(row[0]), _one_line(row[1])
        details.append((label, value or "-"))
        if len(row) > 2 and row[2] == "kode":
            code_labels.add(label)

    kop = tuple(clean(line) for line in cfg.kop if clean(line)) or ((agency_name.upper(),) if agency_name else ())
    place = clean(cfg.city)
    when = data["letter_date"] or _today()
    return Letter(
        kind=kind,
        subject=_one_line(exported["subject"]),
        kop=kop,
        address_line=clean(cfg.address_line),
        place_date=f"{place}, {when}" if place else when,
        nomor=data["letter_number"],
        sifat=_one_line(exported.get("sifat") or "Biasa"),
        lampiran=_one_line(exported.get("lampiran") or "-"),
        hal=_one_line(exported["hal"]),
        addressee=_one_line(exported.get("yth") or data["default_yth"]),
        addressee_place=_one_line(exported.get("di") or place or "Tempat"),
        opening=split_paragraphs(str(exported["pembuka"])),
        details=tuple(details),
        body=split_paragraphs(str(exported.get("isi") or "")),
        closing=" ".join(split_paragraphs(str(exported["penutup"]))),
        signature=_signature(cfg, ctx.get("signer"), agency_name, kind),
        tembusan=tuple(clean(t) for t in cfg.tembusan if clean(t)),
        code_labels=frozenset(code_labels),
        logo=cfg.logo if cfg.logo is not None and cfg.logo.is_file() else None,
        draft=bool(ctx.get("draft")),
        electronic=bool(ctx.get("electronic")),
    )


def template_context(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """What a letter template sees: the engine's context with every user value cleaned and defaults set."""
    fields = ctx.get("fields") or {}
    if not isinstance(fields, Mapping):
        fields = {}
    check = fields.get("check") or {}
    missing = check.get("missing", fields.get("missing")) or ()
    problems = check.get("problems", fields.get("problems")) or ()
    unit = clean(ctx.get("unit") or fields.get("unit"))
    unit_head = clean(fields.get("unit_head"))
    cleaned_fields = {str(k): clean(v) for k, v in fields.items() if isinstance(v, str | int | float)}
    return {
        "agency_name": clean(ctx.get("agency_name")),
        "zone": clean(ctx.get("zone")),
        "ticket": clean(ctx.get("ticket")),
        "fqdn": clean(ctx.get("fqdn")),
        "subdomain": clean(ctx.get("subdomain") or fields.get("subdomain")),
        "unit": unit,
        "unit_head": unit_head,
        "default_yth": _acting_stripped(unit_head) or (f"Kepala {unit}" if unit else "Pimpinan Unit Kerja Pemohon"),
        "service": clean(fields.get("service")),
        "fields": cleaned_fields,
        "ref": {
            "number": clean(fields.get("letter_number")),
            "date": clean(fields.get("letter_date")),
            "subject": clean(fields.get("letter_subject")),
        },
        "letter_number": clean(ctx.get("letter_number")),
        "letter_date": clean(ctx.get("letter_date")),
        "received": clean(ctx.get("received")),
        "deadline": clean(ctx.get("deadline")),  # the step's Mutu Baku in working time, as officials read it
        "lampiran_surat": clean(ctx.get("lampiran")),  # "1 (satu) berkas" when the mail attaches something
        "ip": clean(ctx.get("ip")),
        "rdtype": clean(ctx.get("rdtype")),
        "name_servers": [clean(ns).rstrip(".") for ns in ctx.get("name_servers") or () if clean(ns)],
        "username": clean(ctx.get("username")),
        "pic_email": clean(fields.get("pic_email")),
        "note": as_sentence(clean(ctx.get("note"), _MAX_NOTE)),
        "by": clean(ctx.get("by")),
        "missing": [clean(m) for m in missing if clean(m)],
        # The tickets of every request opened from the same letter (several names in one letter).
        "letter_tickets": [clean(t) for t in fields.get("letter_tickets") or () if clean(t)],
        "problems": [
            {"field": clean(_get(p, "field")), "reason": as_sentence(clean(_get(p, "reason"), _MAX_NOTE))}
            for p in problems
        ],
    }


def clean(value: object, limit: int = _MAX_VALUE) -> str:
    """User text as one safe line: no control or format characters, single spaces, at most `limit` chars."""
    if value is None:
        return ""
    out: list[str] = []
    for ch in str(value):
        cat = unicodedata.category(ch)
        if cat == "Cc" or cat == "Zl" or cat == "Zp":
            out.append(" ")
        elif cat in ("Cf", "Cs", "Co", "Cn"):
            continue  # bidi overrides, zero-width characters, surrogates, unassigned
        else:
            out.append(ch)
    text = " ".join("".join(out).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def split_paragraphs(block: str) -> tuple[str, ...]:
    """Paragraphs of a template block: split on blank lines, each one's lines joined by single spaces."""
    return tuple(p for p in (" ".join(part.split()) for part in re.split(r"\n\s*\n", block)) if p)


def as_sentence(text: str) -> str:
    """An official's note as a sentence, the words kept: first letter capitalised, a full stop when the note
    has no closing punctuation ("nama belum sesuai" -> "Nama belum sesuai.")."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    # A full stop inside closing quotes or brackets ends the sentence too: 'kata "TOLAK."'.
    return text if text.rstrip("\"')]”’")[-1:] in (".", "!", "?", "…") else text + "."


def lampiran_text(count: int) -> str:
    """The Lampiran line for `count` attached files: "-", "1 (satu) berkas", "2 (dua) berkas", ..."""
    if count <= 0:
        return "-"
    word = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else ""
    return f"{count} ({word}) berkas" if word else f"{count} berkas"


def format_nip(nip: str) -> str:
    """An 18-digit NIP grouped as written in letters ("19680411 199303 1 009"); anything else as given."""
    digits = re.sub(r"\s+", "", nip)
    if re.fullmatch(r"\d{18}", digits):
        return f"{digits[:8]} {digits[8:14]} {digits[14]} {digits[15:]}"
    return nip


# --- shared with workflows.forms ------------------------------------------------------------------------


_FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
    Path("/usr/local/share/fonts"),
)


@lru_cache(maxsize=1)
def pdf_fonts() -> tuple[str, str, str]:
    """(regular, bold, fixed-width) font names registered with reportlab; DejaVu when installed, else Vera."""
    candidates = [
        # Condensed first: its widths are close to Arial's, the usual face of naskah dinas.
        ("DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSansMono.ttf", [*_FONT_DIRS]),
        ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", [*_FONT_DIRS]),
        ("Vera.ttf", "VeraBd.ttf", "VeraMono.ttf", [Path(reportlab.__file__).parent / "fonts"]),
    ]
    for regular, bold, mono, dirs in candidates:
        for d in dirs:
            if (d / regular).is_file() and (d / bold).is_file():
                base = regular.removesuffix(".ttf")
                names = (f"SD-{base}", f"SD-{base}-Bold", f"SD-{base}-Mono")
                pdfmetrics.registerFont(TTFont(names[0], str(d / regular)))
                pdfmetrics.registerFont(TTFont(names[1], str(d / bold)))
                if (d / mono).is_file():
                    pdfmetrics.registerFont(TTFont(names[2], str(d / mono)))
                else:
                    names = (names[0], names[1], "Courier")
                pdfmetrics.registerFontFamily(names[0], normal=names[0], bold=names[1], italic=names[0],
                                              boldItalic=names[1])
                return names
    return ("Helvetica", "Helvetica-Bold", "Courier")  # pragma: no cover - reportlab always ships Vera


PageHook = Callable[[Canvas, Any], None]


def a4_document(
    buf: io.BytesIO,
    *,
    title: str,
    author: str,
    subject: str,
    keywords: str = "",
    later_pages: PageHook | None = None,
    first_page: PageHook | None = None,
    margins: tuple[float, float, float, float] = (2.5 * cm, 2.0 * cm, 1.2 * cm, 1.5 * cm),
) -> BaseDocTemplate:
    """An A4 document whose frame has no padding, so `doc.width` is exactly the usable width.

    `margins` are (left, right, top, bottom); `later_pages` draws on pages 2 and up (a page number),
    `first_page` on page 1.
    """
    left, right, top, bottom = margins
    doc = BaseDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=left,
        rightMargin=right,
        topMargin=top,
        bottomMargin=bottom,
        title=_pdf_clean(title),
        author=_pdf_clean(author),
        subject=_pdf_clean(subject),
        keywords=_pdf_clean(keywords),
        creator="subdomaind",
    )

    def frame() -> Frame:
        return Frame(left, bottom, doc.width, doc.height, leftPadding=0, rightPadding=0, topPadding=0,
                     bottomPadding=0)

    def nothing(_canvas: Canvas, _doc: Any) -> None:
        return None

    doc.addPageTemplates(
        [
            PageTemplate(id="first", frames=[frame()], onPage=first_page or nothing, autoNextPageTemplate="later"),
            PageTemplate(id="later", frames=[frame()], onPage=later_pages or nothing),
        ]
    )
    return doc


def kop_flowables(kop: Sequence[str], address_line: str, width: float, *,
                  logo: Path | None = None) -> list[Flowable]:
    """The kop surat: the coat of arms at the left (when given), lines centred and bold (the last one, the
    office, largest), address, double rule."""
    regular, bold, _ = pdf_fonts()
    text: list[Flowable] = []
    lines = [line for line in kop if line]
    for i, line in enumerate(lines):
        size = 16 if i == len(lines) - 1 and len(lines) > 1 else 14
        style = ParagraphStyle(f"kop{i}", fontName=bold, fontSize=size, leading=size + 3, alignment=TA_CENTER)
        text.append(Paragraph(_pdf_escape(line.upper()), style))
    if address_line:
        style = ParagraphStyle("kop-address", fontName=regular, fontSize=9.5, leading=12, alignment=TA_CENTER)
        text.append(Paragraph(_pdf_escape(address_line), style))
    out: list[Flowable] = text
    emblem = _logo_image(logo) if logo is not None else None
    if emblem is not None:
        # The emblem at the left, the kop text centred in the room to its right (as printed kop surat do).
        side = 2.5 * cm
        table = Table([[emblem, text]], colWidths=[side, width - side])
        table.setStyle(TableStyle([*_plain_table().getCommands(), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                                   ("ALIGN", (0, 0), (0, 0), "LEFT")]))
        out = [table]
    out.append(HRFlowable(width=width, thickness=2.2, color=colors.black, spaceBefore=4, spaceAfter=1.2))
    out.append(HRFlowable(width=width, thickness=0.7, color=colors.black, spaceBefore=0, spaceAfter=2))
    return out


# --- helpers ----------------------------------------------------------------------------------------------


def _get(item: object, name: str) -> object:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def _one_line(value: object) -> str:
    return " ".join(str(value or "").split())


def _acting_stripped(jabatan: str) -> str:
    """A letter is addressed to the office, not the acting person: "Plt. Kepala Dinas X" → "Kepala Dinas X"."""
    return _ACTING_RE.sub("", jabatan).strip()


def _today() -> str:
    return format_tanggal(datetime.now(ZoneInfo("Asia/Jakarta")))


def _signature(cfg: LetterConfig, override: object, agency_name: str, kind: str = "") -> Signature:
    """The kaki surat: the agency's signer, replaced by the kind's configured signer, then by `override`."""
    over: Mapping[str, Any] = override if isinstance(override, Mapping) else {}
    per_kind = cfg.signers.get(kind)  # type: ignore[call-overload]
    base: dict[str, str] = {"prefix": "", "own_title": "", "ub_title": "", "name": cfg.signer_name,
                            "rank": cfg.signer_rank, "nip": cfg.signer_nip}
    if per_kind is not None:
        base.update({k: v for k, v in per_kind.model_dump().items() if v})
        if per_kind.prefix == "a.n." or per_kind.name:
            # Another official signs: the head's name, rank and NIP must not stay under their jabatan.
            base.update(name=per_kind.name, rank=per_kind.rank, nip=per_kind.nip)
    prefix = clean(over.get("prefix", base["prefix"]))
    normal = {p.lower().rstrip("."): p for p in SIGNER_PREFIXES}
    prefix = normal.get(prefix.lower().replace(" ", "").rstrip("."), "") if prefix else ""
    title = clean(cfg.signer_title)
    return Signature(
        title=title,
        agency=_agency_remainder(title, agency_name),
        name=clean(over.get("name") or base["name"]),
        rank=clean(over.get("rank") or base["rank"]),
        nip=clean(over.get("nip") or base["nip"]),
        prefix=prefix,
        own_title=clean(over.get("own_title", base["own_title"])),
        ub_title=clean(over.get("ub_title", base["ub_title"])),
    )


def _logo_image(path: Path) -> Image | None:
    """The coat of arms at most 2 cm high, its proportions kept; None when the file is not an image (a
    missing or broken logo leaves the kop without one; check-config reports a missing file)."""
    size = _image_size(path)
    if size is None:
        return None
    scale = 2.0 * cm / max(size)
    return Image(str(path), width=size[0] * scale, height=size[1] * scale)


@lru_cache(maxsize=8)
def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        width, height = ImageReader(str(path)).getSize()
    except Exception:  # noqa: BLE001 - reportlab raises many kinds for a bad image
        return None
    return (int(width), int(height)) if width and height else None


def _ascii(text: str) -> str:
    """Text for the signature stamp's built-in Courier (Latin-1 only): accents dropped, the rest kept."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return folded or text.encode("latin-1", "replace").decode("latin-1")


def _agency_remainder(title: str, agency: str) -> str:
    """What of the agency's name the title does not already say.

    "Kepala Dinas Komunikasi dan Informatika" + "Dinas Komunikasi dan Informatika Kabupaten Trenggalek"
    → "Kabupaten Trenggalek"; an agency name the title already ends with → "".
    """
    t, a = title.split(), agency.split()
    for n in range(min(len(t), len(a)), 1, -1):
        if [w.lower() for w in t[-n:]] == [w.lower() for w in a[:n]]:
            return " ".join(a[n:])
    return agency


def _hanging(lead: str, text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=lead, subsequent_indent=" " * len(lead)) or [lead.rstrip()]


def _split_item(paragraph: str) -> tuple[str, str]:
    """("1.", rest) for a list item, ("", paragraph) otherwise."""
    m = _LIST_ITEM_RE.match(paragraph)
    return (m.group(0).strip(), paragraph[m.end():]) if m else ("", paragraph)


def _wrap_paragraph(paragraph: str, width: int) -> list[str]:
    marker, text = _split_item(paragraph)
    if marker:
        return _hanging(f"  {marker:<4}", text, width)
    return textwrap.wrap(text, width) or [""]


# --- PDF helpers ------------------------------------------------------------------------------------------


def _pdf_clean(text: str) -> str:
    return clean(text, 100_000)


def _pdf_escape(text: str) -> str:
    """Text for a reportlab Paragraph: cleaned, and its mini-markup characters escaped."""
    return html.escape(_pdf_clean(text), quote=False)


def _styles(fonts: tuple[str, str, str], indent: float) -> dict[str, ParagraphStyle]:
    """Paragraph styles; body paragraphs and list items start `indent` from the left margin."""
    regular, bold, mono = fonts
    base = ParagraphStyle("base", fontName=regular, fontSize=_FONT_SIZE, leading=_FONT_SIZE * 1.22)
    return {
        "body": base,
        "left": ParagraphStyle("left", parent=base, alignment=TA_LEFT),
        "right": ParagraphStyle("right", parent=base, alignment=TA_RIGHT),
        "center": ParagraphStyle("center", parent=base, alignment=TA_CENTER),
        "center_bold": ParagraphStyle("center_bold", parent=base, alignment=TA_CENTER, fontName=bold),
        "code": ParagraphStyle("code", parent=base, fontName=mono, fontSize=10.5),
        "para": ParagraphStyle("para", parent=base, alignment=TA_JUSTIFY, leftIndent=indent,
                               firstLineIndent=1.0 * cm, spaceAfter=3),
        "item": ParagraphStyle("item", parent=base, alignment=TA_JUSTIFY, leftIndent=indent + 0.8 * cm,
                               bulletIndent=indent, spaceAfter=1),
    }


def _pdf_paragraphs(paragraphs: Iterable[str], st: dict[str, ParagraphStyle]) -> list[Paragraph]:
    out: list[Paragraph] = []
    for para in paragraphs:
        marker, text = _split_item(para)
        if marker:
            out.append(Paragraph(_pdf_escape(text), st["item"], bulletText=marker))
        else:
            out.append(Paragraph(_pdf_escape(text), st["para"]))
    return out


def _plain_table() -> TableStyle:
    return TableStyle(
        [
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LEFTPADDING", (0, 0), (-1, -1), 0),
            ("RIGHTPADDING", (0, 0), (-1, -1), 0),
            ("TOPPADDING", (0, 0), (-1, -1), 0),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
        ]
    )


# --- template environments --------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _letter_env(agency_id: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if agency_id and (TEMPLATES / agency_id).is_dir():
        loaders.append(jinja2.FileSystemLoader(str(TEMPLATES / agency_id)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    # Sandboxed although the templates are ours: an office may edit its own copy.
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=False,  # plain text; to_html and to_pdf escape
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.do"],
    )


@lru_cache(maxsize=1)
def _html_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


__all__ = [
    "KINDS",
    "a4_document",
    "Letter",
    "RenderedPdf",
    "Signature",
    "as_sentence",
    "build_letter",
    "clean",
    "format_nip",
    "kop_flowables",
    "lampiran_text",
    "pdf_fonts",
    "split_paragraphs",
    "template_context",
]
