"""Parse inbound mail in worker processes, ahead of the main loop that stores and answers it.

Parsing is pure CPU (MIME, PDF text, OCR) and `parsers` is pure, so it can run in other processes: while
the main thread writes one message's transaction and sends mail, the next messages of the batch are
parsed on another core (a backlog goes at no less than half the rate of parsing alone). A worker also
fences hostile input: a parser that runs away (the endless PDF inflate loop of d1c365b stopped intake) or
crashes in a C extension is cut off after `timeout` seconds (or seen dead at once), the worker replaced,
the message tried once more and then quarantined with its reason, while the daemon keeps running.

A worker is a plain child process (`python -c`, see `_BOOT`) that reads requests on its stdin and writes
answers on its stdout, one pickled frame each, in order. Not `multiprocessing`: its forkserver and
resource tracker were two more resident interpreters (56 MB of the 426 MB that bench/backlog.py --memory
measured), it needs POSIX semaphores (which a hardened systemd unit may refuse), and it re-imports the
daemon's main module in every worker. A letter over `SPOOL_MIN` bytes goes to the worker as a file in the
spool directory rather than through the pipe: neither side then makes a pickled copy of it, and the main
loop never waits for a busy worker to drain a 27 MB write.

`InlineParser` parses in the calling process (`[limits] parse_workers = 0`, and unit tests).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import fcntl
import functools
import gc
import importlib
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Protocol

from subdomaind.parsers import parse
from subdomaind.parsers.model import Attachment, ParsedMessage, ParseOptions, ParseResult
from subdomaind.workflows.rawmail import RawMail, Spooled, open_spool, whole

log = logging.getLogger("subdomaind.parsing")

# Attachment bytes larger than this are not sent back from a worker (text ones excepted): the workflows
# read the fields the parser extracted, never the attachment bytes (the stored raw message keeps them),
# and a 20 MB scan copied back would double the main process's memory for nothing.
RETURN_ATTACHMENT_MAX = 256 * 1024

# A message at least this large reaches the worker as a file (see the module docstring).
SPOOL_MIN = 256 * 1024

TIMEOUT_REASON = ("pesan tidak dapat dibaca dalam {seconds:.0f} detik (kemungkinan berkas lampiran rusak atau "
                  "dibuat untuk membebani sistem); pesan disimpan di karantina")
CRASH_REASON = ("pesan tidak dapat dibaca: proses pembacanya berhenti tak terduga dua kali (kemungkinan berkas "
                "lampiran rusak atau dibuat untuk membebani sistem); pesan disimpan di karantina")

_FRAME = struct.Struct(">Q")
_F_SETPIPE_SZ = 1031  # fcntl(2), Linux: a larger pipe lets a batch of small letters be queued without waiting


class Job(Protocol):
    def result(self) -> ParseResult: ...
    def ready(self) -> bool: ...


class Parser(Protocol):
    def submit(self, raw: RawMail, options: ParseOptions) -> Job: ...
    def warm(self) -> None: ...
    def close(self) -> None: ...


@functools.cache
def release_large_blocks() -> None:
    """Have glibc hand large blocks (a 27 MB letter and its copies) back to the system when freed; once
    per process.

    glibc raises its mmap threshold each time such a block is freed, up to 32 MB, after which letters land
    in the heap and the heap stays at its high-water mark: the daemon's RSS grew by each scanned letter's
    size and did not come down (bench/backlog.py --memory: 330 MB, 256 MB with this). A fixed threshold
    (mallopt(3) M_MMAP_THRESHOLD) turns the adjustment off. Not glibc: nothing to do.
    """
    try:
        ctypes.CDLL(None).mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD; CDLL(None): the process's own libc
    except (OSError, AttributeError):
        log.debug("mallopt not available", exc_info=True)


@dataclass
class _Done:
    value: ParseResult

    def result(self) -> ParseResult:
        return self.value

    def ready(self) -> bool:
        return True


class InlineParser:
    """Parse at once, in this process."""

    def submit(self, raw: RawMail, options: ParseOptions) -> Job:
        return _Done(parse(whole(raw), options))

    def warm(self) -> None:
        pass

    def close(self) -> None:
        pass


def _slim_message(msg: ParsedMessage) -> ParsedMessage:
    # Text attachments come back whole: the daemon looks into them for a quoted password (inbound.py).
    atts = tuple(a if len(a.data) <= RETURN_ATTACHMENT_MAX or a.content_type.startswith("text/")
                 else Attachment(a.filename, a.content_type, b"") for a in msg.attachments)
    return replace(msg, attachments=atts, attached_messages=tuple(_slim_message(m) for m in msg.attached_messages))


def parse_for_transport(raw: bytes, options: ParseOptions) -> ParseResult:
    """The worker's task: `parsers.parse`, with large attachment bytes left behind."""
    result = parse(raw, options)
    if result.message is None:
        return result
    return replace(result, message=_slim_message(result.message))


