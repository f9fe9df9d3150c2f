"""The request form (workflows/forms.py): field names, labels, and a filled copy read back by the parser."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from typing import Any

import docx
import pdfplumber
import pytest
from pypdf import PdfReader, PdfWriter

from subdomaind.daemon.config import LetterConfig
from subdomaind.parsers import ParseOptions, parse
from subdomaind.workflows.forms import FORM_FIELD_NAMES, FORM_TITLE, form_docx, form_fields, form_pdf, is_form_docx

AGENCY = "Dinas Komunikasi dan Informatika Kabupaten Trenggalek"
ZONE = "trenggalekkab.go.id"
LETTER = LetterConfig(
    kop=["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"],
    address_line="Jl. Panglima Sudirman No. 1 Trenggalek, Telp. (0355) 000000, laman trenggalekkab.go.id",
    city="Trenggalek",
)
CANONICAL = {
    "subdomain", "unit", "pic_name", "pic_nip", "pic_position", "pic_email", "pic_phone", "purpose", "service",
    "target_ip", "letter_number",
}
EXTRA = {"letter_date", "letter_subject", "unit_head"}
DOCX_LABELS = [
    "Nama Sub Domain", "Unit Kerja", "Nama Penanggung Jawab", "NIP", "Jabatan", "Email", "No. HP", "Keperluan",
    "Jenis Layanan", "Alamat IP", "Nomor Surat",
]
VALUES = {
    "subdomain": "dinsos",
    "unit": "Dinas Sosial",
    "pic_name": "Siti Rahayu, S.Kom.",
    "pic_nip": "198805122015032001",
    "pic_position": "Pranata Komputer Ahli Pertama",
    "pic_email": "siti.rahayu@trenggalekkab.go.id",
    "pic_phone": "081234567890",
    "purpose": "Situs informasi layanan bantuan sosial",
    "service": "Hosting",
    "target_ip": "203.0.113.25",
    "letter_number": "400.9/123/406.011/2026",
    "letter_date": "12 November 2026",
    "letter_subject": "Permohonan Sub Domain",
    "unit_head": "Kepala Dinas Sosial",
}
# What the parser makes of VALUES after normalising.
EXPECTED = {**VALUES, "pic_phone": "+6281234567890", "service": "hosting"}
OPTIONS = ParseOptions(zone=ZONE)
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def mail_with(data: bytes, filename: str, content_type: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Dinas Sosial <dinsos@trenggalekkab.go.id>"
    msg["To"] = "layanan@trenggalekkab.go.id"
    msg["Subject"] = "Permohonan sub domain"
    msg["Message-ID"] = "<formulir.1@trenggalekkab.go.id>"
    msg.set_content("Dengan hormat, terlampir formulir pengajuan layanan sub domain.")
    maintype, subtype = content_type.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def fill_pdf(values: dict[str, str]) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(form_pdf(AGENCY, ZONE, LETTER))))
    writer.update_page_form_field_values(writer.pages[0], values, auto_regenerate=False)
    writer.set_need_appearances_writer(True)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def fill_docx(values: dict[str, str]) -> bytes:
    document = docx.Document(io.BytesIO(form_docx(AGENCY, ZONE, LETTER)))
    table = document.tables[0]
    for row, spec in zip(table.rows, form_fields(ZONE), strict=True):
        if spec.name in values:
            row.cells[1].text = values[spec.name]
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def parsed(raw: bytes) -> dict[str, Any]:
    result = parse(raw, OPTIONS)
    assert result.kind == "request", result.reason
    assert result.request is not None
    return result.request.to_json()


# --- PDF --------------------------------------------------------------------------------------------------


def test_form_pdf_has_exactly_the_named_fields() -> None:
    reader = PdfReader(io.BytesIO(form_pdf(AGENCY, ZONE, LETTER)))
    fields = reader.get_fields() or {}
    assert set(fields) == CANONICAL | EXTRA
    assert set(FORM_FIELD_NAMES) == CANONICAL | EXTRA
    assert fields["service"].get("/FT") == "/Ch"
    assert all(fields[name].get("/FT") == "/Tx" for name in set(fields) - {"service"})
    assert all(not str(fields[name].get("/V") or "").strip() for name in fields), "the form starts empty"
    assert reader.metadata is not None and reader.metadata.get("/Keywords") == "subdomaind-form=1"


def test_form_pdf_prints_kop_title_and_labels() -> None:
    with pdfplumber.open(io.BytesIO(form_pdf(AGENCY, ZONE, LETTER))) as pdf:
        assert len(pdf.pages) == 1
        text = " ".join((pdf.pages[0].extract_text() or "").split())
    for part in ("PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA", FORM_TITLE,
                 "Petunjuk pengisian", *DOCX_LABELS):
        assert part in text


def test_filled_pdf_form_is_read_back_by_name() -> None:
    got = parsed(mail_with(fill_pdf(VALUES), "formulir.pdf", "application/pdf"))
    for name, value in EXPECTED.items():
        assert got[name] == value, name
        assert got["origins"][name]["source"] == "form", name
    assert got["source"] == "form"
    assert got["missing"] == [] and got["problems"] == []


def test_partly_filled_pdf_form_invents_nothing() -> None:
    got = parsed(mail_with(fill_pdf({"subdomain": "dinsos", "unit": "Dinas Sosial"}), "formulir.pdf",
                           "application/pdf"))
    assert (got["subdomain"], got["unit"]) == ("dinsos", "Dinas Sosial")
    for name in ("pic_name", "pic_nip", "pic_position", "pic_phone", "purpose", "target_ip", "letter_number",
                 "letter_date", "letter_subject", "unit_head"):
        assert got[name] is None, f"{name} = {got[name]!r} was not written by the requester"
    assert {"pic_name", "pic_phone", "purpose"} <= set(got["missing"])


# --- DOCX -------------------------------------------------------------------------------------------------


def test_form_docx_has_the_labels_and_the_marker_property() -> None:
    data = form_docx(AGENCY, ZONE, LETTER)
    document = docx.Document(io.BytesIO(data))
    assert len(document.tables) == 1
    table = document.tables[0]
    assert all(len(row.cells) == 2 for row in table.rows)
    labels = [row.cells[0].text for row in table.rows]
    assert set(DOCX_LABELS) <= set(labels)
    assert all(not row.cells[1].text.strip() for row in table.rows), "value cells start empty"
    body = "\n".join(p.text for p in document.paragraphs)
    assert FORM_TITLE in body and "PEMERINTAH KABUPATEN TRENGGALEK" in body
    assert is_form_docx(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert "docProps/custom.xml" in zf.namelist()
        types = zf.read("[Content_Types].xml").decode()
        assert "application/vnd.openxmlformats-officedocument.custom-properties+xml" in types
    assert document.core_properties.keywords == "subdomaind-form=1"
    plain = io.BytesIO()
    docx.Document().save(plain)
    assert not is_form_docx(plain.getvalue()) and not is_form_docx(b"PK not a zip")


def test_filled_docx_form_is_read_back_by_label() -> None:
    filled = fill_docx(VALUES)
    assert is_form_docx(filled), "the marker survives a save by python-docx"
    got = parsed(mail_with(filled, "formulir.docx", DOCX_TYPE))
    # unit_head has no label the parser knows yet ("Penandatangan (Jabatan)" is one it ignores).
    for name, value in EXPECTED.items():
        if name == "unit_head":
            continue
        assert got[name] == value, name
        assert got["origins"][name]["source"] == "docx", name
    assert got["source"] == "docx"
    assert got["missing"] == [] and got["problems"] == []


def test_empty_and_partly_filled_docx_invent_nothing() -> None:
    empty = parse(mail_with(form_docx(AGENCY, ZONE, LETTER), "formulir.docx", DOCX_TYPE), OPTIONS)
    if empty.request is not None:  # "unrelated" today; a request, if ever, must carry no invented value
        assert empty.request.subdomain is None
    got = parsed(mail_with(fill_docx({"subdomain": "dinsos"}), "formulir.docx", DOCX_TYPE))
    assert got["subdomain"] == "dinsos"
    for name in ("pic_name", "pic_nip", "pic_position", "pic_phone", "purpose", "target_ip",
                 "letter_number", "letter_date", "letter_subject"):
        assert got[name] is None, f"{name} = {got[name]!r} was not written by the requester"
    # The unit is not the blank form's kop (the office's own); the sender's From name may give it, and says so.
    assert got["unit"] is None or got["origins"]["unit"]["label"] == "Nama pengirim (From)", got["origins"]


@pytest.mark.parametrize("maker", [form_pdf, form_docx])
def test_forms_without_kop_fall_back_to_the_agency_name(maker: Any) -> None:
    data = maker(AGENCY, ZONE, LetterConfig())
    assert data[:4] in (b"%PDF", b"PK\x03\x04")
