"""Builders for the Feast objects of a Q-Anchor repository, derived from the modality spec.

`definitions.py` (what `feast apply` reads) and `UserFeatureStore.apply` both use these, so
the registry always holds exactly one version of the truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64, String

from qanchor.modality_spec import EventModality, ModalitySpec, ProfileModality, parse_spec

#: Settings file every Q-Anchor Feast repository carries next to feature_store.yaml.
SETTINGS_FILE = "qanchor.json"
#: Written by `qanchor data import` into the feature data directory.
DATA_MANIFEST = "manifest.json"
PROFILE_VIEW = "profile"
FEATURE_SERVICE = "userU"
#: Profiles change slowly; a profile row stays valid this long.
PROFILE_TTL_DAYS = 3650


def event_view_name(modality: str) -> str:
    return f"{modality}_events"


@dataclass(frozen=True)
class RepoSettings:
    """Where a repository's feature data lives and the spec it was imported with."""

    repo: Path
    data: Path
    spec: ModalitySpec
    as_of: str
    snapshot_days: tuple[int, ...]
    feature_version: str

    @classmethod
    def load(cls, repo: Path) -> RepoSettings:
        settings_path = Path(repo) / SETTINGS_FILE
        if not settings_path.is_file():
            raise FileNotFoundError(f"{settings_path} is missing; run `qanchor features apply --data DIR --repo {repo}`")
        settings = json.loads(settings_path.read_text())
        data = Path(settings["data"])
        data = data if data.is_absolute() else (Path(repo) / data).resolve()
        manifest_path = data / DATA_MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} is missing; run `qanchor data import` to create {data}")
        manifest = json.loads(manifest_path.read_text())
        return cls(
            repo=Path(repo),
            data=data,
            spec=parse_spec(manifest["spec"], str(manifest_path)),
            as_of=manifest["as_of"],
            snapshot_days=tuple(manifest["snapshot_days"]),
            feature_version=manifest["feature_version"],
        )


def user_entity() -> Entity:
    return Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
                  description="A platform user; every Q-Anchor feature is keyed by it.")


def event_view(modality: EventModality, data: Path, user: Entity) -> FeatureView:
    """The user's most recent `max_events` events of one modality, oldest first, as parallel lists."""
    source = FileSource(
        name=f"{modality.name}_source",
        path=str(data / modality.name),
        timestamp_field="event_timestamp",
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


_PROFILE_TYPES = {"int": Int64, "float": Float64, "category": String}


def profile_view(profile: ProfileModality, data: Path, user: Entity, ttl_days: int) -> FeatureView:
    """The tabular modality: the latest profile row per user."""
    source = FileSource(
        name="profile_source",
        path=str(data / PROFILE_VIEW),
        timestamp_field="event_timestamp",
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


def build_definitions(settings: RepoSettings) -> dict[str, object]:
    """All Feast objects of the repository, by the Python name `definitions.py` gives them."""
    user = user_entity()
    objects: dict[str, object] = {"user": user}
    views = [event_view(m, settings.data, user) for m in settings.spec.event_modalities]
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
    return objects
