"""Timestamps as AWS writes them in events: ISO-8601, UTC, millisecond precision, a trailing Z."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
