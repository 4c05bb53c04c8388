"""The served prototype scorer against a logistic probe on the same tuned embeddings.

A registered scenario scores users by similarity to its class prototypes (`/score`,
`QAnchor.score`); the benchmark tables score with a logistic probe. This runs the evaluation
harness's prompt tuning twice on the same users and tuning steps, once with the earlier scorer
(raw cosine, two k-means prototypes per class) and once with the current one (the scenario's
whitened scoring space, one prototype per class), and reports for each the prototype AUC, the
probe AUC and their paired difference, plus the paired difference between the two scorers.

    python bench/scenario_scoring.py --bundle .devbundle/q100 [--model RUN/final] [--users 2000] \
        [--tune-steps 100]

Without --model the backbone is a random-init tiny one (the harder case: its users share even
more of their direction). Reads a `bench/quality.py --export-bundle` folder; no Feast or MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import device_name, emit  # noqa: E402
from quality import load_bundle, load_trained, variant_spec  # noqa: E402

from qanchor.model import QAnchor  # noqa: E402
from training.evaluation.harness import EvaluationSettings, evaluate, paired_difference, reliable_tasks  # noqa: E402
from training.evaluation.population import EvaluationPopulation  # noqa: E402
from training.pretrain import load_config  # noqa: E402

#: (label, whiten, prototypes per class)
SCORERS = (("raw cosine, 2 k-means prototypes per class (before)", False, 2),
           ("whitened space, 1 prototype per class (now)", True, 1))


def first_users(population: EvaluationPopulation, users: int) -> EvaluationPopulation:
    """The first half / quarter / quarter of `users` from the train / val / test parts, in order."""
    rows = np.concatenate([population.index("train")[:users // 2], population.index("val")[:users // 4],
                           population.index("test")[:users // 4]])
    return dataclasses.replace(
        population, users=[population.users[i] for i in rows],
        reference_times=[population.reference_times[i] for i in rows],
        labels=population.labels.iloc[rows].reset_index(drop=True), part=population.part[rows],
        latent=None if population.latent is None else population.latent[rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="A bench/quality.py --export-bundle folder.")
    parser.add_argument("--model", type=Path, help="A trained model folder (default: random-init tiny).")
    parser.add_argument("--config", type=Path, default=Path("training/configs/quality_tiny_gpu.yaml"),
                        help="Model settings of the random-init backbone.")
    parser.add_argument("--users", type=int, default=2000, help="Evaluation users (half probe-train, a quarter test).")
    parser.add_argument("--tune-steps", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    if args.users < 8:
        parser.error("--users must be at least 8 (a train, validation and test part)")
    bundle, cache = load_bundle(args.bundle)
    population = first_users(bundle.population, args.users)
    if args.model is not None:
        model = load_trained(args.model, cache, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        model = QAnchor.build(variant_spec(bundle.spec, "full"), load_config(args.config).model, seed=0)
        model.cache = cache
    rows, scores = [], {}
    for label, whiten, per_class in SCORERS:
        start = time.perf_counter()
        settings = EvaluationSettings(baselines=False, paraphrases=False, prefix_probe=False, tune_steps=args.tune_steps,
                                      whiten=whiten, prototypes_per_class=per_class, resamples=args.resamples)
        result = evaluate(model, population, settings)
        summary = {s["method"]: s for s in result.summary}
        (versus,) = [c for c in result.comparisons if c["method"] == "qanchor_prompt_proto"]
        rows.append({"scorer": label, "probe_auc": summary["qanchor_prompt"]["mean_auc"],
                     "prototype_auc": summary["qanchor_prompt_proto"]["mean_auc"],
                     "prototype_ks": summary["qanchor_prompt_proto"]["mean_ks"],
                     "prototype_minus_probe": versus["auc_diff"],
                     "auc_95": f"[{versus['auc_diff_low']:.3f}, {versus['auc_diff_high']:.3f}]",
                     "seconds": time.perf_counter() - start})
        scores[label] = result
    before, now = (scores[label] for label, _, _ in SCORERS)
    tasks = reliable_tasks(list(now.test_labels), now.unreliable)
    d = paired_difference(now.test_labels, tasks, now.test_scores["qanchor_prompt_proto"],
                          before.test_scores["qanchor_prompt_proto"], args.resamples)
    rows.append({"scorer": "now - before (prototypes, paired)", "prototype_auc": d["auc_diff"],
                 "prototype_ks": d["ks_diff"], "auc_95": f"[{d['auc_diff_low']:.3f}, {d['auc_diff_high']:.3f}]"})
    emit("scenario_scoring", rows, {"bundle": str(args.bundle), "model": str(args.model or "random-init tiny"),
                                    "users": {p: int((population.part == p).sum()) for p in ("train", "val", "test")},
                                    "tune_steps": args.tune_steps, "device": device_name(), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
