"""Collate `UserFeatures` into the tensors the hierarchical encoder reads.

Per modality (spec order; the profile counts as a modality whose "events" are its fields
rendered "name: value", or "name: not provided" when missing): text-embedding row ids, signed-log numeric fields, time features
(recency within the window, hour of day as sin/cos) and a mask. Padding is id 0 / mask False.

Per modality with a history (under `history_key(name)`): one row per event kind with its
text-embedding id and, as numeric features, log counts over each history window, signed-log
sums of the numeric fields, and the recency of its last and first event within the window; and
each kind's stable hash (`kind_hash`), which places it in a fixed bucket for `history_buckets`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from qanchor.features import ModalityEvents, ModalityHistory, UserFeatures
from qanchor.modality_spec import EventModality, ModalitySpec, ProfileModality
from qanchor.model.text_encoder import TextEmbeddingCache

TIME_FEATURES = 3
#: What a missing profile field reads as: explicit, and never one of a field's own categories.
MISSING_PROFILE_VALUE = "not provided"


def profile_texts(modality: ProfileModality, profile: dict) -> list[str]:
    """One "name: value" text per profile field, in spec order; missing fields say so."""
    return [f"{f.name.replace('_', ' ')}: {MISSING_PROFILE_VALUE if profile.get(f.name) is None else profile[f.name]}"
            for f in modality.fields]


def profile_values(modality: ProfileModality, profile: dict) -> np.ndarray:
    """[fields, 1]: each int / float field's signed-log value (0 for a category or a missing value).

    The text encoder masks digits ("age: 37" reads "age: #"), so without this column the model
    never sees an age, an income or a credit limit; `ModelSettings.profile_values` decides
    whether the model reads it (collation always provides it)."""
    return np.array([[_signed_log(np.float64(profile[f.name]))
                      if f.type != "category" and profile.get(f.name) is not None else 0.0]
                     for f in modality.fields], dtype=np.float64)


@dataclass
class ModalityBatch:
    ids: torch.Tensor       # [B, N] long, rows of the text-embedding table (0 = padding)
    numeric: torch.Tensor   # [B, N, F] float
    time: torch.Tensor      # [B, N, 3] float
    mask: torch.Tensor      # [B, N] bool
    #: [B, N] long, each row's `kind_hash` (history batches only; None for event sequences).
    hashes: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ModalityBatch:
        """On `device`; with `non_blocking` the host tensors are pinned first, so the copy is queued
        behind the accelerator's work instead of waiting for it (a pageable copy waits)."""
        tensors = (self.ids, self.numeric, self.time, self.mask, self.hashes)
        if non_blocking:
            tensors = tuple(None if t is None else t.pin_memory() for t in tensors)
        return ModalityBatch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in tensors))


@lru_cache(maxsize=1 << 16)
def kind_hash(kind: str) -> int:
    """A kind's bucket seed: CRC-32 of its text, the same in every process and on every machine
    (Python's `hash` is salted per process), so a saved model finds each kind where it learnt it."""
    return zlib.crc32(kind.encode("utf-8"))


def numeric_width(spec: ModalitySpec, modality: str, profile_values: bool = False) -> int:
    """Numeric inputs per event of `modality` the model reads: an event modality's numeric fields;
    the profile's value column (`profile_values`) when the model reads it."""
    m = spec.modality(modality)
    return len(m.numeric_fields) if isinstance(m, EventModality) else int(profile_values)


def history_key(modality: str) -> str:
    """Where a modality's history sits in a collated batch ("/" cannot occur in a modality name)."""
    return f"{modality}/history"


def history_width(spec: ModalitySpec, modality: EventModality) -> int:
    """Numeric features per history kind: counts per window, numeric sums, last/first recency."""
    return len(spec.history_windows(modality)) + len(modality.numeric_fields) + 2


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _padded(rows: list[np.ndarray], width: int, dtype: np.dtype) -> np.ndarray:
    """Rows of different lengths (same trailing shape) left-aligned in one zero-padded array."""
    trailing = rows[0].shape[1:] if rows else ()
    out = np.zeros((len(rows), width, *trailing), dtype=dtype)
    for b, row in enumerate(rows):
        out[b, :len(row)] = row
    return out


