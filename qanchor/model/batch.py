"""Collate `UserFeatures` into the tensors the hierarchical encoder reads.

Per modality (spec order; the profile counts as a modality whose "events" are its fields
rendered "name: value"): text-embedding row ids, signed-log numeric fields, time features
(recency within the window, hour of day as sin/cos) and a mask. Padding is id 0 / mask False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qanchor.features import UserFeatures
from qanchor.modality_spec import EventModality, ModalitySpec
from qanchor.model.text_encoder import TextEmbeddingCache

TIME_FEATURES = 3


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
                texts = [f"{f.name.replace('_', ' ')}: {user.profile[f.name]}" for f in modality.fields
                         if user.profile.get(f.name) is not None]
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
    return out
