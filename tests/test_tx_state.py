"""What a transaction remembers beside its rows (workflows.store.TxState) lasts exactly as long as the rows
it came from: a savepoint's rollback drops what was read and audited inside it, the end of the transaction
drops all of it, and only the request to purge freed secrets outlives a commit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from subdomaind.workflows.db import upgrade
from subdomaind.workflows.store import (
    Audit,
    Outbox,
    TxState,
    make_engine,
    make_sessionmaker,
    pending_audit,
    take_purge_secrets,
    tx_state,
    utcnow,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Any]:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    return make_sessionmaker(engine)


def _audit(s: Session, event: str) -> None:
    pending_audit(s).append({"agency": "trenggalek", "request_id": None, "at": utcnow(), "actor": "subdomaind",
                             "event": event, "detail": {}, "message_id": None})


def _events(sessions: sessionmaker[Any]) -> list[str]:
    with sessions() as s:
        return list(s.execute(select(Audit.event).order_by(Audit.id)).scalars())


def _remember(state: TxState) -> None:
    state.delegates["kadis"] = frozenset({"plt@example.go.id"})
    state.opened.add(7)
    state.original_attachment["<a@x>"] = b"letter"
    state.original_files["<a@x>"] = []


def test_state_is_cleared_when_the_transaction_ends(sessions: sessionmaker[Any]) -> None:
    with sessions() as s:
        with s.begin():
            state = tx_state(s)
            _remember(state)
            _audit(s, "kept")
            assert tx_state(s) is state
        assert tx_state(s) is not state  # a fresh state for the next transaction
        assert tx_state(s) == TxState()
        with s.begin():
            _remember(tx_state(s))
            _audit(s, "rolled.back")
            s.rollback()
        assert tx_state(s) == TxState()
    assert _events(sessions) == ["kept"]


def test_a_savepoint_rollback_forgets_what_it_read_and_audited(sessions: sessionmaker[Any]) -> None:
    with sessions.begin() as s:
        _audit(s, "before")
        with s.begin_nested():
            _audit(s, "kept.savepoint")
        tx_state(s).queued = [Outbox(subject="before")]
        savepoint = s.begin_nested()
        _remember(tx_state(s))
        tx_state(s).queued.append(Outbox(subject="undone"))  # type: ignore[union-attr]
        _audit(s, "undone")
        savepoint.rollback()
        state = tx_state(s)
        assert (state.delegates, state.opened, state.original_attachment, state.original_files) == ({}, set(), {}, {})
        assert [o.subject for o in state.queued or ()] == ["before"]
        assert [r["event"] for r in state.audit_rows] == ["before", "kept.savepoint"]
        _audit(s, "after")
    assert _events(sessions) == ["before", "kept.savepoint", "after"]


def test_the_purge_request_outlives_a_commit_only(sessions: sessionmaker[Any]) -> None:
    with sessions.begin() as s:
        tx_state(s).purge_secrets = True
        _remember(tx_state(s))
    assert tx_state(s).delegates == {}
    assert take_purge_secrets(s) is True
    assert take_purge_secrets(s) is False  # asked once
    with sessions() as s:
        with s.begin():
            tx_state(s).purge_secrets = True
            s.rollback()  # nothing was deleted after all: nothing to purge
        assert take_purge_secrets(s) is False
    with sessions() as s:
        assert take_purge_secrets(s) is False  # never set


def test_audit_rows_reach_the_table_at_commit(sessions: sessionmaker[Any]) -> None:
    with sessions.begin() as s:
        for n in range(3):
            _audit(s, f"e{n}")
        assert s.execute(select(func.count()).select_from(Audit)).scalar_one() == 0
    assert _events(sessions) == ["e0", "e1", "e2"]


def test_no_module_keeps_its_own_session_info_keys() -> None:
    # Per-transaction state goes through workflows.store.tx_state, so that one place clears it.
    direct = re.compile(r"\.info\s*(\[|\.(get|pop|setdefault|update|clear)\b)")
    found = [f"{path.relative_to(ROOT)}:{n}" for package in ("daemon", "workflows", "parsers")
             for path in sorted((ROOT / package).rglob("*.py")) if path != ROOT / "workflows" / "store.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if direct.search(line)]
    assert not found, f"Session.info used outside workflows/store.py: {found}"
