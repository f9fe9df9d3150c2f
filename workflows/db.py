"""Open the database and bring its schema up to date with Alembic (`subdomaind db upgrade`, and at start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"

# The newest migration (tests/test_db_schema.py checks that it is Alembic's head). A database already
# there needs no Alembic: `run` then never loads it, 15 MB it would keep resident (bench/backlog.py
# --memory), and the unit's ExecStartPre has already run `db upgrade`.
HEAD = "0011_mailbox_backoff"


def alembic_config(engine: Engine) -> AlembicConfig:
    # Alembic (heavy) only to migrate: the read-only commands and parser workers never load it
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: no schema yet), read without Alembic."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied; safe to run again."""
    if current_revision(engine) == HEAD:
        return
    # Alembic (heavy) only when a migration is due
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several daemons starting at once: one migrates, the others wait, then find nothing to do.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
