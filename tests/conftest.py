"""Shared fixtures: one small generated dataset, imported and applied to a real SQLite Feast store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def tracking_store(folder: Path) -> Iterator[str]:
    """MLFLOW_TRACKING_URI pointing at a fresh SQLite store in `folder` while the block runs."""
    uri = f"sqlite:///{folder}/mlruns.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def log_tiny_backbone(spec, folder: Path, seed: int = 0, params: dict[str, str] | None = None) -> str:
    """An untrained `tiny` backbone logged to a `qanchor-pretrain` run (with `params`); its model URI."""
    import pandas as pd

    from qanchor.model import ModelSettings, QAnchor
    from training import tracking

    model_dir = QAnchor.build(spec, ModelSettings(), seed=seed).save_pretrained(folder / "model")
    experiment = tracking.open_experiment(os.environ["MLFLOW_TRACKING_URI"], "qanchor-pretrain")
    with tracking.mlflow.start_run(experiment_id=experiment):
        tracking.mlflow.log_params(params or {})
        return tracking.log_backbone(model_dir, pd.DataFrame({"user_id": ["u"], "features": ["{}"], "query": ["q"],
                                                              "reference_time": [0]}))
