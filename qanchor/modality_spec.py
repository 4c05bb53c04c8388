"""Modality specs: the declarative contract between user data, the feature store and the model.

A spec names every modality of a user's behaviour (payments, mini-program visits, ...) with
how its event text is rendered, which numeric fields ride along, how many events the model
keeps and how far back it looks. Everything downstream (validation, Feast views, the
hierarchical encoder) is derived from it, so a team bringing its own data only writes YAML.
"""

from __future__ import annotations

import hashlib
import string
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qanchor.user_files import read_yaml_mapping

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

#: Columns every event table carries, whatever its modality.
EVENT_KEY_COLUMNS = ("user_id", "event_time", "modality", "text")


class ModalitySpecError(ValueError):
    """A spec file that cannot be used; the message names each offending field."""


class FeatureSchemaError(ValueError):
    """Features laid out by one spec offered to a model trained on another."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericField(_Strict):
    """A numeric attribute of an event (amount, duration); the range rejects corrupt values."""

    name: Name
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> NumericField:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ProfileField(_Strict):
    """One profile attribute. Ranges and category values are enforced on import.

    A `nullable` field may be missing in a profile row (real profiles are sparse: often only
    a third of users state their demographics). The model then reads "<field>: not provided",
    an explicit token, rather than a made-up category; a user with no profile row at all reads
    that for every field.
    """

    name: Name
    type: Literal["int", "float", "category"]
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None
    nullable: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ProfileField:
        if self.type == "category":
            if not self.values:
                raise ValueError("a category field needs a non-empty 'values' list")
        elif self.min is None or self.max is None:
            raise ValueError(f"a {self.type} field needs 'min' and 'max'")
        elif self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class EventModality(_Strict):
    """A modality made of timestamped events, kept as the user's most recent sequence."""

    name: Name
    kind: Literal["events"] = "events"
    description: str = ""
    text_template: str
    text_fields: tuple[Name, ...] = ()
    numeric_fields: tuple[NumericField, ...] = ()
    max_events: int = Field(gt=0, le=4096)
    window_days: int = Field(gt=0, le=3650)
    #: Distinct event kinds (digit-masked texts) kept in the window-long history, most frequent
    #: first; 0 turns the modality's history off. The history covers every event in the window,
    #: while the event sequence keeps only the last `max_events`.
    history_kinds: int = Field(default=64, ge=0, le=1024)

    @model_validator(mode="after")
    def _template_uses_declared_fields(self) -> EventModality:
        declared = set(self.text_fields) | {f.name for f in self.numeric_fields}
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(self.text_template) if f}
        except ValueError as err:
            raise ValueError(f"text_template is not a valid format string: {err}") from err
        unknown = sorted(used - declared)
        if unknown:
            raise ValueError(f"text_template uses undeclared fields {unknown}; declared: {sorted(declared)}")
        names = [f.name for f in self.numeric_fields]
        if len(set(names)) != len(names):
            raise ValueError(f"numeric_fields has duplicate names: {names}")
        return self

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric_fields)


class ProfileModality(_Strict):
    """The tabular profile: one row per user, each field rendered as "name: value" for the model."""

    name: Name
    kind: Literal["profile"]
    description: str = ""
    fields: tuple[ProfileField, ...] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _unique(cls, fields: tuple[ProfileField, ...]) -> tuple[ProfileField, ...]:
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate profile field names: {names}")
        return fields

    @property
    def max_events(self) -> int:
        return len(self.fields)


Modality = Annotated[EventModality | ProfileModality, Field(discriminator="kind")]


