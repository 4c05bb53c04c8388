"""Collate `UserFeatures` into the tensors the hierarchical encoder reads.

Per modality (spec order; the profile counts as a modality whose "events" are its fields
rendered "name: value", or "name: not provided" when missing): text-embedding row ids, signed-log numeric fields, time features
(recency within the window, hour of day as sin/cos) and a mask. Padding is id 0 / mask False.

Per modality with a history (under `history_key(name)`): one row per event kind with its
text-embedding id and, as numeric features, log counts over each history window, signed-log
sums of the numeric fields, and the recency of its last and first event within the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qanchor.features import ModalityHistory, UserFeatures
from qanchor.modality_spec import EventModality, ModalitySpec, ProfileModality
from qanchor.model.text_encoder import TextEmbeddingCache

TIME_FEATURES = 3
#: What a missing profile field reads as: explicit, and never one of a field's own categories.
MISSING_PROFILE_VALUE = "not provided"


def profile_texts(modality: ProfileModality, profile: dict) -> list[str]:
    """One "name: value" text per profile field, in spec order; missing fields say so."""
    return [f"{f.name.replace('_', ' ')}: {MISSING_PROFILE_VALUE if profile.get(f.name) is None else profile[f.name]}"
            for f in modality.fields]


@dataclass
class ModalityBatch:
    ids: torch.Tensor       # [B, N] long, rows of the text-embedding table (0 = padding)
    numeric: torch.Tensor   # [B, N, F] float
    time: torch.Tensor      # [B, N, 3] float
    mask: torch.Tensor      # [B, N] bool

    def to(self, device: torch.device | str) -> ModalityBatch:
        return ModalityBatch(*(t.to(device) for t in (self.ids, self.numeric, self.time, self.mask)))


def numeric_width(spec: ModalitySpec, modality: str) -> int:
    m = spec.modality(modality)
    return len(m.numeric_fields) if isinstance(m, EventModality) else 0


def history_key(modality: str) -> str:
    """Where a modality's history sits in a collated batch ("/" cannot occur in a modality name)."""
    return f"{modality}/history"


def history_width(spec: ModalitySpec, modality: EventModality) -> int:
    """Numeric features per history kind: counts per window, numeric sums, last/first recency."""
    return len(spec.history_windows(modality)) + len(modality.numeric_fields) + 2


def _signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def collate_users(users: list[UserFeatures], reference_times: list[int], spec: ModalitySpec,
                  cache: TextEmbeddingCache) -> dict[str, ModalityBatch]:
    """Tensors per modality for `users`; `reference_times` (unix s) anchor each user's recency."""
    out: dict[str, ModalityBatch] = {}
    for modality in spec.modalities:
        rows_text: list[list[str]] = []
        rows_num: list[list[list[float]]] = []
        rows_time: list[list[list[float]]] = []
        for user, ref in zip(users, reference_times):
            if isinstance(modality, EventModality):
                events = user.modalities[modality.name]
                keep = slice(max(0, len(events) - modality.max_events), None)
                texts = list(events.texts[keep])
                names = modality.numeric_names
                nums = [[_signed_log(events.numeric[n][i]) for n in names] for i in range(len(events))][keep]
                window = 86_400.0 * modality.window_days
                times = [[(ref - t) / window, math.sin(2 * math.pi * (t % 86_400) / 86_400),
                          math.cos(2 * math.pi * (t % 86_400) / 86_400)] for t in events.times[keep]]
            else:
                texts = profile_texts(modality, user.profile)
                nums, times = [[] for _ in texts], [[0.0] * TIME_FEATURES for _ in texts]
            rows_text.append(texts)
            rows_num.append(nums)
            rows_time.append(times)
        width = max(1, max(len(r) for r in rows_text))
        n_num = numeric_width(spec, modality.name)
        ids = torch.zeros(len(users), width, dtype=torch.long)
        numeric = torch.zeros(len(users), width, n_num)
        time = torch.zeros(len(users), width, TIME_FEATURES)
        mask = torch.zeros(len(users), width, dtype=torch.bool)
        for b, (texts, nums, times) in enumerate(zip(rows_text, rows_num, rows_time)):
            if not texts:
                continue
            n = len(texts)
            ids[b, :n] = torch.tensor(cache.ids(texts))
            if n_num:
                numeric[b, :n] = torch.tensor(nums, dtype=torch.float32)
            time[b, :n] = torch.tensor(times, dtype=torch.float32)
            mask[b, :n] = True
        out[modality.name] = ModalityBatch(ids, numeric, time, mask)
    for modality in spec.history_modalities:
        out[history_key(modality.name)] = _collate_history(
            [u.history.get(modality.name, ModalityHistory()) for u in users], reference_times, spec, modality, cache)
    return out


def _collate_history(histories: list[ModalityHistory], reference_times: list[int], spec: ModalitySpec,
                     modality: EventModality, cache: TextEmbeddingCache) -> ModalityBatch:
    windows = spec.history_windows(modality)
    window = 86_400.0 * modality.window_days
    width = max(1, max(len(h) for h in histories))
    ids = torch.zeros(len(histories), width, dtype=torch.long)
    numeric = torch.zeros(len(histories), width, history_width(spec, modality))
    mask = torch.zeros(len(histories), width, dtype=torch.bool)
    for b, (past, ref) in enumerate(zip(histories, reference_times)):
        n = min(len(past), modality.history_kinds)
        if not n:
            continue
        columns = [[math.log1p(c) for c in past.counts[d][:n]] for d in windows]
        columns += [[_signed_log(v) for v in past.sums[name][:n]] for name in modality.numeric_names]
        columns += [[(ref - t) / window for t in past.last_seen[:n]], [(ref - t) / window for t in past.first_seen[:n]]]
        ids[b, :n] = torch.tensor(cache.ids(list(past.kinds[:n])))
        numeric[b, :n] = torch.tensor(columns, dtype=torch.float32).T
        mask[b, :n] = True
    return ModalityBatch(ids, numeric, torch.zeros(len(histories), width, 0), mask)
