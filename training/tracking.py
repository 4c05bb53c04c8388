"""MLflow: experiment tracking, the pyfunc model flavour and the backbone registry.

Naming (DESIGN.md): experiment `qanchor-pretrain`, registered model `qanchor-backbone` with
aliases `champion` and `challenger`. Tracking URI: `MLFLOW_TRACKING_URI`, else
`sqlite:///mlruns.db`. Registration is all-or-nothing: a version whose alias or tags cannot be
set is deleted again, so the registry never shows a half-registered model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import yaml

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
PRETRAIN_EXPERIMENT = "qanchor-pretrain"
BACKBONE_MODEL = "qanchor-backbone"
MODEL_ARTIFACT = "qanchor"


class TrackingError(RuntimeError):
    """The tracking server or registry cannot be used (bad URI, unwritable store)."""


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def open_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Point MLflow at `uri` and make sure `name` exists; fails fast, before any training."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingError(f"tracking URI {uri}: directory {parent} does not exist or is not writable")
        # Artifacts beside the database, not in whatever directory the command happens to run in.
        artifact_location = artifact_location or (parent.resolve() / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=artifact_location)
        return experiment.experiment_id
    except MlflowException as err:
        raise TrackingError(f"tracking URI {uri}: {err.message}") from None


class QAnchorPyfunc(mlflow.pyfunc.PythonModel):
    """`predict` takes rows of (features JSON, query[, reference_time]) and returns embeddings."""

    def load_context(self, context) -> None:
        from qanchor.model import QAnchor

        self.model = QAnchor.from_pretrained(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from qanchor.features import UserFeatures

        missing = {"features", "query"} - set(model_input.columns)
        if missing:
            raise ValueError(f"model input lacks columns {sorted(missing)}")
        vectors = []
        for row in model_input.to_dict("records"):
            features = UserFeatures.from_row(row.get("user_id", ""), json.loads(row["features"]), self.model.spec)
            ref = row.get("reference_time")
            vectors.append(self.model.embed(features, [row["query"]], reference_time=None if pd.isna(ref) else int(ref))[0, 0].tolist())
        return pd.DataFrame({"embedding": vectors})


def log_backbone(model_dir: Path, example: pd.DataFrame) -> str:
    """Log the saved model as a pyfunc inside the active run; returns its model URI."""
    from mlflow.models import infer_signature

    signature = infer_signature(example, pd.DataFrame({"embedding": [[0.0]]}))
    info = mlflow.pyfunc.log_model(name="model", python_model=QAnchorPyfunc(),
                                   artifacts={MODEL_ARTIFACT: str(model_dir)}, signature=signature,
                                   input_example=None)
    return info.model_uri


def register(model_uri: str, name: str, alias: str | None, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name`, tag it and point `alias` at it, atomically."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
    except Exception:
        client.delete_model_version(name, version)
        raise
    return str(version)


def promote(version: str, name: str = BACKBONE_MODEL, alias: str = "champion") -> None:
    client = MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise TrackingError(f"{name} has no version {version}") from None
    client.set_registered_model_alias(name, alias, version)


def download_model(name: str, alias_or_version: str) -> tuple[Path, str]:
    """Local directory and version number of a registered Q-Anchor model (`qanchor.registry` entry point)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    try:
        version = str(client.get_model_version(name, alias_or_version).version if alias_or_version.isdigit()
                      else client.get_model_version_by_alias(name, alias_or_version).version)
    except MlflowException as err:
        raise TrackingError(f"{name} has no version or alias {alias_or_version!r}: {err.message}") from None
    ref = f"models:/{name}/{version}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(ref, dst_path=tempfile.mkdtemp(prefix="qanchor-")))
    except MlflowException as err:
        raise TrackingError(f"cannot resolve {ref}: {err.message}") from None
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return local / flavor["artifacts"][MODEL_ARTIFACT]["path"], version
