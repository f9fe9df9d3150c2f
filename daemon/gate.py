"""One login at a time per mailbox, none before its backoff ends, the backoff reset by a login that works.

Intake and the IDLE watcher of a mailbox share its gate, so a wrong password costs one attempt per backoff
step, not one per connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from subdomaind.daemon.backoff import Backoff

# After the server refused the login (or throttled us) a mailbox is left alone for a minute, doubling
# to half an hour: a wrong password must not lock the account (Zimbra's lockout, fail2ban) and a throttled
# Microsoft 365 tenant must not be stormed. Other failures (the server down) are retried sooner, from two
# seconds up to about four minutes, jittered so that mailboxes on one server do not come back together.
AUTH_BACKOFF_FIRST = 60.0
AUTH_BACKOFF_MAX = 1800.0
NETWORK_BACKOFF_MAX = 256.0
REFUSED_BACKOFF = Backoff(base=AUTH_BACKOFF_FIRST, cap=AUTH_BACKOFF_MAX)
NETWORK_BACKOFF = Backoff(base=2.0, cap=NETWORK_BACKOFF_MAX, jitter=(0.5, 1.0))


class LoginGate:
    """One backoff per mailbox, shared by intake and the IDLE watcher: one login attempt at a time, none
    before the backoff ends, and the backoff reset by a login that works."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._busy = False
        self.until = 0.0  # monotonic time before which nobody logs in
        self.failures = 0  # failures in a row
        self.refused = 0  # of which refusals and throttling (the long backoff)

    def left(self) -> float:
        return max(0.0, self.until - self._clock())

    def try_begin(self) -> bool:
        """True when this caller may log in now; it then ends with `succeeded` or `failed`."""
        with self._lock:
            if self._busy or self._clock() < self.until:
                return False
            self._busy = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._busy = False
            self.until = 0.0
            self.failures = self.refused = 0

    def release(self) -> None:
        with self._lock:
            self._busy = False

    def failed(self, kind: str) -> float:
        """Record a failure of `kind` ("auth", "throttled", "network"); the seconds to wait."""
        with self._lock:
            self._busy = False
            self.failures += 1
            if kind in ("auth", "throttled"):
                self.refused += 1
                delay = REFUSED_BACKOFF.delay(self.refused)
            else:
                delay = NETWORK_BACKOFF.delay(self.failures)
            self.until = max(self.until, self._clock() + delay)
            return delay

    def restore(self, seconds: float) -> None:
        """A backoff still running when the daemon (re)started: honoured, so a restart is no fresh burst."""
        with self._lock:
            if seconds > 0:
                self.until = self._clock() + min(seconds, AUTH_BACKOFF_MAX)
                self.refused = max(self.refused, 1)
