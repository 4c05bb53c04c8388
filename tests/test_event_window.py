"""One window rule: `data validate` and `data import` accept, skip and reject the same events.

An import with the default schedule (2 snapshots, 30 days apart, 90-day window) accepts
`[as_of - 120 days, as_of)`: older events are skipped and counted (a real export holds a year),
events at or after `as_of` fail the batch in both commands.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import AS_OF
from feature_repo.ingest import ImportConfig, import_data
from feature_repo.layout import DATA_MANIFEST
from monitoring.cli import validate
from monitoring.validation import MAX_EXAMPLES, DataValidationError

START = pd.Timestamp(AS_OF) - pd.Timedelta(days=30 + 90)
END = pd.Timestamp(AS_OF)
TICK = pd.Timedelta(microseconds=1)


def _events_with_one_time(good_events: pd.DataFrame, moment: pd.Timestamp) -> pd.DataFrame:
    events = good_events.copy()
    events.loc[events.index[0], "event_time"] = moment
    return events


def _validate(events_path, report_path):
    return CliRunner().invoke(validate, ["--events", str(events_path), "--as-of", END.strftime("%Y-%m-%d"),
                                         "--report", str(report_path)])


@pytest.fixture()
def good_events(dataset) -> pd.DataFrame:
    return pd.read_parquet(dataset / "events").head(1_000).copy()


@pytest.mark.parametrize(("moment", "outcome"), [
    (START - TICK, "skipped"), (START, "accepted"), (END - TICK, "accepted"), (END, "rejected")],
    ids=["just-before-start", "at-start", "just-before-end", "at-end"])
def test_validate_and_import_agree_at_every_boundary(tmp_path, dataset, spec, good_events, moment, outcome):
    path = tmp_path / "events.parquet"
    _events_with_one_time(good_events, moment).to_parquet(path, index=False)
    result = _validate(path, tmp_path / "validate.json")
    (validated,) = json.loads((tmp_path / "validate.json").read_text())

    config = ImportConfig(events=path, profiles=dataset / "profiles", out=tmp_path / "features", spec=spec, as_of=AS_OF)
    if outcome == "rejected":
        with pytest.raises(DataValidationError) as err:
            import_data(config, progress=False)
        imported = err.value.reports[0].to_dict()
        assert result.exit_code == 1 and not (tmp_path / "features").exists()
    else:
        imported = import_data(config, progress=False).reports[0].to_dict()
        assert result.exit_code == 0, result.output
    assert validated == imported, "both commands report the same rows, skips, window and failures"
    assert validated["skipped"] == (1 if outcome == "skipped" else 0)
    assert validated["success"] == (outcome != "rejected")


def test_a_year_long_export_imports_its_window_and_counts_the_rest(tmp_path, dataset, spec, good_events):
    old = good_events.head(300).assign(event_time=START - pd.Timedelta(days=200))
    pd.concat([old, good_events]).to_parquet(tmp_path / "events.parquet", index=False)
    summary = import_data(ImportConfig(events=tmp_path / "events.parquet", profiles=dataset / "profiles",
                                       out=tmp_path / "features", spec=spec, as_of=AS_OF), progress=False)
    events = summary.reports[0]
    assert events.success and events.skipped == 300 and summary.events == len(good_events)
    assert "300 older than the window" in events.summary()
    manifest = json.loads((tmp_path / "features" / DATA_MANIFEST).read_text())
    assert manifest["events"] == len(good_events) and manifest["validation"][0]["skipped"] == 300


def test_an_export_with_nothing_in_the_window_fails(tmp_path, dataset, spec, good_events):
    good_events.assign(event_time=START - pd.Timedelta(days=1)).to_parquet(tmp_path / "events.parquet", index=False)
    with pytest.raises(DataValidationError, match="all 1000 events are older than the window"):
        import_data(ImportConfig(events=tmp_path / "events.parquet", profiles=dataset / "profiles",
                                 out=tmp_path / "features", spec=spec, as_of=AS_OF), progress=False)
    assert not (tmp_path / "features").exists()


def test_a_failure_names_the_bounds_the_count_and_offending_rows(tmp_path, good_events):
    future = good_events.copy()
    future.loc[future.index[:12], "event_time"] = END + pd.Timedelta(days=3)
    future.to_parquet(tmp_path / "events.parquet", index=False)
    result = _validate(tmp_path / "events.parquet", tmp_path / "report.json")

    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "expect_column_values_to_be_between(event_time)" in line)
    assert f"max_value={END.tz_convert('UTC').tz_localize(None)}" in line and "strict_max" in line
    assert "12 offending rows" in line and f"user_id={future['user_id'].iloc[0]}" in line
    (report,) = json.loads((tmp_path / "report.json").read_text())
    (failure,) = report["failures"]
    assert failure["unexpected_count"] == 12 and "min_value=" in failure["checked"]
    assert len(failure["examples"]) == MAX_EXAMPLES
    assert {"user_id", "modality", "event_time"} <= set(failure["examples"][0])
