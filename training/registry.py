"""The model registry: every read and write of registered backbones and scenarios, MLflow only.

This is the one module that serving, batch scoring and the CLI use to find a backbone or a
scenario folder; it imports neither Feast nor the training loop, so a serving image needs
MLflow and torch but not the training stack. The core loads the folders it returns
(`QAnchor.from_pretrained`, `LoadedScenario.from_folder`).

Names (DESIGN.md): registered model `qanchor-backbone` with aliases `champion` and
`challenger`; one registered model `qanchor-scenario-<name>` per scenario, each version tagged
with the `backbone_version` it was tuned on and served only with that backbone version.
Registration is all-or-nothing: a version whose alias or tags cannot be set is deleted again.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from qanchor.model import QAnchor
from qanchor.scenario import LoadedScenario
from training.tracking import MODEL_ARTIFACT, MlflowClient, MlflowException, TrackingError, mlflow, tracking_uri

BACKBONE_MODEL = "qanchor-backbone"
SCENARIO_PREFIX = "qanchor-scenario-"


class ScenarioError(ValueError):
    """A scenario request that cannot be served (bad name, bad query, unknown scenario)."""


@dataclass(frozen=True)
class ScenarioVersion:
    """One registered scenario version as the registry lists it."""

    name: str
    version: str
    backbone_version: str
    zero_shot: bool
    query: str
    archived: bool
    #: "tuned", "query_only" (tuning lost to its start) or "zero_shot"; versions registered
    #: before the state tag existed read "tuned" or "zero_shot" from their zero-shot flag.
    state: str = ""


def client() -> MlflowClient:
    """A client on the configured tracking URI (`MLFLOW_TRACKING_URI`, else the embedded SQLite store)."""
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def register(model_uri: str, name: str, alias: str | None, tags: dict[str, str],
             on_version: Callable[[str], dict[str, str]] | None = None) -> str:
    """Register `model_uri` as a new version of `name`, tag it and point `alias` at it, atomically.

    `on_version(version)` runs before the alias moves (e.g. applying the version's Feast feature
    service) and returns more tags; if it fails, the version is deleted and nothing points at it."""
    registry = client()
    with contextlib.redirect_stderr(io.StringIO()):  # "Created version '2' of model ...": the caller reports it
        version = mlflow.register_model(model_uri, name).version
    try:
        if on_version is not None:
            tags = {**tags, **on_version(str(version))}
        for key, value in tags.items():
            registry.set_model_version_tag(name, version, key, value)
        if alias:
            registry.set_registered_model_alias(name, alias, version)
    except Exception:
        registry.delete_model_version(name, version)
        raise
    return str(version)


def promote(version: str, name: str = BACKBONE_MODEL, alias: str = "champion",
            tags: dict[str, str] | None = None) -> None:
    """Point `alias` at `version`; `tags` (e.g. the drift check it was gated on) are set on the version first."""
    registry = client()
    try:
        registry.get_model_version(name, version)
    except MlflowException:
        raise TrackingError(f"{name} has no version {version}") from None
    for key, value in (tags or {}).items():
        registry.set_model_version_tag(name, version, f"{alias}_{key}", value)
    registry.set_registered_model_alias(name, alias, version)


def training_repo(alias_or_version: str, name: str = BACKBONE_MODEL) -> Path | None:
    """The feature repository a backbone's pretraining run read (its `data.feature_repo` param), if recorded.

    None too for a version that does not exist: the caller's own lookup then says so."""
    registry = client()
    try:
        run_id = registry.get_model_version(name, backbone_version(alias_or_version, name)).run_id
    except TrackingError:
        return None
    if not run_id:
        return None
    repo = registry.get_run(run_id).data.params.get("data.feature_repo")
    return Path(repo) if repo else None


def backbone_version(alias_or_version: str, name: str = BACKBONE_MODEL) -> str:
    """The version number an alias (`champion`) or version string points at."""
    registry = client()
    try:
        if alias_or_version.isdigit():
            return str(registry.get_model_version(name, alias_or_version).version)
        return str(registry.get_model_version_by_alias(name, alias_or_version).version)
    except MlflowException as err:
        raise TrackingError(f"{name} has no version or alias {alias_or_version!r}: {err.message}") from None


