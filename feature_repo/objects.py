"""Builders for the Feast objects of a Q-Anchor repository, derived from the modality spec.

`definitions.py` (what `feast apply` reads) and `UserFeatureStore.apply` both use these, so
the registry always holds exactly one version of the truth.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("FEAST_USAGE", "False")  # no telemetry: no network at run time
# Feast's modules call `warnings.simplefilter("once", DeprecationWarning)` when imported, which
# would override every warning filter the process set before; catch_warnings undoes that.
with warnings.catch_warnings():
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.data_format import ParquetFormat
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination
    from feast.types import Array, Float32, Float64, Int64, String

from feature_repo.layout import DATA_MANIFEST, PROFILE_VIEW, SETTINGS_FILE, repo_settings
from qanchor.features import INT, LIST_OF_FLOATS, LIST_OF_INTS, LIST_OF_STRINGS, history_columns, history_view_name
from qanchor.modality_spec import EventModality, ModalitySpec, ProfileModality, parse_spec

FEATURE_SERVICE = "userU"
EMBEDDING_VIEW = "user_embedding"
EMBEDDING_PUSH_SOURCE = "user_embedding_push"
#: Served features are logged here, relative to the repository, one folder per backbone service.
FEATURE_LOG_DIR = "feature_logs"
#: Profiles change slowly; a profile row stays valid this long.
PROFILE_TTL_DAYS = 3650


def event_view_name(modality: str) -> str:
    return f"{modality}_events"


def backbone_service_name(version: str) -> str:
    return f"qanchor_backbone_v{version}"


@dataclass(frozen=True)
class EmbeddingSettings:
    """The `user_embedding` view as the last batch-scoring run left it: its scenarios and files."""

    path: str
    scenarios: tuple[str, ...]
    backbone_version: str


@dataclass(frozen=True)
class RepoSettings:
    """Where a repository's feature data lives, the spec it was imported with, and what was added since.

    `backbones` (version -> modalities the model reads) and `embeddings` are written by
    registration and batch scoring (`update_settings`), so `feast apply` on `definitions.py`
    rebuilds exactly the objects those commands applied instead of deleting them.
    """

    repo: Path
    data: Path
    spec: ModalitySpec
    as_of: str
    snapshot_days: tuple[int, ...]
    feature_version: str
    backbones: dict[str, tuple[str, ...]] = field(default_factory=dict)
    embeddings: EmbeddingSettings | None = None

    @classmethod
    def load(cls, repo: Path) -> RepoSettings:
        settings, data = repo_settings(repo)
        manifest_path = data / DATA_MANIFEST
        manifest = json.loads(manifest_path.read_text())
        embeddings = settings.get("embeddings")
        return cls(
            repo=Path(repo),
            data=data,
            spec=parse_spec(manifest["spec"], str(manifest_path)),
            as_of=manifest["as_of"],
            snapshot_days=tuple(manifest["snapshot_days"]),
            feature_version=manifest["feature_version"],
            backbones={v: tuple(m) for v, m in settings.get("backbones", {}).items()},
            embeddings=None if embeddings is None else EmbeddingSettings(
                path=embeddings["path"], scenarios=tuple(embeddings["scenarios"]),
                backbone_version=embeddings["backbone_version"]),
        )


def update_settings(repo: Path, **changes: object) -> None:
    """Merge `changes` into the repository's `qanchor.json`, atomically (a reader never sees half a file)."""
    path = Path(repo) / SETTINGS_FILE
    settings = json.loads(path.read_text())
    settings.update(changes)
    tmp = path.with_name(f".{SETTINGS_FILE}.tmp")
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    tmp.replace(path)


def user_entity() -> Entity:
    return Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
                  description="A platform user; every Q-Anchor feature is keyed by it.")


def event_view(modality: EventModality, data: Path, user: Entity) -> FeatureView:
    """The user's most recent `max_events` events of one modality, oldest first, as parallel lists."""
    source = FileSource(
        name=f"{modality.name}_source",
        path=str(data / modality.name),
        timestamp_field="event_timestamp",
        file_format=ParquetFormat(),
        description=f"Snapshots of the last {modality.window_days} days of {modality.name} events per user.",
    )
    schema = [Field(name="texts", dtype=Array(String)), Field(name="event_times", dtype=Array(Int64))]
    schema += [Field(name=f.name, dtype=Array(Float64)) for f in modality.numeric_fields]
    schema += [Field(name="n_events", dtype=Int64)]
    return FeatureView(
        name=event_view_name(modality.name),
        entities=[user],
        ttl=timedelta(days=modality.window_days),
        schema=schema,
        source=source,
        online=True,
        description=modality.description or f"{modality.name} events",
        tags={"modality": modality.name, "max_events": str(modality.max_events)},
    )


_FEAST_TYPES = {LIST_OF_STRINGS: Array(String), LIST_OF_INTS: Array(Int64), LIST_OF_FLOATS: Array(Float64), INT: Int64}


