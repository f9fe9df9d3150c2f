"""A received message as the daemon holds it: its bytes, or, for one too large to hold, a file (`Spooled`).

A scanned letter of 20 MB is 27 MB once encoded. The daemon's main process fetches it into a file in the
spool directory and never reads it whole: the parser worker reads the file, the digest is taken and the
database blob written piece by piece, and only a letter quoting one of our passwords (which must be
blanked before it is stored) is read into memory. Before, the main process held every large letter from
its fetch until it was stored: 28 MB of its peak (bench/backlog.py --memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("subdomaind.spool")

PIECE = 1024 * 1024
STALE_SECONDS = 3600.0  # far beyond two parse timeouts: no daemon is still working on a file this old


@dataclass(frozen=True)
class Spooled:
    """A message kept in `path` (0600, in the spool directory), `size` bytes; the fetcher's to discard."""

    path: Path
    size: int

    def __len__(self) -> int:
        return self.size

    def pieces(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while chunk := f.read(PIECE):
                yield chunk

    def head(self, n: int) -> bytes:
        with self.path.open("rb") as f:
            return f.read(n)

    def read(self) -> bytes:
        return self.path.read_bytes()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


RawMail = bytes | Spooled


def open_spool(spool_dir: Path | None, kind: str) -> tuple[BinaryIO, Path]:
    """A new file `<kind>-*.eml` in `spool_dir` (None: the system's temp directory), open for writing:
    0600, and a name no other daemon process sharing the state directory can take (mkstemp)."""
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".eml", dir=spool_dir)
    return os.fdopen(fd, "wb"), Path(name)


def pieces(raw: RawMail) -> Iterator[bytes | memoryview]:
    """The message in order, at most PIECE bytes at a time, without a copy of bytes held in memory."""
    if isinstance(raw, Spooled):
        yield from raw.pieces()
        return
    view = memoryview(raw)
    for at in range(0, len(raw), PIECE):
        yield view[at:at + PIECE]


def whole(raw: RawMail) -> bytes:
    return raw.read() if isinstance(raw, Spooled) else raw


def head(raw: RawMail, n: int) -> bytes:
    return raw.head(n) if isinstance(raw, Spooled) else raw[:n]


def sha256(raw: RawMail) -> str:
    digest = hashlib.sha256()
    for piece in pieces(raw):
        digest.update(piece)
    return digest.hexdigest()


def discard(raws: Iterable[RawMail]) -> None:
    """Remove the files of the spooled ones among `raws` (a message's file goes once it is stored)."""
    for raw in raws:
        if isinstance(raw, Spooled):
            raw.discard()


def remove_stale(spool_dir: Path, older_than: float = STALE_SECONDS) -> int:
    """Remove what a crash left in the spool directory (letters as they came, before any password in them
    was blanked) once older than `older_than` seconds; a younger file may be another daemon process's,
    sharing the state directory (scale-out), still at work."""
    if not spool_dir.is_dir():
        return 0
    removed = 0
    for path in spool_dir.glob("*.eml"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > older_than:
                path.unlink()
                removed += 1
    if removed:
        log.warning("removed %d spool file(s) left by an earlier run", removed)
    return removed
