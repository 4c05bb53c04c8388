"""The evaluation protocol: every method, every task, the same users, one table.

Methods (rows of the report), all read out by the same probes on the same parts:
  gbdt_aggregates        LightGBM on handcrafted per-modality aggregates (industrial standard)
  minilm_text            logistic probe on all-MiniLM-L6-v2 embeddings of the serialised user
  static_query           logistic probe on Q-Anchor embeddings from one generic query for all tasks
  qanchor_query          logistic probe on Q-Anchor embeddings from the task's own query
  qanchor_paraphrase     the same with a paraphrased query never seen in pretraining or tuning
  qanchor_prompt         logistic probe on embeddings after tuning the scenario's soft prompt
  qanchor_prompt_proto   the tuned scenario's own prototype scorer (no probe), as served
Prompt tuning fits on the probe's train part and early-stops on its val part; test is touched
only for the final scores.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from qanchor.embedding_engine import EmbeddingEngine
from qanchor.features import UserFeatures
from qanchor.model import QAnchor
from qanchor.synthetic.tasks import TASKS
from training.evaluation.baselines import AggregateFeaturizer, text_embeddings
from training.evaluation.metrics import METRICS, bootstrap_mean
from training.evaluation.population import EvaluationPopulation
from training.evaluation.probe import Parts, gbdt_probe, logistic_probe
from training.evaluation.queries import GENERIC_QUERY, PARAPHRASES, task_query
from training.scenario_tuning import TuningSettings, tune

METHODS = ("gbdt_aggregates", "minilm_text", "static_query", "qanchor_query", "qanchor_paraphrase",
           "qanchor_prompt", "qanchor_prompt_proto")
TASK_NAMES = tuple(t.name for t in TASKS)


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: list(TASK_NAMES))
    baselines: bool = True
    paraphrases: bool = True
    prompt_tuning: bool = True
    tune_steps: int = Field(default=150, gt=0)
    tokens: int = Field(default=6, ge=1, le=64)
    resamples: int = Field(default=1000, ge=10)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        unknown = sorted(set(tasks) - set(TASK_NAMES))
        if unknown or not tasks:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(TASK_NAMES)}")
        return tasks


@dataclass
class EvaluationResult:
    rows: list[dict]                 # one per (method, task): auc/ks with 95% intervals
    summary: list[dict]              # one per method: mean auc/ks over tasks with 95% intervals
    test_labels: dict[str, np.ndarray]
    #: Test-user embeddings per task before ("query") and after ("prompt") tuning, for plots.
    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def query_embeddings(model: QAnchor, users: list[UserFeatures], times: list[int], queries: list[str],
                     prompt: torch.Tensor | None = None, batch_size: int = 64) -> np.ndarray:
    """[n_users, n_queries, D]: each user's prefix encoded once, every query answered from its KV."""
    engine = EmbeddingEngine(model, encode_batch_size=batch_size)
    return engine.embed(users, times, [engine.query_suffix(q, q, prompt) for q in queries])


def _score_table(scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray], resamples: int,
                 seed: int) -> tuple[list[dict], list[dict]]:
    rows, summary = [], []
    for method in METHODS:
        by_task = scores.get(method)
        if not by_task:
            continue
        tasks = list(by_task)
        for task in tasks:
            row = {"method": method, "task": task}
            for name, metric in METRICS.items():
                est = bootstrap_mean([labels[task]], [by_task[task]], metric, resamples, seed)
                row.update({name: est.value, f"{name}_low": est.low, f"{name}_high": est.high})
            rows.append(row)
        entry = {"method": method, "tasks": len(tasks)}
        for name, metric in METRICS.items():
            est = bootstrap_mean([labels[t] for t in tasks], [by_task[t] for t in tasks], metric, resamples, seed)
            entry.update({f"mean_{name}": est.value, f"mean_{name}_low": est.low, f"mean_{name}_high": est.high})
        summary.append(entry)
    return rows, summary


