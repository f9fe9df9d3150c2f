"""Working time of one agency: which moments count against a Mutu Baku, and when a step falls due.

A working day is a weekday of the office week that is neither a national holiday nor a cuti bersama (both
from the `holidays` package, categories "public" and "government", which for 2026 match SKB 3 Menteri
1497/2/5 of 2025: 17 libur nasional and 8 cuti bersama), nor a local day off from the override file; a day
named under `masuk` in that file is a working day whatever the national calendar says. Working time is
office hours (default 07.30-16.00 local time) on working days. Times are in the agency's time zone (WIB,
WITA or WIT; Indonesia has no daylight saving time).

Deadlines (the clock starts when the letter or step mail is received, even outside office hours; it then
runs from the next opening):

* "N menit" / "N jam": N working minutes of office hours, carried over closings, weekends and holidays.
* "N hari" received during office hours: the same clock time on the N-th following working day (clamped to
  that day's office hours; a deadline falling exactly at an opening is written as the previous working
  day's closing, the same moment in working time).
* "N hari" received outside office hours: the closing time of the N-th working day, counting the day of
  the next opening as the first.
* A fraction of a day ("0,5 hari") is that fraction of a standard office day, in working minutes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays

from subdomaind.workflows.sop import MutuBaku
from subdomaind.workflows.textfiles import TextFileError, read_utf8

WEEKDAYS = (0, 1, 2, 3, 4)  # Monday-Friday
# A year of working days comes well within this many calendar days; bounds every search loop.
_MAX_SEARCH_DAYS = 3660


class CalendarError(ValueError):
    """An override file that cannot be read or a calendar that cannot be built."""


@dataclass(frozen=True)
class SpecialHours:
    """Office hours that differ for a run of days (e.g. 08.00-15.00 in Ramadan), both ends inclusive."""

    first: date
    last: date
    start: time
    end: time
    reason: str = ""


def _parse_clock(value: str | time, what: str) -> time:
    if isinstance(value, time):
        return value
    try:
        hh, mm = str(value).replace(".", ":").split(":")
        return time(int(hh), int(mm))
    except ValueError:
        raise CalendarError(f"{what}: {value!r} is not a clock time like '07:30'") from None


def _dated(values: Iterable[date] | Mapping[date, str] | None) -> dict[date, str]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    return {d: "" for d in values}


class WorkCalendar:
    """Office hours and working days of one agency; every method takes and gives aware datetimes."""

    def __init__(
        self,
        tz: str,
        start: str | time = "07:30",
        end: str | time = "16:00",
        weekdays: Iterable[int] = WEEKDAYS,
        extra_holidays: Iterable[date] | Mapping[date, str] | None = None,
        extra_workdays: Iterable[date] | Mapping[date, str] | None = None,
        special_hours: Iterable[SpecialHours] = (),
        *,
        country: str = "ID",
        categories: tuple[str, ...] = ("public", "government"),
    ) -> None:
        self.tz = ZoneInfo(tz)
        self.start = _parse_clock(start, "start")
        self.end = _parse_clock(end, "end")
        if self.end <= self.start:
            raise CalendarError(f"office hours end {self.end} is not after their start {self.start}")
        self.weekdays = frozenset(weekdays)
        if not self.weekdays or not self.weekdays <= set(range(7)):
            raise CalendarError(f"weekdays {sorted(self.weekdays)} must be a non-empty subset of 0..6")
        self.extra_holidays = _dated(extra_holidays)
        self.extra_workdays = _dated(extra_workdays)
        both = set(self.extra_holidays) & set(self.extra_workdays)
        if both:
            raise CalendarError(f"days both off and working: {', '.join(map(str, sorted(both)))}")
        self.special_hours = tuple(special_hours)
        for sh in self.special_hours:
            if sh.end <= sh.start or sh.last < sh.first:
                raise CalendarError(f"special hours {sh} are empty")
        self._national = holidays.country_holidays(country, categories=categories)
        self.day_minutes = _minutes_between(self.start, self.end)  # a standard office day

    @classmethod
    def from_overrides(
        cls,
        tz: str,
        path: str | Path | None,
        *,
        start: str | time = "07:30",
        end: str | time = "16:00",
        weekdays: Iterable[int] = WEEKDAYS,
    ) -> WorkCalendar:
        """A calendar with the local days off, working days and special hours of an override file."""
        if path is None:
            return cls(tz, start, end, weekdays)
        off, on = load_overrides(path)
        return cls(tz, start, end, weekdays, off, on, load_special_hours(path))

    # --- days -------------------------------------------------------------------------------------

    def holiday_name(self, d: date) -> str | None:
        """Why `d` is not a working day (a holiday's name, the local reason, or the weekend), else None."""
        if d in self.extra_workdays:
            return None
        if d in self.extra_holidays:
            return self.extra_holidays[d] or "libur kantor"
        name = self._national.get(d)
        if name:
            return str(name)
        if d.weekday() not in self.weekdays:
            return "akhir pekan"
        return None

    def is_workday(self, d: date) -> bool:
        if d in self.extra_workdays:
            return True
        if d in self.extra_holidays or d.weekday() not in self.weekdays:
            return False
        return d not in self._national

    def hours(self, d: date) -> tuple[time, time]:
        """Opening and closing time on day `d` (whether or not it is a working day)."""
        for sh in self.special_hours:
            if sh.first <= d <= sh.last:
                return sh.start, sh.end
        return self.start, self.end

    def next_workday(self, d: date) -> date:
        """The first working day strictly after `d`."""
        for i in range(1, _MAX_SEARCH_DAYS):
            cand = d + timedelta(days=i)
            if self.is_workday(cand):
                return cand
        raise CalendarError(f"no working day within {_MAX_SEARCH_DAYS} days after {d}")

    def prev_workday(self, d: date) -> date:
        """The last working day strictly before `d`."""
        for i in range(1, _MAX_SEARCH_DAYS):
            cand = d - timedelta(days=i)
            if self.is_workday(cand):
                return cand
        raise CalendarError(f"no working day within {_MAX_SEARCH_DAYS} days before {d}")

    def opening(self, d: date) -> datetime:
        return datetime.combine(d, self.hours(d)[0], tzinfo=self.tz)

    def closing(self, d: date) -> datetime:
        return datetime.combine(d, self.hours(d)[1], tzinfo=self.tz)

    # --- moments ----------------------------------------------------------------------------------

    def local(self, dt: datetime) -> datetime:
        """`dt` in the agency's time zone; a naive datetime is refused (ambiguous)."""
        if dt.tzinfo is None:
            raise ValueError("naive datetime given to the work calendar; use aware datetimes")
        return dt.astimezone(self.tz)

    def is_working_time(self, dt: datetime) -> bool:
        """Within office hours [opening, closing) of a working day."""
        lt = self.local(dt)
        d = lt.date()
        return self.is_workday(d) and self.opening(d) <= lt < self.closing(d)

    def next_opening(self, dt: datetime) -> datetime:
        """`dt` itself if it is working time, else the next opening of the office (local time)."""
        lt = self.local(dt)
        d = lt.date()
        if self.is_workday(d):
            if lt < self.opening(d):
                return self.opening(d)
            if lt < self.closing(d):
                return lt
        return self.opening(self.next_workday(d))

    def working_minutes(self, a: datetime, b: datetime) -> float:
        """Working minutes in [a, b); 0 when b is not after a."""
        la, lb = self.local(a), self.local(b)
        if lb <= la:
            return 0.0
        total = 0.0
        d = la.date()
        while d <= lb.date():
            if self.is_workday(d):
                lo = max(la, self.opening(d))
                hi = min(lb, self.closing(d))
                if hi > lo:
                    total += (hi - lo).total_seconds() / 60.0
            d += timedelta(days=1)
        return total

    def add_working_minutes(self, start: datetime, minutes: float) -> datetime:
        """The moment `minutes` working minutes after `start` (its next opening if outside hours)."""
        if minutes < 0:
            raise ValueError("minutes must not be negative")
        t = self.next_opening(start)
        left = minutes
        for _ in range(_MAX_SEARCH_DAYS):
            close = self.closing(t.date())
            avail = (close - t).total_seconds() / 60.0
            if left <= avail:
                return t + timedelta(minutes=left)
            left -= avail
            t = self.next_opening(close)
        raise CalendarError(f"{minutes} working minutes after {start} run past the search bound")

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """The deadline `days` working days after `start`, by the rule in this module's docstring."""
        if days < 0:
            raise ValueError("days must not be negative")
        lt = self.local(start)
        if days == 0:
            return self.next_opening(lt)
        d = lt.date()
        if self.is_working_time(lt):
            target = d
            for _ in range(days):
                target = self.next_workday(target)
            opens, closes = self.opening(target), self.closing(target)
            due = datetime.combine(target, lt.time(), tzinfo=self.tz)
            if due <= opens:
                # The same moment in working time as the previous working day's closing; say it that way.
                return self.closing(self.prev_workday(target))
            return min(due, closes)
        first = d if self.is_workday(d) and lt < self.opening(d) else self.next_workday(d)
        target = first
        for _ in range(days - 1):
            target = self.next_workday(target)
        return self.closing(target)

    def deadline(self, start: datetime, mutu: MutuBaku, factor: float = 1.0) -> datetime:
        """When a step opened at `start` with Mutu Baku `mutu` (times `factor`, e.g. 2 to escalate) falls due."""
        if factor <= 0:
            raise ValueError("factor must be positive")
        if mutu.days:
            n = mutu.days * factor
            whole = int(n)
            due = self.add_working_days(start, whole) if whole else self.next_opening(start)
            frac = n - whole
            if frac > 1e-9:
                due = self.add_working_minutes(due, frac * self.day_minutes)
            return due
        return self.add_working_minutes(start, mutu.minutes * factor)

    def mutu_minutes(self, mutu: MutuBaku) -> float:
        """A Mutu Baku in working minutes, a day counted as one standard office day."""
        return mutu.days * self.day_minutes + mutu.minutes


def _minutes_between(a: time, b: time) -> int:
    return (b.hour * 60 + b.minute) - (a.hour * 60 + a.minute)


# --- the local override file ----------------------------------------------------------------------


def _read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(read_utf8(p))
    except TextFileError as exc:
        raise CalendarError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise CalendarError(f"{p}: not valid TOML: {exc}") from None


def _as_date(value: object, where: str) -> date:
    if isinstance(value, datetime):
        raise CalendarError(f"{where}: {value!r} is a date-time; write just the date (YYYY-MM-DD)")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise CalendarError(f"{where}: {value!r} is not a date (YYYY-MM-DD)")


def _date_list(data: dict[str, Any], key: str, where: str) -> dict[date, str]:
    """`key = ["2026-11-27", {tanggal = "2026-11-30", alasan = "..."}]` or a `[key]` table date -> reason."""
    raw = data.get(key, [])
    out: dict[date, str] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            out[_as_date(k, f"{where}: {key}.{k}")] = str(v)
        return out
    if not isinstance(raw, list):
        raise CalendarError(f"{where}: {key} must be a list of dates or a table of date = reason")
    for i, item in enumerate(raw):
        at = f"{where}: {key}[{i}]"
        if isinstance(item, dict):
            unknown = set(item) - {"tanggal", "alasan"}
            if unknown or "tanggal" not in item:
                raise CalendarError(f"{at}: write {{ tanggal = \"YYYY-MM-DD\", alasan = \"...\" }}")
            out[_as_date(item["tanggal"], at)] = str(item.get("alasan", ""))
        else:
            out[_as_date(item, at)] = ""
    return out


def load_overrides(path: str | Path) -> tuple[dict[date, str], dict[date, str]]:
    """The local days off (`libur`) and working days (`masuk`) of an override file, each date -> reason.

    ```toml
    libur = ["2026-11-27", { tanggal = "2026-11-30", alasan = "Hari Jadi Kabupaten" }]
    masuk = [{ tanggal = "2026-12-24", alasan = "Layanan tetap buka pada cuti bersama" }]
    ```
    """
    data = _read_toml(path)
    where = str(path)
    unknown = set(data) - {"libur", "masuk", "jam_khusus"}
    if unknown:
        raise CalendarError(f"{where}: unknown keys {', '.join(sorted(unknown))} (known: libur, masuk, jam_khusus)")
    off = _date_list(data, "libur", where)
    on = _date_list(data, "masuk", where)
    both = set(off) & set(on)
    if both:
        raise CalendarError(f"{where}: dates under both libur and masuk: {', '.join(map(str, sorted(both)))}")
    return off, on


def load_special_hours(path: str | Path) -> list[SpecialHours]:
    """Runs of days with other office hours, from `[[jam_khusus]]` tables of an override file.

    ```toml
    [[jam_khusus]]
    dari = "2026-02-19"
    sampai = "2026-03-19"
    mulai = "08:00"
    selesai = "15:00"
    alasan = "Ramadan"
    ```
    """
    data = _read_toml(path)
    where = str(path)
    out: list[SpecialHours] = []
    raw = data.get("jam_khusus", [])
    if not isinstance(raw, list):
        raise CalendarError(f"{where}: jam_khusus must be an array of tables ([[jam_khusus]])")
    for i, item in enumerate(raw):
        at = f"{where}: jam_khusus[{i}]"
        if not isinstance(item, dict) or not {"dari", "sampai", "mulai", "selesai"} <= set(item):
            raise CalendarError(f"{at}: needs dari, sampai, mulai and selesai")
        sh = SpecialHours(
            first=_as_date(item["dari"], at),
            last=_as_date(item["sampai"], at),
            start=_parse_clock(item["mulai"], at),
            end=_parse_clock(item["selesai"], at),
            reason=str(item.get("alasan", "")),
        )
        if sh.end <= sh.start or sh.last < sh.first:
            raise CalendarError(f"{at}: an empty range of days or hours")
        out.append(sh)
    return out


def calendar_for(agency: Any, base_dir: Path | None = None) -> WorkCalendar:
    """The calendar of an `AgencyConfig`: its time zone, and office hours and override file when configured.

    Reads the optional keys `office_start`, `office_end`, `office_weekdays` and `holiday_overrides` (a path,
    relative to `base_dir` when not absolute); absent keys take the defaults (07.30-16.00, Monday-Friday).
    """
    path = getattr(agency, "holiday_overrides", None)
    if path is not None and base_dir is not None and not Path(path).is_absolute():
        path = base_dir / path
    return WorkCalendar.from_overrides(
        agency.timezone,
        path,
        start=getattr(agency, "office_start", None) or "07:30",
        end=getattr(agency, "office_end", None) or "16:00",
        weekdays=getattr(agency, "office_weekdays", None) or WEEKDAYS,
    )
