"""A thin adapter over `feast.FeatureStore` for what Q-Anchor reads and writes.

- `historical(entity_df)`: point-in-time-correct training rows (latest snapshot at or before
  each row's timestamp, within the view's TTL).
- `online(user_ids)`: the freshest materialized features for serving.
- `register_backbone` / `log_served_features`: a backbone version's feature service and the log
  of the rows the service served with it.
- `register_embeddings` / `push_embeddings` / `online_embeddings`: the `user_embedding` view that
  batch scoring writes back.

Reads return `qanchor.features.UserFeatures`-ready flat rows, so no Feast type leaks out.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Literal

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

# Feast's DuckDB offline store goes through ibis, which calls a DuckDB method DuckDB deprecated:
# nothing a user of this project can act on, so it is not shown.
warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)

from feature_repo.objects import (  # noqa: E402  (first: it imports Feast without Feast's warning filters)
    EMBEDDING_PUSH_SOURCE,
    EMBEDDING_VIEW,
    FEATURE_SERVICE,
    PROFILE_TTL_DAYS,
    PROFILE_VIEW,
    RepoSettings,
    backbone_service_name,
    build_definitions,
    event_view_name,
    feature_log_path,
    update_settings,
)
from feature_repo.layout import SETTINGS_FILE, require_imported_features  # noqa: E402
from feature_repo.point_in_time import FILE_OFFLINE_STORES, JoinedColumns, ParquetView, parquet_views  # noqa: E402
from feast import FeatureStore  # noqa: E402
from feast.data_source import PushMode  # noqa: E402
from feast.online_response import TIMESTAMP_POSTFIX  # noqa: E402
from qanchor.features import UserFeatures  # noqa: E402

#: Feast's FieldStatus values, as written into feature logs.
_PRESENT, _NOT_FOUND = 1, 3

OnlineStoreKind = Literal["sqlite", "redis"]
#: Point-in-time reads: DuckDB (default) over the parquet sources, or Feast's older dask engine.
#: Past one machine the same code runs on Feast's Spark or Ray offline stores (docs/data.md).
OfflineStoreKind = Literal["duckdb", "dask"]
#: "auto": local parquet sources are joined directly (feature_repo.point_in_time), others by Feast;
#: "feast": always Feast's `get_historical_features` (the reference the direct join is tested against).
PointInTimeEngine = Literal["auto", "feast"]
#: Entity-row number carried through Feast's join, which does not keep the entity order.
_ROW = "__entity_row"


def write_repo(repo: Path, data: Path, online_store: OnlineStoreKind = "sqlite",
               redis_url: str = "localhost:6379", project: str = "qanchor",
               offline_store: OfflineStoreKind = "duckdb") -> Path:
    """Lay out a self-contained Feast repository at `repo` over imported feature data `data`.

    The result is a plain Feast repo (feature_store.yaml + definitions.py) that the `feast`
    CLI understands too; `qanchor.json` points it at the data.
    """
    repo = Path(repo)
    data = Path(data).resolve()
    require_imported_features(data)
    package = resources.files("feature_repo")
    template = "feature_store.redis.yaml" if online_store == "redis" else "feature_store.yaml"
    config = yaml.safe_load(package.joinpath(template).read_text())
    config["project"] = project
    config["offline_store"] = {"type": offline_store}
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

    def __init__(self, repo: Path, point_in_time: PointInTimeEngine = "auto"):
        self.repo = Path(repo)
        self.point_in_time = point_in_time
        self.settings = RepoSettings.load(self.repo)
        self.spec = self.settings.spec
        self._store = FeatureStore(repo_path=str(self.repo))

    @property
    def feature_version(self) -> str:
        return self.settings.feature_version

    @property
    def reference_time(self) -> int:
        """The snapshot's as-of time in unix seconds: the default time recency is measured from
        when serving and batch scoring, so both compute the same vector for the same user."""
        return int(pd.Timestamp(self.settings.as_of).timestamp())

    def apply(self) -> list[str]:
        """Register entity, views and feature services; returns the names applied."""
        objects = build_definitions(self.settings)
        self._store.apply(list(objects.values()))
        return sorted(objects)

    def _apply_settings(self, **changes: object) -> None:
        """Record `changes` in qanchor.json and apply; on any failure the file is restored, so a
        failed registration leaves neither the settings nor (Feast applies atomically) the registry changed."""
        path = self.repo / SETTINGS_FILE
        before = path.read_text()
        try:
            update_settings(self.repo, **changes)
            self.settings = RepoSettings.load(self.repo)
            self.apply()
        except Exception:
            path.write_text(before)
            self.settings = RepoSettings.load(self.repo)
            raise

    def register_backbone(self, version: str, modalities: list[str]) -> str:
        """Apply the feature service of one backbone version (the features it reads); returns its name."""
        unknown = sorted(set(modalities) - set(self.spec.names))
        if unknown:
            raise ValueError(f"backbone v{version} reads modalities {unknown} that this store's spec lacks "
                             f"({list(self.spec.names)})")
        self.settings = RepoSettings.load(self.repo)  # another process may have registered since we opened it
        if tuple(self.settings.backbones.get(version, ())) != tuple(modalities):
            self._apply_settings(backbones={**{v: list(m) for v, m in self.settings.backbones.items()},
                                            version: list(modalities)})
        return backbone_service_name(version)

    def register_embeddings(self, path: Path, scenarios: list[str], backbone_version: str) -> None:
        """(Re)apply the `user_embedding` view with exactly these scenario columns, read back from `path`."""
        embeddings = {"path": str(Path(path).resolve()), "scenarios": list(scenarios),
                      "backbone_version": backbone_version}
        self.settings = RepoSettings.load(self.repo)
        current = self.settings.embeddings
        if current is None or (current.path, list(current.scenarios), current.backbone_version) != tuple(embeddings.values()):
            self._apply_settings(embeddings=embeddings)

    def push_embeddings(self, frame: pd.DataFrame) -> None:
        """Write scenario vectors (`user_id`, `event_timestamp`, one list column per scenario,
        `backbone_version`) into the online store through the push source."""
        self._store.push(EMBEDDING_PUSH_SOURCE, frame, to=PushMode.ONLINE)

    def online_embeddings(self, user_ids: list[str], scenarios: list[str]) -> list[dict]:
        """The pushed vectors per user (`None` where a user has none), plus the backbone version they came from."""
        refs = [f"{EMBEDDING_VIEW}:{s}" for s in (*scenarios, "backbone_version")]
        response = self._store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
        return [{k: response[k][i] for k in (*scenarios, "backbone_version")} for i in range(len(user_ids))]

    def feature_refs(self) -> list[str]:
        service = self._store.get_feature_service(FEATURE_SERVICE)
        return [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]

    def materialize(self, end: datetime | None = None) -> None:
        """Load the newest snapshot per user (up to `end`, default as_of) into the online store."""
        as_of = pd.Timestamp(self.settings.as_of).to_pydatetime()
        # Reach back as far as the longest TTL (the profile's) so slowly-changing rows load too;
        # Feast keeps only the newest row per user and view anyway.
        start = as_of - timedelta(days=PROFILE_TTL_DAYS)
        with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a coloured line per view; callers report
            self._store.materialize(start_date=start, end_date=end or as_of + timedelta(seconds=1))

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join: `entity_df` needs `user_id` and `event_timestamp` (UTC); rows in its order."""
        entities = self._entities(entity_df)
        columns = self.historical_columns(entities)
        self._require_snapshots(entities, columns)
        rows = pa.table(dict(columns)).to_pandas()
        # pandas turns a missing profile value (a nullable field, or a user without a profile
        # row) into NaN; the core reads missing as None, and keeps NaN for what it is: bad data.
        profile_columns = [f"{PROFILE_VIEW}__{f.name}" for f in (self.spec.profile.fields if self.spec.profile else ())]
        for column in profile_columns:
            rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
        return rows

    @staticmethod
    def _entities(entity_df: pd.DataFrame) -> pd.DataFrame:
        missing = {"user_id", "event_timestamp"} - set(entity_df.columns)
        if missing:
            raise ValueError(f"entity_df is missing columns {sorted(missing)}")
        return entity_df[["user_id", "event_timestamp"]].reset_index(drop=True)

    def historical_columns(self, entities: pd.DataFrame) -> Mapping[str, pa.ChunkedArray]:
        """The point-in-time join as Arrow columns (`<view>__<feature>`, entity row order), which is
        what bulk conversion reads. Rows without any snapshot come back null (`_require_snapshots`).

        Local parquet sources are joined by `JoinedColumns` (DuckDB, Feast's rule, view by view
        while the caller converts); any other offline store, or `point_in_time="feast"`, goes
        through Feast's own join.
        """
        views = self._parquet_views() if self.point_in_time == "auto" else None
        if views is not None:
            return JoinedColumns(pa.Table.from_pandas(entities, preserve_index=False), views)
        job = self._store.get_historical_features(entity_df=entities.assign(**{_ROW: range(len(entities))}),
                                                  features=self.feature_refs(), full_feature_names=True)
        table = job.to_arrow().sort_by(_ROW).drop_columns([_ROW])
        return {name: table.column(name) for name in table.column_names}

    def _require_snapshots(self, entities: pd.DataFrame, columns: Mapping[str, pa.ChunkedArray]) -> None:
        """Import writes a snapshot row for every known user (empty lists when idle), so a row with
        no snapshot in any event view is older than every snapshot or its user is unknown: it
        would train on an empty user, so it fails here instead of silently passing as one."""
        found = np.zeros(len(entities), dtype=bool) if self.spec.event_modalities else np.ones(len(entities), dtype=bool)
        for m in self.spec.event_modalities:
            column = columns[f"{event_view_name(m.name)}__n_events"]
            if len(column) != len(entities):
                raise ValueError(f"point-in-time join returned {len(column)} rows for {len(entities)} entity rows")
            found |= column.is_valid().to_numpy(zero_copy_only=False)
        if not found.all():
            example = entities.loc[~found, ["user_id", "event_timestamp"]].head(1).to_dict("records")
            raise ValueError(
                f"point-in-time join found features for {int(found.sum())} of {len(entities)} rows "
                f"(e.g. {example}): those rows are older than every snapshot (oldest feature data: "
                f"{max(self.settings.snapshot_days)} days before {self.settings.as_of}) or their users are unknown; "
                "move those rows later, drop them or re-import")

    def _parquet_views(self) -> list[ParquetView] | None:
        if self._store.config.offline_store.type not in FILE_OFFLINE_STORES:
            return None
        service = self._store.get_feature_service(FEATURE_SERVICE)
        return parquet_views([self._store.get_feature_view(p.name) for p in service.feature_view_projections])

    def features_at(self, user_ids: list[str], times: list[pd.Timestamp]) -> list[UserFeatures]:
        """Each user's features as of its time (point-in-time join), in the order given."""
        entities = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": pd.to_datetime(list(times), utc=True)})
        # Each distinct (user, time) is read once; groups are numbered in order of first appearance.
        codes = entities.groupby(["user_id", "event_timestamp"], sort=False).ngroup().to_numpy()
        unique = entities.drop_duplicates(ignore_index=True)
        columns = self.historical_columns(unique)
        users = UserFeatures.from_columns(unique["user_id"].tolist(), columns, self.spec)
        self._require_snapshots(unique, columns)
        return [users[c] for c in codes.tolist()]

    def known_users(self) -> set[str]:
        """Every imported user (who can be labelled and served): import writes a snapshot row for
        each user with events or a profile row into every event view, and profiles into theirs."""
        views = [PROFILE_VIEW, *(m.name for m in self.spec.event_modalities[:1])]
        return set().union(*(pd.read_parquet(self.settings.data / view, columns=["user_id"])["user_id"] for view in views
                             if (self.settings.data / view).exists()))

    def label_window(self) -> tuple[pd.Timestamp, pd.Timestamp, timedelta]:
        """(oldest snapshot, newest snapshot, event-view TTL): when a label can find features."""
        as_of = pd.Timestamp(self.settings.as_of)
        return as_of - pd.Timedelta(days=max(self.settings.snapshot_days)), as_of, timedelta(days=self.spec.window_days)

    def online_rows(self, user_ids: list[str], timestamps: bool = False) -> list[dict]:
        """Flat rows (`<view>__<feature>` keys) for each user, in order; unknown users get all-None.

        With `timestamps`, each feature also has `<key>__ts` (unix seconds of the row it came from),
        which is what feature logging records."""
        if not user_ids:
            return []
        response = self._store.get_online_features(features=self.feature_refs(),
                                                   entity_rows=[{"user_id": u} for u in user_ids],
                                                   full_feature_names=True).to_dict(include_event_timestamps=timestamps)
        return [{k: v[i] for k, v in response.items()} for i in range(len(user_ids))]

    def log_served_features(self, backbone_version: str, rows: list[dict], request_ids: list[str],
                            logged_at: datetime) -> bool:
        """Append served rows (from `online_rows(..., timestamps=True)`) to the backbone service's feature log.

        Returns False (nothing written) when that version has no registered feature service."""
        from feast.errors import FeatureServiceNotFoundException
        from feast.feature_logging import FeatureServiceLoggingSource

        try:
            service = self._store.get_feature_service(backbone_service_name(backbone_version), allow_cache=False)
        except FeatureServiceNotFoundException:
            return False
        schema = FeatureServiceLoggingSource(service, self._store.project).get_schema(self._store.registry)
        columns: dict[str, list] = {name: [] for name in schema.names}
        for row, request_id in zip(rows, request_ids):
            for name in schema.names:
                if name.endswith("__timestamp"):
                    seconds = row.get(name[: -len("__timestamp")] + TIMESTAMP_POSTFIX) or 0
                    columns[name].append(datetime.fromtimestamp(seconds, tz=timezone.utc))
                elif name.endswith("__status"):
                    columns[name].append(_NOT_FOUND if row.get(name[: -len("__status")]) is None else _PRESENT)
                elif name == "__log_timestamp":
                    columns[name].append(logged_at)
                elif name == "__log_date":
                    columns[name].append(logged_at.date())
                elif name == "__request_id":
                    columns[name].append(request_id)
                else:
                    columns[name].append(row.get(name))
        feature_log_path(self.repo, backbone_version).mkdir(parents=True, exist_ok=True)
        self._store.write_logged_features(pa.Table.from_pydict(columns, schema=schema), service)
        return True

    def online(self, user_ids: list[str]) -> list[UserFeatures]:
        return UserFeatures.from_rows(user_ids, self.online_rows(user_ids), self.spec)
