"""Which agencies this process works: on PostgreSQL, leases shared out evenly among the running processes.

Every process holds, on ONE connection of its own (never one from the work pool, which must stay free for
intake and the outbox), a membership advisory lock and one session advisory lock per agency it works.
The number of membership locks in `pg_locks` is the number of live processes k; each process aims at
ceil(N/k) agencies: below it, it takes free ones (in an order of its own, so processes starting together do
not all reach for the same mailboxes first); above it, it lets go of the extra ones it is not working at
that moment, and a process below its share takes them. A process that dies loses its connection and with
it every lock (TCP keepalives on both ends find a vanished host), and the others take its agencies at
their next round, a few seconds later.

On SQLite there is one process and it works everything (`AllLeases`). `leases_for` picks the kind for a
database; `follow` is what a change of leases does to the mailboxes' runtimes.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from secrets import randbelow
from typing import Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from subdomaind.daemon.runtime import AgencyRuntime

log = logging.getLogger("subdomaind.leases")

# classid of the membership locks (two-int4 form, objsubid 2 in pg_locks): distinct from the agency locks,
# which keep their bigint keys (objsubid 1) so a process of the previous release still sees them.
MEMBER_SPACE = 0x5D0A1E
ROUND_SECONDS = 5.0  # how often leases are checked and rebalanced; a dead process's agencies wait this long
# Keepalives on the lease connection: a host that vanishes without closing its sockets loses its locks after
# about idle + interval * count seconds, within the 30 s a takeover may take.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3}


def agency_key(agency_id: str, folder: str) -> int:
    """The advisory lock key of one mailbox (bigint form, unchanged since leases were one per connection)."""
    return zlib.crc32(f"subdomaind:{agency_id}:{folder}".encode()) - 2**31


class Leases(Protocol):
    def start(self) -> None: ...
    def owns(self, agency_id: str) -> bool: ...
    def working(self, agency_id: str) -> AbstractContextManager[bool]: ...
    def held(self) -> set[str]: ...
    def close(self) -> None: ...


class AllLeases:
    """SQLite: one process, every agency its own."""

    def __init__(self, agency_ids: Iterable[str]) -> None:
        self._ids = set(agency_ids)

    def start(self) -> None:
        return None

    def owns(self, agency_id: str) -> bool:
        return agency_id in self._ids

    @contextmanager
    def working(self, agency_id: str) -> Iterator[bool]:
        yield agency_id in self._ids

    def held(self) -> set[str]:
        return set(self._ids)

    def close(self) -> None:
        return None


class PgLeases:
    """Leases on one dedicated PostgreSQL connection, rebalanced every `round_seconds` on a thread.

    `working(agency)` is held around everything done for an agency: a lease is never let go of while its
    agency is being worked, so two processes never work one mailbox at once by our choice (only when this
    process's connection is lost mid-work, which the Message-ID and checkpoint rules make safe)."""

    def __init__(self, url: URL | str, keys: dict[str, int], *, round_seconds: float = ROUND_SECONDS,
                 on_change: Callable[[set[str], set[str]], None] | None = None) -> None:
        self._url = url
        self._keys = dict(keys)
        self._round = round_seconds
        self._on_change = on_change
        self._slot = randbelow(2**31 - 1) + 1
        self._mu = threading.Lock()
        self._held: set[str] = set()
        self._busy: dict[str, int] = {}
        self._conn: Connection | None = None
        self._engine: Engine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.members = 1

    # --- what the work loop asks ---------------------------------------------------------------------

    def owns(self, agency_id: str) -> bool:
        with self._mu:
            return agency_id in self._held

    def held(self) -> set[str]:
        with self._mu:
            return set(self._held)

    @contextmanager
    def working(self, agency_id: str) -> Iterator[bool]:
        with self._mu:
            mine = agency_id in self._held
            if mine:
                self._busy[agency_id] = self._busy.get(agency_id, 0) + 1
        try:
            yield mine
        finally:
            if mine:
                with self._mu:
                    self._busy[agency_id] -= 1
                    if not self._busy[agency_id]:
                        del self._busy[agency_id]

    # --- the lease thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """One round at once (the first pass works what it got), then a round every `round_seconds`."""
        if self._thread is not None:
            return
        self.rebalance()
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._round):
            try:
                self.rebalance()
            except Exception:  # the lease thread's boundary: a bug here must not end the leases
                log.exception("lease round failed")

    def _connection(self) -> Connection:
        if self._conn is None:
            if self._engine is None:
                self._engine = create_engine(self._url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                             connect_args={**KEEPALIVE, "application_name": "subdomaind-leases",
                                                           "connect_timeout": 10},
                                             hide_parameters=True)
            conn = self._engine.connect()
            # The server finds a vanished client too (a process that can no longer work must lose its locks).
            conn.exec_driver_sql("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 3; "
                                 "SET tcp_keepalives_count = 3")
            conn.execute(text("SELECT pg_advisory_lock(:space, :slot)"), {"space": MEMBER_SPACE, "slot": self._slot})
            self._conn = conn
        return self._conn

    def _drop_connection(self, why: object) -> None:
        log.warning("lease connection lost (%s): this process works no mailbox until it has leases again", why)
        with self._mu:
            lost, self._held = self._held, set()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                log.debug("lease connection close failed", exc_info=True)
        if lost and self._on_change:
            self._on_change(set(), lost)

    def _order(self, agency_id: str) -> int:
        """Rendezvous order: each process tries free agencies in its own order."""
        return zlib.crc32(f"{self._slot}:{agency_id}".encode())

    def rebalance(self) -> None:
        if self._stop.is_set():
            return
        try:
            conn = self._connection()
            k = int(conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :space AND objsubid = 2"
                " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"space": MEMBER_SPACE}).scalar_one())
            self.members = max(1, k)
            share = math.ceil(len(self._keys) / self.members)
            gained: set[str] = set()
            released: set[str] = set()
            with self._mu:
                held = set(self._held)
                spare = [a for a in held if a not in self._busy]
            if len(held) > share:
                # Let go of the extra ones this process is not working now, the last in its own order first.
                for agency_id in sorted(spare, key=self._order, reverse=True)[:len(held) - share]:
                    with self._mu:
                        if agency_id in self._busy:
                            continue
                        self._held.discard(agency_id)
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._keys[agency_id]})
                    released.add(agency_id)
            elif len(held) < share:
                for agency_id in sorted((a for a in self._keys if a not in held), key=self._order):
                    if len(held) + len(gained) >= share or self._stop.is_set():
                        break
                    if conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                    {"key": self._keys[agency_id]}).scalar_one():
                        gained.add(agency_id)
                with self._mu:
                    self._held |= gained
        except Exception as exc:  # noqa: BLE001 - the server or the connection went away; next round retries
            self._drop_connection(exc)
            return
        if gained or released:
            log.info("leases: %d process(es), %d of %d agencies here (+%d, -%d)", self.members,
                     len(held) + len(gained) - len(released), len(self._keys), len(gained), len(released))
            if self._on_change:
                self._on_change(gained, released)

    def close(self) -> None:
        """Stop the rounds and close the connection: every lock goes with it at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._round + 2)
        conn, self._conn = self._conn, None
        with self._mu:
            self._held = set()
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing the session releases its locks either way
                log.debug("lease connection close failed", exc_info=True)
        if self._engine is not None:
            self._engine.dispose()


def leases_for(engine: Engine, runtimes: Mapping[str, AgencyRuntime],
               on_change: Callable[[set[str], set[str]], None]) -> Leases:
    """Which agencies this process works: all on SQLite; on PostgreSQL an even share."""
    if engine.dialect.name != "postgresql":
        return AllLeases(runtimes)
    keys = {aid: agency_key(aid, rt.source.folder) for aid, rt in runtimes.items()}
    return PgLeases(engine.url, keys, on_change=on_change)


def follow(runtimes: Mapping[str, AgencyRuntime], gained: set[str], lost: set[str]) -> None:
    """From the lease thread: a mailbox gained is looked at now; one lost is let go of (connections too)."""
    for aid in lost:
        rt = runtimes.get(aid)
        if rt is not None:
            rt.connected = False
            try:
                rt.source.close()
            except Exception:  # noqa: BLE001 - the connection is dropped either way
                log.debug("close failed", exc_info=True)
            rt.lease_changed.set()
            if rt.watcher is not None:
                rt.watcher.interrupt()
    for aid in gained:
        rt = runtimes.get(aid)
        if rt is not None:
            rt.wake.set()
            rt.lease_changed.set()
