"""Request-form extraction: the normalisers, tolerant label matching, each source (body, HTML, PDF text,
tables and AcroForm, DOCX, OCR), merging and fallbacks, and the bounds on hostile attachments."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sys
import time
import zipfile
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subdomaind.parsers import normalize
from subdomaind.parsers.docx import read_docx
from subdomaind.parsers.fields import extract_records, html_records, match_label, split_person, text_records
from subdomaind.parsers.model import Attachment, Limits, ParsedMessage, ParseOptions
from subdomaind.parsers.pdf import read_pdf
from subdomaind.parsers.request import extract_request, unit_from_head

ZONE = "trenggalekkab.go.id"
OPTS = ParseOptions(zone=ZONE, mailbox_address=f"layanan@{ZONE}")
FIXTURES = Path(__file__).parent / "fixtures" / "emails"
TESSERACT = shutil.which("tesseract") is not None


def _load_generator() -> ModuleType:
    path = Path(__file__).parent / "fixtures" / "make_request_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_request_fixtures", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def msg(
    text: str | None = None,
    html: str | None = None,
    attachments: tuple[Attachment, ...] = (),
    *,
    subject: str = "Permohonan Sub Domain",
    from_addr: str = "dinsos@trenggalekkab.go.id",
    forwarded_from: str | None = None,
) -> ParsedMessage:
    return ParsedMessage(
        message_id="<t@x>",
        from_addr=from_addr,
        from_name=None,
        to=(f"layanan@{ZONE}",),
        cc=(),
        reply_to=(),
        delivered_to=(),
        subject=subject,
        date=None,
        in_reply_to=None,
        references=(),
        headers=(),
        text=text,
        html=html,
        attachments=attachments,
        forwarded_from=forwarded_from,
    )


FORM = (
    "Nama Sub Domain : dinsos.trenggalekkab.go.id\n"
    "Perangkat Daerah : Dinas Sosial\n"
    "Nama Pengelola : Lukman Hakim, S.Kom.\n"
    "NIP : 19870412 201001 1 003\n"
    "Jabatan : Pranata Komputer Ahli Pertama\n"
    "No. HP (Whatsapp) : 0812-3456-7890\n"
    "Email : lukman.dinsos@gmail.com\n"
    "Keperluan : Website resmi Dinas Sosial\n"
    "Jenis Layanan : Sub Domain\n"
    "Alamat IP : 203.0.113.10\n"
)


# --- normalisers --------------------------------------------------------------------------------------------

SUBDOMAIN_OK = [
    ("dinsos", "dinsos"),
    ("DINSOS", "dinsos"),
    ("  dinsos  ", "dinsos"),
    ("https://www.dinsos.trenggalekkab.go.id/", "dinsos"),
    ("http://dinsos.trenggalekkab.go.id:8080/index.php?a=1", "dinsos"),
    ("dinsos.trenggalekkab.go.id.", "dinsos"),
    ("www.Dinsos.Trenggalekkab.Go.Id", "dinsos"),
    ("“dinsos”", "dinsos"),
    ("dinsos (Dinas Sosial)", "dinsos"),
    ("dinsos.trenggalekkab.go.id untuk website dinas", "dinsos"),
    ("pu", "pu"),
    ("dinas-sosial", "dinas-sosial"),
    ("sd1-panggul", "sd1-panggul"),
    ("xn--caf-literasi-deb", "xn--caf-literasi-deb"),  # a valid A-label passes the DNS rule
]
SUBDOMAIN_BAD = [
    ("dinas_sosial", "garis bawah"),
    ("dinas sosial", "spasi"),
    ("dinsos!", "karakter '!'"),
    ("-dinsos", "tanda hubung"),
    ("dinsos-", "tanda hubung"),
    ("12345", "hanya berisi angka"),
    ("a", "terlalu pendek"),
    ("a" * 64, "terlalu panjang"),
    ("ab--cd", "tanda hubung ganda"),
    ("xn--zz-zzzzzzz", "bukan nama domain internasional yang sah"),
    ("mail", "dicadangkan"),
    ("WWW", "dicadangkan"),
    ("dinsos.jatimprov.go.id", "di luar domain trenggalekkab.go.id"),
    ("https://dinsos.go.id", "di luar domain"),
    ("trenggalekkab.go.id", "domain induk"),
    ("a.b.trenggalekkab.go.id", "lebih dari satu tingkat"),
    ("dinsös", "xn--dinss-mua"),
    ("café-literasi.trenggalekkab.go.id", "xn--caf-literasi-deb"),
    ("admin@dinsos.go.id", "alamat surel"),
]


@pytest.mark.parametrize(("raw", "label"), SUBDOMAIN_OK)
def test_subdomain_normalised(raw: str, label: str) -> None:
    assert normalize.normalize_subdomain(raw, OPTS) == (label, None)


@pytest.mark.parametrize(("raw", "why"), SUBDOMAIN_BAD)
def test_subdomain_refused_with_reason(raw: str, why: str) -> None:
    value, problem = normalize.normalize_subdomain(raw, OPTS)
    assert value is None and problem is not None
    assert problem.field == "subdomain"
    assert why in problem.reason


def test_subdomain_reason_is_plain_indonesian_naming_the_value() -> None:
    _, problem = normalize.normalize_subdomain("dinas_sosial", OPTS)
    assert problem is not None
    assert problem.reason == (
        "Nama sub domain 'dinas_sosial' memuat garis bawah; hanya huruf a-z, angka 0-9 dan tanda hubung (-) yang "
        "diperbolehkan"
    )


def test_subdomain_without_zone_takes_leftmost_label_and_reserved_names_come_from_options() -> None:
    opts = ParseOptions(zone=None, reserved_names=frozenset({"sipd"}))
    assert normalize.normalize_subdomain("dinsos.trenggalekkab.go.id", opts) == ("dinsos", None)
    assert normalize.normalize_subdomain("mail", opts) == ("mail", None)
    value, problem = normalize.normalize_subdomain("SIPD", opts)
    assert value is None and problem and "dicadangkan" in problem.reason


def test_placeholders_are_absent_not_invalid() -> None:
    for raw in ("", "-", "....", "___", "tidak ada", "  "):
        assert normalize.normalize_subdomain(raw, OPTS) == (None, None)
        assert normalize.normalize_phone(raw) == (None, None)


DNS_LABEL = re.compile(r"^(?!-)(?!.*-$)[a-z0-9-]{2,63}$")
_PIECES = st.lists(
    st.sampled_from(
        [*"abcxyzAB09-_. /:@é\u00a0\tß", "www.", "https://", f".{ZONE}", "xn--", "--", "mail", ".", "..", "%"]
    ),
    max_size=16,
).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=100), _PIECES))
def test_normalize_subdomain_never_raises_and_returns_only_dns_labels(raw: str) -> None:
    for opts in (OPTS, ParseOptions(zone=None)):
        value, problem = normalize.normalize_subdomain(raw, opts)
        assert value is None or problem is None
        if value is not None:
            assert DNS_LABEL.match(value), value
            assert not value.isdigit()
            assert value not in opts.reserved_names


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=120))
def test_other_normalisers_never_raise(raw: str) -> None:
    for fn in (
        normalize.normalize_nip,
        normalize.normalize_phone,
        normalize.normalize_email,
        normalize.normalize_service,
        normalize.normalize_ip,
        normalize.normalize_letter_number,
    ):
        value, problem = fn(raw)
        assert value is None or problem is None
    normalize.normalize_text(raw)


NIP_OK = [
    ("19870412 201001 1 003", "198704122010011003"),
    ("19870412.201001.1.003", "198704122010011003"),
    ("NIP. 19850923 200903 2 004", "198509232009032004"),
    ("198704122010011003", "198704122010011003"),
]
NIP_BAD = [
    ("19870412 201001 1 03", "berisi 17 angka"),
    ("3503124507880001", "tampaknya NIK"),
    ("19871332 201001 1 003", "tanggal lahir yang sah"),
    ("19870229 201001 1 003", "tanggal lahir yang sah"),  # 1987 is not a leap year
    ("19300412 196001 1 003", "Tahun lahir 1930"),
    ("19870412 201013 1 003", "bulan TMT CPNS"),
    ("19870412 199501 1 003", "tidak wajar untuk tahun lahir 1987"),
    ("19870412 201001 3 003", "harus 1 atau 2, tertulis 3"),
    ("19870412 201001 1 000", "Nomor urut"),
    ("1987O412 201001 1 003", "hanya boleh berisi angka"),
]


@pytest.mark.parametrize(("raw", "nip"), NIP_OK)
def test_nip_normalised(raw: str, nip: str) -> None:
    assert normalize.normalize_nip(raw) == (nip, None)


@pytest.mark.parametrize(("raw", "why"), NIP_BAD)
def test_nip_structure_checked(raw: str, why: str) -> None:
    value, problem = normalize.normalize_nip(raw)
    assert value is None and problem is not None and problem.field == "pic_nip"
    assert why in problem.reason, problem.reason


PHONE_OK = [
    ("0812-3456-7890", "+6281234567890"),
    ("0812 3456 7890", "+6281234567890"),
    ("081234567890", "+6281234567890"),
    ("6281234567890", "+6281234567890"),
    ("62 812 3456 7890", "+6281234567890"),
    ("+62 812-3456-7890", "+6281234567890"),
    ("+62-813-3012-4567 (WA)", "+6281330124567"),
    ("0812.3456.7890 / 0813-1111-2222", "+6281234567890"),
    ("(0355) 791234", "+62355791234"),
]


@pytest.mark.parametrize(("raw", "e164"), PHONE_OK)
def test_phone_to_e164(raw: str, e164: str) -> None:
    assert normalize.normalize_phone(raw) == (e164, None)


@pytest.mark.parametrize(("raw", "why"), [("0813-30", "bukan nomor telepon"), ("belum punya", "tidak memuat angka")])
def test_phone_problems(raw: str, why: str) -> None:
    value, problem = normalize.normalize_phone(raw)
    assert value is None and problem is not None and why in problem.reason


EMAIL_OK = [
    ("Lukman.Hakim@Gmail.com", "lukman.hakim@gmail.com"),
    ("<siti.rahma@trenggalekkab.go.id>", "siti.rahma@trenggalekkab.go.id"),
    ("mailto:admin.dinsos@trenggalekkab.go.id", "admin.dinsos@trenggalekkab.go.id"),
    ("Lukman Hakim <lukman@gmail.com>", "lukman@gmail.com"),
]


@pytest.mark.parametrize(("raw", "email"), EMAIL_OK)
def test_email_normalised(raw: str, email: str) -> None:
    assert normalize.normalize_email(raw) == (email, None)


@pytest.mark.parametrize(("raw", "why"), [("lukman at gmail.com", "tanda @"), ("lukman@gmail", "tidak sah")])
def test_email_problems(raw: str, why: str) -> None:
    value, problem = normalize.normalize_email(raw)
    assert value is None and problem is not None and why in problem.reason


SERVICE = [
    ("Sub Domain", "subdomain"),
    ("subdomain", "subdomain"),
    ("Sub-Domain (pointing ke server OPD)", "subdomain"),
    ("Pointing", "subdomain"),
    ("Hosting", "hosting"),
    ("Web Hosting", "hosting"),
    ("Sub Domain dan Hosting", "hosting"),
    ("☐ Sub Domain ☑ Hosting", "hosting"),
    ("[x] Sub Domain [ ] Hosting", "subdomain"),
]


@pytest.mark.parametrize(("raw", "service"), SERVICE)
def test_service_from_words(raw: str, service: str) -> None:
    assert normalize.normalize_service(raw) == (service, None)


@pytest.mark.parametrize(("raw", "why"), [("Sub Domain / Hosting *)", "belum dipilih"), ("VPS", "tidak dikenali")])
def test_service_problems(raw: str, why: str) -> None:
    value, problem = normalize.normalize_service(raw)
    assert value is None and problem is not None and why in problem.reason


IP_OK = [
    ("203.0.113.10", "203.0.113.10"),
    ("IP: 198.51.100.7 (server baru)", "198.51.100.7"),
    ("2001:DB8:10::25", "2001:db8:10::25"),
]
IP_BAD = [
    ("192.168.10.5", "alamat privat"),
    ("10.0.0.5", "alamat privat"),
    ("172.20.1.1", "alamat privat"),
    ("127.0.0.1", "loopback"),
    ("100.64.1.1", "CGNAT"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("fd00::1", "alamat privat"),
    ("::1", "loopback"),
    ("::ffff:192.168.1.1", "alamat privat"),
    ("999.1.1.1", "tidak sah"),
    ("server sendiri", "tidak sah"),
]


@pytest.mark.parametrize(("raw", "ip"), IP_OK)
def test_ip_normalised(raw: str, ip: str) -> None:
    assert normalize.normalize_ip(raw) == (ip, None)


@pytest.mark.parametrize(("raw", "why"), IP_BAD)
def test_ip_must_be_public(raw: str, why: str) -> None:
    value, problem = normalize.normalize_ip(raw)
    assert value is None and problem is not None and problem.field == "target_ip"
    assert why in problem.reason, problem.reason


LETTER_OK = [
    ("460/215/406.011/2026", "460/215/406.011/2026"),
    ("555 / 123 / 406.020 / 2026", "555/123/406.020/2026"),
    ("000.8.3.3/15/OR", "000.8.3.3/15/OR"),
    ("400.14/512/406.009/2026   Trenggalek, 10 November 2026", "400.14/512/406.009/2026"),
]


@pytest.mark.parametrize(("raw", "number"), LETTER_OK)
def test_letter_number(raw: str, number: str) -> None:
    assert normalize.normalize_letter_number(raw) == (number, None)


@pytest.mark.parametrize("raw", ["12/XI/2026", "460-215-2026", "460"])
def test_letter_number_problems(raw: str) -> None:
    value, problem = normalize.normalize_letter_number(raw)
    assert value is None and problem is not None and "format penomoran" in problem.reason


# --- labels -------------------------------------------------------------------------------------------------

LABELS = [
    ("Nama Sub Domain", "subdomain"),
    ("NAMA SUB-DOMAIN", "subdomain"),
    ("Nama Subdomain", "subdomain"),
    ("Alamat Sub Domain yang diajukan", "subdomain"),
    ("Usulan nama sub-domain", "subdomain"),
    ("Domain Sub Nama", "subdomain"),  # word order
    ("Nama Sub Domian", "subdomain"),  # transposed letters
    ("Nama Dinas", "unit"),
    ("Perangkat Daerah", "unit"),
    ("OPD", "unit"),
    ("Unit Kerja", "unit"),
    ("Instansi", "unit"),
    ("Instnasi", "unit"),
    ("Nama Pengelola", "pic_name"),
    ("Penanggung Jawab Teknis", "pic_name"),
    ("Penangung Jawab", "pic_name"),
    ("No. HP (Whatsapp)", "pic_phone"),
    ("Nomer HP", "pic_phone"),
    ("No HP/WA", "pic_phone"),
    ("E-mail", "pic_email"),
    ("Emial", "pic_email"),
    ("Jabtan", "pic_position"),
    ("Fungsi Aplikasi", "purpose"),
    ("Keperluan", "purpose"),
    ("Keprluan", "purpose"),
    ("Peruntukan", "purpose"),
    ("Alamat IP", "target_ip"),
    ("Alamt IP", "target_ip"),
    ("IP Server", "target_ip"),
    ("Jenis Layanan", "service"),
    ("Jenis Layannan", "service"),
    ("Nomor", "letter_number"),
    ("Tanggal", "letter_date"),
    ("Hal", "letter_subject"),
    ("Perihal", "letter_subject"),
    ("Penandatangan (Jabatan)", "unit_head"),
    ("*Nama Sub Domain*", "subdomain"),
    ("Alamat IP **)", "target_ip"),
]


@pytest.mark.parametrize(("label", "field"), LABELS)
def test_label_matching_tolerates_case_order_synonyms_and_typos(label: str, field: str) -> None:
    entry = match_label(label)
    assert entry is not None and entry.field == field


@pytest.mark.parametrize(
    "text",
    [
        "Dengan hormat, bersama ini kami mengajukan permohonan nama sub domain",
        "Mohon dibuatkan sub domain untuk dinas kami sesuai surat terlampir",
        "Apakah nama sub domain boleh memakai garis bawah",
        "Terima kasih",
    ],
)
def test_prose_is_not_a_label(text: str) -> None:
    assert match_label(text) is None


@pytest.mark.parametrize("label", ["Alamat", "Pangkat / Golongan", "Tanggal Lahir", "Lampiran", "Alamt"])
def test_known_labels_we_ignore_do_not_match_a_field(label: str) -> None:
    entry = match_label(label)
    assert entry is not None and entry.field == ""


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for hit in extract_records(text_records(text)):
        out.setdefault(hit.field, hit.value)
    return out


@pytest.mark.parametrize(
    "line",
    [
        "Nama Sub Domain : dinsos",
        "Nama Sub Domain – dinsos",
        "Nama Sub Domain - dinsos",
        "Nama Sub Domain = dinsos",
        "1. Nama Sub Domain : dinsos",
        "a. Nama Sub Domain : dinsos",
        "- Nama Sub Domain: dinsos",
        "• Nama Sub Domain\t: dinsos",
        "Nama Sub Domain ............ dinsos",
        "Nama Sub Domain          dinsos",
        "> Nama Sub Domain: dinsos",
        "| Nama Sub Domain | dinsos |",
        "Nama Sub Domain:\ndinsos",
        "Nama Sub Domain\ndinsos",
    ],
)
def test_label_value_layouts(line: str) -> None:
    assert _fields(line)["subdomain"] == "dinsos"


def test_label_inside_prose_is_not_a_hit() -> None:
    text = (
        "Bersama ini kami sampaikan bahwa nama sub domain: dinsos sudah pernah kami ajukan tahun lalu melalui surat.\n"
        "Kami menanyakan apakah keperluan tersebut masih dapat diproses.\n"
    )
    assert _fields(text) == {}


def test_inline_person_sentence_gives_name_nip_and_position() -> None:
    found = _fields("Penanggung jawab: Lukman Hakim (NIP 19870412 201001 1 003), Pengelola Website")
    assert found["pic_name"] == "Lukman Hakim"
    assert found["pic_nip"] == "19870412 201001 1 003"
    assert found["pic_position"] == "Pengelola Website"


def test_split_person_keeps_degrees_with_the_name() -> None:
    assert split_person("Siti Rahmawati, S.Pd., M.Kom., Pranata Komputer") == (
        "Siti Rahmawati, S.Pd., M.Kom.",
        None,
        "Pranata Komputer",
        None,
        None,
    )
    name, nip, position, email, phone = split_person("Agus selaku Admin IT, 0857-3344-5566, agus@gmail.com")
    assert (name, position, email, phone) == ("Agus", "Admin IT", "agus@gmail.com", "0857-3344-5566")
    assert nip is None


def test_unit_contacts_and_request_kind_are_not_pic_or_service() -> None:
    found = _fields(
        "Jenis Permohonan : Permohonan Baru\nEmail Instansi : dinsos@trenggalekkab.go.id\nTelepon Kantor : (0355) 791234\n"
        "Nama / NIP : Lukman Hakim / 19870412 201001 1 003\n"
    )
    assert "service" not in found and "pic_email" not in found and "pic_phone" not in found
    assert found["pic_name"] == "Lukman Hakim" and found["pic_nip"] == "19870412 201001 1 003"


def test_embedded_pairs_on_one_line() -> None:
    found = _fields("Kontak: 0812-3456-7890, Email: lukman@gmail.com")
    assert found["pic_phone"] == "0812-3456-7890"
    assert found["pic_email"] == "lukman@gmail.com"


def test_empty_value_then_blank_line_is_not_filled_from_the_next_paragraph() -> None:
    found = _fields("Keperluan :\n\nTerima kasih atas perhatiannya.\n")
    assert "purpose" not in found


def test_table_header_no_is_not_a_letter_number() -> None:
    msg_ = msg("No   Uraian   Isian\n1   Nama Sub Domain   dinsos\n2   Perangkat Daerah   Dinas Sosial\n")
    fields = extract_request(msg_, OPTS)
    assert fields is not None and fields.letter_number is None and not fields.problems


def test_headings_choose_the_technical_pic_and_the_unit_block() -> None:
    text = (
        "A. DATA INSTANSI\nNama : Dinas Pendidikan\nEmail : disdik@trenggalekkab.go.id\n"
        "B. PENANGGUNG JAWAB ADMINISTRATIF\nNama : Drs. Bambang\nNo. HP : 0811-3030-1111\n"
        "C. PENANGGUNG JAWAB TEKNIS\nNama : Siti Rahmawati\nNo. HP : 0813-3012-4567\n"
        "Email : siti@gmail.com\nNama Sub Domain : disdik\nKeperluan : Website PPDB\n"
    )
    fields = extract_request(msg(text), OPTS)
    assert fields is not None
    assert (fields.unit, fields.pic_name, fields.pic_phone, fields.pic_email) == (
        "Dinas Pendidikan",
        "Siti Rahmawati",
        "+6281330124567",
        "siti@gmail.com",
    )


def test_letterhead_email_does_not_beat_the_form() -> None:
    text = (
        "DINAS SOSIAL\nEmail : dinsos@trenggalekkab.go.id\n\nNomor : 460/1/406.011/2026\n"
        "Hal : Permohonan Sub Domain\n\n"
        + FORM.replace("Email : lukman.dinsos@gmail.com\n", "")
        + "Email : lukman.dinsos@gmail.com\n"
    )
    fields = extract_request(msg(text), OPTS)
    assert fields is not None and fields.pic_email == "lukman.dinsos@gmail.com"


@pytest.mark.parametrize(
    ("jabatan", "unit"),
    [
        ("Kepala Dinas Sosial", "Dinas Sosial"),
        ("Kepala Badan Perencanaan Pembangunan Daerah", "Badan Perencanaan Pembangunan Daerah"),
        ("Plt. Kepala Dinas Pendidikan", "Dinas Pendidikan"),
        ("Camat Panggul", "Kecamatan Panggul"),
        ("Inspektur", "Inspektorat"),
        ("Sekretaris Daerah", "Sekretariat Daerah"),
        ("Direktur RSUD dr. Soedomo", "RSUD dr. Soedomo"),
        ("Kepala", None),
    ],
)
def test_unit_from_signatory(jabatan: str, unit: str | None) -> None:
    assert unit_from_head(jabatan) == unit


# --- sources ------------------------------------------------------------------------------------------------


def test_plain_body_full_form() -> None:
    fields = extract_request(msg(FORM), OPTS)
    assert fields is not None
    assert fields.source == "body" and fields.missing == () and fields.problems == ()
    assert fields.subdomain == "dinsos" and fields.pic_nip == "198704122010011003"
    origin = {o.field: o for o in fields.origins}["subdomain"]
    assert (origin.source, origin.label, origin.raw) == ("body", "Nama Sub Domain", "dinsos.trenggalekkab.go.id")


def test_nothing_request_like_is_none() -> None:
    assert extract_request(msg("Selamat pagi, apa kabar?\nSalam."), OPTS) is None
    assert extract_request(msg("Tanggal : 20 November 2026\nTempat : Aula\n", subject="Undangan"), OPTS) is None
    assert extract_request(msg(None), OPTS) is None


def test_html_table_outlook_markup() -> None:
    html = (
        "<table class=MsoTableGrid><tr><td><p class=MsoNormal><b>Nama Sub Domain<o:p></o:p></b></p></td>"
        "<td><p class=MsoNormal>dishub<o:p></o:p></p></td></tr>"
        "<tr><td><p class=MsoNormal>Perangkat Daerah</p></td><td><p>Dinas</p><p>Perhubungan</p></td></tr>"
        "<tr><td>No. HP</td><td>0838-1122-3344</td></tr></table>"
    )
    fields = extract_request(msg(None, html), OPTS)
    assert fields is not None and fields.source == "html"
    assert (fields.subdomain, fields.unit, fields.pic_phone) == ("dishub", "Dinas Perhubungan", "+6283811223344")


def test_html_layout_table_is_unwrapped_into_lines() -> None:
    html = (
        "<table><tr><td><div>Nama Sub Domain: satpolpp</div><div>OPD: Satpol PP</div>"
        "<table><tr><td>Email</td><td>dwi@gmail.com</td></tr></table><div>Keperluan: Website</div>"
        "</td></tr></table><style>p{}</style><script>var x='Nama Sub Domain: jahat';</script>"
    )
    records = html_records(html)
    hits = {h.field: h.value for h in extract_records(records)}
    assert hits == {"subdomain": "satpolpp", "unit": "Satpol PP", "pic_email": "dwi@gmail.com", "purpose": "Website"}


def test_html_derived_text_is_not_a_second_source() -> None:
    from subdomaind.parsers.mime import html_to_text

    html = "<div><b>Nama Sub Domain</b>: dlh</div><div><b>Unit Kerja</b>: Dinas Lingkungan Hidup</div>"
    fields = extract_request(msg(html_to_text(html), html), OPTS)
    assert fields is not None and fields.source == "html"


def _pdf_att(data: bytes, name: str = "form.pdf") -> Attachment:
    return Attachment(name, "application/pdf", data)


def test_pdf_text_lines() -> None:
    u = gen.BAPPEDA
    data = gen.pdf_letter(u, [("Nama Sub Domain", u.sub), ("Perangkat Daerah", u.unit), ("Email", u.email)])
    fields = extract_request(msg("Terlampir.", attachments=(_pdf_att(data),)), OPTS)
    assert fields is not None and fields.source == "pdf"
    assert (fields.subdomain, fields.unit, fields.pic_email) == (u.sub, u.unit, u.email)
    assert fields.letter_number == u.number and fields.letter_date == u.date
    assert fields.unit_head == "Kepala Badan Perencanaan Pembangunan Daerah"


def test_pdf_bordered_table() -> None:
    u = gen.DINKES
    content = read_pdf(gen.pdf_table_form(u), Limits(), "t.pdf")
    rows = [r for r in content.records if len(r) >= 2]
    assert ("1", "Nama Sub Domain", f"{u.sub}.{ZONE}") in rows
    fields = extract_request(msg("Terlampir.", attachments=(_pdf_att(gen.pdf_table_form(u)),)), OPTS)
    assert fields is not None and fields.purpose == u.purpose and fields.missing == ()


def test_pdf_acroform_values_come_from_fields_not_page_text() -> None:
    u = gen.BAPENDA
    data = gen.pdf_acroform(u, {"subdomain": u.sub, "unit": u.unit, "pic_phone": u.phone})
    content = read_pdf(data, Limits(), "f.pdf")
    assert {f.name: f.value for f in content.form_fields} == {"subdomain": u.sub, "unit": u.unit, "pic_phone": u.phone}
    assert {f.name: f.tooltip for f in content.form_fields}["subdomain"] == "Nama Sub Domain"
    assert u.sub not in " ".join(" ".join(r) for r in content.records)
    fields = extract_request(msg("Formulir terlampir.", attachments=(_pdf_att(data),)), OPTS)
    assert fields is not None and fields.source == "form"
    assert {o.field: (o.source, o.label) for o in fields.origins}["subdomain"] == ("form", None)


def test_third_party_acroform_fields_match_by_tooltip_or_name() -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4, invariant=1)
    for i, (name, tooltip, value) in enumerate(
        [
            ("txtNamaSubDomain", "Nama Sub Domain", "dispusip"),
            ("fld_perangkat_daerah", None, "Dinas Perpustakaan dan Kearsipan"),
            ("NomorHP", None, "0812-3456-7890"),
            ("Check1", "Setuju syarat dan ketentuan", "Yes"),
        ]
    ):
        c.acroForm.textfield(name=name, tooltip=tooltip or "", value=value, x=100, y=700 - 30 * i, width=300)
    c.showPage()
    c.save()
    fields = extract_request(msg("Formulir terlampir.", attachments=(_pdf_att(buf.getvalue()),)), OPTS)
    assert fields is not None and fields.source == "pdf"
    assert (fields.subdomain, fields.unit, fields.pic_phone) == (
        "dispusip",
        "Dinas Perpustakaan dan Kearsipan",
        "+6281234567890",
    )


def test_docx_table_and_paragraphs() -> None:
    for data, unit in ((gen.docx_table(gen.BKPSDM), gen.BKPSDM), (gen.docx_paragraphs(gen.DISKOPUM), gen.DISKOPUM)):
        att = Attachment("f.docx", gen.DOCX, data)
        fields = extract_request(msg("Terlampir.", attachments=(att,)), OPTS)
        assert fields is not None and fields.source == "docx"
        assert (fields.subdomain, fields.pic_phone, fields.missing) == (unit.sub, unit.e164, ())


def test_docx_that_is_not_a_zip_is_a_problem() -> None:
    content = read_docx(b"PK\x03\x04 not really a zip", Limits(), "x.docx")
    assert content.records == () and content.problems[0].field == "lampiran"
    content = read_docx(b"%PDF-1.4 renamed", Limits(), "x.docx")
    assert "bukan berkas DOCX" in content.problems[0].reason


def test_merge_body_wins_and_attachment_fills_gaps() -> None:
    u = gen.DISPARBUD
    pdf = gen.pdf_letter(u, [("Nama Sub Domain", "lain"), ("Nama Pengelola", u.name), ("Keperluan", u.purpose)])
    fields = extract_request(msg(f"Nama Sub Domain : {u.sub}\n", attachments=(_pdf_att(pdf),)), OPTS)
    assert fields is not None
    origins = {o.field: o.source for o in fields.origins}
    assert fields.subdomain == u.sub and origins["subdomain"] == "body"
    assert fields.pic_name == u.name and origins["pic_name"] == "pdf"


def test_forward_block_form_email_wins_over_the_forwarders_signature() -> None:
    text = (
        "Mohon ditindaklanjuti.\nEmail: sekretariat@trenggalekkab.go.id\n\n"
        "---------- Forwarded message ---------\nFrom: Dinas Sosial <dinsos@trenggalekkab.go.id>\n"
        "Date: Sen, 9 Nov 2026\nSubject: Permohonan\nTo: <sekretariat@trenggalekkab.go.id>\n\n" + FORM
    )
    fields = extract_request(msg(text, from_addr="sekretariat@trenggalekkab.go.id"), OPTS)
    assert fields is not None and fields.pic_email == "lukman.dinsos@gmail.com"


def test_underscore_signature_divider_is_not_a_forward() -> None:
    text = FORM + "\n______________________\nLukman\nEmail: humas.dinsos@trenggalekkab.go.id\n"
    fields = extract_request(msg(text), OPTS)
    assert fields is not None and fields.pic_email == "lukman.dinsos@gmail.com"


def test_forward_without_email_falls_back_to_original_sender() -> None:
    form = FORM.replace("Email : lukman.dinsos@gmail.com\n", "")
    fields = extract_request(
        msg(form, from_addr="sekretariat@trenggalekkab.go.id", forwarded_from="dinsos@trenggalekkab.go.id"), OPTS
    )
    assert fields is not None and fields.pic_email == "dinsos@trenggalekkab.go.id"
    origin = {o.field: o for o in fields.origins}["pic_email"]
    assert origin.label == "Pengirim asli (pesan terusan)"
    fields = extract_request(msg(form), OPTS)
    assert fields is not None and fields.pic_email == "dinsos@trenggalekkab.go.id"
    assert {o.field: o for o in fields.origins}["pic_email"].label == "Pengirim surel (From)"


def test_missing_and_problems_are_separate() -> None:
    text = "Nama Sub Domain : dinas_sosial\nPerangkat Daerah : Dinas Sosial\nNo. HP : -\n"
    fields = extract_request(msg(text), OPTS)
    assert fields is not None
    assert [p.field for p in fields.problems] == ["subdomain"]
    assert fields.missing == ("pic_name", "pic_phone", "purpose")
    assert fields.pic_email == "dinsos@trenggalekkab.go.id"  # from the sender


# --- OCR ----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not TESSERACT, reason="tesseract is not installed")
def test_ocr_of_an_image_and_a_scanned_pdf() -> None:
    u = gen.DLH
    img = gen.scan_image(
        [f"Nama Sub Domain : {u.sub}", f"Perangkat Daerah : {u.unit}", f"Email : {u.email}"], size=(1200, 300)
    )
    png = Attachment("foto.png", "image/png", gen.png_bytes(img))
    fields = extract_request(msg("Formulir terlampir.", attachments=(png,)), OPTS)
    assert fields is not None and fields.source == "ocr"
    assert (fields.subdomain, fields.unit, fields.pic_email) == (u.sub, u.unit, u.email)
    page = gen.scan_image([f"Nama Sub Domain : {u.sub}", f"Perangkat Daerah : {u.unit}", f"Email : {u.email}"])
    pdf = _pdf_att(gen.pdf_from_image(page))
    fields = extract_request(msg("Scan terlampir.", attachments=(pdf,)), OPTS)
    assert fields is not None and fields.source == "ocr" and fields.subdomain == u.sub


@pytest.mark.skipif(not TESSERACT, reason="tesseract is not installed")
def test_ocr_reads_only_the_scanned_page_of_a_mixed_pdf() -> None:
    from pypdf import PdfReader, PdfWriter

    u = gen.DINKES
    typed = gen.pdf_letter(u, [("Keperluan", u.purpose)])  # typed cover letter, no sub-domain on it
    scan = gen.pdf_from_image(gen.scan_image([f"Nama Sub Domain : {u.sub}", f"Perangkat Daerah : {u.unit}"]))
    writer = PdfWriter()
    for part in (typed, scan):
        for page in PdfReader(io.BytesIO(part)).pages:
            writer.add_page(page)
    buf = io.BytesIO()
    writer.write(buf)
    content = read_pdf(buf.getvalue(), Limits(), "campur.pdf")
    assert content.scan_pages == (1,)
    fields = extract_request(msg("Terlampir.", attachments=(_pdf_att(buf.getvalue()),)), OPTS)
    assert fields is not None
    origins = {o.field: o.source for o in fields.origins}
    assert (fields.subdomain, origins["subdomain"], origins["purpose"]) == (u.sub, "ocr", "pdf")


def test_ocr_switched_off_reads_nothing_and_does_not_fail() -> None:
    u = gen.DLH
    img = gen.scan_image([f"Nama Sub Domain : {u.sub}", f"Perangkat Daerah : {u.unit}"], size=(1200, 200))
    png = Attachment("foto.png", "image/png", gen.png_bytes(img))
    opts = ParseOptions(zone=ZONE, limits=Limits(ocr=False))
    assert extract_request(msg("Formulir terlampir.", attachments=(png,)), opts) is None


def test_ocr_not_run_when_the_form_is_already_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    import subdomaind.parsers.request as request

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("OCR ran")

    monkeypatch.setattr(request, "ocr_image", boom)
    png = Attachment("logo.png", "image/png", gen.png_bytes(gen.scan_image(["x"], size=(600, 600))))
    fields = extract_request(msg(FORM, attachments=(png,)), OPTS)
    assert fields is not None and fields.missing == ()


# --- limits and hostile input --------------------------------------------------------------------------------


def test_pdf_over_page_limit_is_a_problem_and_bounded() -> None:
    u = gen.DISPERTAPA
    data = gen.pdf_letter(u, [("Nama Sub Domain", u.sub)], extra_pages=40)
    start = time.monotonic()
    content = read_pdf(data, Limits(max_pdf_pages=2), "besar.pdf")
    assert time.monotonic() - start < 5
    assert [p.field for p in content.problems] == ["lampiran"]
    assert "berisi 41 halaman; hanya 2 halaman pertama" in content.problems[0].reason
    assert any("Nama Sub Domain" in " ".join(r) for r in content.records)


def _flate_bomb_pdf(inflated: int) -> bytes:
    return _raw_pdf(bytes(inflated))


def _raw_pdf(content: bytes) -> bytes:
    stream = zlib.compress(content, 9)
    head = (
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
        b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>\nendobj\n"
    )
    obj = b"4 0 obj\n<< /Length " + str(len(stream)).encode() + b" /Filter /FlateDecode >>\nstream\n"
    return head + obj + stream + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%EOF\n"


def test_pdf_decompression_bomb_is_refused_before_parsing() -> None:
    data = _flate_bomb_pdf(8 * 1024 * 1024)
    start = time.monotonic()
    content = read_pdf(data, Limits(max_decompressed_bytes=4 * 1024 * 1024), "bom.pdf")
    assert time.monotonic() - start < 5
    assert content.records == () and "melebihi 4 MB" in content.problems[0].reason


def test_pdf_page_with_a_huge_content_stream_is_skipped() -> None:
    data = _raw_pdf(b"0 0 m 100 100 l S\n" * 200_000)  # 3.6 MB of drawing operators
    start = time.monotonic()
    content = read_pdf(data, Limits(), "peta.pdf")
    assert time.monotonic() - start < 5
    assert "terlalu rumit" in content.problems[0].reason


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n" + bytes(range(256)) * 20,
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 1 0 R >> endobj trailer << /Root 1 0 R >>",
        b"not a pdf at all",
        b"",
    ],
)
def test_hostile_pdf_becomes_a_problem_not_a_traceback(data: bytes) -> None:
    content = read_pdf(data, Limits(), "rusak.pdf")
    assert content.records == ()
    assert all(p.field == "lampiran" for p in content.problems)
    fields = extract_request(msg("Nama Sub Domain : dinsos\n", attachments=(_pdf_att(data, "rusak.pdf"),)), OPTS)
    assert fields is not None and fields.subdomain == "dinsos"


def test_truncated_pdf_never_raises() -> None:
    data = gen.pdf_table_form(gen.DINKES)
    for cut in (len(data) // 3, len(data) // 2, len(data) - 40):
        content = read_pdf(data[:cut], Limits(), "potong.pdf")
        assert all(p.field == "lampiran" for p in content.problems)


def test_docx_zip_bomb_is_refused_quickly() -> None:
    data = gen.docx_zip_bomb()
    start = time.monotonic()
    content = read_docx(data, Limits(), "bom.docx")
    assert time.monotonic() - start < 5
    assert content.records == () and "melebihi 50 MB" in content.problems[0].reason


def test_docx_zip_that_lies_about_sizes_is_refused_by_the_stream_check() -> None:
    base = gen._docx_bytes(gen._new_docx())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr("word/media/big.bin", bytes(3 * 1024 * 1024))
    data = bytearray(out.getvalue())
    # Rewrite the declared uncompressed size of big.bin (central directory) to 10 bytes.
    name = b"word/media/big.bin"
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    content = read_docx(bytes(data), Limits(max_decompressed_bytes=1024 * 1024), "bohong.docx")
    assert content.records == () and content.problems and content.problems[0].field == "lampiran"


def test_fixture_zip_bomb_message_is_answered_with_the_reason() -> None:
    from subdomaind.parsers import parse

    result = parse((FIXTURES / "request_docx_zip_bomb.eml").read_bytes(), OPTS)
    assert result.kind == "request" and result.request is not None
    assert "melebihi 50 MB" in result.request.problems[0].reason


# --- the fixtures' reasons ------------------------------------------------------------------------------------

REASONS = [
    ("request_invalid_subdomain_underscore", "subdomain", "memuat garis bawah"),
    ("request_subdomain_other_zone", "subdomain", "berada di luar domain trenggalekkab.go.id"),
    ("request_reserved_name_mail", "subdomain", "dicadangkan"),
    ("request_idn_label", "subdomain", "xn--caf-literasi-deb"),
    ("request_bad_nip_structure", "pic_nip", "tanggal lahir yang sah"),
    ("request_nik_instead_of_nip", "pic_nip", "tampaknya NIK"),
    ("request_private_ip", "target_ip", "alamat privat"),
    ("request_invalid_email", "pic_email", "tidak sah"),
    ("request_invalid_phone", "pic_phone", "bukan nomor telepon Indonesia"),
    ("request_service_ambiguous", "service", "belum dipilih"),
    ("request_bad_letter_number", "letter_number", "format penomoran naskah dinas"),
    ("request_pdf_over_page_limit", "lampiran", "hanya 10 halaman pertama"),
    ("request_docx_zip_bomb", "lampiran", "melebihi 50 MB"),
    ("request_legacy_doc_attachment", "lampiran", "mohon kirim formulir dalam bentuk PDF atau DOCX"),
]


@pytest.mark.parametrize(("name", "field", "substring"), REASONS)
def test_fixture_reasons(name: str, field: str, substring: str) -> None:
    from subdomaind.parsers import parse

    result = parse((FIXTURES / f"{name}.eml").read_bytes(), OPTS).to_json()
    reasons = [p["reason"] for p in result["request"]["problems"] if p["field"] == field]
    assert reasons and substring in reasons[0], reasons
    json.dumps(result)


def test_at_least_35_request_fixtures_with_expectations() -> None:
    cases = [p for p in FIXTURES.glob("request_*.eml") if p.with_suffix(".expected.json").exists()]
    assert len(cases) >= 35


def test_inflate_check_ends_on_a_stream_with_trailing_bytes() -> None:
    """A Flate stream that inflates past one step and has bytes after its end (ordinary scans) once made
    the size check loop for ever, stopping intake at that message."""
    import threading
    import zlib

    from subdomaind.parsers.pdf import inflated_size_exceeds

    body = zlib.compress(b"\0" * (8 << 20)) + b"\r\n\r\ntrailing bytes after the deflate end"
    pdf = b"%%PDF-1.4\n1 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + \
        b"\nendstream\nendobj\n%%EOF\n"
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(inflated_size_exceeds(pdf, 50 << 20)), daemon=True)
    t.start()
    t.join(timeout=20)
    assert result == [False], "inflated_size_exceeds did not return"
    assert inflated_size_exceeds(pdf, 1 << 20) is True


# --- letters in sentences (parsers/prose.py) ---------------------------------------------------------------

def _not_a_word(label: str) -> bool:
    from subdomaind.parsers.prose import _FUNCTION_WORDS, _STOP_LABELS

    return label not in _STOP_LABELS | _FUNCTION_WORDS | {"domain", "mail", "ftp"}


_LABELS = st.from_regex(r"[a-z][a-z0-9]{2,9}", fullmatch=True).filter(_not_a_word)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_LABELS, min_size=1, max_size=3, unique=True), fqdn=st.booleans(),
       joiner=st.sampled_from([" dan ", ", ", " serta "]), spaced_nip=st.booleans())
def test_prose_letter_gives_every_name_and_the_person(names: list[str], fqdn: bool, joiner: str,
                                                     spaced_nip: bool) -> None:
    """Whatever the names and however they are joined, a letter in sentences gives each of them, in order, and
    the penanggung jawab's NIP, spaced or not, as the same 18 digits."""
    from subdomaind.parsers import parse

    zone = "trenggalekkab.go.id"
    written = [f"{n}.{zone}" if fqdn else n for n in names]
    listed = joiner.join(written[:-1]) + (" dan " if len(written) > 1 else "") + written[-1]
    nip = "19900305 201503 2 001" if spaced_nip else "199003052015032001"
    body = (
        "Dengan hormat,\n\nBersama ini kami mengajukan permohonan pembuatan sub domain "
        f"{listed} untuk layanan informasi publik.\n"
        f"Sebagai penanggung jawab kami tunjuk Sdr. Rina Marlina, S.T. (NIP {nip}), jabatan Pranata Komputer, "
        "surel rina@example.org, telepon 0812-7788-1122.\n\nDemikian permohonan kami.\n"
    )
    raw = (
        "From: Sekretariat Daerah <setda@trenggalekkab.go.id>\nTo: layanan@trenggalekkab.go.id\n"
        "Subject: Surat permohonan\nMessage-ID: <p@x>\nContent-Type: text/plain; charset=utf-8\n\n" + body
    ).encode()
    req = parse(raw, ParseOptions(zone=zone)).request
    assert req is not None
    assert list(req.subdomains) == names
    assert (req.pic_name, req.pic_nip, req.pic_email, req.unit) == (
        "Rina Marlina, S.T.", "199003052015032001", "rina@example.org", "Sekretariat Daerah")


