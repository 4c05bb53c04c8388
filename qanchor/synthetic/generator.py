"""The synthetic UserU generator: streams users in chunks to parquet so memory stays bounded.

Output layout (each table is a directory of `part-NNNNN.parquet` files, one per chunk):

    events/         observed 90 days, the bring-your-own-data event schema (+ generator-only `category`)
    profiles/       the tabular modality, one row per user
    future_events/  the 30 days after `as_of` (labels are read from here)
    labels/         the 12 downstream tasks, one row per user
    d_future/       (user, query_time, query, answer) next-window summaries
    d_uqa/          (user, query_time, topic, question, answer) grounded Q&A
    splits/         user -> train | val | test
    latent/         user -> the latent traits behind the observed window (the evaluation's oracle row)
    manifest.json   config, row counts, observed positive rates, task definitions
    tasks.yaml      the tasks as data (query, paraphrase, label column) for `qanchor evaluate`
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from qanchor.staged_folder import staged_folder
from qanchor.synthetic.catalog import TRAITS
from qanchor.synthetic.drift import Drift, apply_drifts
from qanchor.synthetic.events import generate_window
from qanchor.synthetic.habits import HABIT_CATEGORIES, habit_events
from qanchor.synthetic.future_summary import FUTURE_QUERY, future_kind_questions, summarise_future
from qanchor.synthetic.population import sample_ages, sample_profiles, sample_traits
from qanchor.synthetic.tasks import PARAPHRASES, TASK_NAMES, TASKS, draw_positives, label_from_future, marker_events
from qanchor.synthetic.uqa import RECENCY_TOPICS, sample_questions, user_facts

DEFAULT_AS_OF = datetime(2026, 10, 1, tzinfo=timezone.utc)

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("modality", pa.string()),
        ("text", pa.string()),
        ("amount", pa.float64()),
        ("duration_s", pa.float64()),
        ("dwell_s", pa.float64()),
        ("category", pa.string()),
    ]
)
PROFILE_AGE_DAYS = 365
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class GeneratorConfig:
    users: int
    seed: int = 0
    as_of: datetime = DEFAULT_AS_OF
    window_days: int = 90
    future_days: int = 30
    chunk_users: int = 5_000
    uqa_per_user: int = 3
    #: Yes/no D_future questions about one future kind each (`future_kind_questions`), per user.
    future_questions_per_user: int = 0
    #: The generic D_future answer names every task marker and scheduled payment of the user's
    #: future (True), or only the behaviours that win its places by frequency (False), as a corpus
    #: written before the scenarios were known would (`summarise_future`'s `name_notable`).
    summary_names_markers: bool = True
    #: Injected drifts of the observed window (`qanchor.synthetic.drift`); none by default.
    drifts: tuple[Drift, ...] = ()

    def __post_init__(self) -> None:
        if self.users <= 0:
            raise ValueError(f"users must be positive, got {self.users}")
        if self.chunk_users <= 0:
            raise ValueError(f"chunk_users must be positive, got {self.chunk_users}")
        if not 1 <= self.uqa_per_user <= 13:
            raise ValueError(f"uqa_per_user must be in [1, 13], got {self.uqa_per_user}")
        if not 0 <= self.future_questions_per_user <= 16:
            raise ValueError(f"future_questions_per_user must be in [0, 16], got {self.future_questions_per_user}")
        if self.window_days <= 0 or self.future_days <= 0:
            raise ValueError("window_days and future_days must be positive")
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (UTC)")


@dataclass
class ChunkTables:
    events: pd.DataFrame
    profiles: pd.DataFrame
    future_events: pd.DataFrame
    labels: pd.DataFrame
    d_future: pd.DataFrame
    d_uqa: pd.DataFrame
    splits: pd.DataFrame
    latent: pd.DataFrame


def generate_chunk(config: GeneratorConfig, chunk_index: int, first_user: int, n_users: int) -> ChunkTables:
    """All tables for users [first_user, first_user + n_users); deterministic in (seed, chunk_index)."""
    rng = np.random.default_rng([config.seed, chunk_index])
    as_of = pd.Timestamp(config.as_of)
    user_ids = np.array([f"u{i:09d}" for i in range(first_user, first_user + n_users)], dtype=object)
    ages = sample_ages(rng, n_users)
    traits = sample_traits(rng, ages)
    profiles = sample_profiles(rng, user_ids, ages, traits)
    window_start = as_of - pd.Timedelta(days=config.window_days)
    events = generate_window(rng, user_ids, traits, window_start, config.window_days)
    habits_observed, habits_future = habit_events(np.random.default_rng([config.seed, chunk_index, 1]), user_ids,
                                                  window_start, as_of, config.future_days)
    if config.drifts:  # their own random stream: a dataset without drifts is unchanged
        drift_rng = np.random.default_rng([config.seed, chunk_index, 2])
        redraw = lambda shifted, start, days: generate_window(drift_rng, user_ids, shifted, start, days)  # noqa: E731
        # A trait shift redraws behaviour, not habits (fixed payments), so it applies before they join.
        events = apply_drifts(drift_rng, events, tuple(d for d in config.drifts if d.kind == "trait"), user_ids,
                              traits, as_of, redraw)
    events = pd.concat([events, habits_observed], ignore_index=True)
    if config.drifts:
        events = apply_drifts(drift_rng, events, tuple(d for d in config.drifts if d.kind != "trait"), user_ids,
                              traits, as_of, redraw)
    events = events.sort_values(["user_id", "event_time"], kind="stable", ignore_index=True)

    # The future drifts a little from the past; fading users (trend < 0) keep fading.
    future_traits = traits + 0.25 * rng.standard_normal(traits.shape)
    volume = np.exp(0.4 * traits[:, -1])
    future = generate_window(rng, user_ids, future_traits, as_of, config.future_days, volume)
    positives = draw_positives(rng, future_traits)
    future = pd.concat([future, habits_future, marker_events(rng, user_ids, positives, as_of, config.future_days)],
                       ignore_index=True)
    future = future.sort_values(["user_id", "event_time"], kind="stable", ignore_index=True)

    labels = label_from_future(user_ids, future)
    labels.insert(1, "label_time", as_of)
    d_future = summarise_future(pd.Series(user_ids), future, as_of, scheduled=HABIT_CATEGORIES,
                                name_notable=config.summary_names_markers)
    if config.future_questions_per_user:
        kind_questions = future_kind_questions(np.random.default_rng([config.seed, chunk_index, 4]),
                                               pd.Series(user_ids), future, as_of,
                                               config.future_questions_per_user, config.future_days)
        d_future = pd.concat([d_future, kind_questions], ignore_index=True)
    facts = user_facts(events, profiles, as_of)
    # One recency question per user, from its own stream so the splits drawn below stay as they were.
    recency = sample_questions(np.random.default_rng([config.seed, chunk_index, 3]), facts, 1, as_of, RECENCY_TOPICS)
    d_uqa = pd.concat([sample_questions(rng, facts, config.uqa_per_user, as_of), recency], ignore_index=True)
    split = np.asarray(SPLITS)[np.searchsorted(np.cumsum(SPLIT_FRACTIONS), rng.random(n_users), side="right").clip(0, 2)]
    # Profiles are static here; stamping them well before the window keeps every point-in-time
    # training row inside their validity (Feast drops entity rows older than a view's only row).
    profiles.insert(1, "updated_at", as_of - pd.Timedelta(days=PROFILE_AGE_DAYS))
    return ChunkTables(
        events=events[EVENT_SCHEMA.names],
        profiles=profiles,
        future_events=future[EVENT_SCHEMA.names],
        labels=labels,
        d_future=d_future,
        d_uqa=d_uqa,
        splits=pd.DataFrame({"user_id": user_ids, "split": split}),
        latent=pd.DataFrame({"user_id": user_ids, **{f"trait_{name}": traits[:, i] for i, name in enumerate(TRAITS)}}),
    )


def _write(table_dir: Path, chunk_index: int, frame: pd.DataFrame, schema: pa.Schema | None = None) -> None:
    table_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, table_dir / f"part-{chunk_index:05d}.parquet", compression="zstd")


def task_file() -> dict:
    """The tasks as data (the `tasks.yaml` schema of `training.tasks`): query = the written
    definition, labels = this dataset's wide `labels/` table, one column per task."""
    return {"generic_query": FUTURE_QUERY,
            "tasks": [{"name": t.name, "group": t.group, "query": t.definition, "paraphrase": PARAPHRASES[t.name],
                       "labels": "labels", "column": t.name} for t in TASKS]}


