"""The IDLE watcher of a mailbox (RFC 2177): a second connection that only waits for new mail and wakes the
main loop for that mailbox; it logs in under the mailbox's gate and works only while this process holds
the mailbox's lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from subdomaind.daemon.logins import Logins
from subdomaind.daemon.mailbox import ImapSource, MailSourceError
from subdomaind.daemon.runtime import AgencyRuntime

log = logging.getLogger("subdomaind.service")


@dataclass
class Watcher:
    """Run `watch` on a thread of its own. `owns(aid)` asks the current leases; `wake(aid)` and
    `idling(aid, on)` reach the agency's current runtime (the watcher outlives a configuration reload)."""

    rt: AgencyRuntime
    spool_dir: Path
    logins: Logins
    stopping: threading.Event
    owns: Callable[[str], bool]
    wake: Callable[[str], None]
    idling: Callable[[str, bool], None]

    def watch(self) -> None:
        """One IDLE is held until the server reports mail, re-issued every `idle_refresh_seconds` (below
        the 29 minutes of RFC 2177) on the same connection; a stop or a lease gone elsewhere cuts the
        connection (`ImapSource.interrupt`)."""
        rt = self.rt
        if not rt.agency.imap.idle:
            return
        src = ImapSource(rt.agency.imap, "" if rt.tokens else rt.agency.imap.read_secret() or "", self.spool_dir,
                         rt.tokens)
        aid = rt.agency.id
        while not self.stopping.is_set():
            if not self.owns(aid):
                rt.lease_changed.wait()
                rt.lease_changed.clear()
                continue
            # The watcher logs in only when the mailbox's shared backoff allows, and one login at a time
            # with intake: a wrong password costs one attempt per backoff step, not one per connection.
            self.logins.restore_backoff(rt)
            if not rt.gate.try_begin():
                self.stopping.wait(min(5.0, max(0.2, rt.gate.left())))
                continue
            rt.watcher = src
            holding = True  # this watcher's login attempt holds the gate until it ends
            try:
                try:
                    with self.logins.slots:
                        src.connect()
                except MailSourceError:
                    raise  # the attempt ends in gate.failed below
                except BaseException:
                    rt.gate.release()
                    raise
                rt.gate.succeeded()
                holding = False
                if src.mode != "idle":
                    return
                self.idling(aid, True)
                # Mail may have arrived while we were away: let the main loop look at once.
                self.wake(aid)
                while not self.stopping.is_set() and self.owns(aid):
                    # New mail, or IDLE re-issued: the mailbox is read then too, a safety net for a
                    # notification lost on the way (one read per mailbox per idle_refresh_seconds).
                    src.wait(rt.agency.imap.idle_refresh_seconds)
                    self.wake(aid)
            except MailSourceError as exc:
                if self.stopping.is_set() or not self.owns(aid):
                    if holding:
                        rt.gate.release()
                    continue
                delay = rt.gate.failed(exc.kind)
                log.info("IDLE watcher %s: %s; retry in %.0f s", aid, exc, delay)
                self.idling(aid, False)
                self.wake(aid)  # polled meanwhile, and the main loop's wait follows the new backoff
                if exc.kind != "network":
                    self.logins.record_failure(rt, exc, delay)
            finally:
                self.idling(aid, False)
                rt.watcher = None
                src.close()
