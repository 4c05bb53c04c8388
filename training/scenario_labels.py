"""Validation of a business unit's scenario labels before any tuning or registration.

A labels table has `user_id`, `label` (binary 0/1, or class ids: integers or strings) and an
optional `label_time` (UTC; default: the feature data's `as_of`). Every problem is collected
and reported at once, so a business unit fixes its file in one round trip:

- missing columns, null or duplicate users, null labels;
- fewer than `min_per_class` users in some class (the positives, for a binary task);
- users the feature store does not know (imported with neither events nor a profile row);
- a label time with no usable features: before the oldest snapshot, or later than the
  newest snapshot plus the feature views' TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

REQUIRED = ("user_id", "label")


class ScenarioLabelError(ValueError):
    """Labels that cannot be used; `problems` lists every reason, nothing has been registered."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("scenario labels rejected; nothing was registered:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ScenarioLabels:
    """Validated labels: contiguous class indices plus the mapping back to the caller's ids."""

    frame: pd.DataFrame            # user_id, label_time, class_index
    classes: tuple[str, ...]       # class id (as text) for each index

    @property
    def is_binary(self) -> bool:
        return len(self.classes) == 2


def _sample(values: pd.Series, n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values.head(n).tolist())
    return shown + (f" (+{len(values) - n} more)" if len(values) > n else "")


def validate_labels(labels: pd.DataFrame, known_users: set[str], oldest_snapshot: pd.Timestamp,
                    as_of: pd.Timestamp, ttl: timedelta, min_per_class: int = 20) -> ScenarioLabels:
    """Check `labels` against the feature store's users and time range; raise with every problem."""
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in labels.columns]
    if missing:
        raise ScenarioLabelError([f"missing column(s) {missing}; a labels table needs {list(REQUIRED)}"])
    if labels.empty:
        raise ScenarioLabelError(["the labels table is empty"])
    frame = labels.copy()
    if frame["user_id"].isna().any():
        problems.append(f"{int(frame['user_id'].isna().sum())} rows have no user_id")
    frame["user_id"] = frame["user_id"].astype(str)
    dupes = frame.loc[frame["user_id"].duplicated(keep=False), "user_id"].drop_duplicates()
    if len(dupes):
        problems.append(f"{len(dupes)} users appear more than once: {_sample(dupes)}")
    if frame["label"].isna().any():
        problems.append(f"{int(frame['label'].isna().sum())} rows have no label")
    if pd.api.types.is_float_dtype(frame["label"]):
        fractional = frame["label"].dropna() % 1 != 0
        if fractional.any():
            problems.append(f"labels must be class ids; {int(fractional.sum())} are fractional: "
                            f"{_sample(frame['label'].dropna()[fractional])}")
    ids = frame["label"].dropna()
    ids = ids.astype("int64").astype(str) if pd.api.types.is_numeric_dtype(ids) else ids.astype(str)
    counts = ids.value_counts()
    if len(counts) < 2:
        problems.append(f"labels need at least 2 classes, found {sorted(counts.index.tolist())}")
    small = counts[counts < min_per_class]
    if len(counts) >= 2 and len(small):
        detail = ", ".join(f"class {k!r}: {v}" for k, v in small.sort_index().items())
        problems.append(f"too few users per class (need >= {min_per_class}): {detail}")
    unknown = frame.loc[~frame["user_id"].isin(known_users), "user_id"]
    if len(unknown):
        problems.append(f"{len(unknown)} users are unknown to the feature store: {_sample(unknown)}")
    if "label_time" in frame.columns:
        times = pd.to_datetime(frame["label_time"], utc=True, errors="coerce")
        if times.isna().any():
            problems.append(f"{int(times.isna().sum())} label_time values are missing or not timestamps")
        latest = as_of + pd.Timedelta(ttl)
        outside = times.notna() & ((times < oldest_snapshot) | (times > latest))
        if outside.any():
            problems.append(f"{int(outside.sum())} label_time values fall outside the feature window "
                            f"[{oldest_snapshot.isoformat()}, {latest.isoformat()}]: {_sample(times[outside])}")
    else:
        times = pd.Series(as_of, index=frame.index)
    if problems:
        raise ScenarioLabelError(problems)
    classes = tuple(sorted(counts.index.tolist(), key=lambda c: (len(c), c)))
    index = {c: i for i, c in enumerate(classes)}
    return ScenarioLabels(
        frame=pd.DataFrame({"user_id": frame["user_id"], "label_time": times, "class_index": ids.map(index)})
        .reset_index(drop=True),
        classes=classes,
    )
