"""Make the office's request form, "Formulir Pengajuan Layanan Sub Domain / Hosting", as fillable PDF and DOCX.

The PDF is an AcroForm whose field names are the canonical request fields (`parsers.model.REQUEST_FIELDS`
plus letter_date, letter_subject and unit_head), so `parsers.request` reads a returned copy by name with no
guessing. The DOCX is one two-column table (label | empty value cell) whose labels are ones the request
parser recognises, and carries the custom document property ``subdomaind-form=1`` (see `is_form_docx`).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import docx
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.opc.constants import CONTENT_TYPE as CT
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.opc.packuri import PackURI
from docx.opc.part import Part
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import Cm, Pt, RGBColor
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_JUSTIFY
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.platypus import Flowable, Paragraph, Spacer, Table, TableStyle

from subdomaind.workflows.letters import a4_document, clean, kop_flowables, pdf_fonts
from subdomaind.workflows.settings import LetterConfig

FORM_TITLE = "FORMULIR PENGAJUAN LAYANAN SUB DOMAIN / HOSTING"
FORM_PROPERTY = "subdomaind-form"  # custom DOCX property (value "1") and PDF keyword marking our own form
SERVICE_CHOICES: tuple[str, ...] = ("Sub Domain", "Hosting")


@dataclass(frozen=True)
class FormField:
    """One entry of the form: AcroForm name (a canonical field), printed label, and the filling hint."""

    name: str
    label: str  # a label `parsers.fields` recognises for this field (the DOCX relies on it)
    hint: str  # PDF tooltip
    lines: int = 1  # visible text lines of the PDF field
    choices: tuple[str, ...] = ()  # a drop-down instead of a text field
    max_length: int = 200


def _sections(zone: str) -> tuple[tuple[str, tuple[FormField, ...]], ...]:
    suffix = f".{zone}" if zone else ""
    return (
        (
            "A. Data Permohonan",
            (
                FormField("unit", "Unit Kerja", "Nama perangkat daerah/unit kerja pemohon, tanpa singkatan"),
                FormField("letter_number", "Nomor Surat", "Nomor surat permohonan, misalnya 400/123/406.011/2026"),
                FormField("letter_date", "Tanggal Surat", "Tanggal surat permohonan, misalnya 12 November 2026"),
                FormField("letter_subject", "Perihal", "Hal surat permohonan"),
                FormField(
                    "unit_head", "Penandatangan (Jabatan)", "Jabatan penanda tangan surat permohonan, "
                    "misalnya Kepala Dinas Sosial"
                ),
            ),
        ),
        (
            "B. Data Penanggung Jawab",
            (
                FormField("pic_name", "Nama Penanggung Jawab", "Nama lengkap beserta gelar"),
                FormField("pic_nip", "NIP", "NIP 18 digit", max_length=40),
                FormField("pic_position", "Jabatan", "Jabatan penanggung jawab"),
                FormField("pic_email", "Email", "Alamat surel aktif penanggung jawab", max_length=120),
                FormField("pic_phone", "No. HP", "Nomor HP/WhatsApp yang dapat dihubungi", max_length=40),
            ),
        ),
        (
            "C. Data Layanan",
            (
                FormField(
                    "subdomain", "Nama Sub Domain", f"Nama sub domain saja, huruf kecil, tanpa {suffix or 'akhiran'}",
                    max_length=63,
                ),
                FormField("service", "Jenis Layanan", "Pilih Sub Domain atau Hosting", choices=SERVICE_CHOICES),
                FormField(
                    "target_ip", "Alamat IP", "Alamat IP server unit kerja (diisi bila memilih Sub Domain)",
                    max_length=45,
                ),
                FormField("purpose", "Keperluan", "Fungsi situs atau aplikasi", lines=3, max_length=1000),
            ),
        ),
    )


def form_fields(zone: str = "") -> tuple[FormField, ...]:
    """Every field of the form, in the order printed."""
    return tuple(f for _, fields in _sections(zone) for f in fields)


FORM_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in form_fields())


def _instructions(zone: str) -> tuple[str, ...]:
    # Written as prose, never "Label: value", and with no full host name under the zone: the request parser
    # reads this text too, and must not take an instruction for an answer.
    suffix = f" (tanpa akhiran .{zone})" if zone else ""
    return (
        "Formulir ini diisi oleh unit kerja pemohon dan dikirim melalui surel sebagai lampiran surat permohonan "
        "yang ditandatangani kepala unit kerja.",
        f"Nama sub domain cukup ditulis bagian depannya saja{suffix} dengan huruf kecil, angka, atau tanda "
        f"hubung, sesuai nama atau singkatan resmi unit kerja.",
        "Jenis layanan Sub Domain dipilih bila situs berjalan di server unit kerja sendiri (alamat IP server wajib "
        "diisi); Hosting dipilih bila situs ditempatkan di pusat data Diskominfo.",
        "Nama pengguna dan kata sandi layanan hosting dikirim terpisah ke alamat surel penanggung jawab (isian "
        "Email); surat balasan tidak memuat kata sandi.",
    )


# --- PDF --------------------------------------------------------------------------------------------------


class _FieldBox(Flowable):
    """An AcroForm text field or drop-down, placed wherever the flowable lands (a table cell)."""

    def __init__(self, spec: FormField, width: float, line_height: float = 16.0) -> None:
        super().__init__()
        self.spec = spec
        self.width = width
        self.height = line_height * spec.lines + 4

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        form: Any = self.canv.acroForm
        common: dict[str, Any] = {
            "name": self.spec.name,
            "tooltip": self.spec.hint,
            "x": 0,
            "y": 0,
            "width": self.width,
            "height": self.height,
            "relative": True,
            "borderStyle": "solid",
            "borderWidth": 0.5,
            "borderColor": colors.HexColor("#9aa7b8"),
            "fillColor": colors.HexColor("#eef3fb"),
            "textColor": colors.black,
            "fontName": "Helvetica",
            "fontSize": 10,
            "forceBorder": True,
        }
        if self.spec.choices:
            # A blank first entry: nothing is chosen until the requester picks one. (reportlab cannot make a
            # drop-down with an empty value; a lone space is read back as empty by the parser.)
            form.choice(value=" ", options=[" ", *self.spec.choices], **common)
        else:
            flags = "multiline" if self.spec.lines > 1 else ""
            form.textfield(value="", maxlen=self.spec.max_length, fieldFlags=flags, **common)


def form_pdf(agency_name: str, zone: str, letter: LetterConfig) -> bytes:
    """The request form as a fillable A4 PDF; AcroForm field names are the canonical field names."""
    regular, bold, _ = pdf_fonts()
    agency = clean(agency_name)
    zone = clean(zone).lower()
    buf = io.BytesIO()
    doc = a4_document(
        buf,
        title="Formulir Pengajuan Layanan Sub Domain / Hosting",
        author=agency,
        subject=f"Formulir pengajuan sub domain {zone}".strip(),
        keywords=f"{FORM_PROPERTY}=1",
        margins=(2.0 * cm, 2.0 * cm, 1.2 * cm, 1.5 * cm),
    )
    width = doc.width
    base = ParagraphStyle("form", fontName=regular, fontSize=10, leading=13)
    title = ParagraphStyle("title", parent=base, fontName=bold, fontSize=12.5, leading=16, alignment=TA_CENTER)
    sub = ParagraphStyle("sub", parent=base, fontSize=9.5, alignment=TA_CENTER)
    section = ParagraphStyle("section", parent=base, fontName=bold)
    label = ParagraphStyle("label", parent=base)
    note = ParagraphStyle("note", parent=base, fontSize=9, leading=12, alignment=TA_JUSTIFY, leftIndent=0.5 * cm,
                          bulletIndent=0)

    kop = [clean(x) for x in letter.kop if clean(x)] or ([agency.upper()] if agency else [])
    logo = letter.logo if letter.logo is not None and letter.logo.is_file() else None
    story: list[Flowable] = kop_flowables(kop, clean(letter.address_line), width, logo=logo)
    story += [
        Spacer(1, 0.3 * cm),
        Paragraph(FORM_TITLE, title),
        Paragraph(_esc(agency), sub) if agency else Spacer(1, 0),
        Spacer(1, 0.5 * cm),
    ]
    label_width = 5.2 * cm
    field_width = width - label_width - 12  # the cell's own padding
    rows: list[list[Any]] = []
    style = [
        ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#808080")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
        ("LEFTPADDING", (0, 0), (-1, -1), 6),
        ("RIGHTPADDING", (0, 0), (-1, -1), 6),
    ]
    for heading, fields in _sections(zone):
        style += [("SPAN", (0, len(rows)), (1, len(rows))),
                  ("BACKGROUND", (0, len(rows)), (1, len(rows)), colors.HexColor("#e6e6e6"))]
        rows.append([Paragraph(_esc(heading), section), ""])
        for spec in fields:
            rows.append([Paragraph(_esc(spec.label), label), _FieldBox(spec, field_width)])
    table = Table(rows, colWidths=[label_width, width - label_width], hAlign="LEFT")
    table.setStyle(TableStyle(style))
    # The hints come before the table: nothing may follow the last row, or an empty last field would take
    # the next line for its value when the parser reads the page text.
    story += [Paragraph("Petunjuk pengisian", section), Spacer(1, 0.1 * cm)]
    story += [Paragraph(_esc(text), note, bulletText=f"{i}.") for i, text in enumerate(_instructions(zone), 1)]
    story += [Spacer(1, 0.4 * cm), table]
    doc.build(story)
    return buf.getvalue()


def _esc(text: str) -> str:
    return xml_escape(clean(text, 10_000))


# --- DOCX -------------------------------------------------------------------------------------------------

_CUSTOM_PROPS_URI = "/docProps/custom.xml"
_CUSTOM_PROPS_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/custom-properties" '
    'xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes">'
    '<property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="2" name="%s"><vt:lpwstr>1</vt:lpwstr>'
    "</property></Properties>"
)


def form_docx(agency_name: str, zone: str, letter: LetterConfig) -> bytes:
    """The request form as DOCX: kop, title, one two-column table (label | empty cell), filling hints."""
    agency = clean(agency_name)
    zone = clean(zone).lower()
    document = docx.Document()
    sec = document.sections[0]
    sec.page_width, sec.page_height = Cm(21.0), Cm(29.7)
    sec.left_margin = sec.right_margin = Cm(2.0)
    sec.top_margin, sec.bottom_margin = Cm(1.5), Cm(1.5)
    normal = document.styles["Normal"]
    normal.font.name = "Arial"
    normal.font.size = Pt(11)

    kop = [clean(x) for x in letter.kop if clean(x)] or ([agency.upper()] if agency else [])
    for i, line in enumerate(kop):
        size = 16 if i == len(kop) - 1 and len(kop) > 1 else 14
        _centered(document, line.upper(), size=size, bold=True)
    last = _centered(document, clean(letter.address_line), size=9.5) if letter.address_line else None
    if last is None and kop:
        last = document.paragraphs[-1]
    if last is not None:
        _double_rule_below(last)

    document.add_paragraph()
    _centered(document, FORM_TITLE, size=12.5, bold=True)
    if agency:
        _centered(document, agency, size=10)
    document.add_paragraph()

    heading = document.add_paragraph()
    heading.add_run("Petunjuk pengisian").bold = True
    hints = (*_instructions(zone), f"Jenis layanan diisi {' atau '.join(SERVICE_CHOICES)}.")
    for i, text in enumerate(hints, 1):
        p = document.add_paragraph(f"{i}. {text}")
        p.paragraph_format.left_indent = Cm(0.6)
        p.paragraph_format.first_line_indent = Cm(-0.6)
        p.paragraph_format.space_after = Pt(2)
        for run in p.runs:
            run.font.size = Pt(9.5)
    document.add_paragraph()

    fields = form_fields(zone)
    table = document.add_table(rows=len(fields), cols=2)
    table.style = "Table Grid"
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    for row, spec in zip(table.rows, fields, strict=True):
        row.cells[0].width, row.cells[1].width = Cm(6.0), Cm(11.0)
        row.cells[0].text = spec.label
        _shade(row.cells[0], "F0F0F0")
        if spec.lines > 1:  # room to write
            row.cells[1].paragraphs[0].paragraph_format.space_after = Pt(11 * (spec.lines - 1) * 1.2)
    # A blank line after the table: an empty last row must not take what follows for its value.
    document.add_paragraph()

    props = document.core_properties
    props.title = "Formulir Pengajuan Layanan Sub Domain / Hosting"
    props.subject = f"Formulir pengajuan sub domain {zone}".strip()
    props.author = agency
    props.keywords = f"{FORM_PROPERTY}=1"
    _add_custom_property(document)

    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def is_form_docx(data: bytes) -> bool:
    """Whether a DOCX is a copy of our form: it carries the custom property ``subdomaind-form=1``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            info = zf.getinfo(_CUSTOM_PROPS_URI.lstrip("/"))
            if info.file_size > 64 * 1024:
                return False
            xml = zf.read(info).decode("utf-8", "replace")
    except (KeyError, zipfile.BadZipFile, OSError, ValueError):
        return False
    return f'name="{FORM_PROPERTY}"' in xml and "<vt:lpwstr>1</vt:lpwstr>" in xml


