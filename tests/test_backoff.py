"""The one retry delay: doubling from the base, capped, jittered within its range, and the same figures
the outbox, the mailbox logins and the automatic steps have always used."""

from __future__ import annotations

from datetime import timedelta

import pytest

from subdomaind.daemon.backoff import Backoff
from subdomaind.daemon.due import STEP_BACKOFF
from subdomaind.daemon.gate import NETWORK_BACKOFF, REFUSED_BACKOFF
from subdomaind.daemon.outbox import backoff


def test_doubles_from_the_base_up_to_the_cap() -> None:
    b = Backoff(base=60, cap=1800)
    assert [b.delay(n) for n in range(1, 8)] == [60, 120, 240, 480, 960, 1800, 1800]
    assert b.delay(0) == 60  # no failure counted yet: the first step, not half of it
    assert b.delay(10_000) == 1800  # a long outage neither overflows nor passes the cap


def test_a_cap_below_the_base_wins() -> None:
    assert Backoff(base=30, cap=10).delay(1) == 10


def test_jitter_stays_in_its_range_and_is_applied_after_the_cap() -> None:
    b = Backoff(base=30, cap=3600, jitter=(0.8, 1.2))
    assert b.delay(3, uniform=lambda lo, hi: lo) == pytest.approx(96.0)
    assert b.delay(3, uniform=lambda lo, hi: hi) == pytest.approx(144.0)
    assert b.delay(99, uniform=lambda lo, hi: hi) == pytest.approx(4320.0)
    seen = {b.delay(1) for _ in range(200)}
    assert len(seen) > 1 and all(24.0 <= d <= 36.0 for d in seen)


def test_no_jitter_draws_no_random_number() -> None:
    def refuse(lo: float, hi: float) -> float:
        raise AssertionError("drew a random number")

    assert Backoff(base=2, cap=256).delay(4, uniform=refuse) == 16


def test_after_is_the_delay_as_a_timedelta() -> None:
    assert Backoff(base=120, cap=3600).after(3) == timedelta(minutes=8)


@pytest.mark.parametrize("base,cap,jitter", [(0, 10, (1.0, 1.0)), (1, 0, (1.0, 1.0)), (1, 10, (1.2, 0.8)),
                                             (1, 10, (0.0, 1.0))])
def test_a_nonsense_backoff_is_refused(base: float, cap: float, jitter: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap, jitter=jitter)


def test_every_retry_of_the_daemon_keeps_its_figures() -> None:
    # An automatic step that failed: 2 minutes, doubling to an hour.
    assert [STEP_BACKOFF.after(n) for n in (1, 2, 5, 6, 50)] == [timedelta(minutes=m) for m in (2, 4, 32, 60, 60)]
    # A refused login: a minute, doubling to half an hour; the server unreachable: 2 s to about 4 minutes.
    assert [REFUSED_BACKOFF.delay(n) for n in (1, 2, 6)] == [60, 120, 1800]
    assert [NETWORK_BACKOFF.delay(n, uniform=lambda lo, hi: hi) for n in (1, 8, 9)] == [2, 256, 256]
    assert NETWORK_BACKOFF.delay(1, uniform=lambda lo, hi: lo) == 1
    # An outbox row the SMTP server did not take: 30 s, 1 min, 2 min ... up to the configured cap, +-20 %.
    for attempts, seconds in ((1, 30), (2, 60), (3, 120), (99, 3600)):
        assert 0.8 * seconds <= backoff(attempts).total_seconds() <= 1.2 * seconds
    assert backoff(5, base=10, cap=45).total_seconds() <= 1.2 * 45
