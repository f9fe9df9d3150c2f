"""CPU time per message of `parsers.parse` for bench/parse.py's messages, to compare two trees on a busy machine.

    .venv/bin/python bench/parse_cpu.py                 # this tree's parsers
    .venv/bin/python bench/parse_cpu.py /tmp/base       # another tree's parsers (e.g. `git archive` of main)

bench/parse.py reports wall-clock rates, which move by 30 to 50 % with the load of other processes on a
shared 2-core machine. This script reports process CPU time (the PDF reader's child processes included)
for the same generated messages: body-form letters and 2-page PDF forms, and every fixture under
tests/fixtures/emails. Run it for both trees alternately, a few times each, and compare the medians.
"""

from __future__ import annotations

import importlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE.parent
sys.path.insert(0, str(HERE))

import parse as bench  # noqa: E402  (this tree's bench/parse.py: the message generators)


def _parse_of(root: Path) -> Callable[..., Any]:
    """`parse` of the tree at root, under the name its modules import each other by: `subdomaind.parsers`
    (through a link, so this checkout's installed package does not answer) or, in an older tree, `parsers`."""
    if root != HERE.parent:
        if any("subdomaind.parsers" in f.read_text(encoding="utf-8") for f in (root / "parsers").glob("*.py")):
            links = Path(tempfile.mkdtemp(prefix="parse-cpu-"))
            (links / "subdomaind").mkdir()
            (links / "subdomaind" / "parsers").symlink_to(root / "parsers")
            sys.path.insert(0, str(links))
            # The bench's own imports loaded this checkout's package through the editable install's finder.
            for name in [n for n in sys.modules if n.split(".")[0] == "subdomaind"]:
                del sys.modules[name]
            sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
            sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
            sys.path_importer_cache.clear()
        else:
            sys.path.insert(0, str(root))
            return importlib.import_module("parsers").parse  # type: ignore[no-any-return]
    module = importlib.import_module("subdomaind.parsers")
    assert Path(module.__file__ or "").resolve().parent == (root / "parsers").resolve(), module.__file__
    return module.parse  # type: ignore[no-any-return]


parse = _parse_of(ROOT)

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
