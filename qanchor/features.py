"""A user's features as the model sees them, independent of where they were read from.

Feature-store rows arrive flat (`bill_events__texts`, `profile__age`, ...); `UserFeatures`
regroups them per modality and checks them, so a NaN amount or ragged lists are caught at the
boundary with a message naming the user, modality and field, never inside a forward pass.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qanchor.modality_spec import EventModality, ModalitySpec

#: Digit runs (amounts, counts, ids) that `text_key` masks; vectorised callers use the pattern too.
DIGITS_PATTERN = r"\d+(?:[.,]\d+)*"
_DIGITS = re.compile(DIGITS_PATTERN)


class FeatureValueError(ValueError):
    """A feature value the model must not consume (NaN, wrong length, wrong type)."""


def text_key(text: str) -> str:
    """An event's *kind*: its text lower-cased with digits masked ("paid 35.20 at X" -> "paid # at x").

    Amounts reach the model as numeric fields, so two payments at one merchant are one kind; the
    text-embedding cache and the window-long history both count kinds, never raw texts.
    """
    return _DIGITS.sub("#", text.strip().lower())


def history_view_name(modality: str) -> str:
    return f"{modality}_history"


def count_field(days: int) -> str:
    return f"count_{days}d"


#: Value types of the history view's columns, named once for the parquet, Feast and row readers.
LIST_OF_STRINGS, LIST_OF_INTS, LIST_OF_FLOATS, INT = "list<string>", "list<int>", "list<float>", "int"


def history_columns(spec: ModalitySpec, modality: EventModality) -> tuple[tuple[str, str], ...]:
    """(column, value type) of a modality's history view, in order (see docs/data.md)."""
    return (("kinds", LIST_OF_STRINGS), *((count_field(d), LIST_OF_INTS) for d in spec.history_windows(modality)),
            ("last_seen", LIST_OF_INTS), ("first_seen", LIST_OF_INTS),
            *((f"{n}_sum", LIST_OF_FLOATS) for n in modality.numeric_names), ("n_events", INT))


def _sequence(value: Any) -> tuple:
    """A list feature as a tuple; online reads give lists, offline reads numpy arrays, absent ones None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    return tuple(value)


def feature_keys(spec: ModalitySpec, history: bool = True) -> list[str]:
    """Every flat `<view>__<feature>` key `UserFeatures.from_row` reads for `spec` (the event views'
    `n_events` excepted: the model counts the events themselves)."""
    keys: list[str] = []
    for m in spec.event_modalities:
        keys += [f"{m.name}_events__{f}" for f in ("texts", "event_times", *m.numeric_names)]
        if history and m.history_kinds:
            keys += [f"{history_view_name(m.name)}__{c}" for c, _ in history_columns(spec, m)]
    if spec.profile is not None:
        keys += [f"profile__{f.name}" for f in spec.profile.fields]
    return keys


@dataclass(frozen=True)
class ModalityEvents:
    """One modality's recent events, oldest first; `numeric[name][i]` belongs to `texts[i]`."""

    texts: tuple[str, ...] = ()
    times: tuple[int, ...] = ()
    numeric: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class ModalityHistory:
    """One modality's whole window, aggregated per event kind (most frequent kinds first).

    `counts[days][i]` is how many events of `kinds[i]` fell in the last `days` days; `last_seen`
    and `first_seen` are unix seconds; `sums[name][i]` totals a numeric field over the window.
    `events` counts every event in the window, including kinds beyond the kept ones.
    """

    kinds: tuple[str, ...] = ()
    counts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    last_seen: tuple[int, ...] = ()
    first_seen: tuple[int, ...] = ()
    sums: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    events: int = 0

    def __len__(self) -> int:
        return len(self.kinds)


