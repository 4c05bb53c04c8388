"""Pretraining examples read from the feature store chunk by chunk, in the order training visits them.

A user's features at one time take about 28 KiB as Python objects (11 views, ~570 values), so
holding the features of a 100k-user, 300k-example pretraining set costs several GiB per rank.
The rows themselves (user, time, question, answer) are small: `ExampleRows` keeps them all, and
`StreamedExamples` turns the training order into batches while holding the features of at most
two chunks (the one being trained on and the next, read on a background thread so the
point-in-time read overlaps the steps). Under DDP each rank reads only its own rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from training.data import Example, examples_from_rows

if TYPE_CHECKING:  # Feast is imported only where a store is opened
    from feature_repo.store import UserFeatureStore


class ExampleSource(Protocol):
    """What `training.pretrain.fit` trains on: each example's user and question (for the order) and batches."""

    @property
    def user_ids(self) -> list[str]: ...

    @property
    def questions(self) -> list[str]: ...

    def batches(self, order: np.ndarray, batch_size: int, rank: int, world: int) -> Iterator[list[Example]]:
        """Batch after batch of `order` (example indices, `batch_size` per step); this rank's share of each."""
        ...


@dataclass(frozen=True)
class InMemoryExamples:
    """Examples whose features are already loaded (a bundle, a test, a small set)."""

    examples: Sequence[Example]

    @property
    def user_ids(self) -> list[str]:
        return [e.features.user_id for e in self.examples]

    @property
    def questions(self) -> list[str]:
        return [e.query for e in self.examples]

    def batches(self, order: np.ndarray, batch_size: int, rank: int, world: int) -> Iterator[list[Example]]:
        for start in range(0, len(order), batch_size):
            yield [self.examples[i] for i in order[start:start + batch_size][rank::world]]


class StreamedExamples:
    """Example rows (`user_id`, `query_time`, `question`, `answer`) whose features are read from
    `store` `chunk_steps` steps at a time, the next chunk while the current one trains."""

    def __init__(self, store: UserFeatureStore, rows: pd.DataFrame, chunk_steps: int):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        self.store = store
        self.rows = rows.reset_index(drop=True)
        self.chunk_steps = chunk_steps
        self._require_readable()

    def _require_readable(self) -> None:
        """Refuse rows no snapshot can serve now, not chunks later in the middle of a tracked run."""
        oldest, newest, ttl = self.store.label_window()
        times = pd.to_datetime(self.rows["query_time"], utc=True)
        bad = ~self.rows["user_id"].isin(self.store.known_users()) | (times < oldest) | (times > newest + ttl)
        if bad.any():
            example = self.rows.loc[bad, ["user_id", "query_time"]].head(1).to_dict("records")
            raise ValueError(f"{int(bad.sum())} of {len(self.rows)} training rows have no snapshot to read (e.g. "
                             f"{example}): their users are not imported or their times fall outside "
                             f"[{oldest}, {newest + ttl}]; re-import or drop those rows")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def user_ids(self) -> list[str]:
        return self.rows["user_id"].tolist()

    @property
    def questions(self) -> list[str]:
        return self.rows["question"].tolist()

    def _read(self, ids: np.ndarray) -> list[Example]:
        return examples_from_rows(self.store, self.rows.iloc[ids])

    def batches(self, order: np.ndarray, batch_size: int, rank: int, world: int) -> Iterator[list[Example]]:
        steps = [order[start:start + batch_size][rank::world] for start in range(0, len(order), batch_size)]
        chunks = [steps[i:i + self.chunk_steps] for i in range(0, len(steps), self.chunk_steps)]
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="example-stream") as pool:
            def read(chunk: list[np.ndarray]) -> Future[list[Example]]:
                return pool.submit(self._read, np.concatenate(chunk))

            pending = read(chunks[0])
            for i, chunk in enumerate(chunks):
                examples = pending.result()
                if i + 1 < len(chunks):
                    pending = read(chunks[i + 1])
                at = 0
                for ids in chunk:
                    yield examples[at:at + len(ids)]
                    at += len(ids)
