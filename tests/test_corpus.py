"""`qanchor data corpus`: D_future, D_uqa and splits from the imported logs alone, never past `as_of`."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import AS_OF
from qanchor.features import text_key
from training.corpus import CorpusError, CorpusSettings, build_corpus, write_corpus
from training.data import build_examples


@pytest.fixture(scope="module")
def corpus(sqlite_store):
    return build_corpus(sqlite_store, CorpusSettings(questions_per_snapshot=4), progress=False)


def test_the_three_tables_have_the_documented_schema(corpus, sqlite_store):
    assert list(corpus.d_future.columns) == ["user_id", "query_time", "query", "answer"]
    assert list(corpus.d_uqa.columns) == ["user_id", "query_time", "topic", "question", "answer"]
    assert set(corpus.splits["user_id"]) == sqlite_store.known_users()
    assert set(corpus.splits["split"]) == {"train", "val", "test"}
    assert len(corpus.d_uqa) <= 4 * 2 * len(corpus.splits) and corpus.d_uqa["answer"].str.len().gt(0).all()


def test_d_future_answers_come_from_before_as_of_and_name_what_the_user_did(corpus, dataset):
    """Each D_future kind is one the user really had in [query_time, as_of): nothing later leaks."""
    as_of = pd.Timestamp(AS_OF)
    assert (corpus.d_future["query_time"] + pd.Timedelta(days=30) <= as_of).all()
    assert (corpus.d_uqa["query_time"] <= as_of).all()
    events = pd.read_parquet(dataset / "events", columns=["user_id", "event_time", "modality", "text"])
    events["kind"] = events["text"].map(text_key)
    checked = 0
    for row in corpus.d_future.head(40).itertuples():
        window = events[(events.user_id == row.user_id) & (events.event_time >= row.query_time)
                        & (events.event_time < as_of)]
        seen = set(zip(window.modality, window.kind))
        for modality, kinds in re.findall(r"(\w+): (.*?)(?:;|\.$)", row.answer.removeprefix("Over the next 30 days: ")):
            for kind, count in re.findall(r"(.+?) \(x(\d+)\)(?:, |$)", kinds):
                assert (modality, kind) in seen, (row.user_id, modality, kind)
                assert int(count) == sum((window.modality == modality) & (window.kind == kind))
                checked += 1
    assert checked > 40


def test_a_horizon_no_snapshot_pair_spans_is_refused(sqlite_store):
    with pytest.raises(CorpusError, match="is not a history window"):
        build_corpus(sqlite_store, CorpusSettings(horizon_days=11), progress=False)
    with pytest.raises(CorpusError, match="no two snapshots are 7 days apart"):
        build_corpus(sqlite_store, CorpusSettings(horizon_days=7), progress=False)


def test_the_corpus_is_a_pretraining_dataset(corpus, sqlite_store, tmp_path):
    rows = write_corpus(corpus, tmp_path / "corpus", {"test": True})
    assert rows == {"d_future": len(corpus.d_future), "d_uqa": len(corpus.d_uqa), "splits": len(corpus.splits)}
    examples = build_examples(sqlite_store, tmp_path / "corpus", "train", future_ratio=0.5, max_examples=64, seed=0)
    assert len(examples) == 64 and {e.query for e in examples} > {"What will this user do in the next 30 days?"}
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_corpus(corpus, tmp_path / "corpus", {})