def _flat(rows: list[list[int]], mask: np.ndarray) -> torch.Tensor:
    """Per-user integer lists laid out in the padded [B, N] shape of `mask` (0 where padded)."""
    out = np.zeros(mask.shape, dtype=np.int64)
    out[mask] = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=int(mask.sum()))
    return torch.from_numpy(out)


def _modality_batch(ids: list[list[int]], numeric: list[np.ndarray], time: list[np.ndarray],
                    hashes: list[list[int]] | None = None) -> ModalityBatch:
    """Per-user id lists and [n, F] feature rows as one padded batch (width >= 1, so an all-empty
    modality still has a masked slot)."""
    lengths = np.array([len(r) for r in ids], dtype=np.int64)
    width = max(1, int(lengths.max(initial=0)))
    mask = np.arange(width)[None, :] < lengths[:, None]
    return ModalityBatch(_flat(ids, mask), torch.from_numpy(_padded(numeric, width, np.float32)),
                         torch.from_numpy(_padded(time, width, np.float32)), torch.from_numpy(mask),
                         None if hashes is None else _flat(hashes, mask))


def _event_rows(events: ModalityEvents, modality: EventModality, ref: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The last `max_events` events' texts, signed-log numeric fields [n, F] and time features [n, 3]."""
    n = min(len(events), modality.max_events)
    keep = slice(len(events) - n, None)
    names = modality.numeric_names
    numeric = (_signed_log(np.array([events.numeric[name][keep] for name in names], dtype=np.float64)).T
               if names and n else np.zeros((n, len(names))))
    times = np.asarray(events.times[keep], dtype=np.float64)
    phase = 2 * np.pi * (times % 86_400) / 86_400
    time = np.stack([(ref - times) / (86_400.0 * modality.window_days), np.sin(phase), np.cos(phase)], axis=1)
    return list(events.texts[keep]), numeric, time


def collate_users(users: list[UserFeatures], reference_times: list[int], spec: ModalitySpec,
                  cache: TextEmbeddingCache) -> dict[str, ModalityBatch]:
    """Tensors per modality for `users`; `reference_times` (unix s) anchor each user's recency.

    Array work is per modality and user, never per event: collation runs on the host before
    every training step and served request, where per-value Python was most of a GPU step."""
    out: dict[str, ModalityBatch] = {}
    for modality in spec.modalities:
        ids, numeric, time = [], [], []
        for user, ref in zip(users, reference_times):
            if isinstance(modality, EventModality):
                texts, nums, times = _event_rows(user.modalities[modality.name], modality, ref)
            else:
                texts = profile_texts(modality, user.profile)
                nums, times = profile_values(modality, user.profile), np.zeros((len(texts), TIME_FEATURES))
            ids.append(cache.ids(texts) if texts else [])
            numeric.append(nums)
            time.append(times)
        out[modality.name] = _modality_batch(ids, numeric, time)
    for modality in spec.history_modalities:
        out[history_key(modality.name)] = _collate_history(
            [u.history.get(modality.name, ModalityHistory()) for u in users], reference_times, spec, modality, cache)
    return out


def _collate_history(histories: list[ModalityHistory], reference_times: list[int], spec: ModalitySpec,
                     modality: EventModality, cache: TextEmbeddingCache) -> ModalityBatch:
    windows = spec.history_windows(modality)
    window = 86_400.0 * modality.window_days
    ids, numeric, hashes = [], [], []
    for past, ref in zip(histories, reference_times):
        n = min(len(past), modality.history_kinds)
        hashes.append([kind_hash(k) for k in past.kinds[:n]])
        if not n:  # an empty history has no per-window columns at all
            ids.append([])
            numeric.append(np.zeros((0, history_width(spec, modality))))
            continue
        columns = [np.log1p(np.asarray(past.counts[d][:n], dtype=np.float64)) for d in windows]
        columns += [_signed_log(np.asarray(past.sums[name][:n], dtype=np.float64)) for name in modality.numeric_names]
        columns += [(ref - np.asarray(past.last_seen[:n], dtype=np.float64)) / window,
                    (ref - np.asarray(past.first_seen[:n], dtype=np.float64)) / window]
        ids.append(cache.ids(list(past.kinds[:n])))
        numeric.append(np.stack(columns, axis=1))
    return _modality_batch(ids, numeric, [np.zeros((len(r), 0)) for r in ids], hashes)
