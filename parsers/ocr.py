"""OCR for scans: PDF pages with no text layer and PNG/JPEG attachments, through the `tesseract` program.

The one place in `parsers/` that starts a process: `tesseract` with a fixed argument list (no shell), fed
the image on stdin, bounded by a timeout per page and by `limits.max_ocr_pages` pages per message. When OCR
is switched off (`limits.ocr`) or tesseract is not installed, nothing is read and nothing fails.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from subdomaind.parsers.model import Limits, Problem

_DPI = 200
_PAGE_TIMEOUT_SECONDS = 60
# A scanned A4 page at 200 dpi is about 3.9 Mpx; anything far bigger is cut down before tesseract sees it.
_MAX_PIXELS = 12_000_000
_MAX_SOURCE_PIXELS = 60_000_000
_LANGUAGES = "ind+eng"


@dataclass(frozen=True)
class OcrText:
    text: str = ""
    pages: int = 0  # pages (or images) that went through tesseract
    problems: tuple[Problem, ...] = ()


def tesseract_path() -> str | None:
    return shutil.which("tesseract")


def available(limits: Limits) -> bool:
    return limits.ocr and limits.max_ocr_pages > 0 and tesseract_path() is not None


def _tesseract(png: bytes) -> str | None:
    exe = tesseract_path()
    if exe is None:
        return None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1", "LC_ALL": "C.UTF-8"}
    try:
        done = subprocess.run(
            [exe, "stdin", "stdout", "-l", _LANGUAGES, "--psm", "6"],
            input=png,
            capture_output=True,
            timeout=_PAGE_TIMEOUT_SECONDS,
            check=False,
            shell=False,
            env=env,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def _fail(filename: str | None, why: str) -> Problem:
    return Problem("lampiran", f"Lampiran '{filename or 'gambar'}' {why}")


def ocr_pdf(data: bytes, limits: Limits, pages: Sequence[int], max_pages: int, filename: str | None = None) -> OcrText:
    """Text of the scanned `pages` (0-based, at most `max_pages`) of a PDF, rendered with pypdfium2 at 200 dpi."""
    if max_pages <= 0 or not pages or not available(limits):
        return OcrText()
    import pypdfium2 as pdfium  # comes with pdfplumber; imported here so text-only parsing never loads it

    texts: list[str] = []
    done = 0
    try:
        document = pdfium.PdfDocument(data)
    except Exception:  # pdfium on a broken file
        return OcrText(problems=(_fail(filename, "tidak dapat dibaca sebagai PDF hasil pindai"),))
    try:
        wanted = [i for i in pages if 0 <= i < min(len(document), limits.max_pdf_pages)][:max_pages]
        for index in wanted:
            page = document[index]
            width, height = page.get_size()
            scale = _DPI / 72
            if width * height * scale * scale > _MAX_PIXELS:
                scale = (_MAX_PIXELS / max(width * height, 1.0)) ** 0.5
            image = page.render(scale=scale, grayscale=True).to_pil()
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            text = _tesseract(buffer.getvalue())
            done += 1
            if text:
                texts.append(text)
    except Exception:  # rendering a hostile page
        return OcrText(
            text="\n".join(texts),
            pages=done,
            problems=(_fail(filename, "tidak dapat dibaca sebagai PDF hasil pindai"),),
        )
    finally:
        document.close()
    return OcrText(text="\n".join(texts), pages=done)


def ocr_image(data: bytes, limits: Limits, filename: str | None = None) -> OcrText:
    """Text of one PNG/JPEG/TIFF image; its size is checked from the header before it is decoded."""
    if not available(limits):
        return OcrText()
    # Pillow (heavy) only for an image to OCR: text-only parsing never loads it
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > _MAX_SOURCE_PIXELS:
                return OcrText(problems=(_fail(filename, "terlalu besar untuk dibaca (resolusi gambar)"),))
            gray = image.convert("L")
            if width * height > _MAX_PIXELS:
                factor = (_MAX_PIXELS / (width * height)) ** 0.5
                gray = gray.resize((max(1, int(width * factor)), max(1, int(height * factor))))
            buffer = io.BytesIO()
            gray.save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return OcrText(problems=(_fail(filename, "bukan gambar yang dapat dibaca"),))
    text = _tesseract(buffer.getvalue())
    return OcrText(text=text or "", pages=1)