@pytest.mark.parametrize(("sentence", "names"), [
    ("Bersama ini kami mengajukan permohonan sub domain dinsos untuk website dinas.", ["dinsos"]),
    ("Kami mohon dibuatkan sub domain dengan nama dinkes sesuai SOP.", ["dinkes"]),
    ("Kami mengajukan sub domain baru bernama ppdb.", ["ppdb"]),
    ("Kami mengajukan sub domain ppid dan jdih pada domain trenggalekkab.go.id.", ["ppid", "jdih"]),
    ("Kami mengajukan sub domain \u201csipakde\u201d bagi dinas kami.", ["sipakde"]),
    # Descriptions, not names: "dinas sosial", "baru untuk kantor", "website resmi".
    ("Bersama ini kami mengajukan permohonan sub domain dinas sosial untuk website.", []),
    ("Kami mengajukan sub domain baru untuk kantor.", []),
    ("Mohon sub domain website resmi kami.", []),
    # A question about the rules asks for nothing.
    ("Apakah nama sub domain boleh memakai garis bawah, misalnya dinas_sosial?", []),
    ("Mohon dibuatkan sub domain ppid.trenggalekkab.go.id. Apakah bisa selesai minggu ini?",
     ["ppid.trenggalekkab.go.id"]),
])
def test_prose_names_only_what_a_sentence_names(sentence: str, names: list[str]) -> None:
    from subdomaind.parsers.prose import find_prose

    hits = [h for h in find_prose([[sentence]], "trenggalekkab.go.id") if h.field == "subdomains"]
    assert (hits[0].value.split("\n") if hits else []) == names
