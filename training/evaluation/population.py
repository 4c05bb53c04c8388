"""Who is evaluated: users the backbone never saw, split once into probe train / val / test.

Pretraining reads the dataset's `train` split only, and its D_future answers describe exactly
the future window the tasks are labelled from. Evaluation therefore draws its users from the
`val` and `test` splits and re-splits them (by a seeded permutation, the same for every task and
every method) into the probe's own train / val / test parts. Features are read point-in-time at
each user's label time, so no method sees the label window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from qanchor.features import UserFeatures
from training.tasks import TASKS_FILE, TaskError, TaskSet, label_table, load_tasks

if TYPE_CHECKING:  # Feast is imported only where a store is opened, so these run without it
    from feature_repo.store import UserFeatureStore

PARTS = ("train", "val", "test")


class PopulationError(ValueError):
    """The dataset cannot give a clean evaluation population."""


@dataclass(frozen=True)
class EvaluationPopulation:
    users: list[UserFeatures]
    reference_times: list[int]
    labels: pd.DataFrame      # one column per task, row order = users
    part: np.ndarray          # "train" | "val" | "test" per user
    tasks: TaskSet            # names, queries and paraphrases of the label columns
    #: Latent factors behind each user's behaviour, when the dataset knows them (the generator's
    #: `latent/` table): the `oracle` row probes them, a ceiling no method reading behaviour beats.
    latent: np.ndarray | None = None

    def index(self, part: str) -> np.ndarray:
        return np.flatnonzero(self.part == part)

    def __len__(self) -> int:
        return len(self.users)


def split_parts(n: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Assign n users to train/val/test in the given proportions by a seeded permutation."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise PopulationError(f"part fractions must be positive and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    part = np.empty(n, dtype=object)
    for name, rows in zip(PARTS, np.split(order, bounds)):
        part[rows] = name
    return part


def load_population(store: UserFeatureStore, dataset: Path, max_users: int | None = None,
                    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25), seed: int = 0,
                    splits: tuple[str, ...] = ("val", "test"), tasks: Path | None = None,
                    task_names: list[str] | None = None) -> EvaluationPopulation:
    """The held-out users of `dataset` (splits val + test) with their task labels and features.

    Tasks come from `tasks` (default `dataset/tasks.yaml`), restricted to `task_names`. `splits`
    may include "train" only for a backbone that was never pretrained on this dataset (a
    random-init model, another population's backbone).
    """
    dataset = Path(dataset)
    if not (dataset / "splits").exists():
        raise PopulationError(f"{dataset} has no splits/ table (`qanchor data generate` or `qanchor data corpus` "
                              "writes one)")
    tasks_path = Path(tasks) if tasks is not None else dataset / TASKS_FILE
    try:
        task_set, base = load_tasks(tasks_path)
        task_set = task_set.select(task_names)
        labels = label_table(task_set, base)
    except TaskError as err:
        raise PopulationError(str(err)) from None
    split_names, splits = splits, pd.read_parquet(dataset / "splits")
    held_out = splits.loc[splits["split"].isin(list(split_names)), "user_id"]
    labels = labels[labels["user_id"].isin(set(held_out))].sort_values("user_id", ignore_index=True)
    if max_users is not None:
        labels = labels.sample(n=min(max_users, len(labels)), random_state=seed).sort_values("user_id", ignore_index=True)
    if len(labels) < 40:
        raise PopulationError(f"only {len(labels)} held-out users in {dataset}; generate more users to evaluate")
    users = store.features_at(list(labels["user_id"]), list(labels["label_time"]))
    times = [int(t.timestamp()) for t in labels["label_time"]]
    part = split_parts(len(labels), fractions, seed)
    latent = None
    if (dataset / "latent").exists():
        table = pd.read_parquet(dataset / "latent").set_index("user_id").reindex(labels["user_id"])
        if table.isna().any().any():
            raise PopulationError(f"{dataset}/latent lacks rows for some evaluated users")
        latent = table.to_numpy(dtype=np.float64)
    return EvaluationPopulation(users, times, labels[["user_id", *task_set.names]], part, task_set, latent)
