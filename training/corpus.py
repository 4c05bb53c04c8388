"""The pretraining corpus from any imported logs: D_future, D_uqa and splits, for any modality spec.

The synthetic generator is one producer of these three tables; this module is the other, and
the one a team with its own logs uses. Everything is computed from what `qanchor data import`
stored, read point-in-time at the import's snapshots, so nothing at or after `as_of` can enter:

- **D_future** (`user_id, query_time, query, answer`): for a snapshot `s` with a later snapshot
  `t = s + horizon`, the question "What will this user do in the next H days?" asked at `s`,
  answered with the user's own most frequent event kinds of `[s, t)` per modality, read from the
  window-long history at `t` (`count_<H>d`). The features the model sees are those at `s`.
- **D_uqa** (`user_id, query_time, topic, question, answer`): grounded questions about what the
  user already did, asked at each snapshot, answered from observed facts by templates driven by
  the spec: top kinds per modality, event counts, amounts per numeric field, recency of a kind,
  and yes/no presence of a kind (half of them "no", with kinds other users have). A template is
  used only where its answer is exact for the stored data.
- **splits** (`user_id, split`): train / val / test by user, seeded.

Schemas are documented in docs/data.md, so users can bring their own (e.g. LLM-written) pairs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from qanchor.features import UserFeatures, history_view_name
from qanchor.modality_spec import EventModality, ModalitySpec

if TYPE_CHECKING:  # Feast is imported only where a store is opened
    from feature_repo.store import UserFeatureStore

DAY = 86_400
SPLITS = ("train", "val", "test")


class CorpusError(ValueError):
    """The store cannot yield the asked-for corpus (no snapshot pair, no history, bad settings)."""


class CorpusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Days D_future looks ahead; two snapshots this far apart must exist, and it must be one of
    #: the spec's history windows (their counts answer the question).
    horizon_days: int = Field(default=30, gt=0)
    questions_per_snapshot: int = Field(default=3, ge=0)
    top_kinds: int = Field(default=3, ge=1)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    batch_users: int = Field(default=2_000, ge=1)

    @model_validator(mode="after")
    def _fractions(self) -> CorpusSettings:
        if any(f < 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be non-negative and sum to 1, got {self.split_fractions}")
        return self

    @property
    def future_query(self) -> str:
        return f"What will this user do in the next {self.horizon_days} days?"


@dataclass(frozen=True)
class Corpus:
    d_future: pd.DataFrame
    d_uqa: pd.DataFrame
    splits: pd.DataFrame


def future_answer(spec: ModalitySpec, later: UserFeatures, horizon_days: int, top_kinds: int) -> str:
    """The user's most frequent kinds of the `horizon_days` before `later`'s snapshot, per modality."""
    parts = []
    for m in spec.history_modalities:
        past = later.history.get(m.name)
        if past is None or horizon_days not in past.counts:
            continue
        counted = sorted(((c, k) for k, c in zip(past.kinds, past.counts[horizon_days]) if c > 0),
                         key=lambda ck: (-ck[0], ck[1]))[:top_kinds]
        if counted:
            parts.append(f"{m.name}: " + ", ".join(f"{kind} (x{count})" for count, kind in counted))
    return f"Over the next {horizon_days} days: " + ("; ".join(parts) if parts else "no recorded activity") + "."


Question = tuple[str, str, str]  # topic, question, answer
Template = Callable[[UserFeatures, EventModality, int, np.random.Generator], "Question | None"]


def _top_kinds(user: UserFeatures, m: EventModality, at: int, rng: np.random.Generator) -> Question | None:
    past = user.history.get(m.name)
    if past is None or not len(past):
        return None
    counts = past.counts[m.window_days]
    top = ", ".join(f"{k} ({c} times)" for k, c in list(zip(past.kinds, counts))[:3])
    return (f"{m.name}_top", f"What does this user do most often in {m.name}?",
            f"{top} in the last {m.window_days} days.")


def _event_count(user: UserFeatures, m: EventModality, at: int, rng: np.random.Generator) -> Question | None:
    past = user.history.get(m.name)
    if past is None:
        return None
    return (f"{m.name}_count", f"How many {m.name} events did this user have in the last {m.window_days} days?",
            f"{past.events} events." if past.events else "None.")


def _recent_count(user: UserFeatures, m: EventModality, at: int, rng: np.random.Generator) -> Question | None:
    """Events of the last week from the kept sequence, only when it reaches back that far."""
    events, days = user.modalities[m.name], 7
    covered = len(events) < m.max_events or (len(events) and events.times[0] < at - days * DAY)
    if not covered:
        return None
    n = sum(1 for t in events.times if t >= at - days * DAY)
    return (f"{m.name}_recent", f"How many {m.name} events did this user have in the last {days} days?",
            f"{n} events." if n else "None.")


def _amount(user: UserFeatures, m: EventModality, at: int, rng: np.random.Generator) -> Question | None:
    """Totals of a numeric field over the window, only when every kind of the window was kept."""
    past = user.history.get(m.name)
    if past is None or not m.numeric_fields or not len(past):
        return None
    if sum(past.counts[m.window_days]) != past.events:
        return None
    field = m.numeric_fields[int(rng.integers(len(m.numeric_fields)))].name
    total = float(sum(past.sums.get(field, ())))
    return (f"{m.name}_{field}", f"What is this user's total {field.replace('_', ' ')} in {m.name} over the last "
            f"{m.window_days} days?", f"{total:.2f} over {past.events} events.")


def _recency(user: UserFeatures, m: EventModality, at: int, rng: np.random.Generator) -> Question | None:
    past = user.history.get(m.name)
    if past is None or not len(past):
        return None
    i = int(rng.integers(len(past)))
    days = (at - past.last_seen[i]) // DAY
    return (f"{m.name}_recency", f"How long ago did this user last do this in {m.name}: {past.kinds[i]}?",
            "Today." if days == 0 else f"{days} days ago.")


TEMPLATES: tuple[Template, ...] = (_top_kinds, _event_count, _recent_count, _amount, _recency)


def _presence(user: UserFeatures, m: EventModality, popular: list[str], rng: np.random.Generator) -> Question | None:
    """A yes/no question: half about a kind the user has, half about a popular kind they lack."""
    past = user.history.get(m.name)
    if past is None:
        return None
    own = set(past.kinds)
    absent = [k for k in popular if k not in own]
    if past.events != sum(past.counts[m.window_days]):
        absent = []  # kinds beyond the kept ones exist: a "no" could be wrong
    if own and (not absent or rng.random() < 0.5):
        i = int(rng.integers(len(past)))
        kind, answer = past.kinds[i], f"Yes, {past.counts[m.window_days][i]} times."
    elif absent:
        kind, answer = absent[int(rng.integers(len(absent)))], "No."
    else:
        return None
    return (f"{m.name}_presence", f"In the last {m.window_days} days, did this user do this in {m.name}: {kind}?", answer)


def _snapshot_pairs(times: list[pd.Timestamp], horizon_days: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    return [(s, t) for s in times for t in times if t - s == pd.Timedelta(days=horizon_days)]


def _batches(users: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(users), size):
        yield users[start:start + size]


def build_corpus(store: UserFeatureStore, settings: CorpusSettings | None = None, progress: bool = True) -> Corpus:
    """D_future, D_uqa and splits for every imported user of `store` (see the module docstring)."""
    settings = settings or CorpusSettings()
    spec = store.spec
    as_of = pd.Timestamp(store.settings.as_of)
    times = sorted(as_of - pd.Timedelta(days=d) for d in store.settings.snapshot_days)
    if not spec.history_modalities:
        raise CorpusError("the spec keeps no window-long history (history_kinds is 0 everywhere): "
                          "D_future and most D_uqa answers are read from it")
    windows = {w for m in spec.history_modalities for w in spec.history_windows(m)}
    if settings.horizon_days not in windows:
        raise CorpusError(f"horizon_days {settings.horizon_days} is not a history window of the spec "
                          f"({sorted(windows)}); add it to history_windows_days and re-import")
    pairs = _snapshot_pairs(times, settings.horizon_days)
    if not pairs:
        raise CorpusError(f"no two snapshots are {settings.horizon_days} days apart "
                          f"({[t.isoformat() for t in times]}); re-import with --snapshot-every {settings.horizon_days}")
    users = sorted(store.known_users())
    rng = np.random.default_rng(settings.seed)
    popular = {m.name: _popular_kinds(store, m) for m in spec.history_modalities}
    future_rows, uqa_rows = [], []
    with tqdm(total=len(users), unit="user", desc="corpus", disable=not progress) as bar:
        for batch in _batches(users, settings.batch_users):
            at = {t: store.features_at(batch, [t] * len(batch)) for t in times}
            for s, t in pairs:
                for later in at[t]:
                    future_rows.append({"user_id": later.user_id, "query_time": s, "query": settings.future_query,
                                        "answer": future_answer(spec, later, settings.horizon_days, settings.top_kinds)})
            for t in times:
                seconds = int(t.timestamp())
                for user in at[t]:
                    candidates = [q for m in spec.event_modalities for template in TEMPLATES
                                  if (q := template(user, m, seconds, rng)) is not None]
                    candidates += [q for m in spec.history_modalities
                                   if (q := _presence(user, m, popular[m.name], rng)) is not None]
                    for i in rng.permutation(len(candidates))[:settings.questions_per_snapshot]:
                        topic, question, answer = candidates[i]
                        uqa_rows.append({"user_id": user.user_id, "query_time": t, "topic": topic,
                                         "question": question, "answer": answer})
            bar.update(len(batch))
    draw = np.random.default_rng(settings.seed + 1).random(len(users))
    split = np.asarray(SPLITS)[np.searchsorted(np.cumsum(settings.split_fractions), draw, side="right").clip(0, 2)]
    return Corpus(d_future=pd.DataFrame(future_rows, columns=["user_id", "query_time", "query", "answer"]),
                  d_uqa=pd.DataFrame(uqa_rows, columns=["user_id", "query_time", "topic", "question", "answer"]),
                  splits=pd.DataFrame({"user_id": users, "split": split}))


def _popular_kinds(store: UserFeatureStore, m: EventModality, n: int = 50) -> list[str]:
    """The kinds most users have at the newest snapshot: the pool of "No" presence questions."""
    frame = pd.read_parquet(store.settings.data / history_view_name(m.name), columns=["event_timestamp", "kinds"])
    newest = frame[frame["event_timestamp"] == frame["event_timestamp"].max()]
    counts = Counter(k for kinds in newest["kinds"] for k in kinds)
    return [k for k, _ in counts.most_common(n)]


def write_corpus(corpus: Corpus, out: Path, meta: dict, overwrite: bool = False) -> dict[str, int]:
    """Write the three tables (and `corpus.json`) to `out`, the layout `pretrain` reads as its dataset.

    Written beside `out` and renamed into place, so a failure leaves `out` as it was.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = {}
        for name, frame in (("d_future", corpus.d_future), ("d_uqa", corpus.d_uqa), ("splits", corpus.splits)):
            (staging / name).mkdir()
            frame.to_parquet(staging / name / "part-00000.parquet", index=False)
            rows[name] = len(frame)
        (staging / "corpus.json").write_text(json.dumps({"producer": "qanchor data corpus", "rows": rows, **meta},
                                                        indent=2))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows
