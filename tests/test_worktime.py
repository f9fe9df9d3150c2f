"""Working time: office hours, weekends, the 2026 national calendar (SKB 3 Menteri), overrides, time zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subdomaind.workflows.sop import MutuBaku
from subdomaind.workflows.worktime import (
    CalendarError,
    SpecialHours,
    WorkCalendar,
    load_overrides,
    load_special_hours,
)

WIB = ZoneInfo("Asia/Jakarta")
WITA = ZoneInfo("Asia/Makassar")
CAL = WorkCalendar("Asia/Jakarta")

# domain-brief section 7, from SKB 3 Menteri 1497/2/5 of 2025.
LIBUR_2026 = {
    date(2026, 1, 1), date(2026, 1, 16), date(2026, 2, 17), date(2026, 3, 19), date(2026, 3, 21),
    date(2026, 3, 22), date(2026, 4, 3), date(2026, 4, 5), date(2026, 5, 1), date(2026, 5, 14),
    date(2026, 5, 27), date(2026, 5, 31), date(2026, 6, 1), date(2026, 6, 16), date(2026, 8, 17),
    date(2026, 8, 25), date(2026, 12, 25),
}
CUTI_BERSAMA_2026 = {
    date(2026, 2, 16), date(2026, 3, 18), date(2026, 3, 20), date(2026, 3, 23), date(2026, 3, 24),
    date(2026, 5, 15), date(2026, 5, 28), date(2026, 12, 24),
}


def wib(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=WIB)


def mb(text: str) -> MutuBaku:
    return MutuBaku.parse(text)


def test_2026_calendar_matches_the_skb() -> None:
    public = set(holidays.country_holidays("ID", categories=("public",), years=2026))
    government = set(holidays.country_holidays("ID", categories=("government",), years=2026))
    assert public == LIBUR_2026 and len(public) == 17
    assert government == CUTI_BERSAMA_2026 and len(government) == 8
    for d in LIBUR_2026 | CUTI_BERSAMA_2026:
        assert not CAL.is_workday(d), d
        assert CAL.holiday_name(d)
    assert CAL.is_workday(date(2026, 12, 23)) and CAL.is_workday(date(2026, 12, 28))


def test_office_hours_boundaries() -> None:
    assert not CAL.is_working_time(wib(2026, 11, 3, 7, 29))
    assert CAL.is_working_time(wib(2026, 11, 3, 7, 30))
    assert CAL.is_working_time(wib(2026, 11, 3, 15, 59))
    assert not CAL.is_working_time(wib(2026, 11, 3, 16, 0))
    assert not CAL.is_working_time(wib(2026, 11, 7, 10, 0))  # Saturday
    assert CAL.day_minutes == 510


def test_simple_weekday_case() -> None:
    # Tuesday 3 November 2026: no holiday, no Ramadan.
    assert CAL.deadline(wib(2026, 11, 3, 9, 0), mb("1 jam")) == wib(2026, 11, 3, 10, 0)
    assert CAL.deadline(wib(2026, 11, 3, 9, 0), mb("15 menit")) == wib(2026, 11, 3, 9, 15)
    assert CAL.deadline(wib(2026, 11, 3, 9, 0), mb("2 hari")) == wib(2026, 11, 5, 9, 0)
    # Received before opening: the clock starts at 07.30 and the day counts as the first.
    assert CAL.deadline(wib(2026, 11, 3, 6, 0), mb("1 hari")) == wib(2026, 11, 3, 16, 0)
    assert CAL.deadline(wib(2026, 11, 3, 6, 0), mb("1 jam")) == wib(2026, 11, 3, 8, 30)
    # Received after closing: the next working day is the first.
    assert CAL.deadline(wib(2026, 11, 3, 18, 0), mb("1 hari")) == wib(2026, 11, 4, 16, 0)
    assert CAL.deadline(wib(2026, 11, 3, 18, 0), mb("2 hari")) == wib(2026, 11, 5, 16, 0)
    # Received exactly at opening: the deadline is that day's closing (the same working moment).
    assert CAL.deadline(wib(2026, 11, 3, 7, 30), mb("1 hari")) == wib(2026, 11, 3, 16, 0)
    # Fractions of a day are a fraction of a standard office day.
    assert CAL.deadline(wib(2026, 11, 3, 7, 30), mb("0,5 hari")) == wib(2026, 11, 3, 11, 45)
    assert CAL.working_minutes(wib(2026, 11, 3, 9, 0), wib(2026, 11, 5, 9, 0)) == 2 * 510


def test_across_a_weekend() -> None:
    friday = wib(2026, 11, 6, 10, 0)
    assert CAL.deadline(friday, mb("1 hari")) == wib(2026, 11, 9, 10, 0)
    assert CAL.deadline(wib(2026, 11, 6, 15, 0), mb("2 jam")) == wib(2026, 11, 9, 8, 30)
    assert CAL.deadline(wib(2026, 11, 7, 11, 0), mb("15 menit")) == wib(2026, 11, 9, 7, 45)  # Saturday
    assert CAL.working_minutes(wib(2026, 11, 6, 15, 0), wib(2026, 11, 9, 8, 30)) == 120
    assert CAL.next_opening(wib(2026, 11, 8, 23, 0)) == wib(2026, 11, 9, 7, 30)


def test_letter_received_friday_1550_with_15_menit() -> None:
    due = CAL.deadline(wib(2026, 11, 6, 15, 50), mb("15 menit"))
    assert due == wib(2026, 11, 9, 7, 35)  # 10 minutes on Friday, 5 on Monday
    assert CAL.working_minutes(wib(2026, 11, 6, 15, 50), due) == 15


def test_across_17_agustus_2026() -> None:
    # 17 Agustus 2026 is a Monday: Friday 14 -> Tuesday 18.
    assert CAL.holiday_name(date(2026, 8, 17)) == "Independence Day"
    assert CAL.deadline(wib(2026, 8, 14, 10, 0), mb("1 hari")) == wib(2026, 8, 18, 10, 0)
    assert CAL.deadline(wib(2026, 8, 14, 15, 30), mb("1 jam")) == wib(2026, 8, 18, 8, 0)
    assert CAL.working_minutes(wib(2026, 8, 14, 16, 0), wib(2026, 8, 18, 7, 30)) == 0


def test_across_cuti_bersama_24_and_christmas_2026() -> None:
    # Wednesday 23 Dec; 24 (cuti bersama), 25 (Natal), then the weekend: next working day Monday 28.
    assert CAL.deadline(wib(2026, 12, 23, 10, 0), mb("1 hari")) == wib(2026, 12, 28, 10, 0)
    assert CAL.deadline(wib(2026, 12, 23, 15, 45), mb("1 jam")) == wib(2026, 12, 28, 8, 15)
    assert CAL.deadline(wib(2026, 12, 23, 17, 0), mb("2 hari")) == wib(2026, 12, 29, 16, 0)
    # An office that stays open on cuti bersama says so in its override file.
    open_on_24 = WorkCalendar("Asia/Jakarta", extra_workdays={date(2026, 12, 24)})
    assert open_on_24.deadline(wib(2026, 12, 23, 10, 0), mb("1 hari")) == wib(2026, 12, 24, 10, 0)


def test_wita_agency() -> None:
    wita = WorkCalendar("Asia/Makassar")
    received = datetime(2026, 11, 3, 0, 0, tzinfo=UTC)  # 08.00 WITA, 07.00 WIB
    assert wita.is_working_time(received) and not CAL.is_working_time(received)
    assert wita.deadline(received, mb("15 menit")) == datetime(2026, 11, 3, 8, 15, tzinfo=WITA)
    assert CAL.deadline(received, mb("15 menit")) == wib(2026, 11, 3, 7, 45)
    # Closing is 16.00 local: 08.00 UTC in WITA, 09.00 UTC in WIB.
    assert wita.deadline(datetime(2026, 11, 3, 9, 0, tzinfo=UTC), mb("1 hari")) == datetime(
        2026, 11, 4, 16, 0, tzinfo=WITA)
    assert wita.working_minutes(received, datetime(2026, 11, 3, 8, 0, tzinfo=UTC)) == 480


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        CAL.is_working_time(datetime(2026, 11, 3, 9, 0))  # noqa: DTZ001


def test_override_file(tmp_path: Path) -> None:
    path = tmp_path / "libur.toml"
    path.write_text(
        """
