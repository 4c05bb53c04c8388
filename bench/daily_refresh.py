"""Incremental daily refresh (CPU, a saved model, the demo store): what the prefix cache saves.

Day 0 embeds N users under S scenario queries (cold). Day 1, a seeded 20% of the users get one new
event in one randomly chosen modality; every user is embedded again two ways in the same run:
a full recompute (no prefix cache: the baseline) and the engine with day 0's prefix cache, where
a user whose features did not change keeps its cached prefix KV and only the changed users are
re-encoded. New event texts are run through the sentence encoder once, before either timing,
and that cost is shown on its own. The two day-1 results must agree exactly: a cached vector
is never stale. A last row moves the reference time by a day for everyone: recency is part of
the prefix, so every user is re-encoded and the cache saves nothing; per-modality summary tokens
kept outside the decoder prefix would be needed to refresh only what changed.

    .venv/bin/python bench/daily_refresh.py --model runs/pretrain-tiny/final --repo data/demo/feature_store
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

from feature_repo.store import UserFeatureStore  # noqa: E402
from qanchor.embedding_engine import EmbeddingEngine  # noqa: E402
from qanchor.features import ModalityEvents, UserFeatures  # noqa: E402
from qanchor.model import QAnchor  # noqa: E402
from qanchor.model.batch import collate_users  # noqa: E402
from qanchor.prefix_cache import PrefixCache  # noqa: E402

QUERIES = ["will this user book travel soon?", "will this user repay a loan late?", "is this user a night owl?",
           "will this user buy a phone?", "does this user like food delivery?", "will this user stop using the app?",
           "will this user apply for a credit card?", "is this user a student?", "will this user invest?",
           "does this user shop for a baby?"]


def with_new_event(user: UserFeatures, modality: str, text: str, when: int) -> UserFeatures:
    events = user.modalities[modality]
    numeric = {name: (*values, 1.0) for name, values in events.numeric.items()}
    changed = ModalityEvents((*events.texts, text), (*events.times, when), numeric)
    return replace(user, modalities={**user.modalities, modality: changed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Saved Q-Anchor model directory.")
    parser.add_argument("--repo", type=Path, required=True, help="Feast repository to read users from.")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--changed", type=float, default=0.2, help="Share of users with a new event on day 1.")
    parser.add_argument("--scenarios", type=int, default=10, choices=range(1, len(QUERIES) + 1), metavar="S")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = QAnchor.from_pretrained(args.model, registry_version="bench")
    store = UserFeatureStore(args.repo)
    ids = sorted(store.known_users())[: args.users]
    users = store.online(ids)
    ref = store.reference_time
    times = [ref] * len(users)
    engine = EmbeddingEngine(model, PrefixCache(device_bytes=8 << 30))
    suffixes = [engine.suffix(q) for q in QUERIES[: args.scenarios]]
    pairs = len(users) * len(suffixes)

    start = time.perf_counter()
    engine.embed(users, times, suffixes)
    day0 = time.perf_counter() - start

    rng = np.random.default_rng(args.seed)
    changed = set(rng.choice(len(users), size=round(args.changed * len(users)), replace=False).tolist())
    modalities = [m.name for m in model.spec.event_modalities]
    day1 = [with_new_event(u, str(rng.choice(modalities)), f"new merchant {args.seed}-{i}", ref - 600)
            if i in changed else u for i, u in enumerate(users)]
    start = time.perf_counter()
    collate_users([day1[i] for i in sorted(changed)], [ref] * len(changed), model.spec, model.cache)
    new_texts = time.perf_counter() - start

    start = time.perf_counter()
    full = EmbeddingEngine(model).embed(day1, times, suffixes)
    full_s = time.perf_counter() - start
    hits_before = engine.cache.stats().hits
    start = time.perf_counter()
    incremental = engine.embed(day1, times, suffixes)
    incremental_s = time.perf_counter() - start
    reused = engine.cache.stats().hits - hits_before
    gap = float(np.abs(incremental - full).max())

    hits_before = engine.cache.stats().hits
    start = time.perf_counter()
    engine.embed(day1, [ref + 86_400] * len(day1), suffixes)
    next_day_s = time.perf_counter() - start
    reused_next_day = engine.cache.stats().hits - hits_before

    rows = [
        {"measure": "day 0, cold", "seconds": day0, "user_scenarios_per_s": pairs / day0, "prefixes_reused": 0},
        {"measure": "day 1, encode new event texts (both methods)", "seconds": new_texts},
        {"measure": "day 1, full recompute (baseline)", "seconds": full_s, "user_scenarios_per_s": pairs / full_s,
         "prefixes_reused": 0, "x_baseline": 1.0},
        {"measure": f"day 1, incremental ({args.changed:.0%} users changed one modality)", "seconds": incremental_s,
         "user_scenarios_per_s": pairs / incremental_s, "prefixes_reused": reused, "x_baseline": full_s / incremental_s},
        {"measure": "day 1, reference time moved by a day", "seconds": next_day_s,
         "user_scenarios_per_s": pairs / next_day_s, "prefixes_reused": reused_next_day, "x_baseline": full_s / next_day_s},
    ]
    emit("daily_refresh", rows, {"users": len(users), "scenarios": len(suffixes), "changed_users": len(changed),
                                 "max_abs_gap_incremental_vs_full": gap, "threads": torch.get_num_threads()})
    print(f"incremental vs full recompute: max |difference| {gap:.1e} (a cached vector is never stale)")


if __name__ == "__main__":
    main()
