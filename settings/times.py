"""Validated time types for settings: durations written as `48h` / `7d` and UTC instants."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_DURATION = re.compile(r"^(?:\d+[wdhms])+$")
_PART = re.compile(r"(\d+)([wdhms])")


def parse_duration(value: Any) -> timedelta:
    """'48h', '7d', '1d12h', '90m', '2w', '30s' -> timedelta. Nothing else: a bare number has no unit."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise ValueError("not a duration: write a number and a unit (s, m, h, d or w), e.g. 48h, 7d or 1d12h")
    return sum((int(n) * _UNITS[u] for n, u in _PART.findall(value.strip())), timedelta())


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, in the largest units that divide it: 2 days -> '2d'."""
    seconds = int(value.total_seconds())
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0m"


def parse_instant(value: Any) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time with a zone ('Z' or an offset) -> aware UTC datetime.

    A date-time without a zone is refused: whether 09:00 means UTC or the runner's local time would
    decide when mail starts being signed with another key.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                parsed = datetime.fromisoformat(text).replace(tzinfo=UTC)
            else:
                parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("not an ISO 8601 date or date-time, e.g. 2026-05-04 or 2026-05-04T09:00:00Z") from None
    else:
        raise ValueError("not an ISO 8601 date or date-time, e.g. 2026-05-04 or 2026-05-04T09:00:00Z")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("a date-time needs its zone: add Z (UTC) or an offset such as +02:00")
    return parsed.astimezone(UTC)


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Instant = Annotated[datetime, BeforeValidator(parse_instant), PlainSerializer(lambda v: v.isoformat(), return_type=str)]
