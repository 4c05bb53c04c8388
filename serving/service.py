"""The Q-Anchor BentoML service: `bentoml serve serving.service:QAnchorService` (or `qanchor serve`).

Endpoints (DESIGN.md "Serving contract"):
    POST /embed              {user_ids, scenarios, reference_time?, features?} -> one vector per user x scenario
    POST /score              {user_ids, scenarios} -> class probabilities of tuned scenarios
    GET  /scenarios          the scenarios served for the loaded backbone version
    POST /scenarios/reload   re-read the registry (Authorization: Bearer $QANCHOR_ADMIN_TOKEN)
    GET  /livez /readyz /metrics   BentoML's probes; ready only once model, scenarios and store are loaded

Settings come from the environment (a ConfigMap on Kubernetes): `QANCHOR_MODEL_ALIAS` (default
`champion`), `QANCHOR_FEATURE_REPO`, `MLFLOW_TRACKING_URI`, `QANCHOR_DEVICE`, `QANCHOR_CACHE_BYTES`,
`QANCHOR_HOST_CACHE_BYTES`, `QANCHOR_ADMIN_TOKEN`, `QANCHOR_VARIANT` (echoed in `X-QAnchor-Variant`
so A/B analysis can join on it), `QANCHOR_FEATURE_LOG` (on/off), `QANCHOR_FEATURE_LOG_ROWS` and
`QANCHOR_FEATURE_LOG_SECONDS` (when buffered served rows are written to the Feast feature log). Loading runs in a background thread, so `/livez` answers while
a large backbone loads and `/readyz` turns 200 only when everything is in place.

Refusals are JSON `{error, detail}` with the status set on the BentoML context (not raised), so a
client error is neither a 500 nor a logged traceback.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.request_validation import RequestValidationMiddleware
from serving.runtime import ApiError, EmbeddingRuntime, ServingSettings, load_runtime, load_scenarios
from serving.schemas import EmbedRequest, ReloadRequest, ScoreRequest

logger = logging.getLogger("qanchor.serving")
admin = FastAPI(title="Q-Anchor admin routes", docs_url=None, redoc_url=None, openapi_url=None)
#: Seconds between start-up attempts while the registry or the store cannot be reached.
LOAD_RETRY_SECONDS = 5.0


@bentoml.service(name="qanchor", workers=1, traffic={"timeout": 60, "max_concurrency": 64})
@bentoml.asgi_app(admin, path="/")
class QAnchorService:
    def __init__(self) -> None:
        self.settings = ServingSettings.from_env(dict(os.environ))
        self.runtime: EmbeddingRuntime | None = None
        self.load_error: str | None = "loading"
        self._reload = threading.Lock()
        threading.Thread(target=self._load, name="qanchor-loader", daemon=True).start()

    def _load(self) -> None:
        while self.runtime is None:
            try:
                self.runtime = load_runtime(self.settings)
                self.load_error = None
            except Exception as err:  # registry/store unreachable or refused: stay unready, say why, retry
                self.load_error = f"{type(err).__name__}: {err}"
                logger.warning("start-up failed, retrying in %.0f s: %s", LOAD_RETRY_SECONDS, self.load_error)
                time.sleep(LOAD_RETRY_SECONDS)

    @bentoml.on_shutdown
    def flush_feature_log(self) -> None:
        if self.runtime is not None and self.runtime.feature_log is not None:
            self.runtime.feature_log.flush()

    def __is_ready__(self) -> bool:
        return self.runtime is not None

    def __metrics__(self, content: str) -> str:
        return content + (self.runtime.metrics() if self.runtime is not None else "")

    def _ready(self) -> EmbeddingRuntime:
        if self.runtime is None:
            raise ApiError(503, "not_ready", f"the service is still loading ({self.load_error})", retry_after=5)
        return self.runtime

    def _respond(self, ctx: bentoml.Context, produce) -> dict[str, Any]:
        """Run `produce(runtime)`; an `ApiError` becomes its status and JSON body on the context."""
        ctx.response.headers["X-QAnchor-Variant"] = self.settings.variant
        try:
            runtime = self._ready()
            ctx.response.headers["X-QAnchor-Backbone-Version"] = runtime.backbone_version
            return produce(runtime)
        except ApiError as err:
            if self.runtime is not None:
                self.runtime.counters.count(err.error)
            ctx.response.status_code = err.status
            if err.retry_after is not None:
                ctx.response.headers["Retry-After"] = str(err.retry_after)
            return err.body()

    @bentoml.api(route="/embed", input_spec=EmbedRequest)
    def embed(self, user_ids: list[str], scenarios: list[str], reference_time: int | None = None,
              features: dict[str, dict[str, Any]] | None = None, ctx: bentoml.Context = None) -> dict[str, Any]:
        """One L2-normalised embedding per user and scenario (registered name or free-text query)."""
        def produce(runtime: EmbeddingRuntime) -> dict[str, Any]:
            names, vectors = runtime.embed(user_ids, scenarios, reference_time, features)
            return {"backbone_version": runtime.backbone_version, "feature_version": runtime.store.feature_version,
                    "reference_time": reference_time if reference_time is not None else runtime.default_reference_time,
                    "results": [{"user_id": u, "embeddings": dict(zip(names, vectors[i].tolist()))}
                                for i, u in enumerate(user_ids)]}
        return self._respond(ctx, produce)

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    def score(self, user_ids: list[str], scenarios: list[str], reference_time: int | None = None,
              ctx: bentoml.Context = None) -> dict[str, Any]:
        """Class probabilities per user from each tuned scenario's prototypes."""
        def produce(runtime: EmbeddingRuntime) -> dict[str, Any]:
            scored = runtime.score(user_ids, scenarios, reference_time)
            return {"backbone_version": runtime.backbone_version, "feature_version": runtime.store.feature_version,
                    "results": [{"user_id": u, "scores": {name: dict(zip(classes, p[i].tolist()))
                                                          for name, (classes, p) in scored.items()}}
                                for i, u in enumerate(user_ids)]}
        return self._respond(ctx, produce)

    @bentoml.api(route="/scenarios/reload", input_spec=ReloadRequest)
    def reload_scenarios(self, ctx: bentoml.Context = None) -> dict[str, Any]:
        """Re-read the scenarios registered for the served backbone version, without a restart."""
        def produce(runtime: EmbeddingRuntime) -> dict[str, Any]:
            self._authorise(ctx)
            with self._reload:
                try:
                    scenarios = load_scenarios(runtime.backbone_version)
                except Exception as err:
                    logger.warning("scenario reload failed: %s: %s", type(err).__name__, err)
                    raise ApiError(503, "registry_unavailable", "the model registry cannot be read; retry later",
                                   retry_after=10) from None
                runtime.replace_scenarios(scenarios)
            return {"backbone_version": runtime.backbone_version, "scenarios": sorted(scenarios)}
        return self._respond(ctx, produce)

    def _authorise(self, ctx: bentoml.Context) -> None:
        token = self.settings.admin_token
        if token is None:
            raise ApiError(403, "reload_disabled", "set QANCHOR_ADMIN_TOKEN to allow reloads")
        given = ctx.request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")

    @admin.get("/scenarios")
    def list_scenarios(self, request: Request) -> JSONResponse:
        headers = {"X-QAnchor-Variant": self.settings.variant}
        if self.runtime is None:
            return JSONResponse({"error": "not_ready", "detail": f"the service is still loading ({self.load_error})"},
                                status_code=503, headers={**headers, "Retry-After": "5"})
        headers["X-QAnchor-Backbone-Version"] = self.runtime.backbone_version
        return JSONResponse({"backbone_version": self.runtime.backbone_version, "scenarios": self.runtime.scenarios()},
                            headers=headers)


QAnchorService.add_asgi_middleware(RequestValidationMiddleware, models={
    "/embed": EmbedRequest, "/score": ScoreRequest, "/scenarios/reload": ReloadRequest})
