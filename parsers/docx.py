"""Read one DOCX attachment with python-docx: paragraphs and table rows as records, in document order.

The zip is checked before python-docx opens it: not a zip, too many members, or more than
`limits.max_decompressed_bytes` once inflated (declared sizes, then the real stream, since a zip can lie
about its sizes) is refused with a `Problem` on "lampiran".
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docx
from docx.oxml.ns import qn

from subdomaind.parsers.model import Limits, Problem

_MAX_MEMBERS = 2000
_READ_STEP = 1024 * 1024
_MAX_TABLE_DEPTH = 5
_P, _TBL, _SDT, _TR, _TC = qn("w:p"), qn("w:tbl"), qn("w:sdt"), qn("w:tr"), qn("w:tc")
_SDT_CONTENT, _T, _TAB, _BR, _CR = qn("w:sdtContent"), qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
_R = qn("w:r")


@dataclass(frozen=True)
class DocxContent:
    records: tuple[tuple[str, ...], ...] = ()
    problems: tuple[Problem, ...] = ()


def _name(filename: str | None) -> str:
    return f"'{filename}'" if filename else "DOCX"


def _refuse(filename: str | None, why: str) -> DocxContent:
    return DocxContent(problems=(Problem("lampiran", f"Lampiran {_name(filename)} {why}"),))


def check_zip(data: bytes, limits: Limits, filename: str | None = None) -> Problem | None:
    """Why this zip must not be opened, or None; reads every member in bounded steps, keeping nothing."""
    limit = limits.max_decompressed_bytes
    mb = limit // (1024 * 1024)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                return Problem("lampiran", f"Lampiran {_name(filename)} berisi terlalu banyak berkas ({len(infos)})")
            if sum(i.file_size for i in infos) > limit:
                return Problem(
                    "lampiran",
                    f"Lampiran {_name(filename)} tidak dapat diperiksa: isinya setelah dibuka melebihi {mb} MB",
                )
            if "word/document.xml" not in {i.filename for i in infos}:
                return Problem("lampiran", f"Lampiran {_name(filename)} bukan dokumen Word (DOCX)")
            total = 0
            for info in infos:
                with zf.open(info) as member:
                    while chunk := member.read(_READ_STEP):
                        total += len(chunk)
                        if total > limit:
                            return Problem(
                                "lampiran",
                                f"Lampiran {_name(filename)} tidak dapat diperiksa: isinya "
                                f"setelah dibuka melebihi {mb} MB",
                            )
    except Exception:  # zipfile raises BadZipFile, zlib.error, EOFError, NotImplementedError...: all refusals
        return Problem(
            "lampiran", f"Lampiran {_name(filename)} bukan berkas DOCX yang sah atau rusak; mohon kirim ulang"
        )
    return None


def read_docx(data: bytes, limits: Limits, filename: str | None = None) -> DocxContent:
    """Records (paragraph lines and table rows) of one DOCX, or the problem that stopped reading it."""
    if not data.startswith(b"PK"):
        return _refuse(filename, "bukan berkas DOCX yang sah (bukan arsip zip)")
    refused = check_zip(data, limits, filename)
    if refused is not None:
        return DocxContent(problems=(refused,))
    try:
        document = docx.Document(io.BytesIO(data))
        records = tuple(_block_records(document.element.body, 0))
    except Exception:  # python-docx/lxml on a damaged package; reported, not raised
        return _refuse(filename, "tidak dapat dibaca (rusak atau tidak lazim); mohon kirim ulang")
    return DocxContent(records=records)


def _block_records(parent: Any, depth: int) -> Iterator[tuple[str, ...]]:
    for child in parent.iterchildren():
        if child.tag == _P:
            for line in _paragraph_text(child).split("\n"):
                yield tuple(line.split("\t"))
        elif child.tag == _TBL and depth <= _MAX_TABLE_DEPTH:
            yield from _table_records(child, depth)
        elif child.tag == _SDT:  # content controls wrap ordinary paragraphs and tables
            for content in child.iterchildren(_SDT_CONTENT):
                yield from _block_records(content, depth)


def _table_records(tbl: Any, depth: int) -> Iterator[tuple[str, ...]]:
    for tr in tbl.iterchildren(_TR):
        cells: list[str] = []
        nested: list[tuple[str, ...]] = []
        for tc in tr.iterchildren(_TC):
            lines: list[str] = []
            for block in tc.iterchildren():
                if block.tag == _P:
                    lines.append(" ".join(_paragraph_text(block).split()))
                elif block.tag == _TBL:
                    nested.extend(_table_records(block, depth + 1))
            cells.append(" ".join(x for x in lines if x))
        filled = [c for c in cells if c]
        if len(filled) == 1 and len(cells) == 1:
            # A one-cell row wraps text (a boxed section); keep its paragraphs as lines.
            for tc in tr.iterchildren(_TC):
                for block in tc.iterchildren(_P):
                    for line in _paragraph_text(block).split("\n"):
                        yield tuple(line.split("\t"))
        elif filled:
            yield tuple(cells)
        yield from nested


def _paragraph_text(p: Any) -> str:
    """Text of a paragraph including runs inside hyperlinks, content controls and tracked insertions."""
    parts: list[str] = []
    for node in p.iter(_T, _TAB, _BR, _CR):
        if node.tag == _T:
            parts.append(node.text or "")
        elif node.tag == _TAB:
            if node.getparent() is not None and node.getparent().tag == _R:  # not a tab-stop definition
                parts.append("\t")
        else:
            parts.append("\n")
    return "".join(parts)
