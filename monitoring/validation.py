"""Great Expectations suites that guard every table before it enters the feature store.

Suites are derived from the modality spec: schema and types, nulls, value ranges per modality
(numeric fields only where the modality declares them), timestamps inside the window, text
lengths, known modalities, unique profile rows. A batch that fails any expectation is reported
with each failed expectation, what it checked (bounds, set, types), its offending row count and
up to five offending rows; callers write nothing in that case. Events older than the import's
window are skipped and counted, not failed (`qanchor.event_window`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage telemetry: no network at run time

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from qanchor.event_window import EventWindow  # noqa: E402
from qanchor.modality_spec import ModalitySpec  # noqa: E402

E = gx.expectations
STRING_TYPES = ["str"]
NUMBER_TYPES = ["float64", "float32", "int64", "int32", "int16", "int8", "Float64", "Int64", "Int32"]
#: GE's pandas type check does not understand tz-aware dtypes, so timestamps are validated as
#: naive UTC (see `_naive_utc`).
TIMESTAMP_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]
#: Offending rows kept per failed expectation, in the terminal and in the JSON report.
MAX_EXAMPLES = 5
#: Expectation arguments that say where, not what, an expectation checks.
_PLUMBING_KWARGS = {"batch_id", "column", "row_condition", "condition_parser", "result_format", "catch_exceptions"}


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation: what it checked, how many rows broke it and a few of them."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    detail: str
    checked: str = ""
    examples: tuple[dict, ...] = ()

    def __str__(self) -> str:
        where = f"({self.column})" if self.column else ""
        checked = f" {self.checked}" if self.checked else ""
        rows = f": {self.unexpected_count} offending rows" if self.unexpected_count is not None else ""
        text = f"{self.expectation}{where}{checked}{rows}" + (f" [{self.detail}]" if self.detail else "")
        if self.examples:
            text += "; e.g. " + " | ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in self.examples)
        return text


@dataclass
class ValidationReport:
    """Outcome of validating one table (possibly over several batches)."""

    table: str
    rows: int = 0
    evaluated: int = 0
    failures: list[FailedExpectation] = field(default_factory=list)
    #: Rows left out on purpose (events older than the window), counted so nothing vanishes silently.
    skipped: int = 0
    window: str = ""
    #: Facts worth a line that are not failures: missing values of nullable profile fields,
    #: users with events but no profile row.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.failures

    def merge(self, other: ValidationReport) -> None:
        """Fold another batch of the same table in, summing offending rows per expectation."""
        self.rows += other.rows
        self.skipped += other.skipped
        for key, value in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        self.window = self.window or other.window
        self.evaluated = max(self.evaluated, other.evaluated)
        index = {(f.expectation, f.column, f.detail, f.checked): i for i, f in enumerate(self.failures)}
        for f in other.failures:
            key = (f.expectation, f.column, f.detail, f.checked)
            if key in index:
                old = self.failures[index[key]]
                count = None if old.unexpected_count is None else old.unexpected_count + (f.unexpected_count or 0)
                examples = (old.examples + f.examples)[:MAX_EXAMPLES]
                self.failures[index[key]] = FailedExpectation(old.expectation, old.column, count, old.detail,
                                                              old.checked, examples)
            else:
                index[key] = len(self.failures)
                self.failures.append(f)

    def require_rows_in_window(self) -> None:
        """A table whose every row was skipped as older than the window has nothing to import."""
        if self.rows and self.skipped == self.rows:
            self.failures.append(FailedExpectation(
                "expect_table_row_count_to_be_between", None, None,
                f"all {self.rows} events are older than the window {self.window}", "min_value=1"))

    def to_dict(self) -> dict:
        return {"table": self.table, "rows": self.rows, "skipped": self.skipped, "window": self.window,
                "counts": dict(self.counts),
                "expectations": self.evaluated, "success": self.success,
                "failures": [{**asdict(f), "examples": list(f.examples)} for f in self.failures]}

    def summary(self) -> str:
        skipped = f" ({self.skipped} older than the window {self.window}, skipped)" if self.skipped else ""
        head = f"{self.table}: {self.rows} rows{skipped}, {self.evaluated} expectations, "
        counts = "".join(f"; {value} {key.replace('_', ' ')}" for key, value in self.counts.items() if value)
        if self.success:
            return head + "all passed" + counts
        return head + f"{len(self.failures)} failed\n" + "\n".join(f"  - {f}" for f in self.failures)


class DataValidationError(ValueError):
    """Raised when input data fails validation; carries the reports, nothing has been written."""

    def __init__(self, reports: list[ValidationReport]):
        self.reports = reports
        failed = [r for r in reports if not r.success]
        super().__init__("input data failed validation; nothing was written\n" + "\n".join(r.summary() for r in failed))


def _context() -> gx.data_context.AbstractDataContext:
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(series):
        return "timestamp"
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return "number"
    return "other"


def _naive(moment: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def _naive_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """A shallow copy with tz-aware timestamp columns as naive UTC, the form GE can type-check."""
    aware = [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    if not aware:
        return frame
    frame = frame.copy(deep=False)
    for c in aware:
        frame[c] = frame[c].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def event_expectations(spec: ModalitySpec, frame: pd.DataFrame, window: EventWindow) -> list:
    """Expectations for a long event table (user_id, event_time, modality, text, numeric fields)
    whose stale rows `validate_events` has already set aside."""
    cols = set(frame.columns)
    modalities = [m.name for m in spec.event_modalities]
    exps: list = [E.ExpectTableRowCountToBeBetween(min_value=1)]
    required = ["user_id", "event_time", "modality", "text"]
    exps += [E.ExpectColumnToExist(column=c) for c in required]
    for c in set(required) & cols:
        exps.append(E.ExpectColumnValuesToNotBeNull(column=c))
    if "user_id" in cols:
        exps.append(E.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=STRING_TYPES))
    if "modality" in cols:
        exps.append(E.ExpectColumnValuesToBeInSet(column="modality", value_set=modalities))
    if "text" in cols:
        exps.append(E.ExpectColumnValuesToBeInTypeList(column="text", type_list=STRING_TYPES))
        if frame["text"].map(lambda v: isinstance(v, str) or v is None).all():
            exps.append(E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=spec.max_text_chars))
    if "event_time" in cols:
        exps.append(E.ExpectColumnValuesToBeInTypeList(column="event_time", type_list=TIMESTAMP_TYPES))
        if _kind(frame["event_time"]) == "timestamp":
            exps.append(E.ExpectColumnValuesToBeBetween(column="event_time", min_value=_naive(window.start),
                                                        max_value=_naive(window.end), strict_max=True))
    for modality in spec.event_modalities:
        condition = f'modality=="{modality.name}"'
        for nf in modality.numeric_fields:
            exps.append(E.ExpectColumnToExist(column=nf.name))
            if nf.name not in cols:
                continue
            exps.append(E.ExpectColumnValuesToNotBeNull(column=nf.name, row_condition=condition, condition_parser="pandas"))
            if _kind(frame[nf.name]) == "number":
                exps.append(E.ExpectColumnValuesToBeBetween(column=nf.name, min_value=nf.min, max_value=nf.max,
                                                            row_condition=condition, condition_parser="pandas"))
            else:
                exps.append(E.ExpectColumnValuesToBeInTypeList(column=nf.name, type_list=NUMBER_TYPES))
    return exps


def profile_counts(spec: ModalitySpec, frame: pd.DataFrame) -> dict[str, int]:
    """Missing values per nullable profile field (what a sparse export looks like)."""
    fields = spec.profile.fields if spec.profile is not None else ()
    return {f"rows_missing_{f.name}": int(frame[f.name].isna().sum())
            for f in fields if f.nullable and f.name in frame.columns}


def profile_expectations(spec: ModalitySpec, frame: pd.DataFrame, as_of: datetime | None = None) -> list:
    """Expectations for the profile table: one row per user, every spec field present and in range,
    and (when given) no `updated_at` after `as_of`."""
    profile = spec.profile
    if profile is None:
        raise ValueError("the modality spec has no profile modality")
    cols = set(frame.columns)
    exps: list = [E.ExpectTableRowCountToBeBetween(min_value=1), E.ExpectColumnToExist(column="user_id")]
    if "user_id" in cols:
        exps += [E.ExpectColumnValuesToNotBeNull(column="user_id"), E.ExpectColumnValuesToBeUnique(column="user_id"),
                 E.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=STRING_TYPES)]
    if "updated_at" in cols and as_of is not None:
        exps.append(E.ExpectColumnValuesToBeInTypeList(column="updated_at", type_list=TIMESTAMP_TYPES))
        if _kind(frame["updated_at"]) == "timestamp":
            exps.append(E.ExpectColumnValuesToBeBetween(column="updated_at", max_value=_naive(as_of)))
    for f in profile.fields:
        exps.append(E.ExpectColumnToExist(column=f.name))
        if f.name not in cols:
            continue
        if not f.nullable:
            exps.append(E.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.type == "category":
            exps.append(E.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.values or ())))
        elif _kind(frame[f.name]) == "number":
            exps.append(E.ExpectColumnValuesToBeBetween(column=f.name, min_value=f.min, max_value=f.max))
        else:
            exps.append(E.ExpectColumnValuesToBeInTypeList(column=f.name, type_list=NUMBER_TYPES))
    return exps


def _detail(result) -> str:
    info = result.exception_info or {}
    if "exception_message" in info:
        return str(info["exception_message"] or "")
    messages = [v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(m for m in messages if m)


def _checked(kwargs: dict) -> str:
    """What an expectation compared against (bounds, set, types), in a form a person reads."""
    parts = []
    for key, value in kwargs.items():
        if key in _PLUMBING_KWARGS or value is None or value is False:
            continue
        if isinstance(value, (list, tuple, set)):
            items = list(value)
            value = "[" + ", ".join(map(str, items[:10])) + (f", ... {len(items) - 10} more" if len(items) > 10 else "") + "]"
        parts.append(key if value is True else f"{key}={value}")
    return " ".join(parts)


def _examples(frame: pd.DataFrame, result: dict, column: str | None) -> tuple[dict, ...]:
    """Up to MAX_EXAMPLES offending rows: who (user_id, modality) and the offending value."""
    index = [i for i in (result.get("partial_unexpected_index_list") or []) if i in frame.index][:MAX_EXAMPLES]
    shown = list(dict.fromkeys(c for c in ("user_id", "modality", column) if c and c in frame.columns))
    return tuple({c: _readable(v) for c, v in frame.loc[i, shown].items()} for i in index)


def _readable(value: object) -> str | None:
    if isinstance(value, (list, tuple)):
        return str(list(value))
    return None if pd.isna(value) else str(value)


def validate_frame(frame: pd.DataFrame, expectations: list, table: str) -> ValidationReport:
    """Run `expectations` on `frame` with an ephemeral GE context; never raises on bad data."""
    context = _context()
    asset = context.data_sources.add_pandas(f"{table}_source").add_dataframe_asset(table)
    batch = asset.add_batch_definition_whole_dataframe("batch").get_batch(batch_parameters={"dataframe": _naive_utc(frame)})
    suite = gx.ExpectationSuite(name=f"{table}_suite", expectations=expectations)
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20})
    report = ValidationReport(table=table, rows=len(frame), evaluated=len(result.results))
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        count = r.result.get("unexpected_count")
        detail = _detail(r)
        if config.kwargs.get("row_condition"):
            detail = (f"where {config.kwargs['row_condition']}; " + detail).rstrip("; ")
        if count is None and config.type == "expect_table_row_count_to_be_between":
            detail = detail or f"table has {r.result.get('observed_value')} rows"
        column = config.kwargs.get("column")
        report.failures.append(FailedExpectation(config.type, column, count, detail, _checked(config.kwargs),
                                                 _examples(frame, r.result, column)))
    return report


def validate_events(frame: pd.DataFrame, spec: ModalitySpec, window: EventWindow,
                    table: str = "events") -> tuple[ValidationReport, pd.DataFrame]:
    """Skip (and count) events older than `window`, validate the rest; returns the report and
    the kept rows (what an import stages).

    A batch with nothing left after skipping is not a failure on its own: the caller sees
    `rows == skipped` and decides (an import whose every event is stale fails).
    """
    stale = window.stale(frame["event_time"]) if "event_time" in frame.columns else pd.Series(False, index=frame.index)
    kept = frame[~stale]
    if len(frame) and kept.empty:
        report = ValidationReport(table=table, rows=len(frame))
    else:
        report = validate_frame(kept, event_expectations(spec, kept, window), table)
        report.rows = len(frame)
    report.skipped = int(stale.sum())
    report.window = str(window)
    return report, kept
