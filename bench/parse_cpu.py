"""CPU time per message of `parsers.parse` for bench/parse.py's messages, to compare two trees on a busy machine.

    .venv/bin/python bench/parse_cpu.py                 # this tree's parsers
    .venv/bin/python bench/parse_cpu.py /tmp/base       # another tree's parsers (e.g. `git archive` of main)

bench/parse.py reports wall-clock rates, which move by 30 to 50 % with the load of other processes on a
shared 2-core machine. This script reports process CPU time (the PDF reader's child processes included)
for the same generated messages: body-form letters and 2-page PDF forms, and every fixture under
tests/fixtures/emails. Run it for both trees alternately, a few times each, and compare the medians.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import parse as bench  # noqa: E402  (this tree's bench/parse.py: the message generators)

from subdomaind.parsers import parse  # noqa: E402  (the parsers of ROOT)

SKIP = ("zip_bomb", "ocr", "scanned")  # OCR and the bomb measure other limits, and dominate the sum


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _ms_per_message(messages: list[bytes], rounds: int = 1) -> float:
    start = _cpu()
    for _ in range(rounds):
        for raw in messages:
            parse(raw, bench.OPTIONS)
    return (_cpu() - start) / (rounds * len(messages)) * 1000


def main() -> int:
    bodies = [bench.body_message(i) for i in range(200)]
    pdfs = [
        bench.with_attachment(i, "Terlampir surat dan formulir.", bench.two_page_pdf(i), "formulir.pdf",
                              "application/pdf")
        for i in range(8)
    ] * 3
    fixtures = [p.read_bytes() for p in sorted((HERE.parent / "tests" / "fixtures" / "emails").glob("*.eml"))
                if not any(s in p.name for s in SKIP)]
    for raw in bodies[:20] + fixtures[:20]:
        parse(raw, bench.OPTIONS)  # warm: imports and compiled patterns are not per-message costs
    body = _ms_per_message(bodies, rounds=3)
    pdf = _ms_per_message(pdfs)
    every = _ms_per_message(fixtures)
    print(f"parsers of {ROOT}: body-form {body:.2f} ms CPU/msg, 2-page PDF form {pdf:.1f} ms CPU/msg, "
          f"{len(fixtures)} fixtures {every:.2f} ms CPU/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
