"""Batch scoring: every user of the store x a set of scenarios -> parquet parts + the Feast online store.

A run is one backbone version, a fixed list of registered scenarios and one reference time; it is
split into `n` shards by a stable hash of the user id, so `n` pods (a k8s Indexed Job) each take
one shard without coordinating. A shard's users are sorted and cut into parts of `part_users`;
each part is embedded, pushed through the `user_embedding_push` source, and only then renamed
into place, so a part file on disk means "computed and pushed". A restarted shard skips the
parts it finds, which makes it resumable; a run whose settings differ from the folder's
`_scoring.json` is refused instead of mixing two runs' vectors in one folder.

Users the service would refuse (no features in the online store, invalid feature values) are
skipped and counted per reason in the shard's `_shard-<i>-of-<n>.json`, so one bad row does not
stop millions of others and nobody gets a vector computed from input the service would reject.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qanchor.embedding_engine import EmbeddingEngine
from qanchor.features import FeatureValueError, UserFeatures
from qanchor.model import QAnchor
from qanchor.scenario import LoadedScenario

RUN_FILE = "_scoring.json"
SKIPPED_KEY = "qanchor.skipped_users"


class BatchScoringError(ValueError):
    """A scoring run that cannot start as asked; raised before anything is written or pushed."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the users whose stable hash falls in it."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"i/n"` with 0 <= i < n, as an Indexed Job passes `$JOB_COMPLETION_INDEX/$N`."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise BatchScoringError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/8") from None
        if count < 1 or not 0 <= index < count:
            raise BatchScoringError(f"--shard {text!r}: need 0 <= INDEX < COUNT")
        return cls(index, count)

    def holds(self, user_id: str) -> bool:
        digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    @property
    def tag(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"


@dataclass(frozen=True)
class ScoringRun:
    """What makes two invocations the same run (stored as `_scoring.json` in the output folder)."""

    backbone_version: str
    scenarios: dict[str, str]  # name -> scenario version, in column order
    reference_time: int
    feature_version: str
    shard_count: int
    part_users: int


@dataclass
class ShardReport:
    """What one shard did; also written as `_shard-<i>-of-<n>.json` when the shard completes."""

    shard: str
    users: int = 0
    scored: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    skipped_users: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class FeatureSource(Protocol):
    """What batch scoring needs from a feature store (`feature_repo.store.UserFeatureStore` provides it)."""

    def known_users(self) -> set[str]: ...

    def online_rows(self, user_ids: list[str]) -> list[dict]: ...

    def push_embeddings(self, frame: pd.DataFrame) -> None: ...


def shard_users(users: set[str], shard: Shard) -> list[str]:
    return sorted(u for u in users if shard.holds(u))


def plan_run(model: QAnchor, scenarios: dict[str, LoadedScenario], reference_time: int, feature_version: str,
             shard: Shard, part_users: int = 1024) -> ScoringRun:
    if not scenarios:
        raise BatchScoringError("give at least one scenario")
    if part_users < 1:
        raise BatchScoringError("part size must be positive")
    return ScoringRun(backbone_version=model.registry_version or "unregistered",
                      scenarios={name: s.version or "" for name, s in scenarios.items()},
                      reference_time=reference_time, feature_version=feature_version,
                      shard_count=shard.count, part_users=part_users)


def open_run(out: Path, run: ScoringRun) -> None:
    """Create the folder's run file, or check that an existing one describes this same run.

    Call it before changing anything else (the Feast view), so a refused run changes nothing."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != json.loads(json.dumps(asdict(run))):
            differing = sorted(k for k in existing if existing[k] != asdict(run).get(k))
            raise BatchScoringError(f"{out} holds a different scoring run (differs in {differing}); "
                                    "use a new --out folder for a new run")
        return
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(run), indent=1) + "\n")
    tmp.replace(path)


def _user_features(user_ids: list[str], rows: list[dict], model: QAnchor,
                   skipped: Counter) -> list[UserFeatures]:
    try:
        converted: list[UserFeatures | None] = UserFeatures.from_rows(user_ids, rows, model.spec)
    except FeatureValueError:  # rare: find the offending users one by one, keep the rest
        converted = []
        for user_id, row in zip(user_ids, rows):
            try:
                converted.append(UserFeatures.from_row(user_id, row, model.spec))
            except FeatureValueError:
                converted.append(None)
    users = []
    for user in converted:
        if user is None:
            skipped["invalid_features"] += 1
            continue
        if user.is_empty:
            skipped["no_features"] += 1
            continue
        users.append(user)
    return users


def _part_frame(users: list[UserFeatures], vectors: np.ndarray, run: ScoringRun) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": [u.user_id for u in users],
                          "event_timestamp": pd.Timestamp(run.reference_time, unit="s", tz="UTC")})
    for i, name in enumerate(run.scenarios):
        frame[name] = list(vectors[:, i])
    frame["backbone_version"] = run.backbone_version
    return frame


def _write_part(frame: pd.DataFrame, path: Path, scenarios: list[str], skipped: Counter) -> None:
    """The part, with its skipped-user counts in the file's metadata so a resumed shard still reports them."""
    schema = pa.schema([("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
                       + [(s, pa.list_(pa.float32())) for s in scenarios] + [("backbone_version", pa.string())],
                       metadata={SKIPPED_KEY: json.dumps(dict(skipped))})
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: readers of the folder never see a partial part
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), tmp)
    tmp.replace(path)


def _read_part_counts(path: Path) -> tuple[int, Counter]:
    metadata = pq.ParquetFile(path)
    skipped = json.loads((metadata.schema_arrow.metadata or {}).get(SKIPPED_KEY.encode(), b"{}"))
    return metadata.metadata.num_rows, Counter(skipped)


def score_shard(model: QAnchor, scenarios: dict[str, LoadedScenario], source: FeatureSource, out: Path,
                shard: Shard, run: ScoringRun, batch_users: int = 64, push: bool = True,
                progress: Callable[[int, int], None] | None = None) -> ShardReport:
    """Embed every user of `shard` under `scenarios` (as planned in `run`), part by part; skip parts on disk.

    `progress(users_done_in_part, shard_users_total)` is called after each part."""
    if batch_users < 1:
        raise BatchScoringError("batch size must be positive")
    open_run(out, run)
    engine = EmbeddingEngine(model, cache=None, encode_batch_size=batch_users)
    suffixes = [engine.scenario_suffix(scenarios[name]) for name in run.scenarios]
    reference_time, part_users = run.reference_time, run.part_users
    start = time.perf_counter()
    users = shard_users(source.known_users(), shard)
    report, skipped = ShardReport(shard=shard.tag, users=len(users)), Counter()
    for part, first in enumerate(range(0, len(users), part_users)):
        path = out / f"part-{shard.tag}-{part:06d}.parquet"
        ids = users[first:first + part_users]
        if path.is_file():
            rows, part_skipped = _read_part_counts(path)
            report.parts_skipped += 1
        else:
            part_skipped = Counter()
            features = _user_features(ids, source.online_rows(ids), model, part_skipped)
            vectors = engine.embed(features, [reference_time] * len(features), suffixes) if features else \
                np.zeros((0, len(suffixes), model.settings.embed_dim), dtype=np.float32)
            frame = _part_frame(features, vectors, run)
            if push and len(frame):
                source.push_embeddings(frame)
            _write_part(frame, path, list(run.scenarios), part_skipped)
            rows = len(frame)
            report.parts_written += 1
        report.scored += rows
        skipped.update(part_skipped)
        if progress is not None:
            progress(len(ids), len(users))
    report.skipped_users = dict(skipped)
    report.seconds = round(time.perf_counter() - start, 3)
    (out / f"_shard-{shard.tag}.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    return report
