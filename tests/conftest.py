"""Shared fixtures: one small generated dataset, imported and applied to a real SQLite Feast store."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FEAST_USAGE", "False")

from qanchor.modality_spec import load_spec  # noqa: E402
from qanchor.synthetic.generator import DEFAULT_AS_OF, GeneratorConfig, generate  # noqa: E402

AS_OF: datetime = DEFAULT_AS_OF


@pytest.fixture(scope="session")
def spec():
    return load_spec()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """300 users, generated in 3 chunks so the multi-part layout is exercised."""
    out = tmp_path_factory.mktemp("data") / "raw"
    generate(GeneratorConfig(users=300, seed=11, chunk_users=100), out, progress=False)
    return out


@pytest.fixture(scope="session")
def features(dataset, spec, tmp_path_factory) -> Path:
    from feature_repo.ingest import ImportConfig, import_data

    out = tmp_path_factory.mktemp("features") / "features"
    import_data(ImportConfig(events=dataset / "events", profiles=dataset / "profiles", out=out, spec=spec,
                             as_of=AS_OF), progress=False)
    return out


def materialized_store(features: Path, repo: Path):
    """A real Feast repository with a SQLite online store over `features`, applied and materialized."""
    from feature_repo.store import UserFeatureStore, write_repo

    store = UserFeatureStore(write_repo(repo, features))
    store.apply()
    store.materialize()
    return store


@pytest.fixture(scope="session")
def sqlite_store(features, tmp_path_factory):
    """The shared store most tests read; tests that apply or push build their own with `materialized_store`."""
    return materialized_store(features, tmp_path_factory.mktemp("repo") / "store")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)
