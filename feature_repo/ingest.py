"""`qanchor data import`: validate raw event/profile tables and turn them into Feast sources.

Input (the bring-your-own-data schema, see docs/data.md): a long event table
(user_id, event_time, modality, text, <numeric fields>) and a profile table (user_id,
[updated_at], <profile fields>), each a parquet file or a directory of them.

Output: one parquet source per modality holding, for every user and snapshot time `s`, the
user's last `max_events` events with `s - window_days <= event_time < s` as list columns; one
history source per modality aggregating EVERY event of that window per event kind (counts over
the spec's sub-windows, first/last seen, numeric sums), so what falls off the end of the event
sequence still reaches the model and the baselines; the profile source and a manifest. Several snapshots make point-in-time joins
meaningful: a training row stamped `t` gets the latest snapshot `s <= t`, never later events.

Memory stays bounded: events are validated batch by batch and hash-partitioned by user into
buckets on disk, then each bucket is turned into snapshots on its own. Nothing is written to
`out` unless every batch passes validation; the result is swapped in atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from feature_repo.layout import DATA_MANIFEST
from feature_repo.objects import PROFILE_VIEW
from monitoring.validation import (
    DataValidationError,
    ValidationReport,
    profile_counts,
    profile_expectations,
    validate_events,
    validate_frame,
)
from qanchor.event_window import EventWindow, SnapshotSchedule
from qanchor.features import (
    DIGITS_PATTERN,
    INT,
    LIST_OF_FLOATS,
    LIST_OF_INTS,
    LIST_OF_STRINGS,
    count_field,
    history_columns,
    history_view_name,
)
from qanchor.modality_spec import EventModality, ModalitySpec
from qanchor.user_files import UserFileError, require_parquet_files


@dataclass(frozen=True)
class ImportConfig:
    events: Path
    profiles: Path
    out: Path
    spec: ModalitySpec
    as_of: datetime
    snapshots: int = 2
    snapshot_every_days: int = 30
    batch_rows: int = 1_000_000
    rows_per_bucket: int = 4_000_000

    def __post_init__(self) -> None:
        if self.spec.profile is None:
            raise ValueError("the modality spec needs a profile modality to import a profile table")
        self.schedule  # noqa: B018 - validates as_of and the snapshot counts up front

    @property
    def schedule(self) -> SnapshotSchedule:
        return SnapshotSchedule(self.as_of, self.snapshots, self.snapshot_every_days)

    @property
    def snapshot_times(self) -> list[pd.Timestamp]:
        """Oldest first; the newest is `as_of`."""
        return self.schedule.times

    @property
    def window(self) -> EventWindow:
        """The events any snapshot can use; older ones are skipped and counted, newer ones fail."""
        return self.schedule.event_window(self.spec.window_days)


@dataclass
class ImportSummary:
    out: Path
    users: int
    events: int
    rows_per_view: dict[str, int]
    feature_version: str
    reports: list[ValidationReport] = field(default_factory=list)


def _dataset(path: Path, what: str) -> ds.Dataset:
    require_parquet_files(path, f"{what} path")
    try:
        return ds.dataset(str(path), format="parquet")
    except (pa.ArrowInvalid, OSError) as err:
        raise UserFileError(f"{what} at {path} is not readable parquet: {err}") from None


def _normalise_times(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Naive timestamps are taken as UTC; aware ones are converted to UTC. Others stay for GE to flag."""
    if column in frame and pd.api.types.is_datetime64_any_dtype(frame[column]):
        values = frame[column]
        frame[column] = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return frame


def _bucket_of(user_ids: pd.Series, buckets: int) -> np.ndarray:
    return (pd.util.hash_array(user_ids.astype(str).to_numpy(dtype=object)) % np.uint64(buckets)).astype(np.int64)


def _feature_version(config: ImportConfig, inputs: list[str]) -> str:
    h = hashlib.sha256()
    h.update(config.spec.model_dump_json().encode())
    h.update(json.dumps([t.isoformat() for t in config.snapshot_times]).encode())
    for path in sorted(inputs):
        p = Path(path)
        h.update(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    return "fv-" + h.hexdigest()[:12]


def _validate_profiles(config: ImportConfig) -> tuple[pd.DataFrame, ValidationReport]:
    dataset = _dataset(config.profiles, "profiles")
    frame = _normalise_times(dataset.to_table().to_pandas(), "updated_at")
    report = validate_frame(frame, profile_expectations(config.spec, frame, config.as_of), "profiles")
    report.counts.update(profile_counts(config.spec, frame))
    return frame, report


def _stage_event_buckets(config: ImportConfig, staging: Path, progress: bool) -> tuple[ValidationReport, int, int, list[str]]:
    """Validate every batch; while all pass, spill rows into per-bucket parquet files."""
    dataset = _dataset(config.events, "events")
    total = dataset.count_rows()
    buckets = max(1, math.ceil(total / config.rows_per_bucket))
    report = ValidationReport(table="events")
    frames = (b.to_pandas() for b in dataset.to_batches(batch_size=config.batch_rows)) if total \
        else iter([dataset.schema.empty_table().to_pandas()])
    window = config.window
    with tqdm(total=total, unit="row", desc="validate events", disable=not progress) as bar:
        for index, frame in enumerate(frames):
            frame = _normalise_times(frame, "event_time")
            bar.update(len(frame))
            batch_report, kept = validate_events(frame, config.spec, window)
            report.merge(batch_report)
            if report.success:
                keep = ["user_id", "event_time", "modality", "text", *config.spec.numeric_columns]
                frame = kept[[c for c in keep if c in kept.columns]]
                for b, part in frame.groupby(_bucket_of(frame["user_id"], buckets)):
                    target = staging / "buckets" / f"b{b:05d}"
                    target.mkdir(parents=True, exist_ok=True)
                    part.to_parquet(target / f"part-{index:05d}.parquet", index=False)
    report.require_rows_in_window()
    return report, total - report.skipped, buckets, list(dataset.files)


def _list_array(values: pd.Series | np.ndarray, counts: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values), type=value_type))


