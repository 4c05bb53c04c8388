"""What the drift monitor compares: one snapshot of the feature store, reduced to drift features.

A check reads the feature views' offline parquet sources (what `qanchor data import` wrote and
Feast serves) at one snapshot time and turns each view into the columns a person would watch:

- per event modality, one row per user: `n_events` (the model's sequence length), `events_7d`
  and `events_<recent>d` (window-long counts from the history view, so a modality that goes
  silent shows even when old events still fill the sequence);
- per event modality with numeric fields, one row per event of the last `recent_days`
  (`amount` of recent payments): recent events, because a 90-day window dilutes a change
  that began last week;
- per event modality, the weighted counts of event kinds in the last `recent_days`
  (categorical: kind shares, unseen kinds);
- the profile view's fields for every user (numeric columns and categorical counts).

Reads stream record batches of the columns it needs, so a million users' list columns never
sit in memory as Python objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from feature_repo.layout import PROFILE_VIEW
from qanchor.features import count_field, history_view_name
from qanchor.modality_spec import EventModality, ModalitySpec
from qanchor.user_files import UserFileError

#: Rows per record batch read from a view's parquet source.
BATCH_ROWS = 65_536
SECONDS_PER_DAY = 86_400
#: The category a missing categorical profile value is counted as.
NULL_CATEGORY = "<null>"


class MonitorInputError(UserFileError):
    """The snapshot cannot be checked (no rows, a changed schema, an all-null column): nothing is written."""


def user_table(modality: str) -> str:
    return modality


def recent_events_table(modality: str) -> str:
    return f"{modality}_recent_events"


def kinds_feature(modality: str) -> str:
    return f"{modality}.kind"


@dataclass
class SnapshotProfile:
    """One or more snapshots reduced to drift features (see the module docstring)."""

    snapshots: list[str]
    #: GE table name -> frame of numeric drift features.
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: categorical feature ("bill.kind", "profile.gender") -> category -> weight.
    categorical: dict[str, Counter] = field(default_factory=dict)
    #: view folder -> column -> arrow type, as read.
    schema: dict[str, dict[str, str]] = field(default_factory=dict)
    #: view folder -> rows at the snapshot(s).
    rows: dict[str, int] = field(default_factory=dict)
    #: users of the first event view (who a check embeds a sample of).
    users: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))

    def merge(self, other: SnapshotProfile) -> SnapshotProfile:
        """Pool two snapshots (the reference pools every snapshot a backbone trained on)."""
        tables = {name: pd.concat([self.tables[name], other.tables[name]], ignore_index=True) for name in self.tables}
        categorical = {name: self.categorical[name] + other.categorical.get(name, Counter()) for name in self.categorical}
        rows = {view: self.rows[view] + other.rows.get(view, 0) for view in self.rows}
        return SnapshotProfile(self.snapshots + other.snapshots, tables, categorical, self.schema, rows,
                               np.concatenate([self.users, other.users]))

    def numeric_features(self) -> dict[str, tuple[str, str]]:
        """feature name ("bill.amount") -> (table, column), numeric columns only."""
        out = {}
        for table, frame in self.tables.items():
            prefix = table.removesuffix("_recent_events")
            for column in frame.select_dtypes("number").columns:
                out[f"{prefix}.{column}"] = (table, column)
        return out


def snapshot_times(data: Path, spec: ModalitySpec) -> list[pd.Timestamp]:
    """Distinct snapshot times of the first event view, oldest first."""
    first = spec.event_modalities[0].name
    stamps = _dataset(data, first).to_table(columns=["event_timestamp"]).column("event_timestamp")
    return sorted(pd.Timestamp(t) for t in pc.unique(stamps).to_pylist())


def snapshot_at(data: Path, spec: ModalitySpec, day: pd.Timestamp) -> pd.Timestamp:
    """The snapshot stamped on `day` (UTC), or a MonitorInputError listing the snapshots there are."""
    times = snapshot_times(data, spec)
    matches = [t for t in times if t.normalize() == day.normalize()]
    if not matches:
        listed = ", ".join(t.strftime("%Y-%m-%d") for t in times) or "none"
        raise MonitorInputError(f"no snapshot on {day:%Y-%m-%d} in {data} (its snapshots: {listed}); "
                                "import that day's data first (`qanchor data import --as-of`)")
    return matches[-1]


def read_snapshot(data: Path, spec: ModalitySpec, snapshot: pd.Timestamp, recent_days: int = 30) -> SnapshotProfile:
    """Every view of the imported-feature folder `data` at `snapshot`, reduced to drift features."""
    profile = SnapshotProfile(snapshots=[snapshot.isoformat()])
    for modality in spec.event_modalities:
        _read_modality(profile, data, spec, modality, snapshot, recent_days)
    if spec.profile is not None:
        _read_profile(profile, data, spec, snapshot)
    return profile


def _dataset(data: Path, view: str) -> ds.Dataset:
    folder = Path(data) / view
    if not folder.is_dir():
        raise MonitorInputError(f"{folder}: feature view source missing; was it imported with this spec?")
    return ds.dataset(folder, format="parquet")


def _batches(data: Path, view: str, columns: list[str], condition: pc.Expression) -> tuple[list[pa.RecordBatch], dict]:
    dataset = _dataset(data, view)
    schema = {f.name: str(f.type) for f in dataset.schema}
    missing = [c for c in columns if c not in schema]
    if missing:
        raise MonitorInputError(f"{data / view}: columns {missing} missing (it has {sorted(schema)}); "
                                "the source's schema changed since import")
    batches = [b for b in dataset.to_batches(columns=columns, filter=condition, batch_size=BATCH_ROWS) if b.num_rows]
    return batches, schema


def _flat(batch: pa.RecordBatch, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column's flattened values and each value's row index."""
    array = batch.column(column)
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return values, pc.list_parent_indices(array).to_numpy()


