"""What the user prefix costs before and after the window-long history (CPU, one feature store).

Two layouts of the same users, measured in the same run:

  legacy     the store's full event sequences, no [HIST_m] tokens (before the history view)
  pooled     the packaged spec's shorter sequences plus one pooled [HIST_m] token per modality (default)
  slots      the same with 4 attention-slot [HIST_m] tokens per modality (`history_slots: 4`)
  kinds      pooled plus each history modality's 24 most frequent kinds as tokens (`history_kind_tokens: 24`)

Per layout: mean prefix tokens per user, one pretraining step (forward + backward of both towers
and both losses, fresh encoders, batch of --batch rows), and the cold cost of a served user
(prefix encode + two scenario suffixes through the KV engine). The store must have been imported
with sequences at least as long as the packaged spec's. `--backbone smollm2-135m --lora-r 16`
times the real 135M LLM with LoRA adapters instead of the random-init tiny one.

    .venv/bin/python bench/prefix_cost.py --repo data/demo/feature_store --dataset data/demo/raw
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402
from quality import KIND_TOKENS, variant_spec  # noqa: E402

from feature_repo.store import UserFeatureStore  # noqa: E402
from qanchor.embedding_engine import EmbeddingEngine  # noqa: E402
from qanchor.model import BackboneSettings, LoraSettings, ModelSettings, QAnchor  # noqa: E402
from qanchor.model.batch import collate_users  # noqa: E402
from training.data import build_examples  # noqa: E402
from training.distributed import init_distributed  # noqa: E402
from training.pretrain import PretrainConfig, collate_step, step_losses  # noqa: E402

QUERIES = ["will this user book travel soon?", "will this user repay a loan late?"]


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: text embeddings, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--users", type=int, default=64, help="Served users per timing.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="tiny", help="Backbone preset or local HF directory.")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank on the backbone (default: none).")
    args = parser.parse_args()
    torch.manual_seed(0)
    store = UserFeatureStore(args.repo)
    examples = build_examples(store, args.dataset, "train", 0.5, args.batch * 4, seed=0, max_users=args.batch)
    backbone = BackboneSettings(name=args.backbone, lora=None if args.lora_r is None else LoraSettings(r=args.lora_r))
    batch = sorted(examples, key=lambda e: e.features.user_id)[:args.batch]
    users = [e.features for e in examples][:args.users]
    times = [e.reference_time for e in examples][:args.users]
    d = init_distributed()
    rows = []
    for layout, history, slots, kinds in (("legacy", False, 0, 0), ("pooled", True, 0, 0), ("slots", True, 4, 0),
                                          ("kinds", True, 0, KIND_TOKENS)):
        spec = variant_spec(store.spec, layout)
        settings = ModelSettings(backbone=backbone, history_tokens=history, history_slots=slots,
                                 history_kind_tokens=kinds)
        model = QAnchor.build(spec, settings, seed=0)
        cfg = PretrainConfig.model_validate({"model": settings.model_dump(), "data": {
            "dataset": args.dataset, "feature_repo": args.repo}})
        lengths = model.network.prefix_embeddings(collate_users(users, times, spec, model.cache),
                                                  model.cache.table()).host_lengths

        def step() -> None:
            losses = step_losses(model.network, model, collate_step(model, batch, d.device), cfg, d)
            losses["loss"].backward()
            model.network.zero_grad(set_to_none=True)

        def serve() -> None:
            with torch.no_grad():
                engine = EmbeddingEngine(model, cache=None)
                engine.embed(users, times, [engine.query_suffix(q, q) for q in QUERIES])

        rows.append({"layout": layout, "prefix_tokens_mean": statistics.mean(lengths), "prefix_tokens_max": max(lengths),
                     "train_step_s": _timed(step, args.repeats),
                     "served_user_ms": 1000 * _timed(serve, args.repeats) / len(users)})
    emit(f"prefix_cost_{args.backbone}", rows, {"repo": str(args.repo), "batch": args.batch, "users": args.users,
                                                "backbone": backbone.model_dump(), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
