"""Times as operators type them and as tools write them: ISO 8601, UTC unless a zone is given."""

from __future__ import annotations

import datetime as dt


def parse_utc(value: str) -> dt.datetime:
    """An ISO 8601 time; one without a zone is taken as UTC. Raises ValueError naming the value."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-21T18:30:00+00:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
