"""A thin adapter over `feast.FeatureStore` for Q-Anchor's two reads.

- `historical(entity_df)`: point-in-time-correct training rows (latest snapshot at or before
  each row's timestamp, within the view's TTL).
- `online(user_ids)`: the freshest materialized features for serving.

Both return `qanchor.features.UserFeatures`-ready flat rows, so no Feast type leaks out.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Literal

import json

import pandas as pd
import yaml

os.environ.setdefault("FEAST_USAGE", "False")  # no telemetry: no network at run time

from feast import FeatureStore  # noqa: E402

from feature_repo.objects import FEATURE_SERVICE, PROFILE_TTL_DAYS, SETTINGS_FILE, RepoSettings, build_definitions  # noqa: E402
from qanchor.features import UserFeatures  # noqa: E402

OnlineStoreKind = Literal["sqlite", "redis"]


def write_repo(repo: Path, data: Path, online_store: OnlineStoreKind = "sqlite",
               redis_url: str = "localhost:6379", project: str = "qanchor") -> Path:
    """Lay out a self-contained Feast repository at `repo` over imported feature data `data`.

    The result is a plain Feast repo (feature_store.yaml + definitions.py) that the `feast`
    CLI understands too; `qanchor.json` points it at the data.
    """
    repo = Path(repo)
    data = Path(data).resolve()
    if not (data / "manifest.json").is_file():
        raise FileNotFoundError(f"{data} holds no imported features (manifest.json missing); run `qanchor data import`")
    package = resources.files("feature_repo")
    template = "feature_store.redis.yaml" if online_store == "redis" else "feature_store.yaml"
    config = yaml.safe_load(package.joinpath(template).read_text())
    config["project"] = project
    config["registry"] = "registry.db"
    if online_store == "redis":
        config["online_store"]["connection_string"] = redis_url
    else:
        config["online_store"]["path"] = "online_store.db"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / SETTINGS_FILE).write_text(json.dumps({"data": str(data)}) + "\n")
    with resources.as_file(package.joinpath("definitions.py")) as definitions:
        shutil.copyfile(definitions, repo / "definitions.py")
    return repo


class UserFeatureStore:
    """Q-Anchor's view of one Feast repository."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.settings = RepoSettings.load(self.repo)
        self.spec = self.settings.spec
        self._store = FeatureStore(repo_path=str(self.repo))

    @property
    def feature_version(self) -> str:
        return self.settings.feature_version

    def apply(self) -> list[str]:
        """Register entity, views and feature service; returns the names applied."""
        objects = build_definitions(self.settings)
        self._store.apply(list(objects.values()))
        return sorted(objects)

    def feature_refs(self) -> list[str]:
        service = self._store.get_feature_service(FEATURE_SERVICE)
        return [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]

    def materialize(self, end: datetime | None = None) -> None:
        """Load the newest snapshot per user (up to `end`, default as_of) into the online store."""
        as_of = pd.Timestamp(self.settings.as_of).to_pydatetime()
        # Reach back as far as the longest TTL (the profile's) so slowly-changing rows load too;
        # Feast keeps only the newest row per user and view anyway.
        start = as_of - timedelta(days=PROFILE_TTL_DAYS)
        self._store.materialize(start_date=start, end_date=end or as_of + timedelta(seconds=1))

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join: `entity_df` needs `user_id` and `event_timestamp` (UTC)."""
        missing = {"user_id", "event_timestamp"} - set(entity_df.columns)
        if missing:
            raise ValueError(f"entity_df is missing columns {sorted(missing)}")
        job = self._store.get_historical_features(entity_df=entity_df, features=self.feature_refs(),
                                                  full_feature_names=True)
        rows = job.to_df()
        if len(rows) != len(entity_df):
            # Feast's file offline store drops an entity row whose only candidate feature rows are
            # newer than it, instead of returning nulls; silently losing training rows is worse
            # than failing, so say which rows are too early.
            raise ValueError(
                f"point-in-time join returned {len(rows)} of {len(entity_df)} rows: some rows are older than "
                f"every snapshot of a view (oldest feature data: {min(self.settings.snapshot_days)} days "
                f"before {self.settings.as_of}, profile `updated_at`); move those rows later or re-import")
        return rows

    def features_at(self, user_ids: list[str], times: list[pd.Timestamp]) -> list[UserFeatures]:
        """Each user's features as of its time (point-in-time join), in the order given."""
        entities = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": list(times)})
        unique = entities.drop_duplicates(ignore_index=True)
        by_key = {(r["user_id"], r["event_timestamp"]): UserFeatures.from_row(r["user_id"], r, self.spec)
                  for r in self.historical(unique).to_dict("records")}
        return [by_key[k] for k in zip(entities["user_id"], entities["event_timestamp"])]

    def known_users(self) -> set[str]:
        """Every user with a profile row in the offline sources (who can be labelled and served)."""
        from feature_repo.objects import PROFILE_VIEW

        return set(pd.read_parquet(self.settings.data / PROFILE_VIEW, columns=["user_id"])["user_id"])

    def label_window(self) -> tuple[pd.Timestamp, pd.Timestamp, timedelta]:
        """(oldest snapshot, newest snapshot, event-view TTL): when a label can find features."""
        as_of = pd.Timestamp(self.settings.as_of)
        return as_of - pd.Timedelta(days=max(self.settings.snapshot_days)), as_of, timedelta(days=self.spec.window_days)

    def online_rows(self, user_ids: list[str]) -> list[dict]:
        """Flat rows (`<view>__<feature>` keys) for each user, in order; unknown users get all-None."""
        if not user_ids:
            return []
        response = self._store.get_online_features(features=self.feature_refs(),
                                                   entity_rows=[{"user_id": u} for u in user_ids],
                                                   full_feature_names=True).to_dict()
        return [{k: v[i] for k, v in response.items()} for i in range(len(user_ids))]

    def online(self, user_ids: list[str]) -> list[UserFeatures]:
        return [UserFeatures.from_row(u, row, self.spec) for u, row in zip(user_ids, self.online_rows(user_ids))]
