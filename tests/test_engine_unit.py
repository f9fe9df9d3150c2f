"""The engine's logic with in-memory stand-ins for IMAP, SMTP and DNS (pure logic; the real-server
path is covered by tests/test_e2e.py)."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select, update

from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.engine import Services
from subdomaind.workflows.provision import NameInUse, NoHosting, PlannedRecord, format_diff
from subdomaind.workflows.store import (
    Audit,
    Inbound,
    Outbox,
    PendingSecret,
    Request,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tests.devkit.localoffice import ACTORS, MAILBOX, UNVOUCHED, hand_pdf, make_config, reply_to, request_mail


class ListSource:
    folder = "INBOX"
    mode = "polling"

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.marked: dict[int, bool] = {}

    def add(self, raw: bytes) -> None:
        self.messages.append(raw)

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def uidvalidity(self) -> int:
        return 1

    def fetch_new(self, last_uid: int, limit: int, max_bytes: int = 0) -> list[tuple[int, bytes]]:
        return [(i + 1, m) for i, m in enumerate(self.messages) if i + 1 > last_uid][:limit]

    def mark_handled(self, uids: Sequence[int], *, quarantine: bool) -> None:
        for uid in uids:
            self.marked[uid] = quarantine

    def wait(self, timeout: float) -> bool:
        return False


class ListTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []

    def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        self.sent.append((mail_from, list(rcpts), raw))

    def to(self, addr: str) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
                for _, rcpts, raw in self.sent if addr in rcpts]


class DictDns:
    """In-memory GuardedDnsBackend: owner name -> records; apply is all-or-nothing like RFC 2136."""

    zone = "trenggalekkab.go.id"

    def __init__(self) -> None:
        self.records: dict[str, list[PlannedRecord]] = {}
        self.lagging: set[str] = set()  # server labels that "do not serve yet"

    def existing(self, name: str) -> list[str]:
        return [r.line(self.zone) for r in self.records.get(name, [])]

    def diff_text(self, records: Sequence[PlannedRecord]) -> str:
        return format_diff(records, self.zone, {})

    def apply(self, records: Sequence[PlannedRecord]) -> None:
        busy = {r.fqdn(self.zone): self.existing(r.name) for r in records if r.name in self.records}
        if busy:
            raise NameInUse("nama sudah dipakai", busy)
        for r in records:
            self.records.setdefault(r.name, []).append(r)

    def add(self, record: PlannedRecord) -> None:
        self.apply([record])

    def holds(self, records: Sequence[PlannedRecord]) -> bool:
        return all(r in self.records.get(r.name, []) for r in records)

    def remove(self, records: PlannedRecord | Sequence[PlannedRecord]) -> list[PlannedRecord]:
        recs = [records] if isinstance(records, PlannedRecord) else list(records)
        gone = [r for r in recs if r in self.records.get(r.name, [])]
        for r in gone:
            self.records[r.name].remove(r)
            if not self.records[r.name]:
                del self.records[r.name]
        return gone

    def serving(self, records: PlannedRecord | Sequence[PlannedRecord]) -> dict[str, bool]:
        recs = [records] if isinstance(records, PlannedRecord) else list(records)
        ok = self.holds(recs)
        return {"ns1": ok and "ns1" not in self.lagging, "ns2": ok and "ns2" not in self.lagging}

    def wait_served(self, records: PlannedRecord | Sequence[PlannedRecord], timeout: float) -> dict[str, bool]:
        return self.serving(records)

    def name_servers(self) -> list[str]:
        return ["ns1.trenggalekkab.go.id", "ns2.trenggalekkab.go.id"]


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, auth=UNVOUCHED)
    engine = make_engine(cfg.db_url)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    src, tr, dns_ = ListSource(), ListTransport(), DictDns()
    d = Daemon(cfg, sessions, transport=tr, sources={"trenggalek": src},
               services={"trenggalek": Services(dns=dns_, hosting=NoHosting())})
    return d, src, tr, dns_, sessions


def last_to(tr: ListTransport, addr: str) -> bytes:
    return [raw for _, rcpts, raw in tr.sent if addr in rcpts][-1]


def approve(d, src, tr, role: str, word: str = "SETUJU") -> None:  # type: ignore[no-untyped-def]
    addr = ACTORS[role][0]
    src.add(reply_to(last_to(tr, addr), addr, word))
    d.run_once()


def test_happy_path_reaches_final_reply(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.ticket.startswith("SD/")
    for role in ("kadis", "kabid", "kasi"):
        approve(d, src, tr, role)
    assert "dinsos" in dns_.records
    for role in ("kasi", "kabid", "kadis"):
        approve(d, src, tr, role)
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "konfigurasi"
    # The unit's IT admin answers the reply letter: first a KENDALA, then BERHASIL.
    src.add(reply_to(last_to(tr, "dinsos@example.org"), "dinsos@example.org",
                     "KENDALA\nServer kami 203.0.113.99 belum bisa diakses."))
    d.run_once()
    kasi_mails = tr.to(ACTORS["kasi"][0])
    assert any("KENDALA" in str(m["Subject"]) for m in kasi_mails)
    result = [m for m in tr.to("dinsos@example.org") if "pemeriksaan ulang" in str(m["Subject"])][-1]
    body = result.get_body(preferencelist=("plain",)).get_content()
    assert "BERBEDA" in body and "dilayani" in body
    src.add(reply_to(last_to(tr, "dinsos@example.org"), "dinsos@example.org", "BERHASIL, terima kasih."))
    d.run_once()
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.status == "done", [a.event for a in s.execute(select(Audit)).scalars()]
        assert s.execute(select(PendingSecret)).first() is None
        final = s.execute(select(Outbox).where(Outbox.purpose == "final")).scalar_one()
        creds = s.execute(select(Outbox).where(Outbox.purpose == "credentials")).scalar_one()
        assert final.status == "sent" and creds.status == "sent" and creds.after_id == final.id
        assert creds.raw is None and creds.sent_at >= final.sent_at  # the password left with its one mail
    final_mail = [m for m in tr.to("dinsos@example.org") if "telah aktif" in str(m["Subject"])][-1]
    text = final_mail.get_body(preferencelist=("plain",)).get_content()
    assert "dinsos.trenggalekkab.go.id" in text and "203.0.113.10" in text
    assert "ns1.trenggalekkab.go.id" in text and "kata sandi telah dikirim terpisah" in " ".join(text.split())
    # The credentials: their own mail, to the PIC only, after the letter.
    sent_to = [(rcpts, raw) for _, rcpts, raw in tr.sent]
    i_letter = next(i for i, (_, raw) in enumerate(sent_to) if b"telah aktif" in raw)
    i_creds = next(i for i, (_, raw) in enumerate(sent_to) if b"Kata sandi akun sub domain" in raw)
    assert i_creds > i_letter and len(sent_to[i_creds][0]) == 1


def test_tolak_sends_rejection_with_note(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    approve(d, src, tr, "kadis", "TOLAK\nNama tidak sesuai nomenklatur")
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().status == "rejected"
    rej = [m for m in tr.to("dinsos@example.org") if "dapat dipenuhi" in str(m["Subject"])]
    assert rej and "Nama tidak sesuai nomenklatur" in rej[0].get_body(preferencelist=("plain",)).get_content()


def test_stranger_reply_changes_nothing(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    src.add(reply_to(last_to(tr, ACTORS["kadis"][0]), "penyusup@example.net", "SETUJU"))
    n_before = len(tr.sent)
    d.run_once()
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "disposisi"
        assert s.execute(select(Audit).where(Audit.event == "mail.refused")).scalars().all()
    assert len(tr.sent) == n_before  # an unknown outsider is never answered
    assert MAILBOX


def test_batal_inside_the_undo_window_cancels_before_dns(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    d.config = d.config.model_copy(update={"workflow": d.config.workflow.model_copy(
        update={"undo_window_minutes": 10})})
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    for role in ("kadis", "kabid", "kasi"):
        approve(d, src, tr, role)
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "buat"
    echo = [raw for _, rcpts, raw in tr.sent if ACTORS["kasi"][0] in rcpts and b"Dicatat" in raw][-1]
    src.add(reply_to(echo, ACTORS["kasi"][0], "BATAL"))
    d.run_once()
    assert dns_.records == {}
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "periksa"
        assert s.execute(select(Audit).where(Audit.event == "decision.cancelled")).scalar_one()


def test_minta_formulir_is_answered_with_the_form_once_a_day(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = world
    for _ in range(2):
        src.add(request_mail("dinkes@example.org", body="Dengan hormat, kami mohon dikirimkan formulir "
                             "pengajuan sub domain.\n\nTerima kasih."))
    d.run_once()
    answers = tr.to("dinkes@example.org")
    assert len(answers) == 1
    names = {p.get_filename() for p in answers[0].iter_attachments()}
    assert {"formulir-pengajuan-sub-domain.pdf", "formulir-pengajuan-sub-domain.docx"} <= names
    with sessions() as s:
        assert s.execute(select(Request)).first() is None


def approved_with_ns2_lagging(world):  # type: ignore[no-untyped-def]
    """A request approved up to the Kasi while the secondary server does not serve the new record yet."""
    d, src, tr, dns_, sessions = world
    dns_.lagging = {"ns2"}
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    for role in ("kadis", "kabid", "kasi"):
        approve(d, src, tr, role)
    return world


def test_lagging_server_keeps_the_record_waits_and_tolak_removes_it(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = approved_with_ns2_lagging(world)
    assert "dinsos" in dns_.records  # kept: the primary serves it
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.step == "cek_teknis" and req.provisioned is None
        assert req.fields["dns"] == [{"name": "dinsos", "rdtype": "A", "value": "203.0.113.10", "ttl": 300}]
        assert s.execute(select(Audit).where(Audit.event == "dns.lagging")).scalar_one().detail["servers"] == ["ns2"]
    # SETUJU retries: the record is found in place (holds), verified again; still lagging -> back to the check.
    approve(d, src, tr, "kasi")
    with sessions() as s:
        assert s.execute(select(Request)).scalar_one().step == "cek_teknis"
        assert s.execute(select(Audit).where(Audit.event == "dns.already_present")).scalar_one()
    approve(d, src, tr, "kasi", "TOLAK\nServer sekunder rusak")
    assert dns_.records == {}
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.status == "rejected" and "dns" not in req.fields
        assert s.execute(select(Audit).where(Audit.event == "dns.removed")).scalar_one()


def test_lagging_then_caught_up_completes(world) -> None:  # type: ignore[no-untyped-def]
    d, src, tr, dns_, sessions = approved_with_ns2_lagging(world)
    dns_.lagging = set()
    approve(d, src, tr, "kasi")
    with sessions() as s:
        req = s.execute(select(Request)).scalar_one()
        assert req.provisioned and req.provisioned["records"][0]["value"] == "203.0.113.10"
        assert req.step == "paraf_kasi", req.step


def test_agency_vocabulary_replaces_the_keywords(tmp_path: Path) -> None:
    from subdomaind.daemon.service import parse_options_for
    from subdomaind.parsers import parse

    cfg = make_config(tmp_path, auth=UNVOUCHED, agency_extra={"vocabulary": {"approve": ["laksanakan", "siap laksanakan"]}})
    opts = parse_options_for(cfg.agencies[0])
    raw = (b"From: kadis@trenggalekkab.go.id\nSubject: Re: [SD/2026/0001] x\nIn-Reply-To: <a@b>\n\n"
           b"Laksanakan.\n")
    assert parse(raw, opts).reply.decision == "approve"  # type: ignore[union-attr]
    assert "tolak" in opts.vocabulary.reject  # lists not given keep their defaults


def test_group_transaction_redone_one_by_one_after_a_race(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Intake commits several messages per transaction; when one of them turns out to have been taken in by
    another process meanwhile (IntegrityError at the flush), the group is rolled back and done again one at
    a time: nothing lost, nothing twice."""
    from sqlalchemy.exc import IntegrityError

    import subdomaind.workflows.inbound as inbound

    d, src, _tr, _dns, sessions = world
    for label in ("satu", "dua", "tiga"):
        src.add(request_mail(f"{label}@trenggalekkab.go.id", label))
    real, raced = inbound.ingest, []

    def racing(ctx, **kw):  # type: ignore[no-untyped-def]
        if kw["uid"] == 2 and not raced:
            raced.append(2)
            raise IntegrityError("INSERT INTO inbound", {}, Exception("UNIQUE constraint failed"))
        return real(ctx, **kw)

    monkeypatch.setattr(inbound, "ingest", racing)
    d.run_once()
    assert raced == [2]
    with sessions() as s:
        assert sorted(r.subdomain for r in s.execute(select(Request)).scalars()) == ["dua", "satu", "tiga"]
        assert sorted(r.uid for r in s.execute(select(Inbound)).scalars()) == [1, 2, 3]
    assert src.marked == {1: False, 2: False, 3: False}


