"""Times given on the command line: ISO 8601, a value without an offset is UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_utc(value: str) -> datetime:
    """``value`` (a date, a date-time, with or without an offset) as an aware UTC datetime.

    A value without an offset is UTC, as ``--since``'s help and the HTTP API say; a plain
    date is midnight UTC. Raises ``ValueError`` for anything else.
    """
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