def _history_from_row(user_id: str, row: Mapping[str, Any], modality: EventModality,
                      windows: tuple[int, ...]) -> ModalityHistory:
    prefix = history_view_name(modality.name) + "__"
    where = f"user {user_id!r}, {modality.name} history"
    kinds = _sequence(row.get(prefix + "kinds"))
    if any(not isinstance(k, str) or not k for k in kinds):
        raise FeatureValueError(f"{where}: empty or non-string event kind")

    def column(name: str, cast: type, non_negative: bool) -> tuple:
        try:
            values = tuple(float(v) for v in _sequence(row.get(prefix + name)))
        except (TypeError, ValueError):
            raise FeatureValueError(f"{where}: {name!r} holds a missing or non-numeric value") from None
        if len(values) != len(kinds):
            raise FeatureValueError(f"{where}: {len(kinds)} kinds but {len(values)} values of {name!r}")
        if any(not math.isfinite(v) or (non_negative and v < 0) for v in values):
            raise FeatureValueError(f"{where}: {name!r} holds a {'negative or ' if non_negative else ''}non-finite value")
        return tuple(cast(v) for v in values)

    total = row.get(prefix + "n_events")
    return ModalityHistory(
        kinds=kinds,
        counts={d: column(count_field(d), int, True) for d in windows},
        last_seen=column("last_seen", int, False),
        first_seen=column("first_seen", int, False),
        sums={n: column(f"{n}_sum", float, False) for n in modality.numeric_names},
        events=0 if total is None or (isinstance(total, float) and math.isnan(total)) else int(total),
    )


@dataclass(frozen=True)
class UserFeatures:
    user_id: str
    modalities: Mapping[str, ModalityEvents]
    profile: Mapping[str, Any]
    #: Window-long history per modality (empty where the spec keeps none or the store has none).
    history: Mapping[str, ModalityHistory] = field(default_factory=dict)

    @classmethod
    def from_row(cls, user_id: str, row: Mapping[str, Any], spec: ModalitySpec) -> UserFeatures:
        """Build from a flat feature-store row keyed `<view>__<feature>` (Feast full feature names)."""
        modalities: dict[str, ModalityEvents] = {}
        for m in spec.event_modalities:
            prefix = f"{m.name}_events__"
            texts = _sequence(row.get(prefix + "texts"))
            times = tuple(int(t) for t in _sequence(row.get(prefix + "event_times")))
            numeric = {name: tuple(float(v) for v in _sequence(row.get(prefix + name))) for name in m.numeric_names}
            where = f"user {user_id!r}, modality {m.name!r}"
            if len(times) != len(texts):
                raise FeatureValueError(f"{where}: {len(texts)} texts but {len(times)} event times")
            for name, values in numeric.items():
                if len(values) != len(texts):
                    raise FeatureValueError(f"{where}: {len(texts)} texts but {len(values)} values of {name!r}")
                bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    raise FeatureValueError(f"{where}: non-finite {name!r} at event positions {bad[:5]}")
            if any(not isinstance(t, str) or not t for t in texts):
                raise FeatureValueError(f"{where}: empty or non-string event text")
            modalities[m.name] = ModalityEvents(texts, times, numeric)
        history = {m.name: _history_from_row(user_id, row, m, spec.history_windows(m)) for m in spec.history_modalities}
        profile: dict[str, Any] = {}
        if spec.profile is not None:
            for f in spec.profile.fields:
                value = row.get(f"profile__{f.name}")
                if isinstance(value, float) and not math.isfinite(value):
                    raise FeatureValueError(f"user {user_id!r}: profile field {f.name!r} is {value}")
                profile[f.name] = value
        return cls(user_id=user_id, modalities=modalities, profile=profile, history=history)

    @property
    def is_empty(self) -> bool:
        """True when the store knows nothing about the user (no events, no profile)."""
        return all(len(e) == 0 for e in self.modalities.values()) and all(v is None for v in self.profile.values())


def feature_digest(user: UserFeatures, reference_time: int) -> str:
    """A digest of everything the user prefix is computed from: features and reference time.

    It is the "feature version" of the prefix cache key, so any change to a user's events,
    profile or reference time yields a new key instead of a stale cached prefix.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{user.user_id}\x00{int(reference_time)}".encode())
    for name in sorted(user.modalities):
        events = user.modalities[name]
        h.update(repr((name, events.texts, events.times, sorted(events.numeric.items()))).encode())
    h.update(repr(sorted((k, str(v)) for k, v in user.profile.items())).encode())
    for name in sorted(user.history):
        past = user.history[name]
        h.update(repr((name, past.kinds, sorted(past.counts.items()), past.last_seen, past.first_seen,
                       sorted(past.sums.items()), past.events)).encode())
    return h.hexdigest()
