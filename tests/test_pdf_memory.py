"""Memory of the attachment readers: `read_pdf` on a large scan stays bounded, and the DOCX reader is not
loaded until a DOCX comes (peak RSS with 20 MB letters).

The text layer and the form are read, the image data is not: pdfminer held two copies of an image stream
while it parsed the page, and the decompression-bomb check held a third when the stream was not Flate.
No wall-time assertions: only `tracemalloc` peaks, which do not depend on the machine.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

from subdomaind.parsers.model import Limits
from subdomaind.parsers.pdf import PdfContent, inflated_size_exceeds, read_pdf
from tests.devkit.localoffice import scanned_pdf, text_pdf

MB = 1024 * 1024
FIXTURES = Path(__file__).parent / "fixtures" / "emails"
TEXT = b"BT /F1 11 Tf 72 760 Td (Nama Sub Domain : dinsos) Tj ET"


def _traced(fn: object, *args: object) -> tuple[int, object]:
    tracemalloc.start()
    try:
        out = fn(*args)  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out


def _cells(content: PdfContent) -> str:
    return " ".join(" ".join(r) for r in content.records)


def test_scan_is_read_without_copying_its_image() -> None:
    image = random.Random(7).randbytes(8 * MB)  # random bytes: no zlib header, as a JPEG has none
    pdf = scanned_pdf(TEXT, image, width=2480, height=3508, image_filter="DCTDecode")
    peak, content = _traced(read_pdf, pdf, Limits())
    assert isinstance(content, PdfContent) and not content.problems
    assert "Nama Sub Domain : dinsos" in _cells(content)
    # One copy of the image would be 8 MB; pdfminer's reading made two and the bomb check one more.
    assert peak < 3 * MB, peak


def test_image_without_text_is_still_seen_as_a_scan() -> None:
    image = zlib.compress(random.Random(8).randbytes(2 * MB))
    pdf = scanned_pdf(b"", image, width=1000, height=700, image_filter="FlateDecode")
    content = read_pdf(pdf, Limits())
    assert content.scan_pages == (0,) and content.pages == 1


def test_large_content_stream_is_read_in_full() -> None:
    # Only image streams are left unread: a page's own text in a long stream (here 200 KB) is the form.
    lines = b"".join(b"BT /F1 8 Tf 72 %d Td (baris pengisi %d) Tj ET\n" % (800 - (i % 90) * 8, i) for i in range(5000))
    content = lines + b"BT /F1 11 Tf 72 40 Td (Nama Sub Domain : dinkes) Tj ET"
    pdf = text_pdf(content)
    assert len(content) > 128 * 1024
    read = read_pdf(pdf, Limits())
    assert "Nama Sub Domain : dinkes" in _cells(read)


def test_bomb_check_reads_a_large_stream_in_pieces() -> None:
    # A Flate stream longer than one input piece (1 MB) is counted across pieces: 6 MB of random bytes
    # compress to about 6 MB and inflate to 6 MB, beyond a 4 MB limit and within an 8 MB one.
    body = zlib.compress(random.Random(9).randbytes(6 * MB))
    pdf = scanned_pdf(TEXT, body, width=100, height=100, image_filter="FlateDecode")
    assert inflated_size_exceeds(pdf, 4 * MB)
    assert not inflated_size_exceeds(pdf, 8 * MB)
    # A bomb spread past the first piece: 1.5 MB of random bytes, then 200 MB of zeros.
    z = zlib.compressobj()
    bomb = z.compress(random.Random(10).randbytes(3 * MB // 2)) + z.compress(bytes(200 * MB)) + z.flush()
    pdf = scanned_pdf(TEXT, bomb, width=100, height=100, image_filter="FlateDecode")
    assert inflated_size_exceeds(pdf, 50 * MB)


def test_bomb_check_keeps_no_copy_of_a_stream_that_is_not_flate() -> None:
    pdf = scanned_pdf(TEXT, random.Random(11).randbytes(8 * MB), width=10, height=10, image_filter="DCTDecode")
    peak, exceeds = _traced(inflated_size_exceeds, pdf, 50 * MB)
    assert exceeds is False
    assert peak < 2 * MB, peak  # zlib kept the unconsumed 8 MB when the whole stream was fed at once


def test_bomb_after_another_stream_is_refused() -> None:
    # The check once matched the "stream" of the first stream's "endstream" and skipped the next stream.
    bomb = zlib.compress(bytes(80 * MB), 9)
    pdf = scanned_pdf(TEXT, bomb, width=100, height=100, image_filter="FlateDecode")
    content = read_pdf(pdf, Limits(), "surat.pdf")
    assert [p.reason for p in content.problems] == [
        "Lampiran 'surat.pdf' tidak dapat diperiksa: isinya setelah dibuka melebihi 50 MB"
    ]


def test_docx_reader_is_loaded_only_for_a_docx() -> None:
    # python-docx and lxml are 13 MB of a parser worker: an office sending PDFs and body forms never needs
    # them. Run in a fresh interpreter, as a worker is.
    script = (
        "import sys; from pathlib import Path; from subdomaind.parsers import parse\n"
        "d = Path(sys.argv[1])\n"
        "assert parse((d / 'request_pdf_acroform.eml').read_bytes()).kind == 'request'\n"
        "print('docx' in sys.modules, 'lxml' in sys.modules)\n"
        "assert parse((d / 'request_docx_table.eml').read_bytes()).kind == 'request'\n"
        "print('docx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(FIXTURES)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False", "True"], out.stderr
