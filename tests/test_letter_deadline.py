"""The incomplete-form letter asks for the missing entries by the SOP's own time for the unit's letter (the
`lengkapi_awal` step's Mutu Baku, counted in working time), never by the reply token's expiry."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pdfplumber
from sqlalchemy import select

from subdomaind.daemon.service import Daemon
from subdomaind.workflows.db import upgrade
from subdomaind.workflows.engine import Services
from subdomaind.workflows.mailer import format_deadline, format_tanggal
from subdomaind.workflows.provision import NoHosting
from subdomaind.workflows.sop import MutuBaku
from subdomaind.workflows.store import StepRun, make_engine, make_sessionmaker
from subdomaind.workflows.worktime import calendar_for
from tests.devkit.localoffice import REQUEST_BODY, UNVOUCHED, make_config, request_mail
from tests.test_engine_unit import DictDns, ListSource, ListTransport

UNIT = "dinsos@example.org"


def test_the_incomplete_letter_gives_the_sop_deadline_not_the_token_expiry(tmp_path: Path) -> None:
    """A request without the PIC's phone: the letter (text and signed PDF) names the working-time deadline."""
    cfg = make_config(tmp_path, auth=UNVOUCHED)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    src, tr = ListSource(), ListTransport()
    d = Daemon(cfg, sessions, transport=tr, sources={"trenggalek": src},
               services={"trenggalek": Services(dns=DictDns(), hosting=NoHosting())})
    body = "\n".join(line for line in REQUEST_BODY.format(label="dinsos", pic=UNIT).splitlines()
                     if not line.startswith("No. HP"))
    src.add(request_mail(UNIT, body=body))
    d.run_once()

    with sessions() as s:
        run = s.execute(select(StepRun).where(StepRun.key == "lengkapi_awal")).scalar_one()
        opened, expires = run.opened_at, run.token_expires_at
    assert opened is not None and expires is not None
    cal = calendar_for(cfg.agencies[0])
    # The Trenggalek SOP gives the unit's letter (SOP step 1, to which an incomplete request returns) 2 days.
    deadline = format_deadline(cal.local(cal.deadline(opened, MutuBaku.parse("2 hari"))))
    assert cal.deadline(opened, MutuBaku.parse("2 hari")) - opened < timedelta(days=cfg.workflow.token_days)

    letter = next(m for m in tr.to(UNIT) if "dilengkapi" in str(m["Subject"]))
    text = " ".join(letter.get_body(preferencelist=("plain",)).get_content().split())
    assert f"Sesuai Mutu Baku SOP, mohon kelengkapan tersebut disampaikan paling lambat {deadline}." in text
    pdf = next(p for p in letter.iter_attachments() if p.get_filename().startswith("surat-incomplete"))
    with pdfplumber.open(io.BytesIO(pdf.get_content())) as doc:
        pdf_text = " ".join(" ".join((page.extract_text() or "").split()) for page in doc.pages)
    assert f"paling lambat {deadline}" in pdf_text
    assert format_tanggal(cal.local(expires)) not in text  # the token's expiry, a week on, is no deadline