libur = ["2026-11-27", { tanggal = 2026-11-30, alasan = "Hari Jadi Kabupaten" }]
masuk = [{ tanggal = "2026-12-24", alasan = "Layanan tetap buka pada cuti bersama" }]

[[jam_khusus]]
dari = "2026-02-19"
sampai = "2026-03-17"
mulai = "08:00"
selesai = "15:00"
alasan = "Ramadan"
""",
        encoding="utf-8",
    )
    off, on = load_overrides(path)
    assert off == {date(2026, 11, 27): "", date(2026, 11, 30): "Hari Jadi Kabupaten"}
    assert on == {date(2026, 12, 24): "Layanan tetap buka pada cuti bersama"}
    assert load_special_hours(path) == [
        SpecialHours(date(2026, 2, 19), date(2026, 3, 17), time(8, 0), time(15, 0), "Ramadan")]
    cal = WorkCalendar.from_overrides("Asia/Jakarta", path)
    # Thursday 26 Nov: Friday 27 and Monday 30 are local days off.
    assert cal.deadline(wib(2026, 11, 26, 10, 0), mb("1 hari")) == wib(2026, 12, 1, 10, 0)
    assert cal.holiday_name(date(2026, 11, 30)) == "Hari Jadi Kabupaten"
    assert cal.is_workday(date(2026, 12, 24)) and cal.holiday_name(date(2026, 12, 24)) is None
    # Ramadan hours: 08.00-15.00.
    assert not cal.is_working_time(wib(2026, 3, 2, 7, 45))
    assert cal.deadline(wib(2026, 3, 2, 14, 30), mb("1 jam")) == wib(2026, 3, 3, 8, 30)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('libur = ["27-11-2026"]', "is not a date"),
        ('libur = ["2026-11-27"]\nmasuk = ["2026-11-27"]', "both libur and masuk"),
        ('cuti = ["2026-11-27"]', "unknown keys"),
        ('libur = [{ tgl = "2026-11-27" }]', "tanggal"),
        ("libur = [2026-11-27T08:00:00]", "date-time"),
    ],
)
def test_override_file_problems(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "libur.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CalendarError, match=problem):
        load_overrides(path)


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(CalendarError, match="cannot read"):
        load_overrides(tmp_path / "none.toml")


# --- properties -----------------------------------------------------------------------------------

RAMADAN_CAL = WorkCalendar(
    "Asia/Jakarta",
    extra_holidays={date(2026, 11, 27)},
    extra_workdays={date(2026, 12, 24)},
    special_hours=[SpecialHours(date(2026, 2, 19), date(2026, 3, 17), time(8, 0), time(15, 0))],
)
CALENDARS = st.sampled_from([CAL, WorkCalendar("Asia/Makassar"), RAMADAN_CAL])
TIMES = st.sampled_from(["15 menit", "1 jam", "3 jam", "1 hari", "2 hari", "0,5 hari", "5 hari", "90 menit"])
MOMENTS = st.datetimes(min_value=datetime(2025, 12, 1), max_value=datetime(2027, 2, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(cal=CALENDARS, text=TIMES, start=MOMENTS)
def test_deadline_is_not_before_start(cal: WorkCalendar, text: str, start: datetime) -> None:
    mutu = mb(text)
    due = cal.deadline(start, mutu)
    assert due >= start
    if mutu.minutes:
        assert cal.working_minutes(start, due) == pytest.approx(mutu.minutes, abs=1e-6)
    assert cal.deadline(start, mutu, factor=2) >= due


@settings(max_examples=300, deadline=None)
@given(cal=CALENDARS, text=TIMES, start=MOMENTS, step=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)))
def test_deadline_is_monotone_in_start(cal: WorkCalendar, text: str, start: datetime, step: timedelta) -> None:
    mutu = mb(text)
    assert cal.deadline(start, mutu) <= cal.deadline(start + step, mutu)


@settings(max_examples=200, deadline=None)
@given(cal=CALENDARS, a=MOMENTS, b=MOMENTS, c=MOMENTS)
def test_working_minutes_add_up(cal: WorkCalendar, a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    assert cal.working_minutes(a, c) == pytest.approx(cal.working_minutes(a, b) + cal.working_minutes(b, c))
    assert cal.working_minutes(c, a) == 0