def _snapshot_schema(modality: EventModality) -> pa.Schema:
    fields = [("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
              ("texts", pa.list_(pa.string())), ("event_times", pa.list_(pa.int64()))]
    fields += [(name, pa.list_(pa.float64())) for name in modality.numeric_names]
    fields += [("n_events", pa.int64())]
    return pa.schema(fields)


_EPOCH = pd.Timestamp(0, tz="UTC")


def build_snapshots(events: pd.DataFrame, users: np.ndarray, modality: EventModality,
                    snapshot: pd.Timestamp) -> pa.Table:
    """One row per user in `users` (sorted): the last `max_events` events before `snapshot`."""
    window = events[(events["modality"] == modality.name)
                    & (events["event_time"] < snapshot)
                    & (events["event_time"] >= snapshot - pd.Timedelta(days=modality.window_days))]
    window = window.sort_values(["user_id", "event_time"], kind="stable")
    window = window[window.groupby("user_id").cumcount(ascending=False) < modality.max_events]
    codes = np.searchsorted(users, window["user_id"].to_numpy())
    counts = np.bincount(codes, minlength=len(users))
    seconds = ((window["event_time"] - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    columns = {
        "user_id": pa.array(users, type=pa.string()),
        "event_timestamp": pa.array(np.full(len(users), snapshot.value // 1000), type=pa.timestamp("us", tz="UTC")),
        "texts": _list_array(window["text"].to_numpy(dtype=object), counts, pa.string()),
        "event_times": _list_array(seconds.astype(np.int64), counts, pa.int64()),
    }
    for name in modality.numeric_names:
        columns[name] = _list_array(window[name].to_numpy(dtype=np.float64), counts, pa.float64())
    columns["n_events"] = pa.array(counts.astype(np.int64))
    return pa.table(columns, schema=_snapshot_schema(modality))


_ARROW_TYPES = {LIST_OF_STRINGS: pa.list_(pa.string()), LIST_OF_INTS: pa.list_(pa.int64()),
                LIST_OF_FLOATS: pa.list_(pa.float64()), INT: pa.int64()}


def _history_schema(spec: ModalitySpec, modality: EventModality) -> pa.Schema:
    keys = [("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
    return pa.schema(keys + [(name, _ARROW_TYPES[kind]) for name, kind in history_columns(spec, modality)])


def build_history(events: pd.DataFrame, users: np.ndarray, spec: ModalitySpec, modality: EventModality,
                  snapshot: pd.Timestamp) -> pa.Table:
    """One row per user in `users` (sorted): every event of the window aggregated per kind.

    Kinds are digit-masked texts (`qanchor.features.text_key`); each user keeps its
    `history_kinds` most frequent kinds over the whole window (ties: the most recent first).
    """
    windows = spec.history_windows(modality)
    window = events[(events["modality"] == modality.name)
                    & (events["event_time"] < snapshot)
                    & (events["event_time"] >= snapshot - pd.Timedelta(days=modality.window_days))]
    seconds = ((window["event_time"] - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    age = (snapshot.value // 10**9) - seconds
    frame = pd.DataFrame({
        "user_id": window["user_id"].to_numpy(dtype=object),
        "kinds": window["text"].str.strip().str.lower().str.replace(DIGITS_PATTERN, "#", regex=True).to_numpy(dtype=object),
        "t": seconds,
        **{count_field(d): (age < d * 86_400).astype(np.int64) for d in windows},
        **{f"{name}_sum": window[name].to_numpy(dtype=np.float64) for name in modality.numeric_names},
    })
    totals = frame.groupby("user_id").size()
    grouped = frame.groupby(["user_id", "kinds"], sort=False).agg(
        last_seen=("t", "max"), first_seen=("t", "min"),
        **{c: (c, "sum") for c in frame.columns if c.startswith("count_") or c.endswith("_sum")}).reset_index()
    grouped = grouped.sort_values(["user_id", count_field(windows[-1]), "last_seen", "kinds"],
                                  ascending=[True, False, False, True], kind="stable")
    grouped = grouped[grouped.groupby("user_id").cumcount() < modality.history_kinds]
    counts = np.bincount(np.searchsorted(users, grouped["user_id"].to_numpy()), minlength=len(users))
    schema = _history_schema(spec, modality)
    columns = {
        "user_id": pa.array(users, type=pa.string()),
        "event_timestamp": pa.array(np.full(len(users), snapshot.value // 1000), type=pa.timestamp("us", tz="UTC")),
        "n_events": pa.array(totals.reindex(users, fill_value=0).to_numpy(dtype=np.int64)),
    }
    for name, _ in history_columns(spec, modality):
        if name not in columns:
            value_type = schema.field(name).type.value_type
            columns[name] = _list_array(grouped[name].to_numpy(dtype=value_type.to_pandas_dtype()), counts, value_type)
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def _profile_table(profiles: pd.DataFrame, config: ImportConfig) -> pa.Table:
    """The profile source: one row per profile user; a missing (nullable) field is a null, never NaN or "None"."""
    stamp = profiles["updated_at"] if "updated_at" in profiles else pd.Series(config.window.start, index=profiles.index)
    columns = {"user_id": pa.array(profiles["user_id"].astype(str), type=pa.string()),
               "event_timestamp": pa.array(pd.to_datetime(stamp, utc=True), type=pa.timestamp("us", tz="UTC"))}
    types = {"int": pa.int64(), "float": pa.float64(), "category": pa.string()}
    for f in config.spec.profile.fields:
        values = profiles[f.name]
        if f.type == "category":
            values = values.map(lambda v: None if pd.isna(v) else str(v))
        columns[f.name] = pa.array(values, type=types[f.type], from_pandas=True)
    return pa.table(columns)


def import_data(config: ImportConfig, overwrite: bool = False, progress: bool = True) -> ImportSummary:
    """Validate, convert and atomically publish feature sources to `config.out`."""
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    profiles, profile_report = _validate_profiles(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        event_report, total, buckets, files = _stage_event_buckets(config, staging, progress)
        reports = [event_report, profile_report]
        if not all(r.success for r in reports):
            raise DataValidationError(reports)
        created = pd.Timestamp.now(tz="UTC")
        rows: dict[str, int] = {}
        profile_buckets = _bucket_of(profiles["user_id"], buckets)
        without_profile = 0
        for b in tqdm(range(buckets), desc="build snapshots", unit="bucket", disable=not progress):
            bucket_dir = staging / "buckets" / f"b{b:05d}"
            events = pd.read_parquet(bucket_dir) if bucket_dir.exists() else pd.DataFrame(
                columns=["user_id", "event_time", "modality", "text", *config.spec.numeric_columns])
            events = _normalise_times(events, "event_time")
            with_profile = profiles.loc[profile_buckets == b, "user_id"].astype(str).to_numpy()
            users = np.union1d(with_profile, events["user_id"].astype(str).unique()).astype(object)
            without_profile += len(users) - len(with_profile)
            for modality in config.spec.event_modalities:
                tables = {modality.name: [build_snapshots(events, users, modality, s) for s in config.snapshot_times]}
                if modality.history_kinds:
                    tables[history_view_name(modality.name)] = [
                        build_history(events, users, config.spec, modality, s) for s in config.snapshot_times]
                for name, parts in tables.items():
                    table = pa.concat_tables(parts)
                    target = staging / "features" / name
                    target.mkdir(parents=True, exist_ok=True)
                    pq.write_table(table, target / f"part-{b:05d}.parquet", compression="zstd")
                    rows[name] = rows.get(name, 0) + table.num_rows
            shutil.rmtree(bucket_dir, ignore_errors=True)
        (staging / "features" / PROFILE_VIEW).mkdir(parents=True)
        pq.write_table(_profile_table(profiles, config), staging / "features" / PROFILE_VIEW / "part-00000.parquet")
        rows[PROFILE_VIEW] = len(profiles)
        profile_report.counts["users_without_profile_row"] = without_profile
        version = _feature_version(config, files + list(_dataset(config.profiles, "profiles").files))
        manifest = {
            "spec": json.loads(config.spec.model_dump_json()),
            "as_of": pd.Timestamp(config.as_of).isoformat(),
            "snapshot_days": [config.snapshot_every_days * k for k in reversed(range(config.snapshots))],
            "snapshot_times": [t.isoformat() for t in config.snapshot_times],
            "feature_version": version,
            "created": created.isoformat(),
            "rows": rows,
            "events": total,
            "users": int(profiles["user_id"].nunique()) + without_profile,
            "validation": [r.to_dict() for r in reports],
        }
        (staging / "features" / DATA_MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_in(staging / "features", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportSummary(out=out, users=manifest["users"], events=total, rows_per_view=rows,
                         feature_version=version, reports=reports)


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` with `new` so readers see either the old or the new sources, never a mix."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def default_as_of() -> datetime:
    """Start of the current UTC day: events up to yesterday midnight are complete."""
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
