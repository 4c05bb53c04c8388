"""A user's features as the model sees them, independent of where they were read from.

Feature-store rows arrive flat (`bill_events__texts`, `profile__age`, ...); `UserFeatures`
regroups them per modality and checks them, so a NaN amount or ragged lists are caught at the
boundary with a message naming the user, modality and field, never inside a forward pass.
"""

from __future__ import annotations

import gc
import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


_NUMERIC_FAILURES = (pa.ArrowException, TypeError, ValueError, OverflowError)


class _Ragged(ABC):
    """One list feature of a batch of users: user r owns flat values `offsets[r]:offsets[r + 1]`.

    Two sources share the checks below: Arrow list arrays from point-in-time reads (converted at
    Arrow speed, each distinct string once) and Python lists from online rows and requests (a few
    users, where Arrow's per-call overhead would dominate).
    """

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])

    def owner(self, flat_index: int) -> int:
        """The user row a flat value belongs to."""
        return int(np.searchsorted(self.offsets, flat_index, side="right")) - 1

    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each user's values."""
        offsets = self.offsets.tolist()
        return list(zip(offsets[:-1], offsets[1:]))

    @abstractmethod
    def first_bad_text(self) -> int | None:
        """Flat index of the first missing, empty or non-string text."""

    @abstractmethod
    def texts(self) -> list[str]:
        """Flat values as Python strings (after `first_bad_text` found none bad)."""

    @abstractmethod
    def first_missing(self) -> int | None:
        """Flat index of the first missing or non-numeric value."""

    @abstractmethod
    def numbers(self) -> np.ndarray:
        """Flat values as a numeric array (after `first_missing` found none); may raise `_NUMERIC_FAILURES`."""


class _ArrowRagged(_Ragged):
    def __init__(self, column: pa.Array):
        super().__init__(pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64))
        self.values = column.flatten()

    def first_bad_text(self) -> int | None:
        if not pa.types.is_string(self.values.type):
            return 0 if len(self.values) else None
        bad = pc.fill_null(pc.equal(pc.utf8_length(self.values), 0), True).to_numpy(zero_copy_only=False)
        return int(np.argmax(bad)) if bad.any() else None

    def texts(self) -> list[str]:
        encoded = pc.dictionary_encode(self.values)
        words = encoded.dictionary.to_pylist()
        return list(map(words.__getitem__, encoded.indices.to_numpy().tolist()))

    def numbers(self) -> np.ndarray:
        if not (pa.types.is_integer(self.values.type) or pa.types.is_floating(self.values.type)):
            raise TypeError(f"{self.values.type} is not numeric")
        return self.values.to_numpy(zero_copy_only=False)

    def first_missing(self) -> int | None:
        if not self.values.null_count:
            return None
        return int(np.argmax(self.values.is_null().to_numpy(zero_copy_only=False)))


class _NotAList(Exception):
    def __init__(self, row: int):
        self.row = row


class _PythonRagged(_Ragged):
    def __init__(self, column: Sequence[Any]):
        lists = [() if _missing_as_none(v) is None else v for v in column]
        for row, value in enumerate(lists):
            if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
                raise _NotAList(row)
        super().__init__(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)))
        self.values = [x for v in lists for x in v]

    def first_bad_text(self) -> int | None:
        return next((i for i, t in enumerate(self.values) if not isinstance(t, str) or not t), None)

    def texts(self) -> list[str]:
        return self.values

    def numbers(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    def first_missing(self) -> int | None:
        return next((i for i, v in enumerate(self.values)
                     if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))), None)


