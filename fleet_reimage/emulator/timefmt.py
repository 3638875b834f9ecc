"""Batch's time formats, on integer ticks (100 ns since the Unix epoch, as .NET counts).

Integers keep a time exact through a round trip: a client that reads
``2026-11-20T10:00:00.1234567Z`` and filters ``lastBootTime gt`` on it must not match the
same node again, which float epoch seconds cannot promise at 100 ns resolution.
"""

from __future__ import annotations

import calendar
import re
import time

TICKS_PER_SECOND = 10_000_000

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?",
    re.IGNORECASE,
)


def ticks_from_seconds(seconds: float) -> int:
    return round(seconds * TICKS_PER_SECOND)


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_DAY_SECONDS = 86_400
_dates: dict[int, str] = {}  # day number -> "yyyy-mm-dd": a list of nodes has few distinct days


def _date_time(ticks: int) -> tuple[str, int]:
    # Hot in list pages (several timestamps per node): format the date once per day and
    # the time of day from a table, rather than time.gmtime plus six format specs each time.
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    day, rest = divmod(seconds, _DAY_SECONDS)
    date = _dates.get(day)
    if date is None:
        t = time.gmtime(day * _DAY_SECONDS)
        date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        if len(_dates) >= 4096:
            _dates.clear()
        _dates[day] = date
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    two = _TWO_DIGITS
    return f"{date}T{two[hour]}:{two[minute]}:{two[second]}", fraction


def iso(ticks: int) -> str:
    """Resource timestamps the way the service writes them: trailing zeros trimmed."""
    text, fraction = _date_time(ticks)
    if fraction:
        text += "." + f"{fraction:07d}".rstrip("0")
    return text + "Z"


def iso7(ticks: int) -> str:
    """Error-message timestamps: always seven fractional digits."""
    text, fraction = _date_time(ticks)
    return f"{text}.{fraction:07d}Z"


def compact(ticks: int) -> str:
    """``yyyymmddThhmmssZ`` lower-cased, as in cloud-service node ids."""
    t = time.gmtime(ticks // TICKS_PER_SECOND)
    return (
        f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}t{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}z"
    )


def parse_iso(text: str) -> int:
    """Ticks in an ISO-8601 time; naive times are UTC. ValueError when not a time."""
    match = _ISO.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO-8601 time: {text!r}")
    year, month, day, hour, minute = (int(match.group(i)) for i in range(1, 6))
    second = int(match.group(6) or 0)
    if not (
        1 <= month <= 12
        and 1 <= day <= calendar.monthrange(year, month)[1]
        and hour <= 23
        and minute <= 59
        and second <= 59
    ):
        raise ValueError(f"not a valid time: {text!r}")
    digits = (match.group(7) or "")[:7]
    fraction = int(digits.ljust(7, "0")) if digits else 0
    offset = 0
    zone = match.group(8)
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * TICKS_PER_SECOND + fraction


# .NET DateTime ticks at the Unix epoch: Batch ETags are the hex of lastModified in .NET
# ticks ("0x8D413091E739A56" is 2016-11-22T18:55:25.2608598Z).
_DOTNET_EPOCH_TICKS = 621_355_968_000_000_000


def etag_of(ticks: int) -> str:
    return f"0x{ticks + _DOTNET_EPOCH_TICKS:X}"


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(ticks: int) -> str:
    """RFC 1123 (``Last-Modified``): whole seconds, GMT."""
    t = time.gmtime(ticks // TICKS_PER_SECOND)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_DURATION = re.compile(
    r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE
)


def parse_iso_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT15M`` or ``P1DT2H``; ValueError if not."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()) or text.strip().upper().endswith("T"):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    days, hours, minutes, seconds = match.groups()
    return (
        int(days or 0) * 86_400
        + int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + float(seconds or 0)
    )


def iso_duration(seconds: float) -> str:
    """``PT15M`` for 900 seconds: the form the service writes (hours, minutes, seconds)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    fraction = seconds - whole
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs or fraction or text == "PT":
        text += f"{secs + fraction:g}S"
    return text
