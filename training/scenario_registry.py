"""Scenario registration in MLflow: experiment `qanchor-scenario-<name>`, registered model of the
same name, each version tagged with the backbone version it was tuned on. Reading, listing and
archiving registered scenarios is `training.registry`'s job (it needs no Feast).

A scenario version's artifact folder (`scenario/`) holds `scenario.json` (name, query, zero-shot
flag, class ids, temperature, backbone version, metrics) and, for tuned scenarios,
`prompt.safetensors` (`prompt` [k, hidden], `prototypes` [P, D], `prototype_classes` [P], the
scoring space's `center` [D] and `whitening` [D, D]). The registry entry is created last, after
every artifact is logged: a failure leaves no version.

Tuning returns the better of its best tuned state and the query-only starting point on
validation (`TuningResult.chosen`); the version records which (`state` tag and
`scenario.json`). With `require_gain`, a tuning that does not beat query-only registers
nothing: its MLflow run ends FAILED with the reason, so the attempt stays auditable.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from safetensors.torch import save_file

from feature_repo.store import UserFeatureStore
from training import registry, tracking
from training.registry import ScenarioError
from training.scenario_labels import validate_labels
from training.scenario_tuning import TuningSettings, load_labelled_users, tune

NAME = re.compile(r"^[a-z][a-z0-9_]{1,47}$")
MAX_QUERY_CHARS = 512


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    backbone_version: str
    zero_shot: bool
    metrics: dict[str, float]
    #: "tuned", "query_only" (tuning lost to its starting point) or "zero_shot" (no labels).
    state: str = "zero_shot"
    warnings: tuple[str, ...] = ()


def _check(name: str, query: str) -> None:
    if not NAME.match(name):
        raise ScenarioError(f"scenario name {name!r} must match {NAME.pattern} (lowercase, digits, underscores)")
    if not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise ScenarioError(f"the scenario query must be 1..{MAX_QUERY_CHARS} characters")


def register_scenario(name: str, query: str, store: UserFeatureStore, labels: pd.DataFrame | None = None,
                      backbone: str = "champion", settings: TuningSettings | None = None,
                      min_per_class: int = 20, require_gain: bool = False) -> Registered:
    """Tune (with labels) or describe (query-only) a scenario and register it beside its backbone.

    Raises ScenarioError, registering nothing, when `require_gain` is set and the tuned
    prompt does not beat the query-only state on validation AUC.
    """
    settings = settings or TuningSettings()
    _check(name, query)
    try:
        backbone_version = registry.backbone_version(backbone)
    except tracking.TrackingError as err:
        raise ScenarioError(str(err)) from None
    validated = None
    if labels is not None:
        validated = validate_labels(labels, store.known_users(), *store.label_window(), min_per_class=min_per_class)
    experiment_id = tracking.open_experiment(tracking.tracking_uri(), registry.SCENARIO_PREFIX + name)
    model = registry.load_model(backbone_version)
    meta: dict = {"name": name, "query": query, "zero_shot": validated is None, "backbone_version": backbone_version,
                  "temperature": settings.temperature, "classes": list(validated.classes) if validated else [],
                  "tokens": 0, "state": "zero_shot", "metrics": {}}
    warnings: list[str] = []
    with tracking.mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scenario"
        folder.mkdir()
        tracking.mlflow.log_params({"query": query[:500], "backbone_version": backbone_version,
                                    "zero_shot": meta["zero_shot"], **(settings.model_dump() if validated else {})})
        if validated is not None:
            users, times = load_labelled_users(store, validated)
            result = tune(model, users, times, validated.frame["class_index"].to_numpy(), query, settings)
            for row in result.history:
                tracking.mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
            tracking.mlflow.log_metrics(result.metrics)
            tracking.mlflow.set_tag("state", result.chosen)
            if require_gain and result.chosen != "tuned":
                reason = (f"tuning did not beat the query-only state on validation (best tuned AUC "
                          f"{result.metrics['tuned_val_auc']:.3f} vs query-only {result.metrics['query_only_val_auc']:.3f}); "
                          "nothing registered (--require-gain)")
                tracking.mlflow.set_tag("refused", reason)
                raise ScenarioError(reason)  # leaving the `with` ends the run FAILED
            meta["metrics"], meta["state"], warnings = result.metrics, result.chosen, result.warnings
            meta["tokens"] = 0 if result.prompt.prompt is None else int(result.prompt.prompt.shape[0])
            tensors = {"prototypes": result.prompt.prototypes.detach().cpu().contiguous(),
                       "prototype_classes": result.prompt.prototype_classes.cpu().contiguous(),
                       "center": result.prompt.center.cpu().contiguous(),
                       "whitening": result.prompt.whitening.cpu().contiguous()}
            if result.prompt.prompt is not None:
                tensors["prompt"] = result.prompt.prompt.detach().cpu().contiguous()
            save_file(tensors, str(folder / "prompt.safetensors"))
        (folder / "scenario.json").write_text(json.dumps(meta, indent=2))
        tracking.mlflow.log_artifacts(str(folder), "scenario")
        source = f"{run.info.artifact_uri}/scenario"
    client = registry.client()
    registered_name = registry.SCENARIO_PREFIX + name
    try:
        client.get_registered_model(registered_name)
    except tracking.MlflowException:
        client.create_registered_model(registered_name, tags={"kind": "qanchor-scenario"})
    version = client.create_model_version(registered_name, source=source, run_id=run.info.run_id, tags={
        "backbone_version": backbone_version, "zero_shot": str(meta["zero_shot"]).lower(), "state": meta["state"],
        "query": query[:500]})
    return Registered(name, str(version.version), backbone_version, meta["zero_shot"], meta["metrics"], meta["state"],
                      tuple(warnings))