def history_view(spec: ModalitySpec, modality: EventModality, data: Path, user: Entity) -> FeatureView:
    """Every event of the window aggregated per event kind: what the last `max_events` events miss."""
    name = history_view_name(modality.name)
    source = FileSource(
        name=f"{name}_source",
        path=str(data / name),
        timestamp_field="event_timestamp",
        file_format=ParquetFormat(),
        description=f"Per-kind aggregates of all {modality.name} events in the last {modality.window_days} days.",
    )
    return FeatureView(
        name=name,
        entities=[user],
        ttl=timedelta(days=modality.window_days),
        schema=[Field(name=column, dtype=_FEAST_TYPES[kind]) for column, kind in history_columns(spec, modality)],
        source=source,
        online=True,
        description=f"{modality.name}: counts, recency and sums per event kind over the whole window",
        tags={"modality": modality.name, "history_kinds": str(modality.history_kinds)},
    )


_PROFILE_TYPES = {"int": Int64, "float": Float64, "category": String}


def profile_view(profile: ProfileModality, data: Path, user: Entity, ttl_days: int) -> FeatureView:
    """The tabular modality: the latest profile row per user."""
    source = FileSource(
        name="profile_source",
        path=str(data / PROFILE_VIEW),
        timestamp_field="event_timestamp",
        file_format=ParquetFormat(),
        description="Profile attributes per user, stamped with when they were last updated.",
    )
    return FeatureView(
        name=PROFILE_VIEW,
        entities=[user],
        ttl=timedelta(days=ttl_days),
        schema=[Field(name=f.name, dtype=_PROFILE_TYPES[f.type]) for f in profile.fields],
        source=source,
        online=True,
        description=profile.description or "profile",
        tags={"modality": profile.name},
    )


def embedding_view(embeddings: EmbeddingSettings, user: Entity) -> tuple[PushSource, FeatureView]:
    """Scenario embeddings written back by `qanchor score-batch`: one Array(Float32) column per scenario.

    They arrive through a push source (online store); its batch source is the run's parquet output,
    so point-in-time reads of the vectors work too.
    """
    push = PushSource(
        name=EMBEDDING_PUSH_SOURCE,
        batch_source=FileSource(name="user_embedding_batch", path=embeddings.path, timestamp_field="event_timestamp",
                                file_format=ParquetFormat(),
                                description="Parquet parts written by `qanchor score-batch`."),
        description="Scenario embeddings pushed by batch scoring.",
    )
    view = FeatureView(
        name=EMBEDDING_VIEW,
        entities=[user],
        ttl=timedelta(0),  # a vector stays valid until the next scoring run replaces it
        schema=[Field(name=s, dtype=Array(Float32)) for s in embeddings.scenarios]
        + [Field(name="backbone_version", dtype=String)],
        source=push,
        online=True,
        description="L2-normalised Q-Anchor embedding per scenario; compare vectors of one backbone version only.",
        tags={"backbone_version": embeddings.backbone_version},
    )
    return push, view


def feature_log_path(repo: Path, version: str) -> Path:
    """Absolute, because the DuckDB offline store writes logs relative to the process's working
    directory, not the repository's."""
    return Path(repo).resolve() / FEATURE_LOG_DIR / backbone_service_name(version)


def backbone_feature_service(version: str, views: list[FeatureView], repo: Path) -> FeatureService:
    """The features one registered backbone version reads, with the service's logging of what was served."""
    name = backbone_service_name(version)
    return FeatureService(
        name=name,
        features=views,
        description=f"Exactly the features qanchor-backbone v{version} reads; served rows are logged here.",
        tags={"backbone_version": version},
        logging_config=LoggingConfig(destination=FileLoggingDestination(path=str(feature_log_path(repo, version)))),
    )


def build_definitions(settings: RepoSettings) -> dict[str, object]:
    """All Feast objects of the repository, by the Python name `definitions.py` gives them."""
    user = user_entity()
    objects: dict[str, object] = {"user": user}
    views = [event_view(m, settings.data, user) for m in settings.spec.event_modalities]
    # Data imported before the history view existed has no history folders: serve it without them
    # (a model then gets no [HIST_m] tokens) until it is re-imported.
    views += [history_view(settings.spec, m, settings.data, user)
              for m in settings.spec.history_modalities if (settings.data / history_view_name(m.name)).is_dir()]
    if settings.spec.profile is not None:
        views.append(profile_view(settings.spec.profile, settings.data, user, ttl_days=PROFILE_TTL_DAYS))
    for view in views:
        objects[view.name] = view
    objects[FEATURE_SERVICE] = FeatureService(
        name=FEATURE_SERVICE,
        features=views,
        description="Every UserU feature the hierarchical encoder reads.",
        tags={"feature_version": settings.feature_version},
    )
    by_modality: dict[str, list[FeatureView]] = {}
    for view in views:
        by_modality.setdefault(view.tags["modality"], []).append(view)
    for version, modalities in settings.backbones.items():
        unknown = sorted(set(modalities) - set(by_modality))
        if unknown:
            raise ValueError(f"{SETTINGS_FILE}: backbone v{version} reads modalities {unknown} that the imported "
                             f"spec lacks ({sorted(by_modality)}); re-import with that spec or drop the entry")
        objects[backbone_service_name(version)] = backbone_feature_service(
            version, [v for m in modalities for v in by_modality[m]], settings.repo)
    if settings.embeddings is not None:
        push, view = embedding_view(settings.embeddings, user)
        objects[EMBEDDING_PUSH_SOURCE], objects[EMBEDDING_VIEW] = push, view
    return objects
