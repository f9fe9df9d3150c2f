"""Read an operator's text file (configuration, SOP, holiday overrides) or say, with file and line, why not.

Offices edit these files on Windows too: Notepad's "ANSI" (cp1252) or UTF-16 bytes, a directory where a file
was meant, or a device are refused here with the file, the line and what to do, never with a traceback.
"""

from __future__ import annotations

import stat
from pathlib import Path


class TextFileError(ValueError):
    """The file cannot be used; the message names the file (and line) and the fix, in plain words."""


UTF8_HINT = "simpan berkas sebagai UTF-8"


def read_utf8(path: str | Path) -> str:
    """The file's text; `TextFileError` for a missing file, a directory, a non-regular file or non-UTF-8 bytes."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise TextFileError(f"{p}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TextFileError(f"{p}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or a device would block or never end; only a plain file is a configuration.
        raise TextFileError(f"{p}: is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TextFileError(f"{p}: cannot read: {exc.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TextFileError(f"{p}:1: the file is UTF-16, not UTF-8 ({UTF8_HINT})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TextFileError(f"{p}:{line}: byte 0x{data[exc.start]:02x} at column {col} is not UTF-8 "
                            f"(saved as Windows ANSI/cp1252?); {UTF8_HINT}") from None
    return text.removeprefix("\ufeff")  # Notepad's UTF-8 BOM: tomllib refuses it, the bytes are fine
