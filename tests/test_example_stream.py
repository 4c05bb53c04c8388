"""Pretraining streams its examples: the features of a chunk of steps are read when training gets
there, so memory holds two chunks, and the batches are exactly the in-memory ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import AS_OF
from training.data import example_order, example_rows, examples_from_rows
from training.example_stream import InMemoryExamples, StreamedExamples


class CountingStore:
    """The real store, recording how many rows each point-in-time read asked for."""

    def __init__(self, store):
        self.store, self.reads = store, []

    def features_at(self, users, times):
        self.reads.append(len(users))
        return self.store.features_at(users, times)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture(scope="module")
def rows(dataset):
    return example_rows(dataset, "train", future_ratio=0.5, max_examples=120, seed=0)


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_streamed_batches_equal_in_memory_batches_and_read_one_chunk_at_a_time(sqlite_store, rows, rank, world):
    counting = CountingStore(sqlite_store)
    stream = StreamedExamples(counting, rows, chunk_steps=3)
    order = example_order(stream.user_ids, rows=10 * 8, queries_per_user=1, rng=np.random.default_rng(1))
    streamed = list(stream.batches(order, batch_size=8, rank=rank, world=world))
    memory = InMemoryExamples(examples_from_rows(sqlite_store, rows))
    in_memory = list(memory.batches(order, 8, rank, world))
    assert streamed == in_memory
    assert stream.user_ids == memory.user_ids and stream.questions == memory.questions
    assert len(streamed) == 10 and all(len(b) == 8 // world for b in streamed)
    assert counting.reads == [3 * 8 // world] * 3 + [8 // world]  # 10 steps in chunks of 3: this rank's rows only


def test_rows_without_a_snapshot_are_refused_before_training_starts(sqlite_store, rows):
    bad = rows.copy()
    bad.loc[5, "query_time"] = pd.Timestamp(AS_OF) - pd.Timedelta(days=400)
    bad.loc[6, "user_id"] = "never-imported"
    with pytest.raises(ValueError, match=r"2 of 120 training rows have no snapshot to read"):
        StreamedExamples(sqlite_store, bad, chunk_steps=4)
