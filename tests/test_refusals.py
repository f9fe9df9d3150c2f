"""Every reason a sender is refused has its class, its Indonesian template, and renders without gaps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from subdomaind.workflows.errors import ALL_REFUSALS, Refusal
from subdomaind.workflows.mailer import template_env

CONTEXT = {"reason": "alasan uji", "sender": "kadis@trenggalekkab.go.id", "ticket": "SD/2026/0042",
           "step_title": "Mendisposisi surat permohonan", "role_title": "Kepala Dinas", "subdomain": "dinsos",
           "decision": "revise", "text": "Baik", "agency_name": "Diskominfo Trenggalek",
           "mailbox": "layanan@trenggalekkab.go.id"}


@pytest.mark.parametrize("cls", ALL_REFUSALS, ids=lambda c: c.code)
def test_each_refusal_has_an_indonesian_template(cls: type[Refusal]) -> None:
    refusal = cls("alasan uji")
    tmpl = template_env().get_template(f"mail/{refusal.template}.txt.j2")
    module = tmpl.make_module(CONTEXT)  # StrictUndefined: a missing variable fails here
    body = str(module)
    subject = str(module.subject)  # type: ignore[attr-defined]
    assert subject and "{{" not in body and "{%" not in body
    assert "Yth." in body  # formal Indonesian address
    assert any(word in body for word in ("tidak", "belum", "sudah", "melebihi"))


def test_codes_are_unique() -> None:
    codes = [c.code for c in ALL_REFUSALS]
    assert len(codes) == len(set(codes))
    assert datetime.now(UTC)
