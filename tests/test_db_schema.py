"""The schema's migrations (workflows/db.py): HEAD names Alembic's newest revision, an up-to-date
database is left alone without loading Alembic, an older one is brought up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from subdomaind.workflows.db import HEAD, MIGRATIONS, alembic_config, current_revision, upgrade
from subdomaind.workflows.store import make_engine


def test_head_is_alembics_newest_revision(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == HEAD
    assert HEAD.startswith(sorted(p.name[:4] for p in (MIGRATIONS / "versions").glob("0*.py"))[-1])


def test_new_database_is_migrated_then_left_alone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:  # one revision back, as a database before a package upgrade
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    assert current_revision(engine) != HEAD
    upgrade(engine)
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'ix_requests_label'")).scalar_one()


def test_up_to_date_database_does_not_load_alembic(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    upgrade(make_engine(f"sqlite:///{db}"))
    code = ("import sys; from subdomaind.workflows.db import upgrade; from subdomaind.workflows.store import make_engine; "
            f"upgrade(make_engine('sqlite:///{db}')); print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent, timeout=60)
    assert out.stdout.strip() == "False"
