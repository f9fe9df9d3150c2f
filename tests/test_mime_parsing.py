"""MIME reading: charsets, transfer encodings, RFC 2047 headers, HTML to text, limits, forwards, robustness."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subdomaind.parsers import parse
from subdomaind.parsers.mime import UnreadableMessage, decode_header_value, html_to_text, parse_mime
from subdomaind.parsers.model import Limits

FIXTURES = Path(__file__).parent / "fixtures" / "emails"
KINDS = {"request", "reply", "auto_reply", "bounce", "unrelated", "unreadable"}


def message(body: bytes, content_type: str = "text/plain; charset=utf-8", cte: str | None = None,
            headers: str = "") -> bytes:
    head = (
        "From: Kepala Dinas <kadis@trenggalekkab.go.id>\nTo: layanan@trenggalekkab.go.id\n"
        "Subject: Re: [SD/2026/0042] Disposisi\nMessage-ID: <m1@trenggalekkab.go.id>\n"
        "Date: Sat, 21 Nov 2026 10:03:17 +0700\nMIME-Version: 1.0\n"
        f"Content-Type: {content_type}\n" + (f"Content-Transfer-Encoding: {cte}\n" if cte else "") + headers
    )
    return head.encode("ascii") + b"\n" + body


# -------------------------------------------------------------------------------------------------------------
# Charsets and transfer encodings
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "charset", "cte", "expected"),
    [
        ("Setuju – lanjut".encode(), "utf-8", "8bit", "Setuju – lanjut"),
        ("Setuju – “lanjut”".encode("cp1252"), "windows-1252", "8bit", "Setuju – “lanjut”"),
        # Mislabelled cp1252 under ISO-8859-1 is read as cp1252 (WHATWG Encoding Standard).
        ("Setuju – “lanjut”".encode("cp1252"), "iso-8859-1", "8bit", "Setuju – “lanjut”"),
        ("Setuju, café".encode("latin-1"), "ISO-8859-1", "8bit", "Setuju, café"),
        ("Setuju – lanjut".encode(), "x-unknown-charset", "8bit", "Setuju – lanjut"),
        ("Setuju – lanjut".encode("cp1252"), "x-unknown-charset", "8bit", "Setuju – lanjut"),
        ("Setuju – lanjut".encode("cp1252"), "utf-8", "8bit", "Setuju – lanjut"),
        (b"Setuju", "", "7bit", "Setuju"),
        ("Setuju – lanjut".encode("cp1252"), "us-ascii", "8bit", "Setuju – lanjut"),
        (b"Setuju =E2=80=94 lanjut=\nkan", "utf-8", "quoted-printable", "Setuju — lanjutkan"),
        (base64.encodebytes("Setuju — lanjutkan".encode()), "utf-8", "base64", "Setuju — lanjutkan"),
        (b"U2V0dWp1IHNla2FsaQ", "utf-8", "base64", "Setuju sekali"),  # padding lost in transit
        (b"Setuju", "utf-8", "x-made-up", "Setuju"),
        ("Setuju".encode("utf-16"), "utf-16", "8bit", "Setuju"),
        (b"Setuju", "base64", "7bit", "Setuju"),  # a codec name that is not a charset must not decode
    ],
)
def test_body_charsets_and_encodings(body: bytes, charset: str, cte: str, expected: str) -> None:
    ctype = f'text/plain; charset="{charset}"' if charset else "text/plain"
    msg = parse_mime(message(body, ctype, cte))
    assert msg.text is not None
    assert msg.text.strip().lstrip("\ufeff") == expected


def test_truncated_base64_keeps_what_decodes_and_says_so() -> None:
    full = base64.b64encode(("SETUJU\n" + "x" * 200).encode()).decode()
    msg = parse_mime(message(full[: len(full) // 2 + 1].encode(), cte="base64"))
    assert msg.text is not None and msg.text.startswith("SETUJU")
    assert "base64 terpotong" in msg.defects


def test_fallback_charset_is_recorded_as_defect() -> None:
    msg = parse_mime(message("Setuju – x".encode("cp1252"), 'text/plain; charset="utf-8"', "8bit"))
    assert any("windows-1252" in d for d in msg.defects)


# -------------------------------------------------------------------------------------------------------------
# RFC 2047 headers
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?UTF-8?B?UmU6IFtTRC8yMDI2LzAwNDJdIERpc3Bvc2lzaQ==?=", "Re: [SD/2026/0042] Disposisi"),
        ("=?utf-8?q?Re=3A_Disposisi_=E2=80=94_dinsos?=", "Re: Disposisi — dinsos"),
        ("=?UTF-8?B?UmU6IA==?=\n =?UTF-8?B?RGlzcG9zaXNp?=", "Re: Disposisi"),  # RFC 2047 6.2: gap removed
        ("Re: =?iso-8859-1?q?caf=E9?= ok", "Re: café ok"),
        ("=?windows-1252?Q?=93Setuju=94?=", "“Setuju”"),
        ("=?x-unknown?Q?Disposisi?=", "Disposisi"),
        ("=?UTF-8?B?!!notbase64?=", "=?UTF-8?B?!!notbase64?="),  # broken word stays as written
        ("=?UTF-8?B?U2V0dWp1?", "=?UTF-8?B?U2V0dWp1?"),  # unterminated
        ("=?utf-8*id?q?Setuju?=", "Setuju"),  # RFC 2231 language suffix
        ("Plain\n\tfolded subject", "Plain folded subject"),
    ],
)
def test_decode_header_value(raw: str, expected: str) -> None:
    assert decode_header_value(raw) == expected


def test_raw_8bit_headers_are_decoded() -> None:
    raw = "From: Budi <budi@x.go.id>\nSubject: Re: Disposisi — café\nMessage-ID: <a@b>\n\nSETUJU\n".encode()
    assert parse_mime(raw).subject == "Re: Disposisi — café"
    raw_latin = "From: Budi <budi@x.go.id>\nSubject: Re: café\nMessage-ID: <a@b>\n\nSETUJU\n".encode("latin-1")
    assert parse_mime(raw_latin).subject == "Re: café"


def test_encoded_display_name_with_comma_is_one_address() -> None:
    raw = b"From: =?utf-8?q?Widodo=2C_Sugeng?= <Sugeng@Trenggalekkab.GO.ID>\nSubject: x\n\nSETUJU\n"
    msg = parse_mime(raw)
    assert (msg.from_addr, msg.from_name) == ("sugeng@trenggalekkab.go.id", "Widodo, Sugeng")


def test_ids_dates_and_references() -> None:
    raw = message(b"SETUJU\n", headers="In-Reply-To: x <sd.1@a.b>\nReferences: <r1@a.b>\n <r2@a.b>\n")
    msg = parse_mime(raw)
    assert msg.message_id == "<m1@trenggalekkab.go.id>"
    assert msg.in_reply_to == "<sd.1@a.b>"
    assert msg.references == ("<r1@a.b>", "<r2@a.b>")
    assert msg.date is not None and msg.date.utcoffset() is not None


def test_rfc2231_attachment_filename_and_bytes() -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4
    body = (
        "--b\nContent-Type: text/plain; charset=utf-8\n\nTerlampir.\n--b\n"
        "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n"
        "Content-Disposition: attachment; filename*=utf-8''Surat%20Permohonan%20%E2%80%94%20Dinsos.pdf\n\n"
        + base64.encodebytes(pdf).decode() + "--b--\n"
    ).encode()
    msg = parse_mime(message(body, 'multipart/mixed; boundary="b"'))
    assert msg.text == "Terlampir.\n" or msg.text == "Terlampir."
    [att] = msg.attachments
    assert (att.filename, att.content_type, att.data) == ("Surat Permohonan — Dinsos.pdf", "application/pdf", pdf)


# -------------------------------------------------------------------------------------------------------------
# HTML to text: quotes stay quotes
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<div>SETUJU</div><blockquote>TOLAK<br>x</blockquote>", "SETUJU\n> TOLAK\n> x"),
        ('<div dir="ltr">OK</div><div class="gmail_quote"><div class="gmail_attr">Pada ... menulis:</div>'
         "<blockquote class=\"gmail_quote\">TOLAK</blockquote></div>", "OK\n> Pada ... menulis:\n> > TOLAK"),
        ('<p>Setuju</p><hr><div id="divRplyFwdMsg"><b>Dari:</b> x<br><b>Dikirim:</b> y</div><div>TOLAK</div>',
         "Setuju\n________________________________\n> Dari: x\n> Dikirim: y\n> TOLAK"),
        ('<p>Setuju</p><div id="x_divRplyFwdMsg">From: x</div><p>TOLAK</p>', "Setuju\n> From: x\n> TOLAK"),
        ('<p>Setuju</p><div class="moz-cite-prefix">Pada 21/11/26, X menulis:</div>'
         '<blockquote type="cite">TOLAK</blockquote>', "Setuju\n> Pada 21/11/26, X menulis:\n> TOLAK"),
        ('<div>Setuju</div><div class="yahoo_quoted">On Sat, X wrote:<div>TOLAK</div></div>',
         "Setuju\n> On Sat, X wrote:\n> TOLAK"),
        ('<div>Setuju</div><hr id="zwchr"><div>Dari: x</div><div>TOLAK</div>',
         "Setuju\n> ________________________________\n> Dari: x\n> TOLAK"),
        ("<style>p{color:red}</style><script>var a='SETUJU'</script><p>TOLAK&nbsp;&amp; catatan</p>",
         "TOLAK & catatan"),
        ('<div>SETUJU</div><div class="gmail_signature">Budi<br>Kadis</div>', "SETUJU\n-- \nBudi\nKadis"),
        ("<table><tr><td>Nama</td><td>dinsos</td></tr></table>", "Nama dinsos"),
        ("<div>Setuju<div>unclosed <b>bold", "Setuju\nunclosed bold"),
    ],
)
def test_html_to_text_keeps_quotes_recognisable(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


def test_html_only_message_gets_text_and_plain_is_preferred() -> None:
    html_only = parse_mime(message(b"<div>SETUJU</div><blockquote>TOLAK</blockquote>", "text/html; charset=utf-8"))
    assert html_only.text == "SETUJU\n> TOLAK"
    body = (
        b'--a\nContent-Type: text/plain; charset=utf-8\n\nSETUJU (plain)\n--a\nContent-Type: text/html\n\n'
        b"<p>SETUJU (html)</p>\n--a--\n"
    )
    both = parse_mime(message(body, 'multipart/alternative; boundary="a"'))
    assert both.text is not None and both.text.strip() == "SETUJU (plain)"
    assert both.html is not None and "html" in both.html


def test_html_nesting_is_bounded() -> None:
    text = html_to_text("<div>" * 5000 + "SETUJU" + "</div>" * 5000)
    assert text == "SETUJU"


# -------------------------------------------------------------------------------------------------------------
# Limits: refused quickly, never recursed into
# -------------------------------------------------------------------------------------------------------------

def _many_parts(n: int) -> bytes:
    parts = "".join(f"--p\nContent-Type: text/plain\n\npart {i}\n" for i in range(n))
    return message((parts + "--p--\n").encode(), 'multipart/mixed; boundary="p"')


def _deep(n: int) -> bytes:
    body = "".join(f'--d{i}\nContent-Type: multipart/mixed; boundary="d{i + 1}"\n\n' for i in range(n))
    body += f"--d{n}\nContent-Type: text/plain\n\nSETUJU\n" + "".join(f"--d{i}--\n" for i in reversed(range(n + 1)))
    return message(body.encode(), 'multipart/mixed; boundary="d0"')


def _deep_messages(n: int) -> bytes:
    body = "Content-Type: message/rfc822\n\n" * n + "From: a@b\nSubject: x\n\nSETUJU\n"
    return message(body.encode(), "message/rfc822")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_many_parts(10_000), "terlalu banyak bagian"),
        (_deep(1_000), "terlalu"),
        (_deep(150), "terlalu dalam"),
        (_deep_messages(1_000), "terlalu"),
    ],
    ids=["10000_parts", "1000_deep_multipart", "150_deep_multipart", "1000_deep_message_rfc822"],
)
def test_hostile_structure_is_refused_quickly(raw: bytes, reason: str) -> None:
    start = time.perf_counter()
    with pytest.raises(UnreadableMessage, match=reason):
        parse_mime(raw)
    result = parse(raw)
    elapsed = time.perf_counter() - start
    assert result.kind == "unreadable" and result.reason and reason in result.reason
    assert elapsed < 3.0, f"took {elapsed:.2f}s"


def test_within_limits_is_read() -> None:
    msg = parse_mime(_many_parts(50))
    assert msg.text is not None and msg.text.startswith("part 0")
    assert (parse_mime(_deep(10)).text or "").strip() == "SETUJU"


@pytest.mark.parametrize(
    ("limits", "raw", "reason"),
    [
        (Limits(max_message_bytes=100), message(b"x" * 200), "terlalu besar"),
        (Limits(max_parts=5), _many_parts(10), "terlalu banyak bagian"),
        (Limits(max_depth=3), _deep(5), "terlalu dalam"),
        (Limits(max_headers=10), message(b"x", headers="X-A: 1\n" * 20), "terlalu banyak header"),
        (Limits(max_attachment_bytes=10),
         message(b'--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="a.pdf"\n\n'
                 + b"x" * 50 + b"\n--b--\n", 'multipart/mixed; boundary="b"'), "terlalu besar"),
    ],
)
def test_limits_are_configurable(limits: Limits, raw: bytes, reason: str) -> None:
    with pytest.raises(UnreadableMessage, match=reason):
        parse_mime(raw, limits)


@pytest.mark.parametrize("raw", [b"", b"   \r\n", b"SETUJU\n\nterima kasih\n", b"\x00\x01\x02", b"--b\n--b--\n"])
def test_unreadable_inputs(raw: bytes) -> None:
    result = parse(raw)
    assert result.kind == "unreadable" and result.reason


def test_mismatched_boundary_is_repaired() -> None:
    body = b"--real\nContent-Type: text/plain\n\nSETUJU\n--real\nContent-Type: text/html\n\n<p>SETUJU</p>\n--real--\n"
    msg = parse_mime(message(body, 'multipart/alternative; boundary="declared"'))
    assert msg.text is not None and msg.text.strip() == "SETUJU"
    assert any("boundary" in d for d in msg.defects)


# -------------------------------------------------------------------------------------------------------------
# Forwards: the original sender
# -------------------------------------------------------------------------------------------------------------

_ORIGINAL = "Nama Sub Domain : dinsos\nNama Dinas : Dinas Sosial\n"


@pytest.mark.parametrize(
    ("subject", "body", "addr", "name"),
    [
        ("Fwd: Permohonan", "---------- Forwarded message ---------\nFrom: Dinsos <dinsos@x.go.id>\n"
         "Date: Fri\nSubject: P\nTo: <s@x.go.id>\n\n", "dinsos@x.go.id", "Dinsos"),
        ("Fwd: Permohonan", "---------- Pesan terusan ---------\nDari: Dinsos <dinsos@x.go.id>\nTanggal: Jum\n\n",
         "dinsos@x.go.id", "Dinsos"),
        ("Terusan: Permohonan", "-------- Pesan Terusan --------\nSubjek: P\nDari: Dinsos <dinsos@x.go.id>\n\n",
         "dinsos@x.go.id", "Dinsos"),
        ("Fwd: P", "-------- Pesan Diteruskan --------\nSubjek: \tP\nDari: \tDinsos <dinsos@x.go.id>\n\n",
         "dinsos@x.go.id", "Dinsos"),
        ("FW: P", "-----Original Message-----\nFrom: Dinsos [mailto:dinsos@x.go.id]\nSent: Friday\nTo: s\n\n",
         "dinsos@x.go.id", "Dinsos"),
        ("Tr: P", "Dari: Dinsos <dinsos@x.go.id>\nDikirim: Jumat\nKepada: s\nSubjek: P\n\n", "dinsos@x.go.id",
         "Dinsos"),
        ("Fwd: P", "> ---------- Forwarded message ---------\n> From: Dinas Sosial Kabupaten Trenggalek <\n"
         "> dinsos@x.go.id>\n> Date: Fri\n\n", "dinsos@x.go.id", "Dinas Sosial Kabupaten Trenggalek"),
        ("Fwd: P", "---------- Forwarded message ---------\nFrom: dinsos@x.go.id\nDate: Fri\n\n", "dinsos@x.go.id",
         None),
    ],
)
def test_forward_original_sender(subject: str, body: str, addr: str, name: str | None) -> None:
    raw = f"From: Sekretaris <sekretaris@x.go.id>\nSubject: {subject}\nMessage-ID: <f@x>\n\nMohon diproses.\n\n"
    msg = parse_mime((raw + body + _ORIGINAL).encode())
    assert (msg.forwarded_from, msg.forwarded_name) == (addr, name)


def test_reply_with_quoted_outlook_block_is_not_a_forward() -> None:
    raw = (
        "From: Kadis <kadis@x.go.id>\nSubject: RE: [SD/2026/0042] Disposisi\nMessage-ID: <r@x>\n\nSETUJU\n\n"
        "From: Layanan <layanan@x.go.id>\nSent: Saturday\nTo: Kadis\nSubject: x\n\nBalas surel ini ...\n"
    )
    assert parse_mime(raw.encode()).forwarded_from is None


def test_forward_as_attachment() -> None:
    inner = "From: Dinas Sosial <dinsos@x.go.id>\nSubject: Permohonan\nMessage-ID: <in@x>\n\n" + _ORIGINAL
    body = (
        "--m\nContent-Type: text/plain\n\nTerlampir.\n--m\nContent-Type: message/rfc822\n"
        f"Content-Disposition: attachment; filename=\"p.eml\"\n\n{inner}\n--m--\n"
    )
    msg = parse_mime(message(body.encode(), 'multipart/mixed; boundary="m"', headers=""))
    assert msg.forwarded_from == "dinsos@x.go.id"
    assert [a.content_type for a in msg.attachments] == ["message/rfc822"]
    [attached] = msg.attached_messages
    assert attached.message_id == "<in@x>" and attached.text is not None and "dinsos" in attached.text
    assert attached.attached_messages == ()


# -------------------------------------------------------------------------------------------------------------
# Robustness properties
# -------------------------------------------------------------------------------------------------------------

_FIXTURE_BYTES = sorted(p.read_bytes() for p in FIXTURES.glob("*.eml") if p.stat().st_size < 200_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_parse_arbitrary_bytes_never_raises(raw: bytes) -> None:
    result = parse(raw)
    assert result.kind in KINDS
    result.to_json()


_TOKENS = [b"\n", b"\r\n", b": ", b"--", b"boundary=", b"Content-Type: multipart/mixed; boundary=\"b\"\n", b"--b\n",
           b"=?utf-8?b?", b"?=", b">", b"From: a@b\n", b"Content-Transfer-Encoding: base64\n", b"\x00", b"\xff\xfe",
           b"<blockquote>", b"<div class=\"gmail_quote\">", b"charset=x-bogus", b"message/rfc822\n\n", b"=\n"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=20)), max_size=80).map(b"".join))
def test_parse_structured_garbage_never_raises(raw: bytes) -> None:
    assert parse(b"From: a@b\nSubject: Re: x\n" + raw).kind in KINDS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    index=st.integers(min_value=0, max_value=max(0, len(_FIXTURE_BYTES) - 1)),
    edits=st.lists(
        st.tuples(st.floats(min_value=0, max_value=1), st.sampled_from(["flip", "cut", "insert", "dup"]),
                  st.binary(min_size=1, max_size=40)),
        min_size=1,
        max_size=12,
    ),
)
def test_parse_mutated_fixtures_never_raises(index: int, edits: list[tuple[float, str, bytes]]) -> None:
    data = bytearray(_FIXTURE_BYTES[index]) if _FIXTURE_BYTES else bytearray(b"From: a@b\n\nx")
    for where, op, blob in edits:
        if not data:
            break
        pos = int(where * (len(data) - 1))
        if op == "flip":
            data[pos] ^= blob[0] or 0xFF
        elif op == "cut":
            del data[pos : pos + len(blob) * 8]
        elif op == "insert":
            data[pos:pos] = blob
        else:
            data[pos:pos] = data[pos : pos + 300]
    result = parse(bytes(data))
    assert result.kind in KINDS
    result.to_json()