def generate(config: GeneratorConfig, out: Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the dataset into `out` atomically (built in a sibling temp dir, then renamed)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    counts = {"events": 0, "future_events": 0, "d_future": 0, "d_uqa": 0}
    positives = np.zeros(len(TASKS), dtype=np.int64)
    with staged_folder(out) as staging:
        with tqdm(total=config.users, unit="user", desc="generate", disable=not progress) as bar:
            for chunk_index, first in enumerate(range(0, config.users, config.chunk_users)):
                n = min(config.chunk_users, config.users - first)
                tables = generate_chunk(config, chunk_index, first, n)
                _write(staging / "events", chunk_index, tables.events, EVENT_SCHEMA)
                _write(staging / "future_events", chunk_index, tables.future_events, EVENT_SCHEMA)
                for name in ("profiles", "labels", "d_future", "d_uqa", "splits", "latent"):
                    _write(staging / name, chunk_index, getattr(tables, name))
                for name in counts:
                    counts[name] += len(getattr(tables, name))
                positives += tables.labels[list(TASK_NAMES)].sum().to_numpy()
                bar.update(n)
        manifest = {
            "generator": "qanchor.synthetic",
            "config": {**asdict(config), "as_of": config.as_of.isoformat(),
                       "drifts": [d.describe() for d in config.drifts]},
            "rows": {"users": config.users, **counts},
            "positive_rates": {name: float(p) / config.users for name, p in zip(TASK_NAMES, positives)},
            "tasks": [
                {"name": t.name, "group": t.group, "definition": t.definition, "target_rate": t.target_rate,
                 "marker_modality": t.marker_modality, "marker_text": t.marker_text,
                 "marker_match": t.marker_match, "evidence": t.evidence}
                for t in TASKS
            ],
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (staging / "tasks.yaml").write_text(yaml.safe_dump(task_file(), sort_keys=False))
    return manifest


def read_table(dataset: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one generated table (all its parts) into memory; for tests and small datasets."""
    return pd.read_parquet(Path(dataset) / name, columns=columns)