class ModalitySpec(_Strict):
    """The full set of modalities, in the order their tokens appear in the user prefix."""

    version: Literal[1] = 1
    max_text_chars: int = Field(default=256, gt=0, le=4096)
    #: Sub-windows (days) the history counts events over, besides each modality's whole window.
    history_windows_days: tuple[int, ...] = (7, 30)
    modalities: tuple[Modality, ...] = Field(min_length=1)

    @field_validator("history_windows_days")
    @classmethod
    def _positive_windows(cls, windows: tuple[int, ...]) -> tuple[int, ...]:
        if any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"history windows must be distinct positive day counts, got {list(windows)}")
        return tuple(sorted(windows))

    @field_validator("modalities", mode="before")
    @classmethod
    def _default_kind(cls, items: object) -> object:
        if isinstance(items, (list, tuple)):
            return [
                {**item, "kind": item.get("kind", "events")} if isinstance(item, dict) else item
                for item in items
            ]
        return items

    @model_validator(mode="after")
    def _one_profile_unique_names(self) -> ModalitySpec:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate modality names: {names}")
        if sum(isinstance(m, ProfileModality) for m in self.modalities) > 1:
            raise ValueError("at most one modality may have kind 'profile'")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def event_modalities(self) -> tuple[EventModality, ...]:
        return tuple(m for m in self.modalities if isinstance(m, EventModality))

    @property
    def profile(self) -> ProfileModality | None:
        return next((m for m in self.modalities if isinstance(m, ProfileModality)), None)

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        """Union of numeric fields over event modalities, in first-seen order."""
        seen: dict[str, None] = {}
        for modality in self.event_modalities:
            seen.update(dict.fromkeys(modality.numeric_names))
        return tuple(seen)

    @property
    def window_days(self) -> int:
        return max((m.window_days for m in self.event_modalities), default=0)

    def history_windows(self, modality: EventModality) -> tuple[int, ...]:
        """Day counts a modality's history is counted over, ascending; the last is its whole window."""
        return (*(w for w in self.history_windows_days if w < modality.window_days), modality.window_days)

    @property
    def history_modalities(self) -> tuple[EventModality, ...]:
        return tuple(m for m in self.event_modalities if m.history_kinds > 0)

    def fingerprint(self) -> str:
        """Short content hash: two specs with the same fingerprint lay features out identically."""
        return "spec-" + hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def modality(self, name: str) -> EventModality | ProfileModality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"unknown modality {name!r}; spec has {list(self.names)}")


def spec_differences(expected: ModalitySpec, actual: ModalitySpec) -> list[str]:
    """Human-readable differences between two specs (empty when they lay features out the same)."""
    if expected == actual:
        return []
    problems = []
    if expected.names != actual.names:
        problems.append(f"modalities {list(expected.names)} vs {list(actual.names)}")
    ours = {m.name: m.model_dump() for m in expected.modalities}
    for m in actual.modalities:
        if m.name not in ours:
            continue
        theirs = m.model_dump()
        changed = sorted(k for k in ours[m.name].keys() | theirs.keys() if ours[m.name].get(k) != theirs.get(k))
        if changed:
            problems.append(f"modality {m.name!r} differs in {changed}")
    if expected.history_windows_days != actual.history_windows_days:
        problems.append(f"history_windows_days {list(expected.history_windows_days)} vs {list(actual.history_windows_days)}")
    if expected.max_text_chars != actual.max_text_chars:
        problems.append(f"max_text_chars {expected.max_text_chars} vs {actual.max_text_chars}")
    return problems or ["specs differ"]


def _describe(err: ValidationError, data: object) -> str:
    """Turn pydantic's locations into "modalities[2] (spm).numeric_fields[0].min: reason"."""
    lines = []
    for e in err.errors():
        parts: list[str] = []
        node = data
        for loc in e["loc"]:
            if isinstance(loc, int):
                name = node[loc].get("name") if isinstance(node, list) and loc < len(node) and isinstance(node[loc], dict) else None
                parts[-1] += f"[{loc}]" + (f" ({name})" if name else "")
                node = node[loc] if isinstance(node, list) and loc < len(node) else None
            elif loc in ("events", "profile") and parts and parts[-1].startswith("modalities["):
                continue
            else:
                parts.append(str(loc))
                node = node.get(loc) if isinstance(node, dict) else None
        lines.append(f"  {'.'.join(parts) or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(data: object, source: str = "<spec>") -> ModalitySpec:
    """Validate a parsed YAML/JSON document as a spec, raising `ModalitySpecError` with field paths."""
    try:
        return ModalitySpec.model_validate(data)
    except ValidationError as err:
        raise ModalitySpecError(f"invalid modality spec {source}:\n{_describe(err, data)}") from None


def load_spec(path: str | Path | None = None) -> ModalitySpec:
    """Load a spec file, or the packaged default (the paper's six modalities) when `path` is None.

    Raises `UserFileError` when the file is missing or not a YAML mapping, and
    `ModalitySpecError` when its content breaks the spec's rules.
    """
    if path is None:
        return parse_spec(yaml.safe_load(resources.files("qanchor.specs").joinpath("default.yaml").read_text()),
                          "default.yaml")
    return parse_spec(read_yaml_mapping(Path(path), "modality spec"), str(path))
