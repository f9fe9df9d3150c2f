"""The `subdomaind` command line: run the daemon, one pass, parse a message, status, show, config, db.

Each command imports what it runs inside its function: `--help`, `status` and `check-config` start without
the daemon, the database layer they do not use, reportlab, pyHanko or matplotlib (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError, OperationalError

from subdomaind.daemon.config import Config, ConfigError, config_warnings
from subdomaind.daemon.reasons import plain_reason
from subdomaind.workflows.sop import load_sop

DEFAULT_CONFIG = "/etc/subdomaind/config.toml"


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("SUBDOMAIND_CONFIG") or DEFAULT_CONFIG


EX_CONFIG = 78  # sysexits.h: the unit's RestartPreventExitStatus=78 stops systemd from retrying a bad config


class CommandError(Exception):
    """A command's plain answer to bad input or a missing prerequisite: printed as one line, exit `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _load(args: argparse.Namespace, *, secrets: bool = True) -> Config:
    """The checked configuration (daemon/validate.py); read-only commands pass secrets=False."""
    from subdomaind.daemon.validate import load_checked

    try:
        return load_checked(_config_path(args), secrets=secrets)
    except ConfigError as exc:
        print(f"konfigurasi tidak valid ({_config_path(args)}):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def _sessions(cfg: Config, upgrade: bool = True) -> Any:
    from subdomaind.workflows.db import upgrade as db_upgrade
    from subdomaind.workflows.store import make_engine, make_sessionmaker

    if cfg.db_url.startswith("sqlite"):
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    if upgrade:
        db_upgrade(engine)
    return make_sessionmaker(engine)


def _reader_sessions(cfg: Config) -> Any:
    """Sessions for the read-only commands: never create or migrate a database.

    SQLite is opened read-only, so a member of the `subdomaind` group (the database files are 0640) can read
    it; with the daemon stopped there is no -wal file and the directory is not theirs to create one in, so the
    file is then opened as immutable (nothing else is writing it).
    """
    from subdomaind.workflows.db import HEAD, current_revision
    from subdomaind.workflows.store import make_engine, make_sessionmaker

    url = cfg.db_url
    if url.startswith("sqlite"):
        path = cfg.state_dir / "subdomaind.db" if not cfg.database_url else Path(url.split("///", 1)[-1])
        if not path.exists():
            raise CommandError(f"belum ada basis data di {path}: daemon belum pernah berjalan "
                               f"(atau jalankan: subdomaind db upgrade)")
        wal = path.with_name(path.name + "-wal")
        mode = "mode=ro" if wal.exists() or os.access(path.parent, os.W_OK) else "immutable=1"
        url = f"sqlite:///file:{path}?{mode}&uri=true"
    engine = make_engine(url, readonly=True)
    rev = current_revision(engine)
    if rev is None:
        raise CommandError("basis data masih kosong: jalankan `subdomaind db upgrade` atau mulai daemon")
    if rev != HEAD:
        raise CommandError(f"basis data pada revisi {rev}, program ini butuh {HEAD}: jalankan "
                           f"`subdomaind db upgrade`")
    return make_sessionmaker(engine)


_ADDRESS = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def redact(text: str) -> str:
    """Addresses shortened to their first letter and domain (k***@trenggalekkab.go.id) for error logs."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


class RedactErrors(logging.Filter):
    """Warnings and errors go to places people paste around; the addresses in them are redacted
    (Zulip's log_error does the same). Routine info lines keep them: they are the audit trail."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line for log shippers: level, logger, message, and the event's ticket and
    Message-ID when the line is about one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for key in ("event", "ticket", "message_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactErrors())
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def cmd_check_config(args: argparse.Namespace) -> int:
    from subdomaind.daemon.validate import load_checked, warnings

    try:
        cfg = load_checked(args.file)
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        return EX_CONFIG
    print(f"OK: {len(cfg.agencies)} agency(ies): " + ", ".join(f"{a.id} ({a.zone}, SOP {a.sop})" for a in cfg.agencies))
    for warning in config_warnings(cfg, advice=False):
        print(f"WARNING: {warning}")
    if _check_signing(cfg):
        return EX_CONFIG
    for w in warnings(cfg):
        print(f"WARNING: {w}")
    if not args.connect:
        return 0
    from subdomaind.daemon.connect import run_checks

    failed = 0
    for check in run_checks(cfg):
        print(check.line())
        failed += not check.ok
    return 1 if failed else 0


def _check_signing(cfg: Config) -> bool:
    """Each agency's letter certificate loaded once: who signs, or a warning that letters go out unsigned.
    True when a certificate cannot be used."""
    from subdomaind.workflows.signing import SigningError, load_signer

    failed = False
    for ag in cfg.agencies:
        try:
            signer = load_signer(ag.letter.signing, location=ag.letter.city)
        except SigningError as exc:
            print(f"agency {ag.id}: letter.signing: {exc}")
            failed = True
            continue
        if signer is None:
            print(f"WARNING: agency {ag.id}: no signing certificate ([agency.letter.signing] pkcs12_file or "
                  "pkcs11_module): letters go out UNSIGNED")
        else:
            print(f"agency {ag.id}: letters signed by {signer.describe()}")
            left = signer.not_after - datetime.now(UTC)
            if left.total_seconds() <= 0:
                print(f"agency {ag.id}: letter.signing: the certificate has EXPIRED; letters it signs are not valid")
                failed = True
            elif left.days < 30:
                print(f"WARNING: agency {ag.id}: the signing certificate expires in {left.days} day(s); renew it")
            signer.close()
    return failed


def cmd_db(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _sessions(cfg, upgrade=True)
    print("database up to date")
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from subdomaind.parsers import ParseOptions, parse

    try:
        raw = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(json.dumps({"kind": "unreadable", "message_id": None, "from": None, "subject": None,
                          "request": None, "reply": None, "reason": f"berkas tidak dapat dibaca: {exc.strerror}"}))
        return 1
    opts = ParseOptions()
    if args.config:
        from subdomaind.daemon.runtime import parse_options_for

        cfg = _load(args)
        opts = parse_options_for(cfg.agencies[0])
    elif args.zone:
        opts = ParseOptions(zone=args.zone)
    result = parse(raw, opts).to_json()
    print(json.dumps(result, ensure_ascii=False, indent=2 if args.pretty else None))
    return 0


def _daemon(args: argparse.Namespace) -> Any:
    from subdomaind.daemon.service import Daemon
    from subdomaind.workflows.signing import SigningError

    cfg = _load(args)
    sessions = _sessions(cfg)
    try:
        return Daemon(cfg, sessions, config_path=_config_path(args))
    except SigningError as exc:
        print(f"sertifikat tanda tangan surat tidak dapat dipakai ({_config_path(args)}): {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    d = _daemon(args)
    for warning in config_warnings(d.config):
        logging.getLogger("subdomaind").warning("%s", warning)
    d.run()
    return 0


def cmd_once(args: argparse.Namespace) -> int:
    from subdomaind.workflows.store import MailboxState

    d = _daemon(args)
    totals = d.run_once()
    d.shutdown(flush_seconds=5)
    print(json.dumps(totals))
    # A pass that could not read a mailbox did not do its job: say which and why, and exit 1.
    with d.sessions() as s:
        failing = list(s.execute(select(MailboxState).where(MailboxState.failing_since.is_not(None))).scalars())
    for st in failing:
        print(f"kotak surat {st.agency} ({st.mailbox}) tidak dapat dibaca: {plain_reason(st.last_error)[:300]}",
              file=sys.stderr)
    return 1 if failing else 0


def status_data(cfg: Config, sessions: Any) -> dict[str, Any]:
    from subdomaind.workflows.store import QUARANTINE_STATUSES, Inbound, MailboxState, Outbox, Request, StepRun

    out: dict[str, Any] = {"intake": [], "outbox": {}, "quarantine": 0, "unmatched": 0, "requests": [],
                           "bounced_7d": 0}
    with sessions() as s:
        for st in s.execute(select(MailboxState)).scalars():
            backoff = getattr(st, "backoff_until", None)  # set by the login backoff, when present
            out["intake"].append({
                "agency": st.agency, "mailbox": st.mailbox, "mode": st.mode, "last_uid": st.last_uid,
                "last_ok_at": st.last_ok_at.isoformat() if st.last_ok_at else None,
                "failing_since": st.failing_since.isoformat() if st.failing_since else None,
                "last_error": st.last_error,
                "backoff_until": backoff.isoformat() if backoff else None,
            })
        seen = {(i["agency"]) for i in out["intake"]}
        for conf in cfg.agencies:
            if conf.id not in seen:  # configured but never read: the daemon has not reached it yet
                out["intake"].append({"agency": conf.id, "mailbox": conf.imap.folder, "mode": None, "last_uid": 0,
                                      "last_ok_at": None, "failing_since": None, "last_error": None,
                                      "backoff_until": None})
        out["failing_actions"] = [
            {"request_id": r.request_id, "step": r.key, "attempts": r.attempts, "error": r.last_error}
            for r in s.execute(select(StepRun).where(StepRun.status == "open", StepRun.kind == "action",
                                                     StepRun.last_error.is_not(None))).scalars()]
        for status, n in s.execute(select(Outbox.status, func.count()).group_by(Outbox.status)).all():
            out["outbox"][status] = n
        out["outbox"]["failing"] = s.execute(
            select(func.count()).select_from(Outbox).where(Outbox.status == "queued", Outbox.attempts > 0)
        ).scalar_one()
        for status, n in s.execute(
            select(Inbound.status, func.count()).where(Inbound.status.in_(QUARANTINE_STATUSES))
            .group_by(Inbound.status)
        ).all():
            out["quarantine" if status == "quarantined" else "unmatched"] = n

        from subdomaind.workflows.store import Audit, utcnow

        # Step mails that bounced (a wrong official's address): staff must fix the config.
        out["bounced_7d"] = s.execute(select(func.count()).select_from(Audit).where(
            Audit.event == "mail.bounced", Audit.at >= utcnow() - timedelta(days=7))).scalar_one()
        agencies = {a.id: a for a in cfg.agencies}
        for req in s.execute(select(Request).where(Request.status == "open").order_by(Request.id)).scalars():
            ag = agencies.get(req.agency)
            run = s.execute(select(StepRun).where(StepRun.request_id == req.id, StepRun.status == "open")
                            .order_by(StepRun.id.desc())).scalars().first()
            waiting = None
            if run is not None and ag is not None:
                sop = load_sop(ag.sop)
                role = run.role
                if role and sop.roles[role].requester:
                    waiting = f"{sop.roles[role].title} ({req.requester})"
                elif role:
                    waiting = f"{sop.roles[role].title} ({', '.join(ag.actors.get(role, []))})"
                else:
                    waiting = "sistem"
            out["requests"].append({
                "agency": req.agency, "ticket": req.ticket, "subdomain": req.subdomain, "step": req.step,
                "waiting_on": waiting, "since": run.opened_at.isoformat() if run else None,
            })
    return out


def _when(iso: str | None, tz: ZoneInfo) -> str:
    """An ISO timestamp in the office's words: '2026-03-02 08:15 (12 menit lalu)'."""
    from subdomaind.workflows.store import utcnow

    if not iso:
        return "belum pernah"
    at = datetime.fromisoformat(iso)
    minutes = int((utcnow() - at).total_seconds() // 60)
    ago = (f"{minutes} menit lalu" if minutes < 120 else f"{minutes // 60} jam lalu" if minutes < 2880
           else f"{minutes // 1440} hari lalu")
    return f"{at.astimezone(tz):%Y-%m-%d %H:%M} ({ago})"


def intake_lines(cfg: Config, data: dict[str, Any]) -> list[str]:
    """Each mailbox's state, reason and last success in words."""
    lines = []
    for i in data["intake"]:
        try:
            tz = ZoneInfo(cfg.agency(i["agency"]).timezone)
        except KeyError:
            tz = ZoneInfo("Asia/Jakarta")
        if i["failing_since"]:
            state = f"GAGAL sejak {_when(i['failing_since'], tz)}"
        elif i["last_ok_at"]:
            state = "OK" + (f" (menunggu surel dengan {'IDLE' if i['mode'] == 'idle' else 'polling'})"
                            if i["mode"] else "")
        else:
            state = "belum pernah dibaca"
        lines.append(f"Kotak surat {i['agency']} ({i['mailbox']}): {state}")
        if i["failing_since"] and i["last_error"]:
            lines.append(f"  alasan: {plain_reason(i['last_error'])[:300]}")
        if i.get("backoff_until"):
            lines.append(f"  dicoba lagi: {_when(i['backoff_until'], tz).split(' (')[0]}")
        lines.append(f"  terakhir berhasil: {_when(i['last_ok_at'], tz)}")
    return lines


def health(cfg: Config, data: dict[str, Any]) -> tuple[int, str]:
    """Nagios plugin convention: (0 OK | 1 WARNING | 2 CRITICAL, one line)."""
    from subdomaind.workflows.store import utcnow

    crit: list[str] = []
    warn: list[str] = []
    limit = cfg.workflow.intake_alert_minutes * 60
    for i in data["intake"]:
        if i["failing_since"]:
            age = (utcnow() - datetime.fromisoformat(i["failing_since"])).total_seconds()
            why = plain_reason(i["last_error"])[:120]
            (crit if age >= limit else warn).append(f"kotak surat {i['agency']} gagal {int(age // 60)} menit: {why}")
        elif not i["last_ok_at"]:
            warn.append(f"kotak surat {i['agency']} belum pernah dibaca")
    if data.get("failing_actions"):
        crit.append(f"{len(data['failing_actions'])} langkah otomatis gagal")
    failed = data["outbox"].get("failed", 0)
    if failed:
        crit.append(f"{failed} surel gagal terkirim")
    if data["outbox"].get("failing"):
        warn.append(f"{data['outbox']['failing']} surel dicoba ulang")
    if data["quarantine"]:
        warn.append(f"{data['quarantine']} surel di karantina")
    if data["bounced_7d"]:
        warn.append(f"{data['bounced_7d']} surel terpental dalam 7 hari")
    perf = (f"open={len(data['requests'])} queued={data['outbox'].get('queued', 0)} failed={failed} "
            f"quarantine={data['quarantine']}")
    if crit:
        return 2, f"SUBDOMAIND KRITIS - {'; '.join(crit + warn)} | {perf}"
    if warn:
        return 1, f"SUBDOMAIND PERINGATAN - {'; '.join(warn)} | {perf}"
    return 0, f"SUBDOMAIND OK - {len(data['requests'])} permohonan terbuka | {perf}"


def cmd_status(args: argparse.Namespace) -> int:
    if args.check:
        # A monitor reads the exit code and one line; whatever goes wrong is CRITICAL, never a traceback.
        try:
            cfg = _load(args, secrets=False)
            data = status_data(cfg, _reader_sessions(cfg))
        except SystemExit:
            print("SUBDOMAIND KRITIS - konfigurasi tidak valid (jalankan subdomaind check-config)")
            return 2
        except Exception as exc:  # noqa: BLE001 - the monitor gets one line
            print(f"SUBDOMAIND KRITIS - {problem_text(exc)}")
            return 2
        code, line = health(cfg, data)
        print(line)
        return code
    cfg = _load(args, secrets=False)
    data = status_data(cfg, _reader_sessions(cfg))
    # Exit 1 while a mailbox cannot be read (the whole picture, Nagios-style: status --check).
    failing = 1 if any(i["failing_since"] for i in data["intake"]) else 0
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return failing
    print("\n".join(intake_lines(cfg, data)))
    if data.get("failing_actions"):
        print(f"Langkah otomatis gagal: {len(data['failing_actions'])} (lihat subdomaind show TIKET)")
    print(f"Outbox: {data['outbox']}  Karantina: {data['quarantine']}  Tak cocok: {data['unmatched']}  "
          f"Surel terpental (7 hari): {data['bounced_7d']}")
    print(f"{'TIKET':<16} {'SUB DOMAIN':<20} {'LANGKAH':<18} {'MENUNGGU':<50} SEJAK")
    for r in data["requests"]:
        print(f"{r['ticket']:<16} {r['subdomain'] or '-':<20} {r['step'] or '-':<18} "
              f"{(r['waiting_on'] or '-')[:50]:<50} {r['since'] or '-'}")
    return failing


def show_lines(cfg: Config, sessions: Any, ticket: str) -> list[str] | None:
    from subdomaind.workflows.store import Audit, Request

    with sessions() as s:
        req = s.execute(select(Request).where(Request.ticket == ticket.upper())).scalars().first()
        if req is None:
            return None
        tz = ZoneInfo(cfg.agency(req.agency).timezone)
        lines = [
            f"{req.ticket}  {req.subdomain or '-'}.{cfg.agency(req.agency).zone}  status {req.status}, "
            f"langkah {req.step}",
            f"pemohon {req.requester}; unit {req.unit or '-'}",
        ]
        for a in s.execute(select(Audit).where(Audit.request_id == req.id).order_by(Audit.id)).scalars():
            detail = {k: v for k, v in (a.detail or {}).items() if v not in (None, [], {})}
            lines.append(f"{a.at.astimezone(tz):%Y-%m-%d %H:%M:%S}  {a.event:<20} {a.actor:<32} "
                         f"{json.dumps(detail, ensure_ascii=False)[:160]}  {a.message_id or ''}")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    cfg = _load(args, secrets=False)
    lines = show_lines(cfg, _reader_sessions(cfg), args.ticket)
    if lines is None:
        print(f"tiket {args.ticket} tidak ditemukan", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def cmd_letters(args: argparse.Namespace) -> int:
    """The register of outgoing letters (agenda surat keluar) of one year, in number order."""
    from subdomaind.workflows.store import LetterRecord, Request, utcnow

    cfg = _load(args)
    sessions = _sessions(cfg)
    year = args.year or utcnow().astimezone(ZoneInfo(cfg.agencies[0].timezone)).year
    with sessions() as s:
        rows = s.execute(
            select(LetterRecord, Request.ticket).outerjoin(Request, Request.id == LetterRecord.request_id)
            .where(LetterRecord.year == year, *([LetterRecord.agency == args.agency] if args.agency else []))
            .order_by(LetterRecord.agency, LetterRecord.seq)
        ).all()
        for rec, ticket in rows:
            when = rec.issued_at or rec.created_at
            tte = "TTE" if rec.signed else ("-" if rec.status == "konsep" else "tanpa TTE")
            print(f"{rec.agency}  {rec.number:<28} {when:%Y-%m-%d}  {rec.status:<9} {rec.kind:<10} {tte:<9} "
                  f"{ticket or '-':<14} {rec.hal or ''}")
    if not rows:
        print(f"belum ada surat keluar tahun {year}")
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    from subdomaind.workflows.digest import build_digest, render_digest, send_digest
    from subdomaind.workflows.store import utcnow
    from subdomaind.workflows.worktime import calendar_for

    if not (0 < args.hours <= 24 * 366):  # also refuses nan and inf
        raise CommandError(f"--hours {args.hours}: sebutkan jumlah jam antara 0 dan {24 * 366}", 2)
    now = utcnow()
    since = now - timedelta(hours=args.hours)
    if args.preview:
        # Read-only: no secrets, no database created; the same data the daily mail carries.
        cfg = _load(args, secrets=False)
        agencies = [a for a in cfg.agencies if not args.agency or a.id == args.agency]
        if not agencies:
            raise CommandError(f"tidak ada instansi {args.agency!r} (ada: {', '.join(a.id for a in cfg.agencies)})",
                               2)
        sessions = _reader_sessions(cfg)
        for ag in agencies:
            sop = load_sop(ag.sop)
            if args.role and args.role not in sop.roles:
                raise CommandError(f"peran {args.role!r} tidak ada dalam SOP {ag.sop} "
                                   f"(ada: {', '.join(sorted(sop.roles))})", 2)
            with sessions() as s:
                data = build_digest(s, ag, sop, calendar_for(ag), now, since, role=args.role)
            subject, text, html = render_digest(data, ag)
            print(html if args.html else f"Subjek: {subject}\n\n{text}")
        return 0
    d = _daemon(args)
    for rt in d.runtimes.values():
        if args.agency and rt.agency.id != args.agency:
            continue
        with d.sessions.begin() as s:
            n = send_digest(d.ctx(s, rt.agency), rt.calendar, now, since)
            print(f"{rt.agency.id}: {n} digest mail(s) queued")
    d.shutdown(flush_seconds=30)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The monthly report of one month: --preview (text; --html / --pdf write those), --send, --csv."""
    from subdomaind.workflows.report import (
        build_report,
        parse_month,
        previous_month,
        render_csv,
        render_mail,
        render_pdf,
    )
    from subdomaind.workflows.store import utcnow
    from subdomaind.workflows.worktime import calendar_for

    # --preview and --csv only read: no secrets, no database created (as `digest --preview`).
    cfg = _load(args, secrets=bool(args.send))
    agencies = [a for a in cfg.agencies if not args.agency or a.id == args.agency]
    if not agencies:
        raise CommandError(f"tidak ada instansi {args.agency!r} (ada: {', '.join(a.id for a in cfg.agencies)})", 2)
    now = utcnow()
    try:
        months = {a.id: parse_month(args.month) if args.month else previous_month(calendar_for(a), now)
                  for a in agencies}
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    if args.send:
        from subdomaind.workflows.report import send_report

        d = _daemon(args)
        for rt in d.runtimes.values():
            if rt.agency.id not in months:
                continue
            with d.sessions.begin() as s:
                r = send_report(d.ctx(s, rt.agency), rt.calendar, months[rt.agency.id], now, by_hand=True)
            print(f"{rt.agency.id}: laporan {r.month_name} diantrekan")
        d.shutdown(flush_seconds=30)
        return 0
    sessions = _reader_sessions(cfg)
    for agency in agencies:
        with sessions() as s:
            r = build_report(s, agency, load_sop(agency.sop), calendar_for(agency), months[agency.id], now)
        if args.csv:
            text = render_csv(r)
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
                print(args.output)
            else:
                sys.stdout.write(text)
            continue
        subject, body, html = render_mail(r, agency, inline=False)
        print(f"Subjek: {subject}\n\n{body}")
        if args.html:
            Path(args.html).write_text(html, encoding="utf-8")
            print(f"HTML: {args.html}")
        if args.pdf:
            Path(args.pdf).write_bytes(render_pdf(r, agency))
            print(f"PDF: {args.pdf}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """Staff's view of mail the daemon kept aside: list, show, retry (at most N times), drop (kept, marked)."""
    from subdomaind.workflows.inbound import retry_inbound
    from subdomaind.workflows.store import QUARANTINE_STATUSES, Inbound

    if args.action in ("list", "show"):
        cfg = _load(args, secrets=False)
        sessions = _reader_sessions(cfg)
    if args.action == "list":
        with sessions() as s:
            rows = s.execute(select(Inbound).where(Inbound.status.in_(QUARANTINE_STATUSES))
                             .order_by(Inbound.id)).scalars().all()
            print(f"{'ID':>6} {'STATUS':<12} {'DITERIMA':<17} {'PENGIRIM':<32} ALASAN")
            for r in rows:
                reason = (r.error or "").splitlines()[0][:70] if r.error else "-"
                print(f"{r.id:>6} {r.status:<12} {r.received_at:%Y-%m-%d %H:%M}  {(r.sender or '?')[:32]:<32} {reason}")
        return 0
    if args.id is None:
        print("sebutkan ID pesan", file=sys.stderr)
        return 2
    if args.action == "show":
        with sessions() as s:
            row = s.get(Inbound, args.id)
            if row is None:
                raise CommandError(f"pesan {args.id} tidak ditemukan")
            print(f"ID {row.id}  status {row.status}  jenis {row.kind}  penangan {row.handler}")
            print(f"Message-ID {row.message_id}\nPengirim {row.sender}\nSubjek {row.subject}")
            print(f"Alasan:\n{row.error or '-'}\n--- pesan asli ({len(row.raw)} bita) ---")
            print(row.raw[:4000].decode("utf-8", "replace"))
        return 0
    d = _daemon(args)
    with d.sessions.begin() as s:
        row = s.get(Inbound, args.id)
        if row is None:
            print(f"pesan {args.id} tidak ditemukan", file=sys.stderr)
            return 1
        if args.action == "drop":
            row.status = "dropped"
            print(f"pesan {row.id} ditandai 'dropped' (isi asli tetap tersimpan)")
            return 0
        if row.status not in QUARANTINE_STATUSES:
            print(f"pesan {row.id} berstatus {row.status}; hanya pesan karantina yang dapat diulang", file=sys.stderr)
            return 1
        if row.attempts >= d.config.workflow.quarantine_max_retries:
            print(f"pesan {row.id} sudah dicoba {row.attempts} kali; periksa isinya (show) lalu drop",
                  file=sys.stderr)
            return 1
        rt = d.runtimes[row.agency]
        status = retry_inbound(d.ctx(s, rt.agency), row)
        print(f"pesan {row.id}: {status}")
    d.shutdown(flush_seconds=10)
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    """Send the open step's mail again with a fresh reply token (the old one stops working)."""
    from subdomaind.workflows.engine import reissue_step
    from subdomaind.workflows.store import Request

    d = _daemon(args)
    with d.sessions.begin() as s:
        req = s.execute(select(Request).where(Request.ticket == args.ticket.upper())).scalars().first()
        if req is None:
            print(f"tiket {args.ticket} tidak ditemukan", file=sys.stderr)
            return 1
        run = reissue_step(d.ctx(s, d.runtimes[req.agency].agency), req, by=f"staf ({os.environ.get('USER', '?')})")
        if run is None:
            print(f"{req.ticket} tidak sedang menunggu keputusan", file=sys.stderr)
            return 1
        print(f"{req.ticket}: surel langkah {run.key} dikirim ulang")
    d.shutdown(flush_seconds=10)
    return 0


def cmd_oauth_login(args: argparse.Namespace) -> int:
    """The device-code flow (RFC 8628): print the URL and code, wait for the administrator to sign in,
    store the refresh token (0600) where the configuration's refresh_token_file says."""
    from subdomaind.daemon.oauth import OAuthError, device_login, store_refresh_token

    cfg = _load(args)
    try:
        agency = cfg.agency(args.agency)
    except KeyError:
        print(f"tidak ada agency {args.agency!r} di konfigurasi ({', '.join(a.id for a in cfg.agencies)})",
              file=sys.stderr)
        return 2
    side = cfg.smtp if args.smtp else agency.imap
    where = "[smtp]" if args.smtp else f"[agency.imap] {agency.id}"
    if side.auth != "oauth2" or side.oauth is None:
        print(f"{where}: auth bukan \"oauth2\"; tidak ada yang perlu login", file=sys.stderr)
        return 2
    if side.oauth.flow != "refresh_token":
        print(f"{where}: flow {side.oauth.flow!r} tidak memakai refresh token; cukup `check-config --connect`",
              file=sys.stderr)
        return 2
    path = side.oauth.resolved(side.oauth.refresh_token_file)
    if path is None:
        print(f"{where}.oauth: isi refresh_token_file (mis. \"/etc/subdomaind/credentials/imap-refresh-token\")",
              file=sys.stderr)
        return 2
    try:
        token = device_login(side.oauth, lambda line: print(line, flush=True))
        store_refresh_token(path, token)
    except OAuthError as exc:
        print(f"login OAuth gagal: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"refresh token tidak dapat disimpan di {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dibatalkan", file=sys.stderr)
        return 130
    print(f"refresh token disimpan di {path} (mode 0600)")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    """Mail the outbox holds back: `held` (over the daily cap per address) until staff release or drop it;
    `waiting` (the PIC's credentials until their letter is sent) is listed, and goes out by itself."""
    from subdomaind.workflows.store import Outbox, utcnow

    cfg = _load(args)
    sessions = _sessions(cfg)
    if args.action == "list":
        with sessions() as s:
            rows = s.execute(select(Outbox.id, Outbox.status, Outbox.created_at, Outbox.rcpts, Outbox.subject,
                                    Outbox.last_error)
                             .where(Outbox.status.in_(("held", "waiting"))).order_by(Outbox.id)).all()
        if not rows:
            print("tidak ada surel yang ditahan")
            return 0
        print(f"{'ID':>6} {'STATUS':<8} {'DIBUAT':<17} {'PENERIMA':<32} {'SUBJEK':<40} ALASAN")
        for r in rows:
            print(f"{r.id:>6} {r.status:<8} {r.created_at:%Y-%m-%d %H:%M}  {', '.join(r.rcpts):<32} "
                  f"{r.subject[:40]:<40} {(r.last_error or '-')[:60]}")
        return 0
    if args.id is None:
        print(f"sebutkan ID surel: subdomaind outbox {args.action} ID (lihat: subdomaind outbox list)",
              file=sys.stderr)
        return 2
    with sessions.begin() as s:
        row = s.get(Outbox, args.id)
        if row is None:
            print(f"surel {args.id} tidak ditemukan di outbox", file=sys.stderr)
            return 1
        if row.status != "held":
            print(f"surel {row.id} berstatus {row.status}; hanya surel yang ditahan (held) yang dapat "
                  f"{'dilepas' if args.action == 'release' else 'dibuang'}", file=sys.stderr)
            return 1
        who = os.environ.get("USER", "?")
        if args.action == "release":
            row.status, row.next_attempt_at = "queued", utcnow()
            row.last_error = f"dilepas oleh staf ({who}) dari: {row.last_error or 'ditahan'}"[:2000]
            print(f"surel {row.id} dilepas; dikirim pada putaran berikut daemon")
        else:
            row.status, row.raw = "dropped", None
            row.last_error = f"dibuang oleh staf ({who}) dari: {row.last_error or 'ditahan'}"[:2000]
            print(f"surel {row.id} dibuang; tidak akan dikirim")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """A new key for `[secrets] key_file`, mode 0600; an existing file is never overwritten."""
    from subdomaind.workflows.secretbox import write_key_file

    try:
        write_key_file(Path(args.file))
    except FileExistsError:
        print(f"{args.file} sudah ada; kunci lama tidak ditimpa (kata sandi yang tersegel dengannya tidak "
              f"akan dapat dibuka lagi)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file} tidak dapat dibuat: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"kunci dibuat: {args.file} (mode 0600); pasang sebagai [secrets] key_file")
    return 0


def cmd_form(args: argparse.Namespace) -> int:
    """The agency's fillable request form ("Formulir Pengajuan Layanan Sub-Domain"), PDF or DOCX."""
    from subdomaind.workflows.forms import form_docx, form_pdf

    cfg = _load(args, secrets=False)
    try:
        ag = cfg.agency(args.agency) if args.agency else cfg.agencies[0]
    except KeyError:
        raise CommandError(f"tidak ada instansi {args.agency!r} (ada: {', '.join(a.id for a in cfg.agencies)})",
                           2) from None
    data = form_docx(ag.name, ag.zone, ag.letter) if args.docx else form_pdf(ag.name, ag.zone, ag.letter)
    out = args.output or f"formulir-sub-domain-{ag.id}.{'docx' if args.docx else 'pdf'}"
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        raise CommandError(f"{out}: tidak dapat ditulis: {exc.strerror}") from None
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subdomaind", description="Layanan sub domain Diskominfo melalui surel")
    p.add_argument("--config", "-c", help=f"configuration file (default $SUBDOMAIND_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon until SIGTERM").set_defaults(func=cmd_run)
    sub.add_parser("once", help="one pass (intake, due steps, outbox), then exit").set_defaults(func=cmd_once)
    sp = sub.add_parser("parse", help="parse one message and print the result")
    sp.add_argument("file")
    sp.add_argument("--json", action="store_true", help="print JSON (the only format; kept for the contract)")
    sp.add_argument("--pretty", action="store_true")
    sp.add_argument("--zone")
    sp.set_defaults(func=cmd_parse)
    st = sub.add_parser("status", help="intake health, outbox and open requests")
    st.add_argument("--json", action="store_true")
    st.add_argument("--check", action="store_true",
                    help="one line and exit 0 OK, 1 warning, 2 critical (Nagios plugin convention)")
    st.set_defaults(func=cmd_status)
    sh = sub.add_parser("show", help="the audit timeline of one request")
    sh.add_argument("ticket")
    sh.set_defaults(func=cmd_show)
    dg = sub.add_parser("digest", help="the daily digest: --preview prints it, --send sends it now")
    mode = dg.add_mutually_exclusive_group(required=True)
    mode.add_argument("--preview", action="store_true")
    mode.add_argument("--send", action="store_true")
    dg.add_argument("--html", action="store_true", help="with --preview: print the HTML part")
    dg.add_argument("--agency")
    dg.add_argument("--role", help="with --preview: the 'menunggu Anda' digest of one role")
    dg.add_argument("--hours", type=float, default=24.0, help="cover this many hours back (default 24)")
    dg.set_defaults(func=cmd_digest)
    rp = sub.add_parser("report", help="the monthly report: --preview prints it, --send sends it, --csv the records")
    rmode = rp.add_mutually_exclusive_group(required=True)
    rmode.add_argument("--preview", action="store_true")
    rmode.add_argument("--send", action="store_true")
    rmode.add_argument("--csv", action="store_true", help="one row per request of the month")
    rp.add_argument("--month", help="YYYY-MM (default: last month)")
    rp.add_argument("--agency")
    rp.add_argument("--html", help="with --preview: also write the HTML (charts embedded) to this file")
    rp.add_argument("--pdf", help="with --preview: also write the PDF to this file")
    rp.add_argument("-o", "--output", help="with --csv: write to this file instead of standard output")
    rp.set_defaults(func=cmd_report)
    lt = sub.add_parser("letters", help="the register of outgoing letters (numbers, kinds, signed or not)")
    lt.add_argument("--year", type=int)
    lt.add_argument("--agency")
    lt.set_defaults(func=cmd_letters)
    rs = sub.add_parser("resend", help="send the open step's mail again with a fresh token")
    rs.add_argument("ticket")
    rs.set_defaults(func=cmd_resend)
    fm = sub.add_parser("form", help="write the agency's fillable request form")
    kind = fm.add_mutually_exclusive_group(required=True)
    kind.add_argument("--pdf", action="store_true")
    kind.add_argument("--docx", action="store_true")
    fm.add_argument("--agency")
    fm.add_argument("-o", "--output")
    fm.set_defaults(func=cmd_form)
    qa = sub.add_parser("quarantine", help="mail kept aside: list | show ID | retry ID | drop ID")
    qa.add_argument("action", choices=("list", "show", "retry", "drop"))
    qa.add_argument("id", nargs="?", type=int)
    qa.set_defaults(func=cmd_quarantine)
    oa = sub.add_parser("oauth", help="OAuth 2.0 for the mailbox or SMTP: login stores a refresh token")
    oas = oa.add_subparsers(dest="oauth_cmd", required=True)
    ol = oas.add_parser("login", help="device-code sign-in (Microsoft 365, Google, generic); prints URL and code")
    ol.add_argument("--agency", required=True, help="the agency whose mailbox signs in")
    ol.add_argument("--smtp", action="store_true", help="sign in for [smtp] instead of the agency's mailbox")
    ol.set_defaults(func=cmd_oauth_login)
    ob = sub.add_parser("outbox", help="mail held back over the daily cap: list | release ID | drop ID")
    ob.add_argument("action", choices=("list", "release", "drop"))
    ob.add_argument("id", nargs="?", type=int)
    ob.set_defaults(func=cmd_outbox)
    kg = sub.add_parser("keygen", help="create the key that encrypts PIC passwords at rest ([secrets] key_file)")
    kg.add_argument("file")
    kg.set_defaults(func=cmd_keygen)
    cc = sub.add_parser("check-config", help="check a configuration file; non-zero exit on problems")
    cc.add_argument("file")
    cc.add_argument("--connect", action="store_true",
                    help="also log in to each mailbox and SMTP, ask the zone's SOA with the TSIG key, and ask "
                         "each verify server")
    cc.set_defaults(func=cmd_check_config)
    db = sub.add_parser("db", help="database maintenance")
    dbs = db.add_subparsers(dest="db_command", required=True)
    dbs.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db)
    return p


def _version() -> str:
    try:
        return version("subdomaind")
    except PackageNotFoundError:
        return "(not installed)"


def problem_text(exc: BaseException) -> str:
    """One line for an error no command expected: what failed, in words, never a traceback."""
    if isinstance(exc, OperationalError | DatabaseError):
        orig = getattr(exc, "orig", None)
        first = (str(orig) if orig is not None else str(exc)).strip().splitlines()
        reason = first[0] if first else exc.__class__.__name__
        if "not a database" in reason or "malformed" in reason:
            return (f"basis data rusak ({reason}); pulihkan dari cadangan atau pindahkan berkas itu lalu "
                    f"jalankan subdomaind db upgrade")
        return f"basis data tidak dapat dibuka: {reason}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"galat sistem{where}: {exc.strerror or exc}"
    return f"galat tak terduga {exc.__class__.__name__}: {exc} (jalankan dengan --log-level debug untuk rinciannya)"


def main(argv: list[str] | None = None) -> int:
    """The command line with its boundary: every command answers in one line and a non-zero exit, never a
    traceback (a closed pipe, Ctrl-C, a broken or unreachable database, a bug)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the boundary: a reader that went away is noticed here, not at exit
        return code
    except KeyboardInterrupt:
        print("dihentikan (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: nothing more to say, and nothing to flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CommandError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print("konfigurasi tidak valid: " + "; ".join(exc.problems), file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:  # noqa: BLE001 - the boundary of every command

        logging.getLogger("subdomaind").debug("command failed", exc_info=True)
        print(problem_text(exc), file=sys.stderr)
        # sysexits.h: 69 EX_UNAVAILABLE for a database that cannot be used, 70 EX_SOFTWARE for a bug.
        return 69 if isinstance(exc, OperationalError | DatabaseError) else 70


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
