"""MLflow experiment tracking and the pyfunc model flavour (the registry is `training.registry`).

Naming (DESIGN.md): experiment `qanchor-pretrain`. Tracking URI: `MLFLOW_TRACKING_URI`, else
`sqlite:///mlruns.db`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
PRETRAIN_EXPERIMENT = "qanchor-pretrain"
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