def _row_sums(batch: pa.RecordBatch, column: str) -> np.ndarray:
    values, parents = _flat(batch, column)
    return np.bincount(parents, weights=values.astype(np.float64), minlength=batch.num_rows)


def _require_rows(batches: list, data: Path, view: str, snapshot: pd.Timestamp) -> None:
    if not batches:
        raise MonitorInputError(f"{data / view}: no rows at snapshot {snapshot.isoformat()} (an empty day)")


def _read_modality(profile: SnapshotProfile, data: Path, spec: ModalitySpec, modality: EventModality,
                   snapshot: pd.Timestamp, recent_days: int) -> None:
    at = pc.field("event_timestamp") == pa.scalar(snapshot.to_pydatetime(), type=pa.timestamp("us", tz="UTC"))
    numeric = list(modality.numeric_names)
    events, schema = _batches(data, modality.name, ["user_id", "event_times", *numeric], at)
    _require_rows(events, data, modality.name, snapshot)
    profile.schema[modality.name] = schema
    profile.rows[modality.name] = sum(b.num_rows for b in events)
    if not len(profile.users):
        profile.users = np.concatenate([b.column("user_id").to_numpy(zero_copy_only=False) for b in events])
    since = snapshot.value // 10**9 - recent_days * SECONDS_PER_DAY
    recent = {name: [] for name in numeric}
    for batch in events:
        times, _ = _flat(batch, "event_times")
        keep = times >= since
        for name in numeric:
            values, _ = _flat(batch, name)
            recent[name].append(values[keep].astype(np.float64))
    for name, parts in recent.items():
        values = np.concatenate(parts)
        if len(values) and np.isnan(values).all():
            raise MonitorInputError(f"{data / modality.name}: {name!r} is null in all {len(values)} recent events at "
                                    f"{snapshot:%Y-%m-%d}; the export lost that column")
    if numeric:
        profile.tables[recent_events_table(modality.name)] = pd.DataFrame(
            {name: np.concatenate(parts) for name, parts in recent.items()})

    windows = spec.history_windows(modality)
    if recent_days not in windows:
        raise MonitorInputError(f"recent_days={recent_days} is not one of {modality.name}'s history windows {list(windows)}")
    short = count_field(windows[0])
    counted = dict.fromkeys([short, count_field(recent_days)])
    view = history_view_name(modality.name)
    history, history_schema = _batches(data, view, ["user_id", "kinds", *counted, "n_events"], at)
    _require_rows(history, data, view, snapshot)
    profile.schema[view] = history_schema
    profile.rows[view] = sum(b.num_rows for b in history)
    columns: dict[str, list[np.ndarray]] = {"n_events": [], **{f"events_{c.removeprefix('count_')}": [] for c in counted}}
    kinds: Counter = Counter()
    recent_count = count_field(recent_days)
    for batch in history:
        columns["n_events"].append(batch.column("n_events").to_numpy(zero_copy_only=False).astype(np.float64))
        for c in counted:
            columns[f"events_{c.removeprefix('count_')}"].append(_row_sums(batch, c))
        weights = pc.list_flatten(batch.column(recent_count))
        table = pa.table({"kind": pc.list_flatten(batch.column("kinds")), "weight": weights})
        grouped = table.filter(pc.greater(table["weight"], 0)).group_by("kind").aggregate([("weight", "sum")])
        kinds.update(dict(zip(grouped["kind"].to_pylist(), grouped["weight_sum"].to_pylist())))
    profile.tables[user_table(modality.name)] = pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    profile.categorical[kinds_feature(modality.name)] = kinds


def _read_profile(profile: SnapshotProfile, data: Path, spec: ModalitySpec, snapshot: pd.Timestamp) -> None:
    fields = spec.profile.fields
    until = pc.field("event_timestamp") <= pa.scalar(snapshot.to_pydatetime(), type=pa.timestamp("us", tz="UTC"))
    batches, schema = _batches(data, PROFILE_VIEW, ["user_id", "event_timestamp", *(f.name for f in fields)], until)
    _require_rows(batches, data, PROFILE_VIEW, snapshot)
    frame = pa.Table.from_batches(batches).to_pandas()
    frame = frame.sort_values("event_timestamp", kind="stable").drop_duplicates("user_id", keep="last")
    profile.schema[PROFILE_VIEW] = schema
    profile.rows[PROFILE_VIEW] = len(frame)
    columns = {}
    for f in fields:
        if frame[f.name].isna().all():
            raise MonitorInputError(f"{data / PROFILE_VIEW}: profile field {f.name!r} is null for all {len(frame)} "
                                    f"users at {snapshot:%Y-%m-%d}; the export lost that column")
        if f.type == "category":
            values = frame[f.name].fillna(NULL_CATEGORY).astype(str)
            profile.categorical[f"profile.{f.name}"] = Counter(values.value_counts().to_dict())
            columns[f.name] = values.to_numpy()
        else:
            columns[f.name] = frame[f.name].astype(np.float64).to_numpy()
    profile.tables[PROFILE_VIEW] = pd.DataFrame(columns)
