"""The HTTP contract of the embedding service (DESIGN.md "Serving contract"): bodies and limits.

`scenarios` items are registered scenario names or free-text queries. A string that is a
registered scenario's name is that scenario; one shaped like a name (lowercase, digits,
underscores, no spaces) but not registered is refused as an unknown scenario rather than
silently embedded as a one-word query; anything else is a zero-shot free-text query.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Request limits: beyond these a request gets 413, so one call cannot monopolise a worker.
MAX_USERS_PER_REQUEST = 256
MAX_SCENARIOS_PER_REQUEST = 32
SCENARIO_NAME = re.compile(r"^[a-z][a-z0-9_]{1,47}$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Body):
    user_ids: list[str] = Field(min_length=1, description="Users to embed (at most 256 per request).")
    scenarios: list[str] = Field(min_length=1, description="Registered scenario names and/or free-text queries.")
    reference_time: int | None = Field(default=None, ge=0,
                                       description="Unix seconds the features' recency is measured from; "
                                                   "default: the feature snapshot's as-of time.")
    features: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Optional features per user id as flat `<view>__<feature>` rows, used instead of "
                                  "the online store for those users (every feature of the spec must be present).")


class ScoreRequest(_Body):
    user_ids: list[str] = Field(min_length=1)
    scenarios: list[str] = Field(min_length=1, description="Tuned scenario names (they carry class prototypes).")
    reference_time: int | None = Field(default=None, ge=0)


class ReloadRequest(_Body):
    """No fields: the service re-reads the registry for its backbone version."""
