"""Benchmark the outbox's SMTP transport alone: 2,900 mails (a 1,000-message backlog's worth) through
`SmtpTransport.send_many` in chunks of 20, as `drain` sends them, to an SMTP server in another process that
accepts and keeps each mail. Prints the wall time and the CPU of the sending process, per mail.

    .venv/bin/python bench/smtp_send.py

The backlog and latency benches time the whole daemon, whose figures move with the machine's load;
this one isolates the part that the SMTP client library (aiosmtplib) decides. No target: it says what a
mail costs the sender.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.devkit.devservers import SmtpRelay  # the dev kit, from the checkout
relay = SmtpRelay("127.0.0.1", 9, base=Path(sys.argv[2]))
relay.deliver = False
relay.start()
print(relay.port, flush=True)
sys.stdin.read()
relay.stop()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mails", type=int, default=2900)
    ap.add_argument("--connections", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.devkit import netguard

    netguard.guard_this_process_and_children()  # 127.0.0.1 only, here and in the server process
    from subdomaind.daemon.config import SmtpConfig
    from subdomaind.daemon.outbox import SmtpTransport

    base = tempfile.mkdtemp(prefix="smtp-bench-")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT), base], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())
    body = b"".join(b"Baris %d surat balasan dengan isi yang cukup panjang untuk sebuah surat dinas.\r\n" % i
                    for i in range(60))
    raw = b"From: layanan@trenggalekkab.go.id\r\nTo: dinsos@trenggalekkab.go.id\r\nSubject: Uji\r\n\r\n" + body
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, tls="none", connections=args.connections),
                              None, helo_name="trenggalekkab.go.id")
    chunk = [("layanan@trenggalekkab.go.id", ["dinsos@trenggalekkab.go.id"], raw)] * 20
    failed = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.mails // 20):
        failed += sum(error is not None for error in transport.send_many(chunk))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    transport.close()
    server.stdin.close()
    server.wait(10)
    sent = args.mails // 20 * 20
    print(f"({sent} mails in chunks of 20 over {args.connections} connections, {failed} failed)")
    print(f"smtp transport: {wall:.2f} s wall, {cpu:.2f} s CPU of the sender, "
          f"{1000 * cpu / sent:.3f} ms CPU per mail, {sent / wall:.0f} mails/s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
