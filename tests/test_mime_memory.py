"""Memory of `parse_mime` on a large attachment stays bounded (peak RSS with a 20 MB attachment).

A long run of body lines (a base64 attachment) is kept out of the stdlib parser and decoded from the raw
bytes, so the traced peak is about the decoded attachment, not several copies of the encoded message.
No wall-time assertions: only `tracemalloc` peaks, which do not depend on the machine.
"""

from __future__ import annotations

import base64
import random
import tracemalloc

import pytest

from subdomaind.parsers.mime import parse_mime

MB = 1024 * 1024


def _headers(subject: str = "Permohonan Sub Domain") -> bytes:
    return (
        "From: Dinas Sosial <dinsos@trenggalekkab.go.id>\nTo: layanan@trenggalekkab.go.id\n"
        f"Subject: {subject}\nDate: Tue, 10 Nov 2026 09:15:00 +0700\n"
        "Message-ID: <besar@trenggalekkab.go.id>\nMIME-Version: 1.0\n"
    ).encode()


def _with_attachment(data: bytes, boundary: str = "=_besar") -> bytes:
    return (
        _headers()
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\nNama Sub Domain : dinsos\n".encode()
        + f'--{boundary}\nContent-Type: application/pdf; name="scan.pdf"\nContent-Transfer-Encoding: base64\n'.encode()
        + b'Content-Disposition: attachment; filename="scan.pdf"\n\n'
        + base64.encodebytes(data)
        + f"--{boundary}--\n".encode()
    )


def _traced_peak(raw: bytes) -> tuple[int, object]:
    tracemalloc.start()
    try:
        msg = parse_mime(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, msg


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_20mb_attachment_peak_is_bounded(crlf: bool) -> None:
    data = random.Random(3).randbytes(20 * MB)
    raw = _with_attachment(data)
    if crlf:  # as fetched over IMAP
        raw = raw.replace(b"\n", b"\r\n")
    peak, msg = _traced_peak(raw)
    [att] = msg.attachments  # type: ignore[attr-defined]
    assert att.filename == "scan.pdf" and att.data == data
    assert msg.text is not None and "dinsos" in msg.text  # type: ignore[attr-defined]
    # The decoded attachment has to exist once; the 27 MB of base64 must not be copied (it was ~8x).
    assert peak < 3 * len(data), f"traced peak {peak / MB:.1f} MB for a {len(data) / MB:.0f} MB attachment"


def test_forwarded_message_with_large_attachment_peak_is_bounded() -> None:
    data = random.Random(4).randbytes(8 * MB)
    inner = _with_attachment(data, boundary="=_dalam")
    raw = (
        _headers("Fwd: Permohonan Sub Domain")
        + b'Content-Type: multipart/mixed; boundary="=_luar"\n\n'
        + b"--=_luar\nContent-Type: text/plain\n\nTerlampir.\n"
        + b'--=_luar\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename="asli.eml"\n\n'
        + inner
        + b"\n--=_luar--\n"
    ).replace(b"\n", b"\r\n")
    peak, msg = _traced_peak(raw)
    eml, pdf = msg.attachments  # type: ignore[attr-defined]
    assert eml.content_type == "message/rfc822" and pdf.data == data
    [attached] = msg.attached_messages  # type: ignore[attr-defined]
    assert attached.attachments[0].data == data
    # What the result must hold: the attached message as bytes, the attachment, and the attached message's
    # own reading of the attachment; beyond that, at most one more copy of the encoded message.
    kept = len(eml.data) + 2 * len(data)
    assert peak < kept + len(raw), f"traced peak {peak / MB:.1f} MB, result holds {kept / MB:.1f} MB"
