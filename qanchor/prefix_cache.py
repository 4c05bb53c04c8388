"""Byte-bounded LRU of user-prefix KV caches, a device tier in front of a host tier.

A user's prefix (`[USER] [MOD_1..M] [HIST_1..M] [events]`) never depends on the scenario, so its per-layer
keys and values are computed once and reused for every scenario query. An entry is keyed by
(backbone version, user id, feature version): the feature version is a digest of the user's
features and reference time (`qanchor.features.feature_digest`), so a feature update or a new
backbone is a different key and can never be answered from a stale entry.

Entries evicted from the device tier (GPU memory) move to the host tier (CPU memory) when it
has room and are moved back on their next hit; entries evicted from the host tier are dropped.
On a CPU-only machine the device tier is the only tier. All operations hold one lock, so the
cache can be shared by a server's request threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PrefixKey:
    backbone_version: str
    user_id: str
    feature_version: str


@dataclass(frozen=True)
class PrefixState:
    """One user's prefix KV: per layer, keys and values [kv_heads, length, head_dim] (post-RoPE);
    and, for a model with a summary readout, the prefix's summary token inputs [n, hidden]."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    summary: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def nbytes(self) -> int:
        extra = () if self.summary is None else (self.summary,)
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *extra))

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def to(self, device: torch.device | str) -> PrefixState:
        return PrefixState(tuple(k.to(device) for k in self.keys), tuple(v.to(device) for v in self.values),
                           None if self.summary is None else self.summary.to(device))


@dataclass
class CacheStats:
    hits: int = 0
    host_hits: int = 0
    misses: int = 0
    evictions: int = 0
    device_bytes: int = 0
    host_bytes: int = 0
    device_entries: int = 0
    host_entries: int = 0


@dataclass
class _Tier:
    capacity: int
    entries: OrderedDict = field(default_factory=OrderedDict)
    used: int = 0

    def pop(self, key: PrefixKey) -> PrefixState | None:
        state = self.entries.pop(key, None)
        if state is not None:
            self.used -= state.nbytes
        return state

    def push(self, key: PrefixKey, state: PrefixState) -> list[tuple[PrefixKey, PrefixState]]:
        """Insert as most recent; returns the least recent entries pushed out to stay in budget."""
        self.pop(key)
        self.entries[key] = state
        self.used += state.nbytes
        out = []
        while self.used > self.capacity and self.entries:
            old_key, old = self.entries.popitem(last=False)
            self.used -= old.nbytes
            out.append((old_key, old))
        return out


class PrefixCache:
    """LRU of `PrefixState`s bounded by bytes: `device_bytes` on `device`, then `host_bytes` in CPU memory."""

    def __init__(self, device_bytes: int, host_bytes: int = 0, device: torch.device | str = "cpu"):
        if device_bytes < 0 or host_bytes < 0:
            raise ValueError("cache budgets must be non-negative")
        self.device = torch.device(device)
        self._device = _Tier(device_bytes)
        # A host tier only makes sense behind a device that is not the host.
        self._host = _Tier(host_bytes if self.device.type != "cpu" else 0)
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get(self, key: PrefixKey) -> PrefixState | None:
        with self._lock:
            state = self._device.entries.get(key)
            if state is not None:
                self._device.entries.move_to_end(key)
                self._stats.hits += 1
                return state
            state = self._host.pop(key)
            if state is None:
                self._stats.misses += 1
                return None
            self._stats.host_hits += 1
            state = state.to(self.device)
            self._insert(key, state)
            return state

    def put(self, key: PrefixKey, state: PrefixState) -> None:
        """Cache `state` (moved to the cache's device); an entry larger than the device budget is not kept."""
        if state.nbytes > self._device.capacity:
            return
        state = state if state.device == self.device else state.to(self.device)
        with self._lock:
            self._host.pop(key)
            self._insert(key, state)

    def _insert(self, key: PrefixKey, state: PrefixState) -> None:
        for old_key, old in self._device.push(key, state):
            if old.nbytes <= self._host.capacity:
                for _ in self._host.push(old_key, old.to("cpu")):
                    self._stats.evictions += 1
            else:
                self._stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._device = _Tier(self._device.capacity)
            self._host = _Tier(self._host.capacity)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._stats.hits, self._stats.host_hits, self._stats.misses, self._stats.evictions,
                              self._device.used, self._host.used, len(self._device.entries), len(self._host.entries))