Task = Callable[[bytes, ParseOptions], ParseResult]


# --- the worker process ----------------------------------------------------------------------------------

# What a worker runs: the daemon's sys.path (a checkout run without installing), then `serve`.
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
         "from subdomaind.daemon.parsing import serve; serve(sys.argv[2])")


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    size = _FRAME.unpack(head)[0]
    body = stream.read(size)
    return body if len(body) == size else None  # cut off: the writer died mid-frame


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_FRAME.pack(len(body)))
    stream.write(body)
    stream.flush()


def serve(task_name: str) -> None:
    """The worker's loop: (raw or spool path, options) in, the task's ParseResult out, until stdin closes."""
    # The daemon ends its workers by closing their stdin (a terminal's Ctrl-C and systemd's SIGTERM to the
    # whole unit are the daemon's to handle); a daemon killed with -9 is noticed by the parent changing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    logging.basicConfig(level=logging.ERROR, format="parser worker: %(name)s: %(message)s")
    release_large_blocks()
    module, _, name = task_name.partition(":")
    task: Task = getattr(importlib.import_module(module), name)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the answers
    _write_frame(stdout, b"ready")
    while (frame := _read_frame(stdin)) is not None:
        # The frames come from the daemon that started this process, over its own pipe: trusted.
        source, options = pickle.loads(frame)  # noqa: S301
        del frame
        try:
            raw = Path(source).read_bytes() if isinstance(source, str) else source
            del source
            answer = task(raw, options)
        except Exception as exc:  # noqa: BLE001 - parse() never raises; a custom task may
            answer = ParseResult(kind="unreadable", message=None, reason=f"pesan tidak dapat dibaca: {exc}")
        raw = b""
        _write_frame(stdout, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        del answer
        # pdfminer leaves reference cycles behind; collected young (0.6 ms), they do not pile up in the
        # oldest generation: the worker stays at 56 MB instead of 76 after 200 letters, and a 20 MB scan
        # peaks 20 MB lower (bench/backlog.py --memory).
        gc.collect(1)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(0)


# --- the daemon's side -----------------------------------------------------------------------------------


class _Crashed(Exception):
    """The worker died while parsing this message."""


class _Lost(Exception):
    """The worker died (or was stopped) before it reached this message."""


class _Worker:
    """One worker process, the messages sent to it in order, and a thread reading its answers."""

    def __init__(self, task_name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(sys.path), task_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if _read_frame(self.proc.stdout) != b"ready":  # it imported the parsers (else: parse here, not quarantine)
            self.proc.kill()
            raise OSError(f"parser worker did not start (exit status {self.proc.wait()})")
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
        self.sent: collections.deque[_ProcJob] = collections.deque()
        self.lock = threading.Lock()
        self.alive = True
        self.reader = threading.Thread(target=self._read, name=f"parser-{self.proc.pid}", daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, job: _ProcJob) -> None:
        frame = pickle.dumps((job.source, job.options), protocol=pickle.HIGHEST_PROTOCOL)
        with self.lock:
            if not self.alive:
                raise _Lost()
            self.sent.append(job)
        assert self.proc.stdin is not None
        try:
            _write_frame(self.proc.stdin, frame)
        except OSError:
            self.kill()  # the reader fails what was sent, this one included

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                frame = _read_frame(self.proc.stdout)
            except (OSError, ValueError):
                frame = None
            if frame is None:
                break
            with self.lock:
                job = self.sent.popleft() if self.sent else None
            if job is None:
                continue
            try:
                job.future.set_result(pickle.loads(frame))  # noqa: S301 - our own worker's answer
            except Exception as exc:  # noqa: BLE001 - an answer that cannot be read is the message's
                job.future.set_exception(exc)
        # The process is gone: the message it was on is to blame, the ones behind it are not.
        with self.lock:
            self.alive = False
            first, rest = True, list(self.sent)
            self.sent.clear()
        for job in rest:
            if not job.future.done():
                job.future.set_exception(_Crashed() if first else _Lost())
            first = False
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def pending(self) -> int:
        return len(self.sent)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the worker ends its loop
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self.reader.join(timeout=5)


class _ProcJob:
    def __init__(self, owner: ProcessParser, raw: RawMail, options: ParseOptions) -> None:
        self.owner = owner
        self.raw = raw
        self.options = options
        # A letter fetched into a file goes as that file (the fetcher's to remove); a large one held in
        # memory is written to a file of the parser's own.
        self.spool: Path | None = None
        if isinstance(raw, Spooled):
            self.source: bytes | str = str(raw.path)
        else:
            self.spool = owner.spool(raw) if len(raw) >= SPOOL_MIN else None
            self.source = str(self.spool) if self.spool is not None else raw
        self.tries = 0
        self.value: ParseResult | None = None
        self.future: concurrent.futures.Future[ParseResult] = concurrent.futures.Future()
        owner.send(self)

    def result(self) -> ParseResult:
        if self.value is None:
            try:
                self.value = self.owner.wait(self)
            finally:
                if self.spool is not None:
                    self.spool.unlink(missing_ok=True)
        return self.value

    def ready(self) -> bool:
        return self.value is not None or self.future.done()

    def again(self) -> None:
        self.future = concurrent.futures.Future()
        self.owner.send(self)


class ProcessParser:
    """A few parser processes, each given messages in turn (the one with the fewest waiting)."""

    def __init__(self, workers: int, timeout: float, task: Task = parse_for_transport,
                 spool_dir: Path | None = None) -> None:
        self.workers = workers
        self.timeout = timeout
        self.task_name = f"{task.__module__}:{task.__qualname__}"  # a module-level function, imported by name
        self.spool_dir = spool_dir
        self._workers: list[_Worker] = []
        self._unavailable = False
        # A parser dropped without close() (a Daemon left to the garbage collector) still ends its workers.
        weakref.finalize(self, _close_all, self._workers)

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.alive]

    def spool(self, raw: bytes) -> Path:
        f, path = open_spool(self.spool_dir, "parse")
        with f:
            f.write(raw)
        return path

    def _worker(self) -> _Worker:
        self._workers[:] = [w for w in self._workers if w.alive]
        while len(self._workers) < self.workers:
            self._workers.append(_Worker(self.task_name))
        return min(self._workers, key=_Worker.pending)

    def send(self, job: _ProcJob) -> None:
        for _ in range(3):
            try:
                self._worker().send(job)
                return
            except _Lost:
                continue  # it died between being chosen and being written to: a fresh one
        raise OSError("parser workers die as soon as they start")

    def _give_up(self, exc: OSError) -> None:
        # No worker can start here (a process limit, no executable): parse in the daemon itself rather
        # than stop taking mail in.
        log.error("parser workers cannot start (%s); parsing in the daemon process instead", exc)
        self._unavailable = True

    def submit(self, raw: RawMail, options: ParseOptions) -> Job:
        if not self._unavailable:
            try:
                return _ProcJob(self, raw, options)
            except OSError as exc:
                self._give_up(exc)
        return _Done(parse(whole(raw), options))

    def warm(self) -> None:
        """Start the workers now (at daemon start), not when the first letter is waiting. (What a crash
        left in the spool is removed by the daemon at start: workflows/rawmail.remove_stale.)"""
        try:
            self._worker()
        except OSError as exc:
            self._give_up(exc)

    def wait(self, job: _ProcJob) -> ParseResult:
        while True:
            try:
                return job.future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                # A runaway: stop its worker. Once more on a fresh one, in case the wait was another
                # message's fault; a second timeout is this message's.
                log.warning("parser worker gave no answer in %.0f s; replacing it", self.timeout)
                self._kill_worker_of(job)
                reason = TIMEOUT_REASON.format(seconds=self.timeout)
            except _Crashed:
                log.warning("parser worker died on a message; replacing it")
                reason = CRASH_REASON
            except _Lost:
                if not self._again(job):  # not this message's fault: no try counted
                    return parse(whole(job.raw), job.options)
                continue
            except Exception as exc:  # noqa: BLE001 - an unreadable answer
                log.exception("parser worker failed")
                return ParseResult(kind="unreadable", message=None, reason=f"pesan tidak dapat dibaca: {exc}")
            job.tries += 1
            # Never parsed here after a hang or a crash: it could hang or crash the daemon itself.
            if job.tries >= 2 or not self._again(job):
                return ParseResult(kind="unreadable", message=None, reason=reason)

    def _again(self, job: _ProcJob) -> bool:
        """Send `job` to a (fresh) worker once more; False when none can be had (then it is parsed here)."""
        try:
            job.again()
            return True
        except OSError as exc:
            self._give_up(exc)
            return False

    def _kill_worker_of(self, job: _ProcJob) -> None:
        for w in self._workers:
            if job in w.sent:
                w.kill()
                w.reader.join(timeout=5)  # its jobs are failed before it is replaced

    def close(self) -> None:
        _close_all(self._workers)


def _close_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.close()
    workers.clear()


def make_parser(workers: int, timeout: float, spool_dir: Path | None = None) -> Parser:
    return ProcessParser(workers, timeout, spool_dir=spool_dir) if workers > 0 else InlineParser()
