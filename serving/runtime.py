"""What the embedding service does, without HTTP: load, resolve scenarios, read features, embed, score.

Every refusal is an `ApiError` carrying the HTTP status and a machine-readable `error` code, so
the BentoML layer only translates it; nothing here returns a vector for input it could not
read correctly (unknown user, NaN feature, truncated query).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from monitoring.metrics import LatestDriftMetrics
from qanchor.embedding_engine import EmbeddingEngine, QueryTooLongError, Suffix
from qanchor.features import FeatureValueError, UserFeatures, feature_keys
from qanchor.model import QAnchor
from qanchor.prefix_cache import PrefixCache
from qanchor.scenario import LoadedScenario
from serving.feature_log import FeatureLog
from serving.schemas import MAX_SCENARIOS_PER_REQUEST, MAX_USERS_PER_REQUEST, SCENARIO_NAME

logger = logging.getLogger("qanchor.serving")


class ApiError(Exception):
    """A refused request: HTTP `status`, machine-readable `error`, human `detail`."""

    def __init__(self, status: int, error: str, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.retry_after = status, error, detail, retry_after

    def body(self) -> dict:
        return {"error": self.error, "detail": self.detail}


@dataclass(frozen=True)
class ServingSettings:
    """From the environment (k8s ConfigMap): which backbone, which store, how much cache."""

    model_alias: str = "champion"
    feature_repo: Path = Path("feature_repo")
    device: str = "cpu"
    cache_bytes: int = 1 << 30
    host_cache_bytes: int = 0
    admin_token: str | None = None
    variant: str = "default"
    feature_log: bool = True
    feature_log_rows: int = 1024
    feature_log_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ServingSettings:
        device = env.get("QANCHOR_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model_alias=env.get("QANCHOR_MODEL_ALIAS", "champion"),
                   feature_repo=Path(env.get("QANCHOR_FEATURE_REPO", "feature_repo")),
                   device=device,
                   cache_bytes=int(env.get("QANCHOR_CACHE_BYTES", str(1 << 30))),
                   host_cache_bytes=int(env.get("QANCHOR_HOST_CACHE_BYTES", "0")),
                   admin_token=env.get("QANCHOR_ADMIN_TOKEN") or None,
                   variant=env.get("QANCHOR_VARIANT", "default"),
                   feature_log=env.get("QANCHOR_FEATURE_LOG", "on").lower() not in ("off", "0", "false"),
                   feature_log_rows=int(env.get("QANCHOR_FEATURE_LOG_ROWS", "1024")),
                   feature_log_seconds=float(env.get("QANCHOR_FEATURE_LOG_SECONDS", "30")))


@dataclass
class Counters:
    """Request outcomes by error code, exported on /metrics."""

    errors: dict[str, int] = field(default_factory=dict)

    def count(self, error: str) -> None:
        self.errors[error] = self.errors.get(error, 0) + 1


class EmbeddingRuntime:
    """One loaded backbone version, its scenarios and the feature store it reads."""

    def __init__(self, model: QAnchor, store, scenarios: dict[str, LoadedScenario], settings: ServingSettings):
        model.check_features(store.spec)
        self.model, self.store, self.settings = model, store, settings
        self.engine = EmbeddingEngine(model, PrefixCache(settings.cache_bytes, settings.host_cache_bytes,
                                                         device=model.device))
        self._scenarios = scenarios
        self._suffixes = {name: self.engine.scenario_suffix(s) for name, s in scenarios.items()}
        # One forward at a time: concurrent requests queue here instead of oversubscribing the cores/GPU.
        self._compute = threading.Lock()
        self.counters = Counters()
        self.default_reference_time = store.reference_time
        self.drift_metrics = LatestDriftMetrics(settings.feature_repo)
        self.feature_log = FeatureLog(store, self.backbone_version, settings.feature_log_rows,
                                      settings.feature_log_seconds) if settings.feature_log else None

    @property
    def backbone_version(self) -> str:
        return self.model.registry_version or "unregistered"

    def scenarios(self) -> list[dict]:
        return [{"name": s.name, "version": s.version, "query": s.query, "zero_shot": s.zero_shot, "classes": list(s.classes),
                 "backbone_version": s.backbone_version} for s in self._scenarios.values()]

    def replace_scenarios(self, scenarios: dict[str, LoadedScenario]) -> None:
        suffixes = {name: self.engine.scenario_suffix(s) for name, s in scenarios.items()}
        self._scenarios, self._suffixes = scenarios, suffixes  # swapped together, readers see old or new

    def _resolve(self, items: list[str]) -> list[Suffix]:
        if len(items) > MAX_SCENARIOS_PER_REQUEST:
            raise ApiError(413, "too_many_scenarios", f"{len(items)} scenarios; at most {MAX_SCENARIOS_PER_REQUEST} per request")
        suffixes, registered = [], self._suffixes
        for item in items:
            if item in registered:
                suffixes.append(registered[item])
            elif SCENARIO_NAME.match(item):
                raise ApiError(400, "unknown_scenario", f"no scenario {item!r} is registered for backbone "
                                                        f"v{self.backbone_version}; registered: {sorted(registered)}")
            else:
                try:
                    suffixes.append(self.engine.suffix(item))
                except QueryTooLongError as err:
                    raise ApiError(422, "query_too_long", str(err)) from None
        return suffixes

    def _users(self, user_ids: list[str], inline: dict[str, dict] | None) -> list[UserFeatures]:
        if len(user_ids) > MAX_USERS_PER_REQUEST:
            raise ApiError(413, "too_many_users", f"{len(user_ids)} user ids; at most {MAX_USERS_PER_REQUEST} per request")
        inline = inline or {}
        unknown_inline = sorted(set(inline) - set(user_ids))
        if unknown_inline:
            raise ApiError(400, "malformed_body", f"features given for users not in user_ids: {unknown_inline[:5]}")
        stored = [u for u in dict.fromkeys(user_ids) if u not in inline]
        try:
            rows = dict(zip(stored, self.store.online_rows(stored, timestamps=self.feature_log is not None)))
        except Exception as err:  # the store's client raises its own types (sqlite, redis, grpc)
            logger.warning("online store read failed: %s: %s", type(err).__name__, err)
            raise ApiError(503, "feature_store_unavailable", "the online feature store cannot be read; retry later",
                           retry_after=5) from None
        try:
            from_store = dict(zip(stored, UserFeatures.from_rows(stored, [rows[u] for u in stored], self.model.spec)))
        except FeatureValueError as err:  # NaN values, wrong types or lengths; the message names the user
            raise ApiError(422, "invalid_features", str(err)) from None
        users = []
        for user_id in user_ids:
            if user_id in inline:
                try:
                    users.append(self._inline_user(user_id, inline[user_id]))
                except FeatureValueError as err:
                    raise ApiError(422, "invalid_features", str(err)) from None
                continue
            user = from_store[user_id]
            if user.is_empty:
                raise ApiError(404, "unknown_user", f"user {user_id!r} has no features in the online store")
            users.append(user)
        if self.feature_log is not None:
            self.feature_log.record([{"user_id": u, **(inline.get(u) or rows[u])} for u in user_ids])
        return users

    def _inline_user(self, user_id: str, row: dict) -> UserFeatures:
        """Features given in the request: every key the model reads must be there (empty lists allowed)."""
        expected = feature_keys(self.model.spec, history=self.model.settings.history_tokens)
        missing = [k for k in expected if k not in row]
        if missing:
            raise ApiError(422, "missing_features", f"user {user_id!r}: features {missing[:6]} are missing "
                                                    f"({len(missing)} in all); give empty lists for empty modalities")
        return UserFeatures.from_row(user_id, row, self.model.spec)

    def embed(self, user_ids: list[str], scenarios: list[str], reference_time: int | None = None,
              features: dict[str, dict] | None = None) -> tuple[list[str], np.ndarray]:
        """(scenario labels, vectors [users, scenarios, D]) in request order."""
        suffixes = self._resolve(scenarios)
        users = self._users(user_ids, features)
        ref = self.default_reference_time if reference_time is None else reference_time
        with self._compute:
            vectors = self.engine.embed(users, [ref] * len(users), suffixes)
        return [s.name for s in suffixes], vectors

    def score(self, user_ids: list[str], scenarios: list[str],
              reference_time: int | None = None) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """Per tuned scenario: its class names and probabilities [users, classes]."""
        for name in scenarios:
            scenario = self._scenarios.get(name)
            if scenario is None:
                raise ApiError(400, "unknown_scenario", f"no scenario {name!r} is registered for backbone "
                                                        f"v{self.backbone_version}")
            if scenario.prompt is None:
                raise ApiError(400, "scenario_not_scorable", f"scenario {name!r} is query-only: it has no class "
                                                             "prototypes to score with; use /embed")
        _, vectors = self.embed(user_ids, scenarios, reference_time)
        out = {}
        for i, name in enumerate(scenarios):
            scenario = self._scenarios[name]
            with torch.no_grad():
                probabilities = scenario.prompt.probabilities(torch.from_numpy(vectors[:, i]), scenario.temperature)
            out[name] = (scenario.classes, probabilities.numpy())
        return out

    def metrics(self) -> str:
        """Prometheus text: prefix-cache counters and gauges, refusals by error code, the newest drift check."""
        s = self.engine.cache.stats()
        lines = []
        for name, kind, value, help_text in [
            ("qanchor_prefix_cache_hits_total", "counter", s.hits, "Prefix KV served from the device tier."),
            ("qanchor_prefix_cache_host_hits_total", "counter", s.host_hits, "Prefix KV moved back from the host tier."),
            ("qanchor_prefix_cache_misses_total", "counter", s.misses, "Prefixes encoded because no entry matched."),
            ("qanchor_prefix_cache_evictions_total", "counter", s.evictions, "Entries dropped to stay within budget."),
            ("qanchor_prefix_cache_bytes", "gauge", s.device_bytes + s.host_bytes, "Bytes held by the prefix cache."),
            ("qanchor_prefix_cache_entries", "gauge", s.device_entries + s.host_entries, "Users with a cached prefix."),
            ("qanchor_scenarios_loaded", "gauge", len(self._scenarios), "Scenarios served for this backbone."),
            ("qanchor_feature_log_rows_written_total", "counter", self.feature_log.written if self.feature_log else 0,
             "Served feature rows written to the Feast feature log."),
            ("qanchor_feature_log_rows_dropped_total", "counter", self.feature_log.dropped if self.feature_log else 0,
             "Served feature rows not logged (no feature service for this backbone, or a failed write)."),
        ]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP qanchor_request_errors_total Refused requests by error code.",
                  "# TYPE qanchor_request_errors_total counter"]
        lines += [f'qanchor_request_errors_total{{error="{k}"}} {v}' for k, v in sorted(self.counters.errors.items())]
        return "\n".join(lines) + "\n" + self.drift_metrics.text()


def load_runtime(settings: ServingSettings) -> EmbeddingRuntime:
    """Backbone by alias, every scenario registered for its version, the Feast store: the service's start-up."""
    from feature_repo.store import UserFeatureStore
    from training import registry

    start = time.perf_counter()
    model = registry.load_model(settings.model_alias, device=settings.device)
    scenarios = load_scenarios(model.registry_version)
    store = UserFeatureStore(settings.feature_repo)
    runtime = EmbeddingRuntime(model, store, scenarios, settings)
    logger.info("loaded qanchor-backbone v%s (%s) with %d scenarios and store %s in %.1f s", model.registry_version,
                settings.model_alias, len(scenarios), settings.feature_repo, time.perf_counter() - start)
    return runtime


def load_scenarios(backbone_version: str) -> dict[str, LoadedScenario]:
    from training import registry

    return {row.name: registry.load_scenario(row.name, row.version) for row in registry.scenarios_for_backbone(backbone_version)}
