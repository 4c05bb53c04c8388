"""Labels from a user's own logs by a declarative rule: did the user do X in the window after T?

```yaml
modality: bill                 # one of the spec's event modalities
text_pattern: "travel|hotel"   # optional regular expression, searched case-insensitively in the event text
numeric: {field: amount, op: ">=", value: 500}   # optional condition on a numeric field
window_days: 30                # the label window [label_time, label_time + window_days)
min_events: 1                  # positive when at least this many matching events fall in it
```

The label window lies after `label_time`, and the features a method sees are read as of
`label_time` (point in time), so no method sees the events that define its label. The events
come from the raw export, which may run past the import's `as_of`: those later events never
enter the feature store, but they can label. A window that ends after the export's newest
event is refused, since its missing days would read as negatives.
"""

from __future__ import annotations

import operator
import re
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qanchor.modality_spec import ModalitySpec
from qanchor.user_files import read_yaml_model

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}


class LabelRuleError(ValueError):
    """A rule that cannot be applied: unknown modality or field, bad pattern, window past the data."""


class NumericCondition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    op: Literal[">", ">=", "<", "<=", "=="]
    value: float


class LabelRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: str
    text_pattern: str | None = None
    numeric: NumericCondition | None = None
    window_days: int = Field(default=30, gt=0)
    min_events: int = Field(default=1, ge=1)

    @field_validator("text_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"text_pattern {pattern!r} is not a regular expression: {err}") from None
        return pattern

    @model_validator(mode="after")
    def _something_to_match(self) -> LabelRule:
        if self.text_pattern is None and self.numeric is None:
            raise ValueError("a rule needs a text_pattern, a numeric condition, or both")
        return self

    def check_against(self, spec: ModalitySpec) -> None:
        modality = next((m for m in spec.event_modalities if m.name == self.modality), None)
        if modality is None:
            raise LabelRuleError(f"rule modality {self.modality!r} is not an event modality of the spec "
                                 f"({[m.name for m in spec.event_modalities]})")
        if self.numeric is not None and self.numeric.field not in modality.numeric_names:
            raise LabelRuleError(f"modality {self.modality!r} has no numeric field {self.numeric.field!r} "
                                 f"({list(modality.numeric_names)})")


def load_rule(path) -> LabelRule:
    return read_yaml_model(path, "label rule", LabelRule, LabelRuleError)


def apply_rule(rule: LabelRule, events: pd.DataFrame, users: list[str], label_time: pd.Timestamp) -> pd.DataFrame:
    """`user_id, label, label_time` for every user in `users` (0 when nothing matched)."""
    label_time = pd.Timestamp(label_time).tz_convert("UTC")
    end = label_time + pd.Timedelta(days=rule.window_days)
    times = events["event_time"]
    times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
    newest = times.max()
    if pd.isna(newest) or newest < end - pd.Timedelta(days=1):
        raise LabelRuleError(f"the label window [{label_time.isoformat()}, {end.isoformat()}) ends after the export's "
                             f"newest event ({newest}); its missing days would read as negatives: pick an earlier "
                             "--label-time or a shorter window_days")
    match = (events["modality"] == rule.modality) & (times >= label_time) & (times < end)
    if rule.text_pattern is not None:
        match &= events["text"].str.contains(rule.text_pattern, case=False, regex=True, na=False)
    if rule.numeric is not None:
        match &= _OPS[rule.numeric.op](events[rule.numeric.field], rule.numeric.value).fillna(False)
    counts = events.loc[match, "user_id"].value_counts()
    frame = pd.DataFrame({"user_id": users})
    frame["label"] = (frame["user_id"].map(counts).fillna(0) >= rule.min_events).astype(int)
    frame["label_time"] = label_time
    return frame
