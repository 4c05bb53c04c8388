"""The baselines every Q-Anchor figure is compared with, built from the same Feast features.

- Handcrafted per-modality aggregates for gradient-boosted trees (the weaker, classic row):
  counts overall and in the last 7/30 days, recency, mean gap, sums/means/maxima of numeric
  fields, the shares of each modality's most frequent event kinds and its most frequent kind
  as a categorical id, plus the profile fields; all from the recent event sequence.
- The same plus the window-long history (the industrial baseline the method must beat): per
  modality, a bag of event kinds over a vocabulary learnt on the probe's train users, each
  kind's counts over every history window, days since its last and first event and numeric
  sums, plus window totals. It reads the history feature view the model's `[HIST_m]` tokens
  read, so both see exactly the same events.
- A general text embedding: all-MiniLM-L6-v2 over a serialisation of the profile and each
  modality's events (one section per modality, 256 tokens each, mean-pooled over sections,
  since MiniLM reads 256 tokens at most).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from qanchor.features import ModalityHistory, UserFeatures, text_key
from qanchor.modality_spec import ModalitySpec
from qanchor.model.text_encoder import TextEmbeddingCache

DAY = 86_400
#: Event kinds (digit-masked texts) per modality whose shares become features.
TOP_KINDS = 24


def most_common(counts: Counter[str], n: int) -> list[str]:
    """The `n` most frequent keys, ties broken by the key itself.

    `Counter.most_common` breaks ties by insertion order, which for keys gathered through a set
    follows the string hash, and that changes with every process (PYTHONHASHSEED): the same train
    users then gave the history baseline other columns at the vocabulary's edge and in another
    order in each run, and LightGBM's column subsampling turned that into per-task AUCs 0.02-0.04
    apart. Ranked by (count, key), the columns depend on the users alone."""
    return [k for k, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]]


class AggregateFeaturizer:
    """Per-user aggregate table; the event-kind vocabulary is learnt from the probe's train users only."""

    def __init__(self, spec: ModalitySpec, top_kinds: int = TOP_KINDS):
        self.spec = spec
        self.top_kinds = top_kinds
        self.kinds: dict[str, list[str]] = {}

    def fit(self, users: list[UserFeatures]) -> AggregateFeaturizer:
        for m in self.spec.event_modalities:
            counts = Counter(text_key(t) for u in users for t in u.modalities[m.name].texts)
            self.kinds[m.name] = most_common(counts, self.top_kinds)
        return self

    def transform(self, users: list[UserFeatures], reference_times: list[int]) -> pd.DataFrame:
        if not self.kinds:
            raise RuntimeError("fit the featurizer on the training users first")
        return pd.DataFrame([self._row(u, now) for u, now in zip(users, reference_times)]).pipe(self._typed)

    def _row(self, user: UserFeatures, now: int) -> dict[str, float | str | None]:
        row: dict[str, float | str | None] = {}
        for m in self.spec.event_modalities:
            events = user.modalities[m.name]
            times = np.asarray(events.times, dtype=float)
            age_days = (now - times) / DAY
            p = m.name
            row[f"{p}_count"] = len(events)
            row[f"{p}_count_7d"] = float((age_days <= 7).sum())
            row[f"{p}_count_30d"] = float((age_days <= 30).sum())
            row[f"{p}_recency_days"] = float(age_days.min()) if len(events) else np.nan
            row[f"{p}_mean_gap_days"] = float(np.diff(np.sort(times)).mean() / DAY) if len(events) > 1 else np.nan
            for name, values in events.numeric.items():
                v = np.asarray(values, dtype=float)
                row[f"{p}_{name}_sum"] = float(v.sum())
                row[f"{p}_{name}_mean"] = float(v.mean()) if len(v) else np.nan
                row[f"{p}_{name}_max"] = float(v.max()) if len(v) else np.nan
            kinds = Counter(text_key(t) for t in events.texts)
            for i, kind in enumerate(self.kinds[m.name]):
                row[f"{p}_share_{i}"] = kinds[kind] / len(events) if len(events) else 0.0
            top = kinds.most_common(1)
            row[f"{p}_top_kind"] = top[0][0] if top and top[0][0] in self.kinds[m.name] else "other"
        for name, value in user.profile.items():
            row[f"profile_{name}"] = value
        return row

    def _typed(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Kinds and category fields become pandas categories with a fixed vocabulary (LightGBM's
        categorical input); numeric profile fields stay numeric with NaN where missing."""
        fields = {f"profile_{f.name}": f for f in (self.spec.profile.fields if self.spec.profile else ())}
        for column in frame.columns:
            if column.endswith("_top_kind"):
                categories = [*self.kinds[column.removesuffix("_top_kind")], "other"]
                frame[column] = pd.Categorical(frame[column], categories=categories)
            elif column in fields and fields[column].type == "category":
                # a missing (nullable) field stays missing: LightGBM routes NaN on its own
                frame[column] = pd.Categorical(frame[column], categories=list(fields[column].values))
            elif column in fields:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame


class HistoryFeaturizer:
    """Window-long bag-of-kinds columns per modality (joined to `AggregateFeaturizer`'s table for
    the `gbdt_history` row)."""

    def __init__(self, spec: ModalitySpec, top_kinds: int = 48):
        self.spec = spec
        self.top_kinds = top_kinds
        self.vocabulary: dict[str, list[str]] = {}

    def fit(self, users: list[UserFeatures]) -> HistoryFeaturizer:
        """Kinds seen by the most train users per modality (document frequency, not volume)."""
        for m in self.spec.history_modalities:
            seen = Counter(k for u in users for k in set(u.history.get(m.name, ModalityHistory()).kinds))
            self.vocabulary[m.name] = most_common(seen, self.top_kinds)
        return self

    def transform(self, users: list[UserFeatures], reference_times: list[int]) -> pd.DataFrame:
        if not self.vocabulary:
            raise RuntimeError("fit the featurizer on the training users first")
        return pd.DataFrame([self._row(u, now) for u, now in zip(users, reference_times)])

    def _row(self, user: UserFeatures, now: int) -> dict[str, float]:
        row: dict[str, float] = {}
        for m in self.spec.history_modalities:
            past = user.history.get(m.name, ModalityHistory())
            where = {k: i for i, k in enumerate(past.kinds)}
            windows = self.spec.history_windows(m)
            p = f"{m.name}_hist"
            row[f"{p}_events"] = float(past.events)
            row[f"{p}_kinds"] = float(len(past))
            for d in windows:
                row[f"{p}_count_{d}d"] = float(sum(past.counts.get(d, ())))
            for name, sums in past.sums.items():
                row[f"{p}_{name}_sum"] = float(sum(sums))
            for j, kind in enumerate(self.vocabulary[m.name]):
                i = where.get(kind)
                for d in windows:
                    row[f"{p}_{j}_count_{d}d"] = float(past.counts[d][i]) if i is not None else 0.0
                row[f"{p}_{j}_last_days"] = (now - past.last_seen[i]) / DAY if i is not None else np.nan
                row[f"{p}_{j}_first_days"] = (now - past.first_seen[i]) / DAY if i is not None else np.nan
                for name, sums in past.sums.items():
                    row[f"{p}_{j}_{name}_sum"] = sums[i] if i is not None else 0.0
        return row


def serialise(user: UserFeatures, spec: ModalitySpec) -> list[str]:
    """One text section for the profile and one per modality, most recent events first."""
    profile = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in user.profile.items() if v is not None)
    sections = [f"profile: {profile or 'unknown'}"]
    for m in spec.event_modalities:
        texts = user.modalities[m.name].texts
        sections.append(f"{m.name}: " + ("; ".join(reversed(texts)) if texts else "none"))
    return sections


def text_embeddings(users: list[UserFeatures], spec: ModalitySpec, encoder: TextEmbeddingCache) -> np.ndarray:
    """MiniLM embedding per user: mean of its sections' embeddings, L2-normalised."""
    sections = [serialise(u, spec) for u in users]
    flat = encoder.encode([s for user in sections for s in user], max_length=256)
    per_user = flat.reshape(len(users), len(sections[0]), -1).mean(1)
    return per_user / np.linalg.norm(per_user, axis=1, keepdims=True).clip(min=1e-12)
