"""A configuration that is right or refused, commands that never print a traceback, health a monitor can read.

- Every problem the daemon would crash on at start is refused by `check-config` (and by the start, exit 78)
  with its key; the examples with every commented key uncommented pass.
- `check-config --connect` against the real Dovecot, SMTP relay and BIND: a wrong password, a wrong TSIG key
  and a closed port each fail in one line.
- Commands answer bad input, a closed pipe, Ctrl-C, a corrupted SQLite file and an unreachable PostgreSQL in
  one line with a non-zero exit.
- Read-only commands need no secret, never create a database, and work for a member of the database's group.
- `status` in words, `status --check` in the Nagios convention, Prometheus metrics scraped from `run`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.devkit.devservers import Bind, Dovecot, SmtpRelay, free_port
from tests.devkit.localoffice import Office, config_data, write_config
from tests.inprocess import run_main

ROOT = Path(__file__).parent.parent
# In /usr/sbin, which is not on a non-root user's PATH on Debian.
TSIG_KEYGEN = shutil.which("tsig-keygen", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "tsig-keygen"
SUBDOMAIND = Path(sys.executable).with_name("subdomaind")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUBDOMAIND), *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode != 0


# --- 1. one validation ----------------------------------------------------------------------------


def _base(tmp_path: Path) -> dict[str, Any]:
    return config_data(tmp_path / "cfg")


def _agency(data: dict[str, Any]) -> dict[str, Any]:
    return data["agency"][0]


def _tsig_stanza(data: dict[str, Any], tmp: Path) -> None:
    out = subprocess.run([TSIG_KEYGEN, "-a", "hmac-sha512", "subdomaind"], capture_output=True, text=True,
                         check=True).stdout
    path = tmp / "stanza.key"
    path.write_text(out)
    path.chmod(0o600)
    _agency(data)["dns"]["tsig_secret_file"] = str(path)


def _secret(tmp: Path, name: str, text: str, mode: int = 0o600) -> str:
    path = tmp / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


BAD: dict[str, tuple[Any, str]] = {
    "tsig_not_base64": (lambda d, t: _agency(d)["dns"].update(tsig_secret_file=_secret(t, "t", "bukan base64!")),
                        "agency[0].dns.tsig_secret_file: "),
    "tsig_key_name_differs": (lambda d, t: _agency(d)["dns"].update(tsig_secret_file=_secret(
        t, "t", 'key "lain" {\n\talgorithm hmac-sha256;\n\tsecret "aGVsbG8gd29ybGQ=";\n};\n')), "named 'lain'"),
    "office_start_25_99": (lambda d, t: _agency(d).update(office_start="25:99"), "agency[0].office_start"),
    "office_end_before_start": (lambda d, t: _agency(d).update(office_start="16:00", office_end="07:30"),
                                "agency[0].office_end: 07:30 is not after"),
    "weekday_9": (lambda d, t: _agency(d).update(office_weekdays=[0, 9]), "agency[0].office_weekdays"),
    "holiday_file_missing": (lambda d, t: _agency(d).update(holiday_overrides=str(t / "libur.toml")),
                             "agency[0].holiday_overrides"),
    "holiday_file_bad": (lambda d, t: (t / "libur.toml").write_text('libur = ["kemarin"]\n') and _agency(d).update(
        holiday_overrides=str(t / "libur.toml")), "agency[0].holiday_overrides"),
    "digest_time": (lambda d, t: _agency(d).update(digest_time="7:60"), "agency[0].digest_time"),
    "state_dir_is_a_file": (lambda d, t: (t / "f").write_text("x") and d.update(state_dir=str(t / "f")),
                            "state_dir: "),
    "empty_password": (lambda d, t: _agency(d)["imap"].update(password_file=_secret(t, "p", "")),
                       "is empty"),
    "world_readable_secret": (lambda d, t: _agency(d)["imap"].update(password_file=_secret(t, "p", "x", 0o644)),
                              "chmod 0600"),
    "digest_recipient": (lambda d, t: _agency(d).update(digest_recipients=["bukan email"]),
                         "agency[0].digest_recipients: 'bukan email'"),
    "actor": (lambda d, t: _agency(d)["actors"].update(kabid=["kabid@@ @"]), "agency[0].actors.kabid: 'kabid@@ @'"),
    "delegate": (lambda d, t: _agency(d).update(delegates={"kadis": ["plt.kadis@@trenggalekkab.go.id"]}), "agency[0].delegates.kadis"),
    "argv_placeholder": (lambda d, t: d.update(hosting={"backend": "command",
                                                        "argv": ["/bin/true", "{username}", "{usernme}"]}),
                         "hosting.argv[2]: '{usernme}': unknown placeholder"),
    "postgres_driver_missing": (lambda d, t: d.update(database_url="postgresql+pg8000://u@127.0.0.1/x"),
                                "pip install pg8000"),
    "placeholder_signer": (lambda d, t: _agency(d)["letter"].update(signer_name="(nama Kepala Dinas)",
                                                                    signer_nip="000000000000000000"),
                           "agency[0].letter.signer_name"),
    "sop_wrong_type": (lambda d, t: (t / "sop.toml").write_text(
        'name = "x"\ntitle = "x"\nstart = "a"\nroles = 1\nsteps = "a"\n') and _agency(d).update(
        sop=str(t / "sop.toml")), "agency[0].sop: "),
    "metrics_port": (lambda d, t: d.update(metrics={"listen": "127.0.0.1:99999"}), "metrics.listen: port 99999"),
    "invalid_nip": (lambda d, t: _agency(d)["letter"].update(signer_nip="19710609199201100"),
                    "agency[0].letter.signer_nip"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_config_refuses_what_the_daemon_would_crash_on(tmp_path: Path, case: str) -> None:
    data = _base(tmp_path)
    edit, expected = BAD[case]
    edit(data, tmp_path)
    path = write_config(tmp_path / "c.toml", data)
    proc = run_main("check-config", str(path))
    assert proc.returncode == 78 and expected.encode() in proc.stdout, proc.stdout + proc.stderr
    assert b"Traceback" not in proc.stdout + proc.stderr
    # The start refuses the same configuration with the same line, and 78 so systemd does not retry.
    start = run_main("--config", str(path), "once")
    assert start.returncode == 78 and expected.encode() in start.stderr and b"Traceback" not in start.stderr


def test_the_installed_command_refuses_a_bad_configuration_as_main_does(tmp_path: Path) -> None:
    data = _base(tmp_path)
    edit, expected = BAD["digest_time"]
    edit(data, tmp_path)
    path = write_config(tmp_path / "c.toml", data)
    for proc, stream in ((run("check-config", str(path)), "stdout"), (run("--config", str(path), "once"), "stderr")):
        assert proc.returncode == 78 and expected in getattr(proc, stream), proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr


def test_a_pasted_tsig_keygen_stanza_is_taken_whole(tmp_path: Path, bind: Bind) -> None:
    from subdomaind.daemon.validate import load_checked, read_tsig

    data = _base(tmp_path)
    _tsig_stanza(data, tmp_path)
    cfg = load_checked(write_config(tmp_path / "c.toml", data))
    key = read_tsig(cfg.agencies[0].dns)
    assert key.algorithm == "hmac-sha512" and key.name == "subdomaind" and len(key.secret) > 40


@pytest.mark.parametrize("what", ["config", "sop", "holidays"])
def test_files_not_utf8_a_directory_or_not_a_file_are_refused_with_file_and_line(tmp_path: Path, what: str) -> None:
    data = _base(tmp_path)
    if what == "config":
        path = write_config(tmp_path / "c.toml", data)
        path.write_bytes(path.read_bytes().replace(b"Kabupaten Trenggalek", b"Kabupaten Trenggalek \x96 Jatim", 1))
        target = path
    elif what == "sop":
        sop = tmp_path / "sop.toml"
        sop.write_bytes((ROOT / "workflows" / "sops" / "trenggalek.toml").read_bytes() + b"# Jalan \x96 raya\n")
        _agency(data)["sop"] = str(sop)
        target = sop
        path = write_config(tmp_path / "c.toml", data)
    else:
        hol = tmp_path / "libur.toml"
        hol.write_bytes(b'# Cuti bersama \x96 daerah\nlibur = ["2026-08-18"]\n')
        _agency(data)["holiday_overrides"] = str(hol)
        target = hol
        path = write_config(tmp_path / "c.toml", data)
    proc = run("check-config", str(path))
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert re.search(rf"{re.escape(str(target))}:\d+: .*simpan berkas sebagai UTF-8", proc.stdout), proc.stdout
    # A directory and a FIFO where the file was meant.
    target.unlink()
    target.mkdir()
    assert "is a directory" in run("check-config", str(path)).stdout or what == "config"
    if what == "config":
        assert "is a directory" in run("check-config", str(target)).stdout
    target.rmdir()
    os.mkfifo(target)
    proc = run("check-config", str(path), timeout=20)
    assert proc.returncode == 78 and "not a regular file" in proc.stdout


def _uncommented(example: Path, tmp: Path) -> Path:
    """The example with every commented `key = value` line uncommented, pointing at files in `tmp`."""
    text = example.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^# ?([a-z_]+ = .*)$", r"\1", text)
    creds = tmp / "credentials"
    creds.mkdir()
    for name in ("imap-password", "smtp-password"):
        _secret(creds, name, "rahasia")
    _secret(creds, "tsig-secret", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=")
    from subdomaind.workflows.secretbox import write_key_file

    write_key_file(creds / "pic-secret-key")
    from subdomaind.workflows.signing import make_demo_pki

    make_demo_pki(creds, signer_name="Drs. Contoh Pejabat, M.Si", organization="Diskominfo")  # tte.p12, tte.pass
    shutil.copy(ROOT / "examples" / "lambang-contoh.png", tmp / "lambang-contoh.png")
    (tmp / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp / "libur-lokal.toml").write_text('libur = ["2026-08-19"]\n')
    tool = tmp / "buat-akun-hosting"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    text = (text.replace("/etc/subdomaind/", f"{tmp}/").replace("/usr/local/sbin/buat-akun-hosting", str(tool))
            .replace('"/var/lib/subdomaind"', f'"{tmp}/state"'))
    out = tmp / "config.toml"
    out.write_text(text, encoding="utf-8")
    return out


@pytest.mark.parametrize("example", ["trenggalek.toml", "kalbar.toml"])
def test_examples_with_every_commented_key_uncommented(tmp_path: Path, example: str) -> None:
    path = _uncommented(ROOT / "examples" / example, tmp_path)
    text = path.read_text()
    assert "\n# office_start" not in text and "\noffice_start" in text
    proc = run("check-config", str(path))
    # As shipped, only the signer placeholder is refused: the office must write its Kepala Dinas.
    assert proc.returncode == 78, proc.stdout
    assert set(re.findall(r"(?m)^(\S+?):", proc.stdout)) == {"agency[0].letter.signer_name",
                                                            "agency[0].letter.signer_nip"}, proc.stdout
    path.write_text(text.replace("(nama Kepala Dinas)", "Drs. Contoh Pejabat, M.Si")
                    .replace('"000000000000000000"', '"197106091992011002"'))
    proc = run("check-config", str(path))
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout


# --- 2. check-config --connect ----------------------------------------------------------------------


def test_connect_logs_in_everywhere_and_names_each_failure(tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                          bind: Bind) -> None:
    o = Office.create(tmp_path / "office", dovecot, smtp_relay, bind)
    good = run("check-config", "--connect", str(o.config_path))
    assert good.returncode == 0, good.stdout
    # The configuration's own warnings (letters unsigned in this office) come before the connection checks.
    lines = [line for line in good.stdout.splitlines()[1:] if not line.startswith("WARNING:")]
    assert [line.split(": ")[0] for line in lines] == [
        f"OK    IMAP trenggalek {o.mailbox.name}@127.0.0.1:{dovecot.imap_port}",
        f"OK    SMTP 127.0.0.1:{smtp_relay.port}",
        f"OK    DNS trenggalek SOA trenggalekkab.go.id di 127.0.0.1:{bind.port} dengan kunci TSIG subdomaind",
        f"OK    DNS trenggalek server verifikasi 127.0.0.1:{bind.port}",
    ]
    data = copy.deepcopy(o.data)
    Path(_agency(data)["imap"]["password_file"]).write_text("salah\n")
    _agency(data)["dns"]["tsig_secret_file"] = _secret(tmp_path, "wrong.key", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=")
    closed = free_port()
    data["smtp"]["port"] = closed
    _agency(data)["dns"]["verify_servers"] = [f"127.0.0.1:{bind.port}", f"127.0.0.1:{closed}"]
    bad = run("check-config", "--connect", str(write_config(tmp_path / "bad.toml", data)), timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    out = [line for line in bad.stdout.splitlines() if not line.startswith("WARNING:")]
    assert out[1].startswith("GAGAL IMAP") and "b'" not in out[1], out[1]
    assert out[2].startswith(f"GAGAL SMTP 127.0.0.1:{closed}: koneksi ditolak"), out[2]
    assert out[3].startswith("GAGAL DNS") and "BADSIG" in out[3], out[3]
    assert out[4].startswith("OK    DNS trenggalek server verifikasi")
    assert out[5].startswith(f"GAGAL DNS trenggalek server verifikasi 127.0.0.1:{closed}"), out[5]


# --- 3. no traceback ----------------------------------------------------------------------------------


@pytest.fixture
def office_db(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "c.toml", config_data(tmp_path / "cfg"))
    assert run("--config", str(path), "db", "upgrade").returncode == 0
    return path


@pytest.mark.parametrize("args", [
    ("digest", "--preview", "--role", "bupati"),
    ("digest", "--preview", "--hours", "nan"),
    ("digest", "--preview", "--agency", "x"),
    ("form", "--pdf", "--agency", "x"),
    ("form", "--pdf", "-o", "/nonexistent/dir/form.pdf"),
    ("show", "SD/2026/9999"),
    ("quarantine", "show", "999"),
])
def test_bad_input_answers_in_one_line(office_db: Path, args: tuple[str, ...]) -> None:
    proc = run_main("--config", str(office_db), *args)
    assert proc.returncode != 0 and b"Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_output_into_head_and_ctrl_c(office_db: Path, tmp_path: Path) -> None:
    piped = subprocess.run(f"'{SUBDOMAIND}' --config '{office_db}' form --pdf -o /dev/stdout | head -c 10",
                           shell=True, capture_output=True, timeout=60)
    assert b"Traceback" not in piped.stderr and b"BrokenPipe" not in piped.stderr, piped.stderr
    # Ctrl-C while the command waits on a server that never answers.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1)
    data = config_data(tmp_path / "c2", imap_port=hole.getsockname()[1])
    cfg = write_config(tmp_path / "c2.toml", data)
    proc = subprocess.Popen([str(SUBDOMAIND), "check-config", "--connect", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    hole.close()
    assert proc.returncode == 130 and "Traceback" not in err and err.strip() == "dihentikan (Ctrl-C)", err


def test_corrupted_sqlite_and_unreachable_postgresql(office_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "cfg" / "state" / "subdomaind.db"
    for f in db.parent.glob("subdomaind.db-*"):
        f.unlink()
    db.write_bytes(b"bukan basis data " * 512)
    for args in (("status",), ("show", "SD/2026/0001"), ("once",), ("status", "--check")):
        proc = run("--config", str(office_db), *args)
        no_traceback(proc)
        assert "basis data rusak" in proc.stderr + proc.stdout, (args, proc.stderr)
    data = config_data(tmp_path / "pg", database_url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x")
    pg = write_config(tmp_path / "pg.toml", data)
    for args in (("status",), ("once",), ("db", "upgrade")):
        proc = run("--config", str(pg), *args)
        no_traceback(proc)
        assert "basis data tidak dapat dibuka" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and re.fullmatch(r"subdomaind \d+\.\d+\S*\n", proc.stdout)


# --- 7. read-only commands ----------------------------------------------------------------------------


def test_read_only_commands_need_no_secret_and_create_no_database(tmp_path: Path) -> None:
    data = config_data(tmp_path / "cfg")
    for f in ("imap.pass", "tsig.secret", "pic-secret.key"):
        (tmp_path / "cfg" / f).unlink()
    path = write_config(tmp_path / "c.toml", data)
    state = tmp_path / "cfg" / "state"
    for args in (("status",), ("show", "SD/2026/0001"), ("digest", "--preview"), ("quarantine", "list")):
        proc = run("--config", str(path), *args)
        assert proc.returncode == 1 and "belum ada basis data" in proc.stderr, (args, proc.stderr)
        assert not state.exists()
    # The daemon itself still needs them.
    assert run("--config", str(path), "once").returncode == 78


def test_a_member_of_the_group_reads_without_secrets() -> None:
    """As `nobody` with only the database's group: the state directory 0750 and its files 0640."""
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs setpriv and root, to become another user")
    if any(not p.stat().st_mode & 0o001 for p in (site, *site.parents, ROOT, *ROOT.parents)):
        pytest.skip(f"{ROOT} is not reachable by other users (a checkout under a 0700 home)")
    top = Path(tempfile.mkdtemp(prefix="group-"))  # not under pytest's 0700 directory
    top.chmod(0o755)
    try:
        base = top / "cfg"
        office_db = write_config(top / "c.toml", config_data(base))
        assert run("--config", str(office_db), "db", "upgrade").returncode == 0
        gid = 4242
        for p in (base, base / "state", *(base / "state").iterdir(), office_db):
            os.chown(p, 0, gid)
        base.chmod(0o750)
        (base / "state").chmod(0o750)
        for p in (*(base / "state").iterdir(), office_db):
            p.chmod(0o640)
        for f in ("imap.pass", "tsig.secret", "pic-secret.key"):
            assert (base / f).stat().st_mode & 0o077 == 0  # the secrets stay root's
        # addsitedir reads the venv's .pth files, where the editable install maps `subdomaind` to the checkout.
        code = (f"import site, sys; site.addsitedir({str(site)!r}); from subdomaind.daemon.cli import main; "
                f"sys.exit(main(sys.argv[1:]))")
        for args in (("status",), ("status", "--check"), ("show", "SD/2026/0001"), ("digest", "--preview"),
                     ("quarantine", "list")):
            proc = subprocess.run(["setpriv", "--reuid=65534", f"--regid={gid}", "--clear-groups",
                                   "/usr/bin/python3", "-c", code, "--config", str(office_db), *args],
                                  capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
            assert "Traceback" not in proc.stderr, proc.stderr
            if args[0] == "show":
                assert proc.returncode == 1 and "tidak ditemukan" in proc.stderr, proc.stderr
            elif args == ("status", "--check"):
                assert proc.stdout.startswith("SUBDOMAIND PERINGATAN - kotak surat trenggalek belum pernah dibaca"), \
                    proc.stdout
            else:
                assert proc.returncode == 0, (args, proc.stderr)
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- 5. health ----------------------------------------------------------------------------------------


def test_status_words_check_exit_codes_digest_and_metrics(tmp_path: Path, dovecot: Dovecot, smtp_relay: SmtpRelay,
                                                          bind: Bind) -> None:
    port = free_port()
    o = Office.create(tmp_path / "office", dovecot, smtp_relay, bind)
    o.data["metrics"] = {"listen": f"127.0.0.1:{port}"}
    write_config(o.config_path, o.data)
    o.start()
    try:
        o.send_request("metrik")
        o.wait_mail(o.requester, lambda m: "diterima" in str(m["Subject"]))
        deadline = time.monotonic() + 20
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                if 'subdomaind_requests_open{agency="trenggalek"' in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "metrics never served"
            time.sleep(0.3)
        assert re.search(r'subdomaind_messages_total\{agency="trenggalek",kind="request",status="\w+"\} 1\.0', text)
        assert 'subdomaind_intake_failing{agency="trenggalek",mailbox="INBOX"} 0.0' in text
        assert re.search(r'subdomaind_outbox_messages\{status="\w+"\} \d', text)
        assert 'subdomaind_requests_overdue{agency="trenggalek"' in text
        check = o.cli("status", "--check", check=False)
        assert check.returncode == 0 and check.stdout.startswith("SUBDOMAIND OK - 1 permohonan terbuka"), check.stdout
    finally:
        o.stop()
    # The mailbox password goes wrong: status says so in words, --check warns, then is critical.
    Path(o.data["agency"][0]["imap"]["password_file"]).write_text("salah\n")
    once = o.cli("once", check=False)
    assert once.returncode == 1 and "Traceback" not in once.stderr
    assert re.search(r"kotak surat trenggalek \(INBOX\) tidak dapat dibaca: .*AUTHENTICATIONFAILED", once.stderr)
    assert o.cli("status", check=False).returncode == 1
    status = o.cli("status", check=False).stdout
    assert re.search(r"Kotak surat trenggalek \(INBOX\): GAGAL sejak \d{4}-\d\d-\d\d \d\d:\d\d \(0 menit lalu\)",
                     status), status
    assert re.search(r"\n  alasan: .+AUTHENTICATIONFAILED", status) and "terakhir berhasil: 20" in status, status
    assert "b'" not in status  # the server's words, not a Python bytes repr
    check = o.cli("status", "--check", check=False)
    assert check.returncode == 1 and check.stdout.startswith("SUBDOMAIND PERINGATAN - kotak surat trenggalek gagal")
    o.data["workflow"]["intake_alert_minutes"] = 0.001
    write_config(o.config_path, o.data)
    Path(o.data["agency"][0]["imap"]["password_file"]).write_text(o.mailbox.password + "\n")  # check-config passes
    Path(o.data["agency"][0]["imap"]["password_file"]).write_text("salah\n")
    time.sleep(0.2)
    check = o.cli("status", "--check", check=False)
    assert check.returncode == 2 and check.stdout.startswith("SUBDOMAIND KRITIS - kotak surat trenggalek gagal")
    assert len(check.stdout.splitlines()) == 1
    digest = o.cli("digest", "--preview", check=False).stdout
    assert re.search(r"Kegagalan [1-9]", digest) and "Kotak surat INBOX tidak dapat dibaca" in digest, digest
    js = json.loads(o.cli("status", "--json", check=False).stdout)
    assert js["intake"][0]["failing_since"] and js["intake"][0]["last_error"]