def test_large_letter_is_stored_whole_through_blob_pieces(world) -> None:  # type: ignore[no-untyped-def]
    """A letter over BLOB_STREAM_MIN goes into SQLite in pieces (workflows/store.py): byte for byte the
    message that came, and handled as any other."""
    from subdomaind.workflows.rawmail import PIECE
    from subdomaind.workflows.store import BLOB_STREAM_MIN

    d, src, _tr, _dns, sessions = world
    msg = email.message_from_bytes(request_mail("dinsos@trenggalekkab.go.id", "dinsosbesar"),
                                   policy=email.policy.default)
    msg.add_attachment(os.urandom(BLOB_STREAM_MIN + PIECE // 3), maintype="application",
                       subtype="octet-stream", filename="scan.bin")
    big = msg.as_bytes()
    src.add(big)
    d.run_once()
    with sessions() as s:
        row = s.execute(select(Inbound)).scalar_one()
        assert row.status == "handled" and row.raw == big
        assert row.sha256 == hashlib.sha256(big).hexdigest()
        assert s.execute(select(Request.subdomain)).scalar_one() == "dinsosbesar"


def test_audit_of_a_handler_that_failed_is_dropped_with_its_savepoint(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Audit rows are written at commit in one go (workflows/store.py): those of a handler whose savepoint
    was rolled back go with it; the quarantine's own row stays."""
    from subdomaind.workflows import inbound
    from subdomaind.workflows.engine import audit

    class Exploding:
        name = "exploding"

        def can_handle(self, ctx, parsed) -> bool:  # type: ignore[no-untyped-def]
            return True

        def execute(self, ctx, parsed, row) -> str:  # type: ignore[no-untyped-def]
            audit(ctx, None, "test.inside")
            raise RuntimeError("boom")

    d, src, _tr, _dns, sessions = world
    monkeypatch.setattr(inbound, "handler_for", lambda ctx, parsed: Exploding())
    src.add(request_mail("dinsos@trenggalekkab.go.id", "dinsos"))
    d.run_once()
    with sessions() as s:
        events = [a.event for a in s.execute(select(Audit).order_by(Audit.id)).scalars()]
        assert s.execute(select(Inbound.status)).scalar_one() == "quarantined"
    assert "test.inside" not in events and "mail.quarantined" in events


def test_audit_of_a_rolled_back_transaction_never_reaches_the_next(world) -> None:  # type: ignore[no-untyped-def]
    from subdomaind.workflows.engine import audit

    d, _src, _tr, _dns, sessions = world
    s = sessions()
    ctx = d.ctx(s, d.runtimes["trenggalek"].agency)
    with pytest.raises(ValueError), s.begin():
        audit(ctx, None, "test.lost")
        raise ValueError("rolled back")
    with s.begin():
        audit(ctx, None, "test.kept")
    s.close()
    with sessions() as s:
        assert [a.event for a in s.execute(select(Audit)).scalars()] == ["test.kept"]


@pytest.mark.parametrize("limit, attached", [(5 * 1024 * 1024, True), (100, False)])
def test_later_step_mails_attach_the_letter_unless_it_is_large(world, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                               limit: int, attached: bool) -> None:
    """The step mail after an approval reads the original letter back from the database (engine
    `_original_attachment`) and attaches its files as themselves; one over ORIGINAL_ATTACH_LIMIT is not
    copied into it, and the mail says so."""
    monkeypatch.setattr("subdomaind.workflows.engine.ORIGINAL_ATTACH_LIMIT", limit)
    d, src, tr, _dns, _sessions = world
    letter = email.message_from_bytes(request_mail("dinsos@trenggalekkab.go.id", "dinsoslampiran"),
                                      policy=email.policy.default)
    pdf = hand_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"])
    letter.add_attachment(pdf, maintype="application", subtype="octet-stream", filename="surat.pdf")
    src.add(letter.as_bytes())
    d.run_once()
    approve(d, src, tr, "kadis")
    mail = email.message_from_bytes(last_to(tr, ACTORS["kabid"][0]), policy=email.policy.default)
    found = [(part.get_filename(), part.get_content_type()) for part in mail.iter_attachments()]
    assert found == ([("surat.pdf", "application/pdf")] if attached else [])
    assert ("berukuran besar dan tidak dilampirkan" in mail.get_body(preferencelist=("plain",)).get_content()) \
        is not attached


def test_spooled_letter_is_read_whole_only_to_blank_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A letter fetched into a file stays a file unless it quotes a password we issued (workflows/
    rawmail.py); one that does is read, and the password blanked, even across two read pieces."""
    from subdomaind.workflows import inbound
    from subdomaind.workflows.provision import PASSWORD_LENGTH
    from subdomaind.workflows.rawmail import PIECE, Spooled

    password = b"Kq7Xm2Tz9Wp4Rb6Nc8Vd"[:PASSWORD_LENGTH]
    issued = {hashlib.sha256(password).hexdigest()}
    monkeypatch.setattr(inbound, "_issued", lambda _ctx, digests: issued & set(digests))
    letter = bytearray(b"Subject: BERHASIL\r\n\r\n" + b"x " * (PIECE + 4096))
    at = PIECE - PASSWORD_LENGTH // 2  # the password straddles the first piece's end
    letter[at - 1:at + PASSWORD_LENGTH + 1] = b" " + password + b" "
    path = tmp_path / "fetch-1.eml"
    path.write_bytes(bytes(letter))
    quoting = Spooled(path, path.stat().st_size)
    out = inbound.redact_issued_passwords(None, quoting)  # type: ignore[arg-type]
    assert isinstance(out, bytes) and password not in out and b"*" * PASSWORD_LENGTH in out
    assert len(out) == len(quoting) and password in path.read_bytes()  # the file itself is not rewritten
    path.write_bytes(b"Subject: scan\r\n\r\n" + b"y " * (3 * PIECE))
    plain = Spooled(path, path.stat().st_size)
    assert inbound.redact_issued_passwords(None, plain) is plain  # type: ignore[arg-type]


def test_stale_spool_is_removed_at_start_without_parser_workers(world) -> None:  # type: ignore[no-untyped-def]
    """A letter fetched into the spool by a daemon that then crashed is removed at the next start, also
    when it parses in its own process (`parse_workers = 0`): the file holds the letter unredacted."""
    import time

    from subdomaind.daemon.parsing import InlineParser

    d, _src, _tr, _dns, _sessions = world
    d.parser = InlineParser()
    d.spool_dir.mkdir(parents=True, exist_ok=True)
    stale, fresh = d.spool_dir / "fetch-lama.eml", d.spool_dir / "fetch-baru.eml"
    for f in (stale, fresh):
        f.write_bytes(b"Subject: x\r\n\r\nlampiran\r\n")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    d.run(max_passes=1)
    assert [f.name for f in d.spool_dir.iterdir()] == ["fetch-baru.eml"]


LETTER_TWO_NAMES_NO_PHONE = """PEMERINTAH KABUPATEN TRENGGALEK
SEKRETARIAT DAERAH

Nomor   : 000.1/412/406.001/2026
Perihal : Permohonan Pembuatan Sub Domain

Dengan hormat,
Bersama ini kami mengajukan permohonan pembuatan sub domain ppid.trenggalekkab.go.id
dan jdih.trenggalekkab.go.id untuk layanan informasi publik, diarahkan ke alamat IP 203.0.113.10.
Sebagai penanggung jawab kami tunjuk Sdr. Rina Marlina, S.T. (NIP 19900305 201503 2 001),
jabatan Pranata Komputer Ahli Pertama, surel setda@example.org.

Demikian permohonan ini kami sampaikan.
"""


def test_letter_with_two_names_asks_for_its_gaps_once(world) -> None:  # type: ignore[no-untyped-def]
    """Two names in one letter with no phone: two tickets, one acknowledgement, one incomplete letter; the
    answer to it completes both requests, which then go on each to its own disposition."""
    d, src, tr, dns_, sessions = world
    src.add(request_mail("setda@example.org", "ppid", body=LETTER_TWO_NAMES_NO_PHONE))
    d.run_once()
    with sessions() as s:
        reqs = s.execute(select(Request).order_by(Request.id)).scalars().all()
        assert [r.subdomain for r in reqs] == ["ppid", "jdih"]
        assert [r.step for r in reqs] == ["lengkapi_awal", "lengkapi_awal"]
    to_unit = tr.to("setda@example.org")
    subjects = [str(m["Subject"]) for m in to_unit]
    assert [x for x in subjects if "diterima" in x] == ["[SD/2026/0001] Permohonan sub domain diterima: 2 nama sub domain"]
    assert len([x for x in subjects if "dilengkapi" in x]) == 1, subjects
    assert subjects.index([x for x in subjects if "diterima" in x][0]) < subjects.index(
        [x for x in subjects if "dilengkapi" in x][0]), "the acknowledgement comes first"
    letter = [m for m in to_unit if "dilengkapi" in str(m["Subject"])][0]
    text = " ".join(letter.get_body(preferencelist=("plain",)).get_content().split())
    assert "berlaku pula bagi permohonan lain dalam surat yang sama (nomor tiket SD/2026/0002)" in text, text
    src.add(reply_to(last_to(tr, "setda@example.org"), "setda@example.org",
                     "No. HP : 0812-7788-1122\nJabatan : Pranata Komputer Ahli Pertama"))
    d.run_once()
    with sessions() as s:
        reqs = s.execute(select(Request).order_by(Request.id)).scalars().all()
        assert all(r.fields.get("pic_phone") == "+6281277881122" for r in reqs)
        assert [r.step for r in reqs] == ["disposisi", "disposisi"], [r.step for r in reqs]
    assert len([m for m in tr.to(ACTORS["kadis"][0]) if "Mohon keputusan" in str(m["Subject"])]) == 2


@pytest.mark.parametrize("case", ["letter_later", "letter_never", "key_changed"])
def test_credentials_wait_sealed_for_the_letter_and_fail_with_it(world, case: str) -> None:  # type: ignore[no-untyped-def]
    """The password is sealed in the database until it leaves, and never leaves before its letter: while
    the letter is refused for now the credential mail waits; refused for good, it fails with it, scrubbed;
    sealed under a key the daemon no longer has, it fails, scrubbed, and the letter still goes."""
    from subdomaind.daemon.outbox import SendError
    from subdomaind.workflows.secretbox import SecretBox

    d, src, tr, dns_, sessions = world
    refuse = SendError("550 tidak diterima" if case == "letter_never" else "451 coba lagi",
                       permanent=case == "letter_never")
    real_send = tr.send
    letter_refused = True

    def send(mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
        if letter_refused and b"telah aktif" in raw:
            raise refuse
        real_send(mail_from, rcpts, raw)

    tr.send = send
    src.add(request_mail("dinsos@example.org", pic="pic@dinsos.example.org"))
    d.run_once()
    for role in ("kadis", "kabid", "kasi", "kasi", "kabid"):
        approve(d, src, tr, role)
    with sessions() as s:
        secret = s.execute(select(PendingSecret)).scalar_one()
        assert secret.value.startswith("sdbox1:")  # sealed: a backup taken now holds no password
    approve(d, src, tr, "kadis")
    d.run_once()
    if case == "key_changed":
        d.box = SecretBox.ephemeral()  # the key file replaced while the letter waited
        letter_refused = False
        with sessions.begin() as s:  # its retry comes due now
            s.execute(update(Outbox).where(Outbox.purpose == "final").values(next_attempt_at=utcnow()))
        d.run_once()
    with sessions() as s:
        letter = s.execute(select(Outbox).where(Outbox.purpose == "final")).scalar_one()
        creds = s.execute(select(Outbox).where(Outbox.purpose == "credentials")).scalar_one()
        assert s.execute(select(PendingSecret)).first() is None  # it lives in the sealed mail alone now
        assert creds.after_id == letter.id and creds.rcpts == ["pic@dinsos.example.org"]
        if case == "letter_later":
            assert letter.status == "queued" and creds.status == "waiting"
            assert creds.raw is not None and creds.raw.startswith(b"sdbox1:")
        else:
            assert letter.status == ("sent" if case == "key_changed" else "failed")
            assert creds.status == "failed" and creds.raw is None
    assert not any("Kata sandi akun" in str(m["Subject"]) for m in tr.to("pic@dinsos.example.org"))
