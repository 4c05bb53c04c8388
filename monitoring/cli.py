"""`qanchor data validate`: run the input suites without importing anything."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click
import pandas as pd

from monitoring.validation import event_expectations, profile_expectations, validate_frame
from qanchor.modality_spec import ModalitySpecError, load_spec


@click.command("validate")
@click.option("--events", type=click.Path(exists=True, path_type=Path), default=None, help="Event parquet file or directory.")
@click.option("--profiles", type=click.Path(exists=True, path_type=Path), default=None, help="Profile parquet file or directory.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Modality spec YAML.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, help="End of the window (UTC).")
@click.option("--window-days", type=click.IntRange(min=1), default=None, help="Window length; default: the spec's longest.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON report here.")
def validate(events: Path | None, profiles: Path | None, spec_path: Path | None, as_of: datetime,
             window_days: int | None, report: Path | None) -> None:
    """Validate event and/or profile tables against the spec's expectations; exit 1 on failure."""
    try:
        spec = load_spec(spec_path)
    except ModalitySpecError as err:
        raise click.ClickException(str(err)) from None
    end = as_of.replace(tzinfo=timezone.utc)
    start = pd.Timestamp(end) - pd.Timedelta(days=window_days or spec.window_days)
    reports = []
    if events is not None:
        frame = pd.read_parquet(events)
        if pd.api.types.is_datetime64_any_dtype(frame.get("event_time")) and frame["event_time"].dt.tz is None:
            frame["event_time"] = frame["event_time"].dt.tz_localize("UTC")
        reports.append(validate_frame(frame, event_expectations(spec, frame, start, end), "events"))
    if profiles is not None:
        frame = pd.read_parquet(profiles)
        reports.append(validate_frame(frame, profile_expectations(spec, frame, end), "profiles"))
    if not reports:
        raise click.UsageError("give --events and/or --profiles")
    for r in reports:
        click.echo(r.summary())
    if report:
        report.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    if not all(r.success for r in reports):
        raise SystemExit(1)
