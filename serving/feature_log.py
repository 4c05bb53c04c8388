"""Feature logging: the rows the service actually embedded, written to the backbone's Feast feature log.

The backbone version's feature service (`qanchor_backbone_v<N>`, applied at registration) carries a
`LoggingConfig`; served rows go there through `FeatureStore.write_logged_features`, so training/
serving skew can be checked against the offline store. Rows are buffered and written in batches
(one parquet file per flush), never per request; a failed write is logged and dropped, because
losing a log batch must not fail the request that produced it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Protocol

logger = logging.getLogger("qanchor.serving")


class LoggingStore(Protocol):
    def log_served_features(self, backbone_version: str, rows: list[dict], request_ids: list[str],
                            logged_at: datetime) -> bool: ...


class FeatureLog:
    """Buffer of served rows, flushed when `flush_rows` are waiting or `flush_seconds` have passed."""

    def __init__(self, store: LoggingStore, backbone_version: str, flush_rows: int = 1024,
                 flush_seconds: float = 30.0):
        self.store, self.backbone_version = store, backbone_version
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._rows: list[dict] = []
        self._request_ids: list[str] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0

    def record(self, rows: list[dict]) -> None:
        """Add one request's served rows; flush if the buffer is due."""
        request_id = uuid.uuid4().hex
        with self._lock:
            self._rows += rows
            self._request_ids += [request_id] * len(rows)
            due = len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, request_ids = self._rows, self._request_ids
            self._rows, self._request_ids, self._last_flush = [], [], time.monotonic()
        if not rows:
            return
        try:
            logged = self.store.log_served_features(self.backbone_version, rows, request_ids,
                                                    datetime.now(timezone.utc))
        except Exception as err:  # the offline store's own errors (filesystem, object store)
            logger.warning("feature log write failed, %d rows dropped: %s: %s", len(rows), type(err).__name__, err)
            logged = False
        if logged:
            self.written += len(rows)
        else:
            self.dropped += len(rows)
