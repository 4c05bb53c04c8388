"""Which event times an import accepts: one rule shared by `qanchor data validate` and `import`.

An import publishes `snapshots` point-in-time snapshots, `every_days` apart, the newest at
`as_of`; each snapshot sees the `window_days` before it. So the accepted window is
`[oldest snapshot - window_days, as_of)`. Events older than that can reach no snapshot: a
real export holds a year or more, so they are skipped and counted rather than failing the
batch. Events at or after `as_of` would put the future into a training row and fail it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd


@dataclass(frozen=True)
class EventWindow:
    """Accepted event times `[start, end)`, both tz-aware UTC."""

    start: pd.Timestamp
    end: pd.Timestamp

    def stale(self, times: pd.Series) -> pd.Series:
        """True where an event is older than the window (to be skipped); nulls are not stale."""
        if not pd.api.types.is_datetime64_any_dtype(times):
            return pd.Series(False, index=times.index)
        aware = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        return (aware < self.start).fillna(False).astype(bool)

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


@dataclass(frozen=True)
class SnapshotSchedule:
    """The snapshot times of an import: `snapshots` of them, `every_days` apart, the newest at `as_of`."""

    as_of: datetime
    snapshots: int = 2
    every_days: int = 30

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        if self.snapshots < 1 or self.every_days < 1:
            raise ValueError("snapshots and snapshot_every_days must be >= 1")

    @property
    def times(self) -> list[pd.Timestamp]:
        """Oldest first; the newest is `as_of`."""
        end = pd.Timestamp(self.as_of).tz_convert("UTC")
        return [end - pd.Timedelta(days=k * self.every_days) for k in reversed(range(self.snapshots))]

    def event_window(self, window_days: int) -> EventWindow:
        """The events any snapshot can use, given how many days each snapshot looks back."""
        times = self.times
        return EventWindow(start=times[0] - pd.Timedelta(days=window_days), end=times[-1])
