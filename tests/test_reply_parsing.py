"""Reply trimming per mail client, the decision rules, and properties that must hold for any reply text."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from subdomaind.parsers.model import ParsedMessage, Vocabulary
from subdomaind.parsers.reply import decide_text, extract_reply, strip_quoted

MAILBOX = "Layanan Sub Domain Diskominfo <layanan@trenggalekkab.go.id>"
TEMPLATE = """Yth. Kepala Dinas Komunikasi dan Informatika,

Permohonan sub domain baru menunggu disposisi Bapak/Ibu.

Tiket      : SD/2026/0042
Sub domain : dinsos.trenggalekkab.go.id

Balas surel ini dengan SETUJU atau TOLAK (boleh disertai catatan).
SETUJU — permohonan diteruskan kepada Kepala Bidang e-Government dan Statistik.
TOLAK — permohonan dikembalikan kepada pemohon beserta catatan Bapak/Ibu.

--
subdomaind — Diskominfo Kabupaten Trenggalek"""


def quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


# -------------------------------------------------------------------------------------------------------------
# strip_quoted, one case per client style
# -------------------------------------------------------------------------------------------------------------

OUTLOOK_ID_BLOCK = (
    f"Dari: {MAILBOX}\nDikirim: Sabtu, 21 November 2026 09.12\nKepada: Kepala Dinas <kadis@trenggalekkab.go.id>\n"
    "Subjek: [SD/2026/0042] Disposisi permohonan sub domain dinsos.trenggalekkab.go.id\n\n"
)
OUTLOOK_EN_BLOCK = (
    f"From: {MAILBOX}\nSent: Saturday, November 21, 2026 9:12 AM\nTo: Kepala Dinas <kadis@trenggalekkab.go.id>\n"
    "Subject: [SD/2026/0042] Disposisi permohonan sub domain dinsos.trenggalekkab.go.id\n\n"
)

STRIP_CASES: list[tuple[str, str, str]] = [
    ("gmail_id_pukul",
     f"SETUJU\n\nPada tanggal Sab, 31 Okt 2020 pukul 22.12 {MAILBOX} menulis:\n\n{quoted(TEMPLATE)}", "SETUJU"),
    ("gmail_id_two_line_nested",
     f"SETUJU\n\nPada Sab, 15 Jun 2024 pukul 14.59 {MAILBOX}\n> menulis:\n{quoted(TEMPLATE)}", "SETUJU"),
    ("gmail_id_wrapped_inside_address",
     "Setuju\n\nPada tanggal Sab, 15 Jun 2024 pukul 14.59 Layanan Sub Domain Diskominfo <\n"
     f"layanan@trenggalekkab.go.id> menulis:\n\n{quoted(TEMPLATE)}", "Setuju"),
    ("gmail_mobile_no_pukul",
     f"Setuju\n\nPada tanggal Sen, 3 Des 2018 10.41 {MAILBOX} menulis:\n\n{quoted(TEMPLATE)}", "Setuju"),
    ("gmail_en", f"OK\n\nOn Sat, Jun 15, 2024 at 2:59 PM {MAILBOX} wrote:\n\n{quoted(TEMPLATE)}", "OK"),
    ("gmail_en_two_line",
     f"OK\n\nOn Sat, Jun 15, 2024 at 2:59 PM Layanan Sub Domain <\nlayanan@trenggalekkab.go.id> wrote:\n\n"
     f"{quoted(TEMPLATE)}", "OK"),
    ("outlook_id_rule", f"Setuju\n\n________________________________\n{OUTLOOK_ID_BLOCK}{TEMPLATE}", "Setuju"),
    ("outlook_id_no_rule", f"Setuju\n\n{OUTLOOK_ID_BLOCK}{TEMPLATE}", "Setuju"),
    ("outlook_en_bold_labels",
     f"TOLAK\nNama tidak sesuai\n\n{OUTLOOK_EN_BLOCK.replace('From:', '*From:*').replace('Sent:', '*Sent:*')}"
     f"{TEMPLATE}", "TOLAK\nNama tidak sesuai"),
    ("outlook_original_message", f"ACC\n\n-----Original Message-----\n{OUTLOOK_EN_BLOCK}{TEMPLATE}", "ACC"),
    ("outlook_pesan_asli", f"ACC\n\n-----Pesan Asli-----\n{OUTLOOK_ID_BLOCK}{TEMPLATE}", "ACC"),
    ("thunderbird_pesan_asli",
     f"Setuju.\n\n-------- Pesan Asli --------\nSubjek: \tx\nTanggal: \ty\nDari: \t{MAILBOX}\n\n{TEMPLATE}",
     "Setuju."),
    ("thunderbird_pada_menulis", f"SETUJU\n\nPada 21/11/26 09.12, Layanan Sub Domain menulis:\n{quoted(TEMPLATE)}",
     "SETUJU"),
    ("thunderbird_name_menulis", f"SETUJU\n\nLayanan Sub Domain menulis:\n{quoted(TEMPLATE)}", "SETUJU"),
    ("thunderbird_menulis_di", f"SETUJU\n\nLayanan Sub Domain menulis di 21/11/26 09.12:\n{quoted(TEMPLATE)}",
     "SETUJU"),
    ("zimbra_pesan_asli",
     f"SETUJU\n\n----- Pesan Asli -----\nDari: {MAILBOX}\nKepada: kasi@x.go.id\nTerkirim: Sabtu, 21 November 2026"
     f"\nPerihal: x\n\n{TEMPLATE}", "SETUJU"),
    ("zimbra_original_message",
     f"SETUJU\n\n----- Original Message -----\nFrom: {MAILBOX}\nTo: kasi@x.go.id\nSent: Saturday\nSubject: x\n\n"
     f"{TEMPLATE}", "SETUJU"),
    ("angle_quote_only", f"TOLAK\n{quoted(TEMPLATE)}", "TOLAK"),
    ("signature_dashes", f"SETUJU\n-- \nBudi\nKadis\n\n{quoted(TEMPLATE)}", "SETUJU"),
    ("iphone_id", f"Setuju\n\nDikirim dari iPhone saya\n\n> Pada 21 Nov 2026, pukul 09.12, x menulis:\n{quoted(TEMPLATE)}",
     "Setuju"),
    ("iphone_en", "Setuju\n\nSent from my iPhone", "Setuju"),
    ("yahoo_android", "Setuju\n\nDikirim dari Yahoo Mail di Android", "Setuju"),
    ("outlook_android_en", "Setuju\n\nGet Outlook for Android", "Setuju"),
    ("outlook_ios_en", "Setuju\n\nGet Outlook for iOS", "Setuju"),
    ("outlook_android_id", "Setuju\n\nDapatkan Outlook untuk Android", "Setuju"),
    ("samsung_id", "Setuju\n\nDikirim dari ponsel Samsung Galaxy saya", "Setuju"),
    ("bottom_posted", f"Pada 21/11/26 09.12, Layanan menulis:\n{quoted(TEMPLATE)}\n\nSETUJU\n", "SETUJU"),
    ("template_without_prefix_or_header",
     f"Baik, saya pelajari dulu\n\n{TEMPLATE}", "Baik, saya pelajari dulu\n\nYth. Kepala Dinas Komunikasi dan Informatika,"
     "\n\nPermohonan sub domain baru menunggu disposisi Bapak/Ibu.\n\nTiket      : SD/2026/0042\n"
     "Sub domain : dinsos.trenggalekkab.go.id"),
    ("crlf_line_endings", "SETUJU\r\n\r\nOn Sat, Jun 15, 2024 at 2:59 PM X <a@b.c> wrote:\r\n> TOLAK\r\n", "SETUJU"),
    ("no_quote_at_all", "SETUJU\nSilakan diproses.", "SETUJU\nSilakan diproses."),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in STRIP_CASES], ids=[n for n, _, _ in STRIP_CASES])
def test_strip_quoted_per_client(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected


def test_official_line_starting_with_pada_is_not_a_header() -> None:
    text = f"SETUJU\nPada tanggal 25 saya cuti.\n\nPada tanggal Sab, 31 Okt 2020 pukul 22.12 {MAILBOX} menulis:\n> TOLAK"
    assert strip_quoted(text) == "SETUJU\nPada tanggal 25 saya cuti."


def test_official_note_with_dari_label_is_kept() -> None:
    # One "Dari:" line is not a header block; Outlook's block has at least two more labels under it.
    text = "TOLAK\nDari: hasil rapat, nama harus dinsos.\n\nTerima kasih"
    assert strip_quoted(text) == text


# -------------------------------------------------------------------------------------------------------------
# The decision rules, table-driven
# -------------------------------------------------------------------------------------------------------------

DECISIONS: list[tuple[str, str, str | None, str]] = [
    # text, decision, note, a rule that must have fired
    ("SETUJU", "approve", None, "keyword_approve"),
    ("Setuju.", "approve", None, "keyword_approve"),
    ("SETUJU!!", "approve", None, "keyword_approve"),
    ("setuju, lanjutkan", "approve", "lanjutkan", "keyword_approve"),
    ("*SETUJU*", "approve", None, "keyword_approve"),
    ("_setuju_", "approve", None, "keyword_approve"),
    ("Disetujui.", "approve", None, "keyword_approve"),
    ("ACC", "approve", None, "keyword_approve"),
    ("Oke", "approve", None, "keyword_approve"),
    ("ok lanjut", "approve", "lanjut", "keyword_approve"),
    ("Yth. Bapak Kasi,\n\nSETUJU, silakan diproses.\n\nTerima kasih\nBudi", "approve", "silakan diproses.",
     "keyword_approve"),
    ("Saya tidak keberatan, setuju.", "approve", None, "keyword_approve"),
    ("TOLAK\nNama sub domain tidak sesuai nomenklatur", "reject", "Nama sub domain tidak sesuai nomenklatur",
     "keyword_reject"),
    ("TIDAK SETUJU", "reject", None, "keyword_reject"),
    ("tidak  setuju", "reject", None, "keyword_reject"),
    ("tidak\nsetuju", "reject", None, "keyword_reject"),
    ("Mohon maaf, belum dapat disetujui karena SK belum ada", "reject", "karena SK belum ada", "keyword_reject"),
    ("Tidak disetujui.", "reject", None, "keyword_reject"),
    ("Ditolak", "reject", None, "keyword_reject"),
    ("Belum setuju", "reject", None, "keyword_reject"),
    ("Jangan diproses dulu", "reject", "dulu", "keyword_reject"),
    ("TOLAK, koordinasikan dengan Kasi", "reject", "koordinasikan dengan Kasi", "first_keyword_wins"),
    ("PERBAIKI\nNama harus dinsos", "revise", "Nama harus dinsos", "keyword_revise"),
    ("Revisi: nomor HP belum diisi", "revise", "nomor HP belum diisi", "keyword_revise"),
    ("Perlu perbaikan", "revise", None, "keyword_revise"),
    ("KENDALA\nDNS belum resolve", "problem", "DNS belum resolve", "keyword_problem"),
    ("BATAL", "cancel", None, "keyword_cancel"),
    ("Batalkan, salah pilih", "cancel", "salah pilih", "keyword_cancel"),
    ("Berhasil, terima kasih", "confirm", None, "keyword_confirm"),
    # unclear, each with its rule
    ("", "unclear", None, "empty_reply"),
    ("Sudah saya terima, terima kasih.", "unclear", None, "no_keyword"),
    ("Saya menyetujui permohonan ini.", "unclear", None, "no_keyword"),  # whole words only
    ("okey", "unclear", None, "no_keyword"),  # "okey" is neither "ok" nor "oke"
    ("SETUJU\nEh maaf, TOLAK saja", "unclear", None, "conflicting_keywords"),
    ("Setuju atau tolak? Saya bingung.", "unclear", None, "empty_reply"),  # reads as the template's legend
    ("SETUJU\nTapi jangan diproses dulu", "unclear", None, "conflicting_keywords"),
    ("setuju dengan catatan: gunakan SSL", "unclear", "dengan catatan: gunakan SSL", "conditional_approval"),
    ("Setuju, tapi nama diganti dinsos", "unclear", "tapi nama diganti dinsos", "conditional_approval"),
    ("Baik, saya pelajari dulu", "unclear", "dulu", "needs_human"),
    ("Untuk diketahui", "unclear", None, "needs_human"),
    ("Setuju?", "unclear", None, "question"),
    ("belum bisa acc", "unclear", None, "negated_approval"),
    ("tidak ok", "unclear", None, "negated_approval"),
    ("Terima kasih.\nSudah saya baca.\nNanti saya cek lagi.\nSalam.\nSetuju", "unclear", None,
     "keyword_not_in_opening"),
]


@pytest.mark.parametrize(("text", "decision", "note", "rule"), DECISIONS, ids=[repr(d[0])[:40] for d in DECISIONS])
def test_decision_rules(text: str, decision: str, note: str | None, rule: str) -> None:
    result = decide_text(text)
    assert result.decision == decision, result
    assert rule in result.rules, result
    if decision != "unclear" or note is not None:
        assert result.note == note, result


def test_negation_matched_before_approval_records_keyword() -> None:
    assert decide_text("tidak setuju").keyword == "tidak setuju"
    assert decide_text("Belum dapat disetujui").keyword == "belum dapat disetujui"


def test_vocabulary_is_configurable() -> None:
    vocab = Vocabulary(approve=("terima",), reject=("tolak",), revise=(), problem=(), cancel=(), confirm=(),
                       conditional=(), hold=(), negation=("jangan",))
    assert decide_text("TERIMA", vocab).decision == "approve"
    assert decide_text("SETUJU", vocab).decision == "unclear"  # not in this agency's words
    assert decide_text("jangan terima", vocab).decision == "unclear"


def test_empty_vocabulary_is_always_unclear() -> None:
    empty = Vocabulary(approve=(), reject=(), revise=(), problem=(), cancel=(), confirm=(), conditional=(),
                       hold=(), negation=())
    assert decide_text("SETUJU", empty).decision == "unclear"


def test_extract_reply_reads_message_text() -> None:
    msg = ParsedMessage(
        message_id=None, from_addr="kadis@x.go.id", from_name=None, to=(), cc=(), reply_to=(), delivered_to=(),
        subject="Re: x", date=None, in_reply_to=None, references=(), headers=(), text="TOLAK\nBelum lengkap",
        html=None, attachments=(),
    )
    result = extract_reply(msg, Vocabulary())
    assert (result.decision, result.note, result.text) == ("reject", "Belum lengkap", "TOLAK\nBelum lengkap")


# -------------------------------------------------------------------------------------------------------------
# Properties
# -------------------------------------------------------------------------------------------------------------

_WORDS = [
    "setuju", "SETUJU", "tolak", "TOLAK", "tidak", "belum", "acc", "ok", "oke", "lanjut", "proses", "perbaiki",
    "revisi", "kendala", "batal", "mohon", "nama", "sub", "domain", "dinsos", "catatan", "dengan", "saya", "sudah",
    "Pak", "Bu", "pelajari", "terima", "kasih", "disetujui", "ditolak", "SK", "belum", "dulu", "segera",
]
_PUNCT = [" ", " ", " ", ", ", ". ", "! ", "? ", "; ", " - ", ": ", "*", "\n", "\n\n"]

_line_text = st.lists(st.one_of(st.sampled_from(_WORDS), st.sampled_from(_PUNCT)), max_size=25).map("".join)
_new_text = st.one_of(
    _line_text,
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),
)

_HEADERS = [
    "Pada tanggal Sab, 31 Okt 2020 pukul 22.12 Layanan <layanan@trenggalekkab.go.id> menulis:",
    "Pada Sab, 15 Jun 2024 pukul 14.59 Layanan <layanan@trenggalekkab.go.id>\n> menulis:",
    "Pada tanggal Sen, 3 Des 2018 10.41 Layanan <layanan@trenggalekkab.go.id> menulis:",
    "On Sat, Jun 15, 2024 at 2:59 PM Layanan <layanan@trenggalekkab.go.id> wrote:",
    "Layanan Sub Domain menulis:",
    "-----Original Message-----",
    "-----Pesan Asli-----",
    "-------- Pesan Asli --------",
    "________________________________\nDari: Layanan <layanan@x.go.id>\nDikirim: Sabtu\nKepada: Kadis\nSubjek: x",
    "From: Layanan <layanan@x.go.id>\nSent: Saturday\nTo: Kadis\nSubject: x",
    "----- Pesan Asli -----\nDari: Layanan\nKepada: Kasi\nTerkirim: Sabtu\nPerihal: x",
    # Gmail's attribution in its other languages, on one line or wrapped over two.
    "Am Mo., 23. Nov. 2026 um 09:12 Uhr schrieb Layanan <layanan@trenggalekkab.go.id>:",
    "Le lun. 23 nov. 2026 à 09:12, Layanan <layanan@trenggalekkab.go.id> a écrit :",
    "El lun, 23 nov 2026 a las 09:12, Layanan (<layanan@trenggalekkab.go.id>) escribió:",
    "Il giorno lun 23 nov 2026 alle ore 09:12 Layanan <layanan@trenggalekkab.go.id> ha scritto:",
    "Em seg., 23 de nov. de 2026 às 09:12, Layanan <layanan@trenggalekkab.go.id> escreveu:",
    "Op ma 23 nov 2026 om 09:12 schreef Layanan <layanan@trenggalekkab.go.id>:",
    "pon., 23 lis 2026 o 09:12 Layanan <layanan@trenggalekkab.go.id> napisał(a):",
    "pon., 23 lis 2026 o 09:12 Layanan <layanan@\ntrenggalekkab.go.id> napisał(a):",
    "пн, 23 нояб. 2026 г. в 09:12, Layanan <layanan@trenggalekkab.go.id>:",
    "пн, 23 лист. 2026 р. о 09:12 Layanan <layanan@trenggalekkab.go.id> пише:",
    "Den mån 23 nov. 2026 kl 09:12 skrev Layanan <layanan@trenggalekkab.go.id>:",
    "man. 23. nov. 2026 kl. 09:12 skrev Layanan <layanan@trenggalekkab.go.id>:",
    "ma 23. marrask. 2026 klo 9.12 Layanan (layanan@trenggalekkab.go.id) kirjoitti:",
    "po 23. 11. 2026 v 9:12 odesílatel Layanan <layanan@trenggalekkab.go.id> napsal:",
    "Layanan <layanan@trenggalekkab.go.id> ezt írta (időpont: 2026. nov. 23., H, 9:12):",
    "Layanan <layanan@trenggalekkab.go.id>, 23 Kas 2026 Pzt, 09:12 tarihinde şunu yazdı:",
    "Vào Th 2, 23 thg 11, 2026 vào lúc 09:12 Layanan <layanan@trenggalekkab.go.id> đã viết:",
    "2026年11月23日(月) 9:12 Layanan <layanan@trenggalekkab.go.id>:",
    "Pada Isn, 23 Nov 2026 pada 9:12 PG Layanan <layanan@trenggalekkab.go.id> menulis:",
    "On Mon, Nov 23, 2026, 09:12 Layanan <layanan@trenggalekkab.go.id> wrote:",
    "2026년 11월 23일 (월) 오전 9:12, Layanan <layanan@trenggalekkab.go.id>님이 작성:",
    "Layanan <layanan@trenggalekkab.go.id> 于2026年11月23日周一 09:12写道：",
    "Layanan <layanan@t\nrenggalekkab.go.id> 於 2026年11月23日 週一 上午9:12寫道：",
    "เมื่อ วันจันทร์ที่ 23 พ.ย. 2026 เวลา 09:12 Layanan <layanan@trenggalekkab.go.id> เขียนว่า:",
    "في الاثنين، 23 نوفمبر 2026 9:12 ص Layanan <layanan@trenggalekkab.go.id> كتب:",
    "Στις Δευ 23 Νοε 2026 στις 9:12 π.μ., ο/η Layanan <layanan@trenggalekkab.go.id> έγραψε:",
    "Layanan <layanan@t\nrenggalekkab.go.id> a scris (lun., 23 nov. 2026, 09:12):",
    "pon, 23. stu 2026. u 09:12 Layanan <layanan@trenggalekkab.go.id> je napisao/la:",
    # Outlook and Exchange: a bare dash line, the block on one line, forwards in several languages.
    "-----\nFrom: Layanan <layanan@x.go.id>\nSent: Monday\nTo: Kadis\nSubject: x",
    "Dari: Layanan <layanan@x.go.id> Dikirim: Senin, 23 November 2026 Kepada: Kadis Subjek: x",
    "From: Layanan <layanan@x.go.id> Sent: Monday, November 23, 2026 To: Kadis Subject: x",
    "---------- Forwarded message ---------\nFrom: Layanan <layanan@x.go.id>\nSubject: x",
    "---------- Pesan terusan ---------\nDari: Layanan <layanan@x.go.id>\nSubjek: x",
    "---------- Weitergeleitete Nachricht ---------\nVon: Layanan <layanan@x.go.id>\nBetreff: x",
    "---------- Пересланное сообщение ---------\nОт: Layanan <layanan@x.go.id>\nТема: x",
    "-----Ursprüngliche Nachricht-----\nVon: Layanan\nGesendet: Montag\nAn: Kadis\nBetreff: x",
    "Begin forwarded message:",
]
_quote_body = st.lists(
    st.one_of(st.sampled_from(_WORDS), st.sampled_from([" ", ", ", "\n", " atau ", " — "]), st.just(TEMPLATE)),
    min_size=1,
    max_size=15,
).map("".join)


def _as_quote(body: str, angle: bool) -> str:
    return quoted(body) if angle else body


def _is_plain_new_text(text: str) -> bool:
    """T is new text: nothing in it is itself a quote, a signature or a quote header."""
    return strip_quoted(text) == "\n".join(ln.rstrip() for ln in text.strip().split("\n")).strip() and not re.search(
        r"\n{3,}", text.strip()
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(text=_new_text, header=st.sampled_from(_HEADERS), body=_quote_body, angle=st.booleans())
def test_quoted_block_never_changes_the_decision(text: str, header: str, body: str, angle: bool) -> None:
    assume(_is_plain_new_text(text))
    alone = decide_text(text)
    with_quote = decide_text(f"{text}\n\n{header}\n{_as_quote(body, angle or header.endswith((':', '：')))}")
    assert (with_quote.decision, with_quote.note, with_quote.keyword) == (alone.decision, alone.note, alone.keyword)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_reply_body_never_raises(text: str) -> None:
    result = decide_text(text)
    assert result.decision in ("approve", "reject", "revise", "problem", "cancel", "confirm", "unclear")
    strip_quoted(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["SETUJU", "TOLAK", ">", "\n", " ", "Pada ", "menulis:", "--", "Dari:", "—", "?"]),
                max_size=60).map("".join))
def test_structured_noise_never_raises(text: str) -> None:
    decide_text(text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much], deadline=None)
@given(before=_new_text, after=_new_text, upper=st.booleans())
def test_tidak_setuju_in_new_text_is_never_approval(before: str, after: str, upper: bool) -> None:
    phrase = "TIDAK SETUJU" if upper else "tidak setuju"
    text = f"{before} {phrase} {after}"
    new = " ".join(strip_quoted(text).lower().split())
    assume("tidak setuju" in new)
    assert decide_text(text).decision != "approve"


# "Sent from my ..." as phones write it in the languages Indonesian officials' phones use, and others.
_MOBILE_SIGNATURES = [
    "Sent from my iPhone", "Dikirim dari iPhone saya", "Dikirim dari ponsel cerdas Samsung Galaxy saya.",
    "Dikirim dari Yahoo Mail di Android", "Sent from Yahoo Mail on Android", "Dapatkan Outlook untuk Android",
    "Get Outlook for iOS", "Dihantar dari iPhone saya", "Dikirim saka HP Samsung kula", "Dikirim ti iPhone abdi", "Envoyé de mon iPhone", "Sendt fra min iPhone",
    "Von meinem iPhone gesendet", "Enviado desde mi iPhone", "Inviato da iPhone", "Enviado do meu iPhone",
    "Verzonden met mijn iPhone", "Skickat från min iPhone", "Lähetetty iPhonesta", "Wysłane z mojego iPhone",
    "Отправлено с iPhone", "Gửi từ iPhone của tôi", "iPhoneから送信", "发自我的iPhone",
]
_DISCLAIMERS = [
    "PERNYATAAN: Surel ini beserta lampirannya bersifat rahasia dan hanya ditujukan kepada penerima yang\n"
    "dimaksud. Apabila Saudara bukan penerima yang dimaksud, mohon tidak menindaklanjuti dan segera\n"
    "menghapus surel ini. Setuju atau tidaknya permohonan hanya sah dari pejabat berwenang.",
    "DISCLAIMER: This e-mail is confidential and intended only for the named recipient. If you are not the\n"
    "intended recipient, do not act on it; OK or not, delete it.",
    "Surel ini bersifat RAHASIA dan hanya untuk penerima yang dituju. Tidak setuju? Jangan diproses; hapus.",
]


def _same_answer(text: str, with_more: str) -> None:
    alone, more = decide_text(text), decide_text(with_more)
    assert (more.decision, more.note, more.keyword, more.text) == (alone.decision, alone.note, alone.keyword,
                                                                 alone.text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(text=_new_text, sig=st.sampled_from(_MOBILE_SIGNATURES), body=_quote_body, quote=st.booleans())
def test_mobile_signature_in_any_language_is_cut(text: str, sig: str, body: str, quote: bool) -> None:
    assume(_is_plain_new_text(text) and text.strip())
    _same_answer(text, f"{text}\n\n{sig}" + (f"\n\n{quoted(body)}" if quote else ""))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(text=_new_text, footer=st.sampled_from(_DISCLAIMERS), body=_quote_body, quote=st.booleans())
def test_government_disclaimer_never_changes_the_decision(text: str, footer: str, body: str, quote: bool) -> None:
    assume(_is_plain_new_text(text) and text.strip())
    _same_answer(text, f"{text}\n\n{footer}" + (f"\n\n{quoted(body)}" if quote else ""))


_SAFE_WORDS = ["mohon", "nama", "dinsos", "catatan", "dengan", "saya", "sudah", "Pak", "Bu", "segera", "server",
               "alamat", "kantor", "minggu", "depan", "terima", "kasih", "PIC", "dihubungi"]
_plain_words = st.lists(st.sampled_from(_SAFE_WORDS), min_size=1, max_size=8).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(top=_plain_words, below=_plain_words, body=_quote_body, layout=st.sampled_from(["bottom", "between"]))
def test_new_text_below_or_between_quotes_is_never_lost(top: str, below: str, body: str, layout: str) -> None:
    quote = quoted(body)
    if layout == "bottom":
        text, expected = f"{quote}\n\n{below}", below
    else:
        text, expected = f"{top}\n\n{quote}\n\n{below}\n\n{quoted('lagi')}", f"{top} {below}"
    assert " ".join(strip_quoted(text).split()) == expected


@settings(max_examples=300, deadline=None)
@given(top=_plain_words, body=_quote_body,
       header=st.sampled_from([h for h in _HEADERS if "orward" in h or "terusan" in h or "Weitergeleitete" in h]))
def test_forwarder_words_are_kept(top: str, header: str, body: str) -> None:
    assert " ".join(strip_quoted(f"{top}\n\n{header}\n\n{body}").split()) == top


@settings(max_examples=300, deadline=None)
@given(no_objection=st.sampled_from(["tidak ada masalah", "Tidak ada masalah", "tdk ada masalah", "tidak masalah",
                                     "tidak keberatan", "Tidak ada keberatan"]),
       sep=st.sampled_from([", ", " ", ". ", ",\n"]), word=st.sampled_from(["setuju", "SETUJU", "acc", "oke"]),
       after=st.sampled_from(["", ".", " Pak.", ", mohon segera.", "\n\nTerima kasih."]), body=_quote_body)
def test_no_objection_then_setuju_approves(no_objection: str, sep: str, word: str, after: str, body: str) -> None:
    assert decide_text(f"{no_objection}{sep}{word}{after}\n\n{quoted(body)}").decision == "approve"


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much], deadline=None)
@given(before=_new_text, after=_new_text, phrase=st.sampled_from(
    ["belum setuju", "BELUM SETUJU", "Belum setuju", "setuju tapi", "Setuju, tapi", "SETUJU TETAPI", "setuju namun",
     "setuju dengan catatan"]))
def test_belum_setuju_and_setuju_tapi_never_approve(before: str, after: str, phrase: str) -> None:
    text = f"{before} {phrase} {after}"
    new = " ".join(strip_quoted(text).lower().split())
    assume(" ".join(phrase.lower().split()) in new)
    assert decide_text(text).decision != "approve"
