"""The UserU builder: (user features at query time, query, answer) examples for pretraining.

Features come from Feast's point-in-time join at each row's `query_time`, so an example never
sees events after the moment its question is asked. Rows come from D_future (fixed query ->
next-window summary) and D_uqa (grounded question -> answer), mixed at `future_ratio`, for the
users of one split only: D_future answers describe future-window behaviour, so evaluation users
must never be pretrained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from qanchor.features import UserFeatures

if TYPE_CHECKING:  # Feast is imported only where a store is opened, so these run without it
    from feature_repo.store import UserFeatureStore


def question_repeats(questions: list[str], oversample: dict[str, int]) -> np.ndarray:
    """How many times each example enters an epoch: the factor of the first `oversample` prefix its
    question starts with, else 1."""
    return np.array([next((k for p, k in oversample.items() if q.startswith(p)), 1) for q in questions], dtype=np.int64)


def example_order(user_ids: list[str], rows: int, queries_per_user: int, rng: np.random.Generator,
                  questions: list[str] | None = None, users_per_question: int = 1,
                  repeats: np.ndarray | None = None, repeats_from: int = 0) -> np.ndarray:
    """Indices of `rows` training rows, epoch after epoch, each epoch in a fresh random order.

    `repeats[i]` (default 1) puts example i that many times in every epoch (`question_repeats`),
    so a family of questions the rest of the corpus drowns gets a larger share of the steps.
    With `repeats_from` > 0 the first that many rows come in the plain order and the repeats
    apply only after them (a fresh epoch starts there): the corpus's other questions get the
    early steps to themselves, and the drowned family its larger share only late in training.

    With `queries_per_user` > 1 the order comes in runs of up to that many examples of ONE user
    (different questions about the same features), so a batch holds a user under several queries:
    the user's other answers and other anchors become its hardest negatives, and the contrastive
    loss can only be solved by an embedding that depends on the query, not by recognising the user.
    (On the synthetic benchmark it lowered AUC; see docs/benchmarks.md before turning it on.)

    With `users_per_question` > 1 the runs are of ONE question asked of different users. In a
    plain random batch a D_uqa example's negatives are answers to other questions, told apart by
    the question alone; in a run they are other users' answers to the same question ("36 days
    ago" vs "no refill purchases"), which only the user's own features can tell apart.
    """
    if queries_per_user < 1 or users_per_question < 1:
        raise ValueError(f"queries_per_user and users_per_question must be >= 1, got {queries_per_user} "
                         f"and {users_per_question}")
    if queries_per_user > 1 and users_per_question > 1:
        raise ValueError("group batches by user (queries_per_user) or by question (users_per_question), not both")
    if not user_ids:
        raise ValueError("no training examples")
    if users_per_question > 1 and (questions is None or len(questions) != len(user_ids)):
        raise ValueError("users_per_question needs one question per example")
    if repeats is not None and (len(repeats) != len(user_ids) or (repeats < 1).any()):
        raise ValueError("repeats needs one factor >= 1 per example")
    if repeats is not None and repeats_from > 0:
        head = example_order(user_ids, min(rows, repeats_from), queries_per_user, rng, questions, users_per_question)
        if rows <= repeats_from:
            return head
        tail = example_order(user_ids, rows - repeats_from, queries_per_user, rng, questions, users_per_question,
                             repeats)
        return np.concatenate([head, tail])
    index = np.arange(len(user_ids)) if repeats is None else np.repeat(np.arange(len(user_ids)), repeats)
    keys, run = (user_ids, queries_per_user) if users_per_question == 1 else (questions, users_per_question)
    epochs = []
    if run == 1:
        while sum(len(e) for e in epochs) < rows:
            epochs.append(index[rng.permutation(len(index))])
        return np.concatenate(epochs)[:rows]
    by_key: dict[str, list[int]] = {}
    for i in index:
        by_key.setdefault(keys[i], []).append(int(i))
    groups = list(by_key.values())
    while sum(len(e) for e in epochs) < rows:
        runs = []
        for members in groups:
            shuffled = rng.permutation(members)
            runs += [shuffled[i:i + run] for i in range(0, len(shuffled), run)]
        epochs.append(np.concatenate([runs[i] for i in rng.permutation(len(runs))]))
    return np.concatenate(epochs)[:rows]


@dataclass(frozen=True)
class Example:
    features: UserFeatures
    reference_time: int
    query: str
    answer: str


class DatasetError(ValueError):
    """The dataset directory lacks a table or the split is empty."""


def _table(dataset: Path, name: str) -> pd.DataFrame:
    path = Path(dataset) / name
    if not path.exists():
        raise DatasetError(f"{dataset} has no {name}/ table; is it a `qanchor data generate` output?")
    return pd.read_parquet(path)


def example_rows(dataset: Path, split: str, future_ratio: float, max_examples: int | None, seed: int,
                 max_users: int | None = None) -> pd.DataFrame:
    """The (`user_id`, `query_time`, `question`, `answer`) rows of `split` users, shuffled;
    `future_ratio` of them from D_future, the rest from D_uqa.

    `max_users` draws that many of the split's users first (seeded), so a smaller pretraining
    set keeps every question of fewer users rather than one question of every user.
    """
    if not 0.0 <= future_ratio <= 1.0:
        raise ValueError(f"future_ratio must be in [0, 1], got {future_ratio}")
    split_users = sorted(_table(dataset, "splits").query("split == @split")["user_id"])
    if not split_users:
        raise DatasetError(f"split {split!r} has no users in {dataset}")
    if max_users is not None and max_users < len(split_users):
        split_users = list(np.random.default_rng(seed).choice(split_users, size=max_users, replace=False))
    users = set(split_users)
    future = _table(dataset, "d_future").rename(columns={"query": "question"})
    uqa = _table(dataset, "d_uqa")
    future, uqa = future[future.user_id.isin(users)], uqa[uqa.user_id.isin(users)]
    rng = np.random.default_rng(seed)
    total = min(max_examples or len(future) + len(uqa), len(future) + len(uqa))
    n_future = min(len(future), round(total * future_ratio))
    n_uqa = min(len(uqa), total - n_future)
    rows = pd.concat([future.sample(n=n_future, random_state=rng.integers(2**31)),
                      uqa.sample(n=n_uqa, random_state=rng.integers(2**31))], ignore_index=True)
    rows = rows.sample(frac=1.0, random_state=rng.integers(2**31), ignore_index=True)
    return rows[["user_id", "query_time", "question", "answer"]]


def examples_from_rows(store: UserFeatureStore, rows: pd.DataFrame) -> list[Example]:
    """Each row with its user's features as of `query_time` (one point-in-time read)."""
    features = store.features_at(rows["user_id"].tolist(), rows["query_time"].tolist())
    return [Example(features=f, reference_time=int(r.query_time.timestamp()), query=r.question, answer=r.answer)
            for f, r in zip(features, rows.itertuples(index=False))]


def build_examples(store: UserFeatureStore, dataset: Path, split: str, future_ratio: float,
                   max_examples: int | None, seed: int, max_users: int | None = None) -> list[Example]:
    """`example_rows` with their features, all in memory (held-out sets, bundles, benchmarks);
    pretraining streams its training rows instead (`training.example_stream`)."""
    return examples_from_rows(store, example_rows(dataset, split, future_ratio, max_examples, seed, max_users))