def evaluate(model: QAnchor, population: EvaluationPopulation, settings: EvaluationSettings,
             progress: bool = True) -> EvaluationResult:
    """Score every method on every selected task (test part of `population`)."""
    parts = Parts(population.index("train"), population.index("val"), population.index("test"))
    users, times = population.users, population.reference_times
    labels = {t: population.labels[t].to_numpy().astype(int) for t in settings.tasks}
    for task, y in labels.items():
        for name, rows in vars(parts).items():
            if y[rows].min() == y[rows].max():
                raise ValueError(f"task {task!r} has a single class among the {len(rows)} {name} users; "
                                 "evaluate on more users")
    scores: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    seconds: dict[str, float] = {}
    stages = 1 + settings.baselines + settings.prompt_tuning * len(settings.tasks)
    bar = tqdm(total=stages, desc="evaluate", disable=not progress)

    if settings.baselines:
        start = time.perf_counter()
        featurizer = AggregateFeaturizer(model.spec).fit([users[i] for i in parts.train])
        table = featurizer.transform(users, times)
        text = text_embeddings(users, model.spec, model.cache)
        for task, y in labels.items():
            scores["gbdt_aggregates"][task] = gbdt_probe(table, y, parts, settings.seed).test_scores
            scores["minilm_text"][task] = logistic_probe(text, y, parts, settings.seed).test_scores
        seconds["baselines"] = time.perf_counter() - start
        bar.update()

    start = time.perf_counter()
    queries = [GENERIC_QUERY, *(task_query(t) for t in settings.tasks)]
    if settings.paraphrases:
        queries += [PARAPHRASES[t] for t in settings.tasks]
    emb = query_embeddings(model, users, times, queries, batch_size=settings.batch_size)
    n = len(settings.tasks)
    for i, (task, y) in enumerate(labels.items()):
        scores["static_query"][task] = logistic_probe(emb[:, 0], y, parts, settings.seed).test_scores
        scores["qanchor_query"][task] = logistic_probe(emb[:, 1 + i], y, parts, settings.seed).test_scores
        if settings.paraphrases:
            scores["qanchor_paraphrase"][task] = logistic_probe(emb[:, 1 + n + i], y, parts, settings.seed).test_scores
    seconds["query_embeddings"] = time.perf_counter() - start
    bar.update()

    embeddings: dict[str, dict[str, np.ndarray]] = {}
    if settings.prompt_tuning:
        start = time.perf_counter()
        fit_rows = np.concatenate([parts.train, parts.val])
        split = (np.arange(len(parts.train)), np.arange(len(parts.train), len(fit_rows)))
        tuning = TuningSettings(tokens=settings.tokens, steps=settings.tune_steps, seed=settings.seed)
        for i, (task, y) in enumerate(labels.items()):
            bar.set_postfix(task=task)
            result = tune(model, [users[r] for r in fit_rows], [times[r] for r in fit_rows], y[fit_rows],
                          queries[1 + i], tuning, split=split)
            tuned = query_embeddings(model, users, times, [queries[1 + i]], result.prompt.prompt.detach(),
                                     settings.batch_size)[:, 0]
            scores["qanchor_prompt"][task] = logistic_probe(tuned, y, parts, settings.seed).test_scores
            with torch.no_grad():
                probabilities = result.prompt.probabilities(torch.from_numpy(tuned[parts.test]).to(model.device),
                                                            tuning.temperature)
            scores["qanchor_prompt_proto"][task] = probabilities[:, 1].cpu().numpy()
            embeddings[task] = {"query": emb[parts.test, 1 + i], "prompt": tuned[parts.test]}
            bar.update()
        seconds["prompt_tuning"] = time.perf_counter() - start
    bar.close()
    test_labels = {t: y[parts.test] for t, y in labels.items()}
    rows, summary = _score_table(scores, test_labels, settings.resamples, settings.seed)
    return EvaluationResult(rows, summary, test_labels, embeddings, seconds)
