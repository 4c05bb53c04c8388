"""The registered backbone's pyfunc model, logged with MLflow's models-from-code.

MLflow copies this file into the logged model and executes it on load, so a registered
version needs no pickled bytes: it loads wherever `qanchor` is installed, whatever the
cloudpickle or Python version it was logged under, and loading never unpickles anything.
Keep it importable on its own: it is run as a script, not as part of the package.

`predict` takes rows of (features JSON, query[, user_id, reference_time]) and returns one
embedding per row.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd

#: Name of the saved-model folder among the logged model's artifacts.
MODEL_ARTIFACT = "qanchor"


class QAnchorPyfunc(mlflow.pyfunc.PythonModel):
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
            reference_time = None if ref is None or pd.isna(ref) else int(ref)
            vectors.append(self.model.embed(features, [row["query"]], reference_time=reference_time)[0, 0].tolist())
        return pd.DataFrame({"embedding": vectors})


mlflow.models.set_model(QAnchorPyfunc())
