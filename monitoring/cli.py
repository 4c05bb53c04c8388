"""`qanchor data validate`: run the input suites without importing anything."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click
import pandas as pd

from monitoring.validation import profile_counts, profile_expectations, validate_events, validate_frame
from qanchor.event_window import SnapshotSchedule
from qanchor.modality_spec import ModalitySpecError, load_spec
from qanchor.user_files import read_parquet_frame


@click.command("validate")
@click.option("--events", type=click.Path(exists=True, path_type=Path), default=None, help="Event parquet file or directory.")
@click.option("--profiles", type=click.Path(exists=True, path_type=Path), default=None, help="Profile parquet file or directory.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Modality spec YAML.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), required=True,
              help="Newest snapshot time (UTC), as given to `data import`.")
@click.option("--snapshots", type=click.IntRange(min=1), default=2, show_default=True,
              help="Snapshots per user, as given to `data import`.")
@click.option("--snapshot-every", type=click.IntRange(min=1), default=30, show_default=True,
              help="Days between snapshots, as given to `data import`.")
@click.option("--window-days", type=click.IntRange(min=1), default=None, help="Days each snapshot looks back; default: the spec's longest.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON report here.")
def validate(events: Path | None, profiles: Path | None, spec_path: Path | None, as_of: datetime, snapshots: int,
             snapshot_every: int, window_days: int | None, report: Path | None) -> None:
    """Validate event and/or profile tables exactly as `data import` would; exit 1 on failure.

    Events older than the import's window are skipped and counted; events at or after
    --as-of fail.
    """
    try:
        spec = load_spec(spec_path)
    except ModalitySpecError as err:
        raise click.ClickException(str(err)) from None
    end = as_of.replace(tzinfo=timezone.utc)
    window = SnapshotSchedule(end, snapshots, snapshot_every).event_window(window_days or spec.window_days)
    reports = []
    if events is not None:
        frame = read_parquet_frame(events, "events")
        if pd.api.types.is_datetime64_any_dtype(frame.get("event_time")) and frame["event_time"].dt.tz is None:
            frame["event_time"] = frame["event_time"].dt.tz_localize("UTC")
        events_report, kept = validate_events(frame, spec, window)
        events_report.require_rows_in_window()
        reports.append(events_report)
    if profiles is not None:
        profile_frame = read_parquet_frame(profiles, "profiles")
        profiles_report = validate_frame(profile_frame, profile_expectations(spec, profile_frame, end), "profiles")
        profiles_report.counts.update(profile_counts(spec, profile_frame))
        if events is not None and "user_id" in kept.columns and "user_id" in profile_frame.columns:
            profiles_report.counts["users_without_profile_row"] = int(
                (~pd.Series(kept["user_id"].unique()).isin(set(profile_frame["user_id"]))).sum())
        reports.append(profiles_report)
    if not reports:
        raise click.UsageError("give --events and/or --profiles")
    for r in reports:
        click.echo(r.summary())
    if report:
        report.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    if not all(r.success for r in reports):
        raise SystemExit(1)
