"""Benchmark the letters: making one letter PDF, unsigned and signed (PAdES with a local demo certificate),
and what signing adds to the daemon's resident memory. One summary line per figure with its target; the
exit status is non-zero when a target is missed.

    .venv/bin/python bench/letters.py

Targets: a signed letter (render + sign) in <= 200 ms median on one core; signing adds < 40 MB resident
(the certificate read at start plus pyHanko, imported with the first signed letter), measured in a fresh
child process that has already imported the daemon and made one unsigned letter.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIGNED_TARGET_MS = 200.0
RSS_TARGET_MB = 40.0
ROUNDS = 20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def letter_ctx() -> dict[str, object]:
    from subdomaind.daemon.config import LetterConfig

    return {
        "letter": LetterConfig(kop=["PEMERINTAH KABUPATEN TRENGGALEK", "DINAS KOMUNIKASI DAN INFORMATIKA"],
                               city="Trenggalek", signer_name="Drs. Contoh Pejabat, M.Si",
                               signer_nip="197106091992011002", logo=ROOT / "examples" / "lambang-contoh.png",
                               tembusan=["Sekretaris Daerah Kabupaten Trenggalek"]),
        "agency_name": "Dinas Komunikasi dan Informatika Kabupaten Trenggalek", "letter_number": "555/1/406.020/2026",
        "ticket": "SD/2026/0001", "fqdn": "dinsos.trenggalekkab.go.id", "ip": "203.0.113.10", "rdtype": "A",
        "unit": "Dinas Sosial", "username": "dinsos", "note": "nama tidak sesuai nomenklatur",
        "fields": {"pic_email": "lukman@dinsos.trenggalekkab.go.id", "unit_head": "Kepala Dinas Sosial",
                   "check": {"missing": ["pic_phone"], "problems": []}},
        "electronic": True,
    }


def child(pki_dir: str) -> int:
    """Resident memory in a fresh process: before the signer, after loading it, after letters."""
    warnings.filterwarnings("ignore")
    import subdomaind.daemon.service  # noqa: F401 - what the daemon has imported before any letter
    from subdomaind.daemon.config import LetterSigningConfig
    from subdomaind.workflows.letters import build_letter
    from subdomaind.workflows.signing import load_signer

    build_letter("final", letter_ctx()).to_pdf()
    before = rss_mb()
    signer = load_signer(LetterSigningConfig(pkcs12_file=Path(pki_dir) / "tte.p12",
                                             password_file=Path(pki_dir) / "tte.pass"))
    loaded = rss_mb()
    assert signer is not None
    build_letter("final", letter_ctx()).to_pdf(signer)
    first = rss_mb()
    for i in range(50):
        kind = ("final", "rejection", "incomplete")[i % 3]
        build_letter(kind, letter_ctx()).to_pdf(signer, doc_id=f"{i:016x}")
    print(json.dumps({"before": before, "loaded": loaded, "first": first, "after": rss_mb()}))
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2])
    warnings.filterwarnings("ignore")
    from subdomaind.daemon.config import LetterSigningConfig
    from subdomaind.workflows.letters import KINDS, build_letter
    from subdomaind.workflows.signing import load_signer, make_demo_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = make_demo_pki(Path(tmp), signer_name="Drs. Contoh Pejabat, M.Si", organization="Dinas Kominfo")
        signer = load_signer(LetterSigningConfig(pkcs12_file=pki.pkcs12, password_file=pki.password_file,
                                                 verify_url="https://tte.trenggalekkab.go.id/verifikasi/{id}"))
        assert signer is not None
        build_letter("final", letter_ctx()).to_pdf(signer)  # imports and caches out of the timing
        unsigned: list[float] = []
        signed: list[float] = []
        for i in range(ROUNDS):
            for kind in KINDS:
                letter = build_letter(kind, letter_ctx())
                t = time.perf_counter()
                letter.to_pdf()
                unsigned.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                letter.to_pdf(signer, doc_id=f"{i:016x}")
                signed.append((time.perf_counter() - t) * 1000)
        out = subprocess.run([sys.executable, __file__, "--child", tmp], capture_output=True, text=True,
                             timeout=300, check=True).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    ms = statistics.median(signed)
    added = mem["after"] - mem["before"]
    ok_ms, ok_mem = ms <= SIGNED_TARGET_MS, added < RSS_TARGET_MB
    print(f"letter PDF, median of {len(signed)}: signed {ms:.0f} ms (unsigned {statistics.median(unsigned):.0f} ms), "
          f"target <= {SIGNED_TARGET_MS:.0f} ms: {'ok' if ok_ms else 'MISSED'}")
    print(f"resident memory signing adds: {added:.1f} MB ({mem['before']:.1f} -> certificate read "
          f"{mem['loaded']:.1f} -> first signed letter {mem['first']:.1f} -> 50 more {mem['after']:.1f}), "
          f"target < {RSS_TARGET_MB:.0f} MB: {'ok' if ok_mem else 'MISSED'}")
    return 0 if ok_ms and ok_mem else 1


if __name__ == "__main__":
    raise SystemExit(main())