def _missing_as_none(value: Any) -> Any:
    """Absent list features: `None` online, NaN from pandas; arrays from offline reads are kept."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _ragged(column: Any, users: int) -> _Ragged:
    """One list column, Arrow or Python; a column the store lacks (`None`) reads as empty lists."""
    if column is None:
        return _PythonRagged([()] * users)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return _ArrowRagged(column) if isinstance(column, pa.Array) else _PythonRagged(column)


class _Columns:
    """Feature columns of a batch of users, checked one flat column at a time; the first offending
    user is named, with the same messages whichever source the columns came from."""

    def __init__(self, user_ids: Sequence[str], columns: Mapping[str, Any]):
        self.user_ids = list(user_ids)
        self.columns = columns

    def _ragged(self, key: str) -> _Ragged:
        try:
            return _ragged(self.columns.get(key), len(self.user_ids))
        except _NotAList as err:
            value = self.columns[key][err.row]
            raise FeatureValueError(f"user {self.user_ids[err.row]!r}: {key!r} must be a list, "
                                    f"not {type(value).__name__}") from None

    def texts(self, key: str, problem: Callable[[int], str]) -> _Ragged:
        ragged = self._ragged(key)
        bad = ragged.first_bad_text()
        if bad is not None:
            raise FeatureValueError(problem(ragged.owner(bad)))
        return ragged

    def numbers(self, key: str, expected: np.ndarray, mismatch: Callable[[int, int], str],
                missing: Callable[[int], str], non_finite: Callable[[int, list[int]], str],
                as_int: bool, non_negative: bool = False) -> tuple:
        """The flat numbers of one list column that must align with `expected` lengths (so they
        share its offsets); wrong lengths, missing or non-numeric values, NaN/inf (and negatives
        where refused) fail."""
        ragged = self._ragged(key)
        if not np.array_equal(ragged.lengths, expected):
            row = int(np.argmax(ragged.lengths != expected))
            raise FeatureValueError(mismatch(row, int(ragged.lengths[row])))
        gap = ragged.first_missing()
        if gap is not None:
            raise FeatureValueError(missing(ragged.owner(gap)))
        try:
            flat = ragged.numbers()
        except _NUMERIC_FAILURES:
            raise FeatureValueError(missing(0)) from None
        bad = ~np.isfinite(flat) if flat.dtype.kind == "f" else None
        if non_negative:
            bad = flat < 0 if bad is None else bad | (flat < 0)
        if bad is not None and bad.any():
            row = ragged.owner(int(np.argmax(bad)))
            positions = np.flatnonzero(bad[ragged.offsets[row]:ragged.offsets[row + 1]]).tolist()
            raise FeatureValueError(non_finite(row, positions))
        return tuple((flat.astype(np.int64) if as_int else flat.astype(np.float64)).tolist())

    def events(self, modality: EventModality) -> list[ModalityEvents]:
        prefix = f"{modality.name}_events__"

        def where(row: int) -> str:
            return f"user {self.user_ids[row]!r}, modality {modality.name!r}"

        def missing(name: str) -> Callable[[int], str]:
            return lambda row: f"{where(row)}: {name!r} holds a missing or non-numeric value"

        texts = self.texts(prefix + "texts", lambda row: f"{where(row)}: empty or non-string event text")
        counts = texts.lengths
        times = self.numbers(prefix + "event_times", counts,
                             lambda row, n: f"{where(row)}: {counts[row]} texts but {n} event times",
                             missing("event_times"),
                             lambda row, at: f"{where(row)}: non-finite event times at positions {at[:5]}", as_int=True)
        numeric = {name: self.numbers(prefix + name, counts,
                                      lambda row, n, name=name: f"{where(row)}: {counts[row]} texts but {n} values of {name!r}",
                                      missing(name),
                                      lambda row, at, name=name: f"{where(row)}: non-finite {name!r} at event positions {at[:5]}",
                                      as_int=False)
                   for name in modality.numeric_names}
        flat_texts = tuple(texts.texts())
        # One pass per modality: every column shares the texts' offsets (checked above).
        return [ModalityEvents(flat_texts[a:b], times[a:b], {name: values[a:b] for name, values in numeric.items()})
                for a, b in texts.bounds()]

    def history(self, modality: EventModality, windows: tuple[int, ...]) -> list[ModalityHistory]:
        prefix = history_view_name(modality.name) + "__"

        def where(row: int) -> str:
            return f"user {self.user_ids[row]!r}, {modality.name} history"

        kinds = self.texts(prefix + "kinds", lambda row: f"{where(row)}: empty or non-string event kind")
        counts = kinds.lengths

        def column(name: str, as_int: bool, non_negative: bool) -> tuple:
            problem = f"{'negative or ' if non_negative else ''}non-finite"
            return self.numbers(prefix + name, counts,
                                lambda row, n: f"{where(row)}: {counts[row]} kinds but {n} values of {name!r}",
                                lambda row: f"{where(row)}: {name!r} holds a missing or non-numeric value",
                                lambda row, _: f"{where(row)}: {name!r} holds a {problem} value", as_int, non_negative)

        per_window = {d: column(count_field(d), True, True) for d in windows}
        last_seen, first_seen = column("last_seen", True, False), column("first_seen", True, False)
        sums = {n: column(f"{n}_sum", False, False) for n in modality.numeric_names}
        totals = self.columns.get(prefix + "n_events")
        if isinstance(totals, (pa.Array, pa.ChunkedArray)):
            totals = totals.to_pylist()
        totals = [None] * len(counts) if totals is None else list(totals)
        for row, total in enumerate(totals):
            total = _missing_as_none(total)
            if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float, np.integer, np.floating))
                                      or not math.isfinite(total) or total < 0):
                raise FeatureValueError(f"{where(row)}: 'n_events' is {total!r}, not a count")
            totals[row] = 0 if total is None else int(total)
        flat_kinds = tuple(kinds.texts())
        return [ModalityHistory(kinds=flat_kinds[a:b], counts={d: values[a:b] for d, values in per_window.items()},
                                last_seen=last_seen[a:b], first_seen=first_seen[a:b],
                                sums={n: values[a:b] for n, values in sums.items()}, events=total)
                for (a, b), total in zip(kinds.bounds(), totals)]

    def profiles(self, spec: ModalitySpec) -> list[dict[str, Any]]:
        values: dict[str, list] = {}
        for f in spec.profile.fields if spec.profile is not None else ():
            column = self.columns.get(f"profile__{f.name}")
            if isinstance(column, (pa.Array, pa.ChunkedArray)):
                column = column.to_pylist()
            column = [None] * len(self.user_ids) if column is None else list(column)
            for row, value in enumerate(column):
                if isinstance(value, float) and not math.isfinite(value):
                    raise FeatureValueError(f"user {self.user_ids[row]!r}: profile field {f.name!r} is {value}")
            values[f.name] = column
        return [{name: column[r] for name, column in values.items()} for r in range(len(self.user_ids))]


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
        (user,) = cls.from_rows([user_id], [row], spec)
        return user

    @classmethod
    def from_rows(cls, user_ids: Sequence[str], rows: Sequence[Mapping[str, Any]], spec: ModalitySpec) -> list[UserFeatures]:
        """Many flat rows at once (online reads, requests): the checks' fixed cost is paid per batch, not per user."""
        keys = dict.fromkeys(key for row in rows for key in row)
        return cls.from_columns(user_ids, {key: [row.get(key) for row in rows] for key in keys}, spec)

    @classmethod
    def from_columns(cls, user_ids: Sequence[str], columns: Mapping[str, Any], spec: ModalitySpec) -> list[UserFeatures]:
        """Build many users at once from columns keyed `<view>__<feature>`: Arrow arrays (a
        point-in-time read) or one Python list per key. A column the store lacks reads as empty.

        Checks run per flat column rather than per user, which is what lets a training read of
        100k users convert at Arrow speed; the first offending user is named.
        """
        batch = _Columns(user_ids, columns)
        # Millions of small tuples, none of them cyclic: the cyclic collector would rescan them on
        # every allocation burst (measured: a third of the conversion time), so it waits till the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            events = {m.name: batch.events(m) for m in spec.event_modalities}
            history = {m.name: batch.history(m, spec.history_windows(m)) for m in spec.history_modalities}
            profiles = batch.profiles(spec)
            return [cls(user_id=user_id, modalities={name: rows[r] for name, rows in events.items()},
                        profile=profiles[r], history={name: rows[r] for name, rows in history.items()})
                    for r, user_id in enumerate(batch.user_ids)]
        finally:
            if collecting:
                gc.enable()

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
