"""The one retry delay of the daemon: exponential from a base, capped, optionally jittered.

Every retry after a failure (an outbox row the SMTP server did not take, a mailbox login refused or
unreachable, an automatic step that raised) waits `base * 2 ** (attempt - 1)` seconds, at most `cap`,
then multiplied by a random factor in `jitter`, so that many clients recovering from the same outage do
not come back in the same second.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

# 2 ** 64 times any base is past every cap we use; a bigger exponent would only risk OverflowError.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Backoff:
    """`delay(1)` is `base`, each further attempt doubles it up to `cap`; `jitter` is the (low, high) range
    of the random factor applied after the cap ((1.0, 1.0): none)."""

    base: float
    cap: float
    jitter: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        lo, hi = self.jitter
        if self.base <= 0 or self.cap <= 0 or not 0 < lo <= hi:
            raise ValueError(f"bad backoff: base={self.base} cap={self.cap} jitter={self.jitter}")

    def delay(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait before retrying after the `attempt`-th failure in a row (counted from 1)."""
        exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
        seconds = min(self.cap, self.base * 2.0 ** exponent)
        lo, hi = self.jitter
        return seconds if lo == hi == 1.0 else seconds * uniform(lo, hi)

    def after(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> timedelta:
        """`delay` as a timedelta, for retry times stored in the database."""
        return timedelta(seconds=self.delay(attempt, uniform))
