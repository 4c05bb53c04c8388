"""Scenario registration in MLflow: experiment `qanchor-scenario-<name>`, registered model of the
same name, each version tagged with the backbone version it was tuned on.

A scenario version's artifact folder (`scenario/`) holds `scenario.json` (name, query, zero-shot
flag, class ids, temperature, backbone version, metrics) and, for tuned scenarios,
`prompt.safetensors` (`prompt` [k, hidden], `prototypes` [P, D], `prototype_classes` [P]). The
registry entry is created last, after every artifact is logged: a failure leaves no version.
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
from training import tracking
from training.scenario_labels import validate_labels
from training.scenario_tuning import TuningSettings, load_labelled_users, tune

PREFIX = "qanchor-scenario-"
NAME = re.compile(r"^[a-z][a-z0-9_]{1,47}$")
MAX_QUERY_CHARS = 512


class ScenarioError(ValueError):
    """A scenario request that cannot be served (bad name, bad query, unknown scenario)."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    backbone_version: str
    zero_shot: bool
    metrics: dict[str, float]


def _check(name: str, query: str) -> None:
    if not NAME.match(name):
        raise ScenarioError(f"scenario name {name!r} must match {NAME.pattern} (lowercase, digits, underscores)")
    if not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise ScenarioError(f"the scenario query must be 1..{MAX_QUERY_CHARS} characters")


def _backbone_version(alias_or_version: str) -> str:
    client = tracking.MlflowClient()
    try:
        if alias_or_version.isdigit():
            return str(client.get_model_version(tracking.BACKBONE_MODEL, alias_or_version).version)
        return str(client.get_model_version_by_alias(tracking.BACKBONE_MODEL, alias_or_version).version)
    except tracking.MlflowException:
        raise ScenarioError(f"{tracking.BACKBONE_MODEL} has no version or alias {alias_or_version!r}") from None


def register_scenario(name: str, query: str, store: UserFeatureStore, labels: pd.DataFrame | None = None,
                      backbone: str = "champion", settings: TuningSettings | None = None,
                      min_per_class: int = 20) -> Registered:
    """Tune (with labels) or describe (query-only) a scenario and register it beside its backbone."""
    from qanchor.model import QAnchor

    settings = settings or TuningSettings()
    _check(name, query)
    tracking.mlflow.set_tracking_uri(tracking.tracking_uri())
    backbone_version = _backbone_version(backbone)
    validated = None
    if labels is not None:
        validated = validate_labels(labels, store.known_users(), *store.label_window(), min_per_class=min_per_class)
    experiment_id = tracking.open_experiment(tracking.tracking_uri(), PREFIX + name)
    model = QAnchor.from_registry(backbone_version)
    meta: dict = {"name": name, "query": query, "zero_shot": validated is None, "backbone_version": backbone_version,
                  "temperature": settings.temperature, "classes": list(validated.classes) if validated else [],
                  "tokens": settings.tokens if validated else 0, "metrics": {}}
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
            meta["metrics"] = result.metrics
            tensors = {"prototypes": result.prompt.prototypes.detach().cpu().contiguous(),
                       "prototype_classes": result.prompt.prototype_classes.cpu().contiguous()}
            if result.prompt.prompt is not None:
                tensors["prompt"] = result.prompt.prompt.detach().cpu().contiguous()
            save_file(tensors, str(folder / "prompt.safetensors"))
        (folder / "scenario.json").write_text(json.dumps(meta, indent=2))
        tracking.mlflow.log_artifacts(str(folder), "scenario")
        source = f"{run.info.artifact_uri}/scenario"
    client = tracking.MlflowClient()
    registered_name = PREFIX + name
    try:
        client.get_registered_model(registered_name)
    except tracking.MlflowException:
        client.create_registered_model(registered_name, tags={"kind": "qanchor-scenario"})
    version = client.create_model_version(registered_name, source=source, run_id=run.info.run_id, tags={
        "backbone_version": backbone_version, "zero_shot": str(meta["zero_shot"]).lower(), "query": query[:500]})
    return Registered(name, str(version.version), backbone_version, meta["zero_shot"], meta["metrics"])


def list_scenarios(include_archived: bool = False) -> list[dict]:
    client = tracking.MlflowClient()
    rows = []
    for model in client.search_registered_models(f"name LIKE '{PREFIX}%'"):
        for v in client.search_model_versions(f"name='{model.name}'"):
            if v.tags.get("archived") == "true" and not include_archived:
                continue
            rows.append({"name": model.name.removeprefix(PREFIX), "version": str(v.version),
                         "backbone_version": v.tags.get("backbone_version"), "zero_shot": v.tags.get("zero_shot") == "true",
                         "query": v.tags.get("query", ""), "archived": v.tags.get("archived") == "true"})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def show_scenario(name: str, version: str | None = None) -> dict:
    """The scenario.json of a version (default: the newest unarchived one)."""
    candidates = [r for r in list_scenarios() if r["name"] == name and (version is None or r["version"] == version)]
    if not candidates:
        raise ScenarioError(f"no scenario {name!r}" + (f" version {version}" if version else ""))
    chosen = candidates[-1]
    source = tracking.MlflowClient().get_model_version(PREFIX + name, chosen["version"]).source
    local = Path(tracking.mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tempfile.mkdtemp()))
    return {**json.loads((local / "scenario.json").read_text()), "version": chosen["version"], "path": str(local)}


def download_scenario(name: str, version: str | None = None) -> Path:
    """Local `scenario/` folder of a registered scenario (`qanchor.registry` entry point)."""
    tracking.mlflow.set_tracking_uri(tracking.tracking_uri())
    return Path(show_scenario(name, version)["path"])


def archive_scenario(name: str, version: str) -> None:
    """Hide a version from listing and serving; it stays in the registry for audit."""
    client = tracking.MlflowClient()
    try:
        client.get_model_version(PREFIX + name, version)
    except tracking.MlflowException:
        raise ScenarioError(f"no scenario {name!r} version {version}") from None
    client.set_model_version_tag(PREFIX + name, version, "archived", "true")
