"""The official letters (workflows/letters.py): wording, the three renderings, and user text kept inert."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pdfplumber
import pytest

from subdomaind.daemon.config import LetterConfig
from subdomaind.workflows.letters import KINDS, Letter, build_letter, clean, format_nip
from subdomaind.workflows.provision import generate_password

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PASSWORD = "Xk7pQ2mR9tLw"
OPENING = (
    "Menindaklanjuti surat Saudara Nomor 400.9/123/406.011/2026 tanggal 12 November 2026 "
    "hal Permohonan Sub Domain"
)

LETTER = LetterConfig(
    kop=["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"],
    address_line="Jl. Panglima Sudirman No. 1 Trenggalek, Telp. (0355) 000000, laman trenggalekkab.go.id",
    city="Trenggalek",
    signer_title="Kepala Dinas Komunikasi dan Informatika",
    signer_name="Drs. BUDI SANTOSO, M.Si.",
    signer_rank="Pembina Utama Muda (IV/c)",
    signer_nip="196804111993031009",
    tembusan=["Sekretaris Daerah Kabupaten Trenggalek", "Inspektur Kabupaten Trenggalek"],
)


def make_ctx(**over: Any) -> dict[str, Any]:
    """What engine.letter_context (plus note/by) hands over."""
    ctx: dict[str, Any] = {
        "letter": LETTER,
        "agency_name": "Dinas Komunikasi dan Informatika Kabupaten Trenggalek",
        "zone": "trenggalekkab.go.id",
        "ticket": "SD/2026/0042",
        "letter_number": "555/12/406.020/2026",
        "letter_date": "21 November 2026",
        "received": "13 November 2026 pukul 09.15",
        "unit": "Dinas Sosial",
        "subdomain": "dinsos",
        "fqdn": "dinsos.trenggalekkab.go.id",
        "fields": {
            "unit": "Dinas Sosial",
            "unit_head": "Kepala Dinas Sosial",
            "letter_number": "400.9/123/406.011/2026",
            "letter_date": "12 November 2026",
            "letter_subject": "Permohonan Sub Domain",
            "pic_email": "lukman.hakim@dinsos.trenggalekkab.go.id",
            "service": "subdomain",
            "check": {
                "missing": ["pic_phone", "purpose"],
                "problems": [{"field": "target_ip", "reason": "Alamat IP '10.0.0.5' bukan alamat IP publik."}],
            },
        },
        "ip": "203.0.113.10",
        "rdtype": "A",
        "name_servers": ["ns1.trenggalekkab.go.id.", "ns2.trenggalekkab.go.id"],
        "username": "dinsos",
        "password": PASSWORD,
        "note": "Nama sub domain belum sesuai singkatan resmi perangkat daerah.",
        "by": "Kepala Dinas Komunikasi dan Informatika",
    }
    ctx.update(over)
    return ctx


def pdf_text(data: bytes) -> str:
    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return " ".join(" ".join((page.extract_text() or "").split()) for page in pdf.pages)


def flat(text: str) -> str:
    return " ".join(text.split())


def common_parts() -> list[str]:
    return [
        "PEMERINTAH KABUPATEN TRENGGALEK",
        "DINAS KOMUNIKASI DAN INFORMATIKA",
        "Trenggalek, 21 November 2026",
        "Nomor : 555/12/406.020/2026",
        "Hal :",
        "Yth. Kepala Dinas Sosial",
        OPENING,
        "Demikian kami sampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.",
        "Kepala Dinas Komunikasi dan Informatika",
        "Kabupaten Trenggalek,",
        "Drs. BUDI SANTOSO, M.Si.",
        "Pembina Utama Muda (IV/c)",
        "NIP. 19680411 199303 1 009",
        "Tembusan:",
        "Sekretaris Daerah Kabupaten Trenggalek",
        "Inspektur Kabupaten Trenggalek",
    ]


KIND_PARTS = {
    "final": [
        "Hal : Pemberitahuan Pembuatan Sub Domain",
        "dinsos.trenggalekkab.go.id",
        "203.0.113.10",
        "ns1.trenggalekkab.go.id, ns2.trenggalekkab.go.id",
        "Nama pengguna dan kata sandi telah dikirim terpisah ke alamat surel penanggung jawab",
        "dengan kata BERHASIL",
        "dengan kata KENDALA diikuti uraian kendalanya",
    ],
    "rejection": [
        "Hal : Jawaban atas Permohonan Layanan Sub Domain",
        "belum dapat kami penuhi",
        "Nama sub domain belum sesuai singkatan resmi perangkat daerah.",
    ],
    "incomplete": [
        "Hal : Permintaan Kelengkapan Permohonan Layanan Sub Domain",
        "Nomor HP penanggung jawab Belum diisi.",
        "Keperluan (fungsi situs) Belum diisi.",
        "Alamat IP server Alamat IP '10.0.0.5' bukan alamat IP publik.",  # a problem: its reason
        "nomor tiket SD/2026/0042",
    ],
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_renders_in_text_html_and_pdf(kind: str) -> None:
    letter = build_letter(kind, make_ctx())
    assert isinstance(letter, Letter)
    assert letter.subject and letter.hal and letter.opening and letter.closing
    text = letter.to_text()
    html = letter.to_html()
    pdf = letter.to_pdf()
    assert pdf.startswith(b"%PDF-")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    # Text and PDF carry the same parts; the PDF's table cells read as "label value".
    for part in [*common_parts(), *KIND_PARTS[kind]]:
        assert part in pdf_text(pdf), f"{part!r} missing from the {kind} PDF"
    text_flat = flat(text)
    for part in common_parts():
        assert flat(part) in text_flat, f"{part!r} missing from the {kind} text"


def test_pdf_header_layout_place_date_level_with_nomor_and_signature_on_the_right() -> None:
    pdf = build_letter("final", make_ctx()).to_pdf()
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        assert len(doc.pages) == 1, "the usual final letter fits on one page"
        page = doc.pages[0]
        words = page.extract_words()
        width = float(page.width)

        def first(text: str) -> dict[str, Any]:
            return next(w for w in words if w["text"] == text)

        nomor = first("Nomor")
        level = [w["text"] for w in words if abs(float(w["top"]) - float(nomor["top"])) < 2
                 and float(w["x0"]) > width / 2]
        assert level == ["Trenggalek,", "21", "November", "2026"], "place and date sit right, level with Nomor"
        name = next(w for w in words if w["text"] == "SANTOSO,")
        assert float(name["x0"]) > width / 2, "the signature block is on the right"
        kop = first("PEMERINTAH")
        kop_line = [w for w in words if abs(float(w["top"]) - float(kop["top"])) < 2]
        middle = (min(float(w["x0"]) for w in kop_line) + max(float(w["x1"]) for w in kop_line)) / 2
        assert abs(middle - width / 2) < 45, "the kop is centred (on the text block)"
        rules = [r for r in page.rects + page.lines if float(r["width"]) > width * 0.7 and float(r["top"]) < 150]
        assert rules, "a rule runs under the kop"
        tembusan = first("Tembusan:")
        assert float(tembusan["top"]) > float(name["top"]), "the tembusan comes after the signature"


def test_final_letter_page_image_is_kept_as_an_artifact() -> None:
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    pdf_path = ARTIFACTS / "letter_final.pdf"
    pdf_path.write_bytes(build_letter("final", make_ctx()).to_pdf())
    png = ARTIFACTS / "letter_final.png"
    png.unlink(missing_ok=True)
    subprocess.run(
        ["pdftoppm", "-r", "80", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf_path), str(png.with_suffix(""))],
        check=True,
        timeout=60,
    )
    assert png.is_file()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert abs(width - 661) <= 2 and abs(height - 935) <= 2, "A4 at 80 dpi"
    assert len(data) > 20_000, "a page with a letter on it, not a blank one"


def test_user_text_is_never_evaluated_and_is_escaped_in_html() -> None:
    evil = "{{ 7*7 }}<b>x</b>"
    fields = {**make_ctx()["fields"], "unit_head": None, "letter_subject": "{% if 1 %}hal{% endif %}"}
    ctx = make_ctx(unit=evil, fields=fields, note="<script>alert(1)</script> {{ config }}")
    for kind in KINDS:
        letter = build_letter(kind, ctx)
        text = letter.to_text()
        assert f"Yth. Kepala {evil}" in text
        assert "{% if 1 %}hal{% endif %}" in text
        assert "Kepala 49" not in text
        html = letter.to_html()
        assert "{{ 7*7 }}&lt;b&gt;x&lt;/b&gt;" in html
        assert "<b>x</b>" not in html
        assert "<script" not in html.lower()
        assert evil in pdf_text(letter.to_pdf())
    rejection = build_letter("rejection", ctx)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ config }}" in rejection.to_html()


def test_control_characters_and_line_breaks_in_user_text_cannot_reach_the_letter() -> None:
    note = "Baris satu\n\n1. bukan butir\x00\x07 baris\u202e dua\r\nakhir"
    fields = {**make_ctx()["fields"], "unit_head": None}
    letter = build_letter("rejection", make_ctx(note=note, unit="Dinas\x0bSosial\n\nPalsu", fields=fields))
    for value in (*letter.paragraphs, *(v for _, v in letter.details), letter.addressee):
        assert not re.search(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]", value)
    assert ("Alasan", "Baris satu 1. bukan butir baris dua akhir.") in letter.details
    assert letter.addressee == "Kepala Dinas Sosial Palsu"
    text = pdf_text(letter.to_pdf())
    assert "Baris satu 1. bukan butir baris dua akhir" in text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", letter.to_text())


def test_no_letter_shows_the_password_and_each_says_it_went_to_the_pic_separately() -> None:
    real = generate_password()
    fields = {**make_ctx()["fields"], "pic_email": "lukman@dinsos.trenggalekkab.go.id"}
    for password in (real, None):
        letter = build_letter("final", make_ctx(password=password, fields=fields))
        assert not any(label == "Kata sandi" for label, _ in letter.details)
        assert ("Akun hosting", "Nama pengguna dan kata sandi telah dikirim terpisah ke alamat surel penanggung jawab "
                "(lukman@dinsos.trenggalekkab.go.id) dan tidak dicantumkan dalam surat ini; kata sandi mohon segera "
                "diganti setelah masuk pertama kali.") in letter.details
        outputs = [letter.to_text(), letter.to_html(), pdf_text(letter.to_pdf())]
        for out in outputs:
            assert real not in out and PASSWORD not in out
            assert ("Nama pengguna dan kata sandi telah dikirim terpisah ke alamat surel penanggung jawab "
                    "(lukman@dinsos.trenggalekkab.go.id) dan tidak dicantumkan dalam surat ini;") in flat(out)
            # Nothing shaped like a generated password (mixed case and digits, no separators) anywhere.
            looks = [t for t in re.findall(r"[A-Za-z0-9]{10,}", out)
                     if re.search(r"[a-z]", t) and re.search(r"[A-Z]", t) and re.search(r"\d", t)]
            assert looks == []


def test_acting_signer_and_defaults_without_letter_config() -> None:
    acting = build_letter(
        "final",
        make_ctx(signer={"prefix": "a.n.", "own_title": "Sekretaris", "name": "SRI WAHYUNI, S.E.", "nip": "197501012000032002"}),
    )
    assert acting.signature.jabatan_lines() == (
        "a.n. Kepala Dinas Komunikasi dan Informatika",
        "Kabupaten Trenggalek",
        "Sekretaris,",
    )
    text = pdf_text(acting.to_pdf())
    assert "a.n. Kepala Dinas Komunikasi dan Informatika" in text and "NIP. 19750101 200003 2 002" in text
    plh = build_letter("final", make_ctx(signer={"prefix": "plh"}))
    assert plh.signature.jabatan_lines()[0] == "Plh. Kepala Dinas Komunikasi dan Informatika"

    # What the engine sends today for a rejection: summary + note/by, no letter config or numbers.
    bare = build_letter(
        "rejection",
        {"ticket": "SD/2026/0007", "agency_name": "Dinas Komunikasi dan Informatika Kabupaten Trenggalek",
         "fields": {}, "unit": None, "fqdn": None, "note": None, "by": None, "received": "3 Maret 2026 pukul 10.00"},
    )
    assert bare.kop == ("DINAS KOMUNIKASI DAN INFORMATIKA KABUPATEN TRENGGALEK",)
    assert bare.nomor == ""
    assert "Nomor : -" in pdf_text(bare.to_pdf())
    assert bare.opening[0].startswith(
        "Menindaklanjuti permohonan layanan sub domain Saudara yang kami terima melalui surel pada 3 Maret 2026"
    )
    assert ("Alasan", "Tidak disertai catatan. Untuk keterangan lebih lanjut, Saudara dapat menghubungi kami "
            "melalui surel ini.") in bare.details


def test_each_kind_has_its_configured_signer_with_an_and_ub() -> None:
    letter_cfg = LetterConfig(**{**LETTER.model_dump(), "signers": {
        "incomplete": {"prefix": "a.n.", "own_title": "Kepala Bidang Aplikasi Informatika",
                       "ub_title": "Kepala Seksi Tata Kelola", "name": "RINA KUSUMA, S.Kom.",
                       "rank": "Penata (III/c)", "nip": "198503152010012004"},
        "rejection": {"prefix": "a.n.", "own_title": "Sekretaris", "name": "SRI WAHYUNI, S.E.",
                      "nip": "197501012000032002"},
    }})
    incomplete = build_letter("incomplete", make_ctx(letter=letter_cfg))
    assert incomplete.signature.jabatan_lines() == (
        "a.n. Kepala Dinas Komunikasi dan Informatika",
        "Kabupaten Trenggalek",
        "Kepala Bidang Aplikasi Informatika",
        "u.b.",
        "Kepala Seksi Tata Kelola,",
    )
    text = flat(incomplete.to_text())
    assert "u.b. Kepala Seksi Tata Kelola, RINA KUSUMA, S.Kom. Penata (III/c) NIP. 19850315 201001 2 004" in text
    pdf = pdf_text(incomplete.to_pdf())
    assert "Kepala Seksi Tata Kelola, RINA KUSUMA, S.Kom." in pdf and "BUDI SANTOSO" not in pdf, \
        "the head's name never stands under another official's jabatan"
    rejection = build_letter("rejection", make_ctx(letter=letter_cfg))
    assert rejection.signature.jabatan_lines()[-1] == "Sekretaris,"
    assert rejection.signature.name == "SRI WAHYUNI, S.E." and rejection.signature.rank == ""
    final = build_letter("final", make_ctx(letter=letter_cfg))  # not configured: the head signs
    assert final.signature.jabatan_lines()[0] == "Kepala Dinas Komunikasi dan Informatika"
    assert final.signature.name == "Drs. BUDI SANTOSO, M.Si."

    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="u.b."):
        LetterConfig(signers={"final": {"ub_title": "Kepala Seksi"}})
    with pytest.raises(ValidationError, match="own_title is only printed"):
        LetterConfig(signers={"final": {"own_title": "Sekretaris"}})


def test_the_note_becomes_a_sentence_and_lampiran_counts_the_files() -> None:
    from subdomaind.workflows.letters import as_sentence, lampiran_text

    assert as_sentence("nama sub domain belum sesuai nomenklatur") == "Nama sub domain belum sesuai nomenklatur."
    assert as_sentence("Sudah dipakai OPD lain!") == "Sudah dipakai OPD lain!"
    assert as_sentence("  dns sudah ada (lihat www)") == "Dns sudah ada (lihat www)."  # words kept as written
    assert as_sentence("") == ""
    assert [lampiran_text(n) for n in (0, 1, 2, 12)] == ["-", "1 (satu) berkas", "2 (dua) berkas", "12 berkas"]
    rejection = build_letter("rejection", make_ctx(note="nama tidak sesuai nomenklatur perangkat daerah"))
    assert ("Alasan", "Nama tidak sesuai nomenklatur perangkat daerah.") in rejection.details
    incomplete = build_letter("incomplete", make_ctx(lampiran="2 (dua) berkas"))
    assert incomplete.lampiran == "2 (dua) berkas"
    assert "Lampiran : 2 (dua) berkas" in pdf_text(incomplete.to_pdf())


def test_text_and_html_say_where_the_electronic_signature_is() -> None:
    signed = build_letter("rejection", make_ctx(electronic=True))
    assert "(ditandatangani secara elektronik pada berkas PDF terlampir)" in flat(signed.to_text())
    assert "(ditandatangani secara elektronik pada berkas PDF terlampir)" in signed.to_html()
    plain = build_letter("rejection", make_ctx())
    assert "elektronik" not in plain.to_text() + plain.to_html()


def test_the_coat_of_arms_sits_left_of_the_kop(tmp_path: Path) -> None:
    from tests.devkit.localoffice import DEMO_LOGO

    with_logo = build_letter("final", make_ctx(letter=LetterConfig(**{**LETTER.model_dump(), "logo": DEMO_LOGO})))
    with pdfplumber.open(io.BytesIO(with_logo.to_pdf())) as doc:
        page = doc.pages[0]
        assert len(page.images) == 1
        image = page.images[0]
        kop = next(w for w in page.extract_words() if w["text"] == "PEMERINTAH")
        assert float(image["x1"]) < float(kop["x0"]), "the emblem is left of the kop text"
        assert float(image["top"]) < 120 and 50 < float(image["height"]) < 62, "about 2 cm high, at the top"
    broken = tmp_path / "lambang.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    for path in (Path("/nonexistent/lambang.png"), broken):
        without = LetterConfig(**{**LETTER.model_dump(), "logo": path})
        with pdfplumber.open(io.BytesIO(build_letter("final", make_ctx(letter=without)).to_pdf())) as doc:
            assert doc.pages[0].images == []
            assert "PEMERINTAH KABUPATEN TRENGGALEK" in (doc.pages[0].extract_text() or "")


def test_hosting_wording_and_plt_addressee() -> None:
    fields = {**make_ctx()["fields"], "service": "hosting", "unit_head": "Plt. Kepala Dinas Sosial"}
    letter = build_letter("final", make_ctx(fields=fields))
    assert letter.hal == "Pemberitahuan Pembuatan Sub Domain dan Hosting"
    assert letter.addressee == "Kepala Dinas Sosial"
    assert any("layanan hosting" in p for p in letter.body)


def test_unknown_kind_and_helpers() -> None:
    with pytest.raises(ValueError):
        build_letter("surat_cinta", make_ctx())
    assert format_nip("196804111993031009") == "19680411 199303 1 009"
    assert format_nip("12345") == "12345"
    assert clean("a\u200bb\tc\n\nd") == "ab c d"
    assert len(clean("x" * 1000)) == 300


def test_a_long_note_flows_onto_a_numbered_second_page() -> None:
    note = "Nama sub domain harus mengikuti singkatan resmi perangkat daerah. " * 20
    pdf = build_letter("rejection", make_ctx(note=note)).to_pdf()
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        assert len(doc.pages) == 2
        second = " ".join((doc.pages[1].extract_text() or "").split())
    assert second.startswith("- 2 -")
    text = pdf_text(pdf).replace(" - 2 - ", " ")  # the page number lands wherever the row splits
    assert text.count("mengikuti singkatan resmi perangkat daerah.") == 20, "no part of the note is lost"