def download_backbone(alias_or_version: str = "champion", name: str = BACKBONE_MODEL) -> tuple[Path, str]:
    """Local model folder and version number of a registered backbone."""
    version = backbone_version(alias_or_version, name)
    ref = f"models:/{name}/{version}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(ref, dst_path=tempfile.mkdtemp(prefix="qanchor-")))
    except MlflowException as err:
        raise TrackingError(f"cannot resolve {ref}: {err.message}") from None
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return local / flavor["artifacts"][MODEL_ARTIFACT]["path"], version


def list_scenarios(include_archived: bool = False) -> list[ScenarioVersion]:
    registry = client()
    rows = []
    for model in registry.search_registered_models(f"name LIKE '{SCENARIO_PREFIX}%'"):
        for v in registry.search_model_versions(f"name='{model.name}'"):
            archived = v.tags.get("archived") == "true"
            if archived and not include_archived:
                continue
            rows.append(ScenarioVersion(model.name.removeprefix(SCENARIO_PREFIX), str(v.version),
                                        str(v.tags.get("backbone_version")), v.tags.get("zero_shot") == "true",
                                        v.tags.get("query", ""), archived,
                                        v.tags.get("state") or ("zero_shot" if v.tags.get("zero_shot") == "true" else "tuned")))
    return sorted(rows, key=lambda r: (r.name, int(r.version)))


def scenarios_for_backbone(version: str) -> list[ScenarioVersion]:
    """The newest unarchived version of every scenario tuned on backbone `version` (what a server loads)."""
    newest: dict[str, ScenarioVersion] = {}
    for row in list_scenarios():
        if row.backbone_version == version:
            newest[row.name] = row
    return list(newest.values())


def resolve_scenario(name: str, version: str | None = None) -> ScenarioVersion:
    """A scenario version by name (default: its newest unarchived version)."""
    candidates = [r for r in list_scenarios() if r.name == name and (version is None or r.version == version)]
    if not candidates:
        raise ScenarioError(f"no scenario {name!r}" + (f" version {version}" if version else ""))
    return candidates[-1]


def download_scenario(name: str, version: str | None = None) -> Path:
    """Local `scenario/` folder of a registered scenario version (default: the newest unarchived one)."""
    row = resolve_scenario(name, version)
    source = client().get_model_version(SCENARIO_PREFIX + name, row.version).source
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tempfile.mkdtemp(prefix="qanchor-")))
    except MlflowException as err:
        raise TrackingError(f"cannot download scenario {name!r}: {err.message}") from None


def show_scenario(name: str, version: str | None = None) -> dict:
    """The scenario.json of a version (default: the newest unarchived one), with its version and path."""
    row = resolve_scenario(name, version)
    folder = download_scenario(name, row.version)
    return {**json.loads((folder / "scenario.json").read_text()), "version": row.version, "path": str(folder)}


def load_model(alias_or_version: str = "champion", device: str = "cpu") -> QAnchor:
    """A registered backbone, loaded and stamped with its registry version (scenarios check it)."""
    folder, version = download_backbone(alias_or_version)
    return QAnchor.from_pretrained(folder, device=device, registry_version=version)


def load_scenario(name: str, version: str | None = None) -> LoadedScenario:
    row = resolve_scenario(name, version)
    return replace(LoadedScenario.from_folder(download_scenario(name, row.version)), version=row.version)


def archive_scenario(name: str, version: str) -> None:
    """Hide a version from listing and serving; it stays in the registry for audit."""
    registry = client()
    try:
        registry.get_model_version(SCENARIO_PREFIX + name, version)
    except MlflowException:
        raise ScenarioError(f"no scenario {name!r} version {version}") from None
    registry.set_model_version_tag(SCENARIO_PREFIX + name, version, "archived", "true")