def _add_custom_property(document: Any) -> None:
    package = document.part.package
    blob = (_CUSTOM_PROPS_XML % FORM_PROPERTY).encode("utf-8")
    part = Part(PackURI(_CUSTOM_PROPS_URI), CT.OFC_CUSTOM_PROPERTIES, blob, package)
    package.relate_to(part, RT.CUSTOM_PROPERTIES)


def _centered(document: Any, text: str, *, size: float, bold: bool = False) -> Any:
    p = document.add_paragraph()
    p.alignment = WD_ALIGN_PARAGRAPH.CENTER
    p.paragraph_format.space_after = Pt(0)
    run = p.add_run(text)
    run.bold = bold
    run.font.size = Pt(size)
    run.font.color.rgb = RGBColor(0, 0, 0)
    return p


def _double_rule_below(paragraph: Any) -> None:
    """The kop's closing rule: a thick-thin double border under the paragraph."""
    p_pr = paragraph._p.get_or_add_pPr()
    borders = OxmlElement("w:pBdr")
    bottom = OxmlElement("w:bottom")
    bottom.set(qn("w:val"), "thickThinSmallGap")
    bottom.set(qn("w:sz"), "18")
    bottom.set(qn("w:space"), "1")
    bottom.set(qn("w:color"), "000000")
    borders.append(bottom)
    p_pr.append(borders)


def _shade(cell: Any, fill: str) -> None:
    tc_pr = cell._tc.get_or_add_tcPr()
    shading = OxmlElement("w:shd")
    shading.set(qn("w:val"), "clear")
    shading.set(qn("w:color"), "auto")
    shading.set(qn("w:fill"), fill)
    tc_pr.append(shading)


__all__ = [
    "FORM_FIELD_NAMES",
    "FORM_PROPERTY",
    "FORM_TITLE",
    "FormField",
    "form_docx",
    "form_fields",
    "form_pdf",
    "is_form_docx",
]
