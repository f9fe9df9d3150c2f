"""Parse inbound mail in worker processes, ahead of the main loop that stores and answers it.

Parsing is pure CPU (MIME, PDF text, OCR) and `parsers` is pure, so it can run in other processes: while
the main thread writes one message's transaction and sends mail, the next messages of the batch are
parsed on another core (issue 7: a backlog at no less than half the rate of parsing alone). A worker also
fences hostile input: a parser that runs away (the endless PDF inflate loop of d1c365b stopped intake) or
crashes in a C extension is cut off after `timeout` seconds, the worker replaced, and the message
quarantined with its reason, while the daemon keeps running.

`InlineParser` parses in the calling process (`[limits] parse_workers = 0`, and unit tests).

The workers come from a forkserver, which imports the main module of the process again (as any
multiprocessing start method but fork does): a script that builds a `Daemon` must do its work under
`if __name__ == "__main__":`. The `subdomaind` console script does.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from parsers import parse
from parsers.model import Attachment, ParsedMessage, ParseOptions, ParseResult

log = logging.getLogger("subdomaind.parsing")

# Attachment bytes larger than this are not sent back from a worker (text ones excepted): the workflows
# read the fields the parser extracted, never the attachment bytes (the stored raw message keeps them),
# and a 20 MB scan copied back would double the main process's memory for nothing.
RETURN_ATTACHMENT_MAX = 256 * 1024

TIMEOUT_REASON = ("pesan tidak dapat dibaca dalam {seconds:.0f} detik (kemungkinan berkas lampiran rusak atau "
                  "dibuat untuk membebani sistem); pesan disimpan di karantina")


class Job(Protocol):
    def result(self) -> ParseResult: ...
    def ready(self) -> bool: ...


class Parser(Protocol):
    def submit(self, raw: bytes, options: ParseOptions) -> Job: ...
    def warm(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Done:
    value: ParseResult

    def result(self) -> ParseResult:
        return self.value

    def ready(self) -> bool:
        return True


class InlineParser:
    """Parse at once, in this process."""

    def submit(self, raw: bytes, options: ParseOptions) -> Job:
        return _Done(parse(raw, options))

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


class _PoolJob:
    def __init__(self, owner: ProcessParser, raw: bytes, options: ParseOptions) -> None:
        self.owner = owner
        self.raw = raw
        self.options = options
        self.generation = owner.generation
        self.pending: Any = owner.pool().apply_async(owner.task, (raw, options))

    def result(self) -> ParseResult:
        return self.owner.wait(self)

    def ready(self) -> bool:
        return self.generation == self.owner.generation and bool(self.pending.ready())


class ProcessParser:
    """A small pool of parser processes (forkserver: never a fork of a process that runs threads)."""

    def __init__(self, workers: int, timeout: float, task: Task = parse_for_transport) -> None:
        self.workers = workers
        self.timeout = timeout
        self.task = task  # a module-level function (the workers import it by name)
        self.generation = 0
        self._pool: multiprocessing.pool.Pool | None = None
        self._unavailable = False

    def pool(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            # Workers forked from a server that has imported the parsers start in milliseconds.
            ctx.set_forkserver_preload(["parsers", "parsers.pdf", "parsers.docx"])
            self._pool = ctx.Pool(self.workers)
        return self._pool

    def submit(self, raw: bytes, options: ParseOptions) -> Job:
        if self._unavailable:
            return _Done(parse(raw, options))
        try:
            return _PoolJob(self, raw, options)
        except OSError as exc:
            # No worker can start here (a sandbox without POSIX semaphores in /dev/shm, a process limit):
            # parse in the daemon itself rather than stop taking mail in.
            log.error("parser workers cannot start (%s); parsing in the daemon process instead", exc)
            self._unavailable = True
            return _Done(parse(raw, options))

    def warm(self) -> None:
        """Start the workers now (at daemon start), not when the first letter is waiting."""
        try:
            self.pool()
        except OSError as exc:
            log.error("parser workers cannot start (%s); parsing in the daemon process instead", exc)
            self._unavailable = True

    def wait(self, job: _PoolJob) -> ParseResult:
        for attempt in (0, 1):
            if job.generation != self.generation:
                # The pool was replaced after this job was given to it (another message timed out).
                job.generation, job.pending = self.generation, self.pool().apply_async(
                    self.task, (job.raw, job.options))
            try:
                result: ParseResult = job.pending.get(timeout=self.timeout)
                return result
            except multiprocessing.TimeoutError:
                # Runaway or dead worker: replace the pool. Once more on a fresh worker, in case the wait was
                # another message's fault (a worker that died with it); a second timeout is this message's.
                log.warning("parser worker gave no answer in %.0f s; replacing it", self.timeout)
                self._restart()
                if attempt:
                    break
            except Exception as exc:  # noqa: BLE001 - parse() never raises; an unpicklable result would
                log.exception("parser worker failed")
                return ParseResult(kind="unreadable", message=None, reason=f"pesan tidak dapat dibaca: {exc}")
        return ParseResult(kind="unreadable", message=None, reason=TIMEOUT_REASON.format(seconds=self.timeout))

    def _restart(self) -> None:
        self.close()
        self.generation += 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def make_parser(workers: int, timeout: float) -> Parser:
    return ProcessParser(workers, timeout) if workers > 0 else InlineParser()
