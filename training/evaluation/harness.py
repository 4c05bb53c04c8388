"""The evaluation protocol: every method, every task, the same users, one table.

Methods (rows of the report), all read out by the same probes on the same parts:
  oracle                 logistic probe on the latent factors behind the behaviour, where the dataset
                         has them (synthetic data): the ceiling any method reading behaviour can reach
  gbdt_aggregates        LightGBM on handcrafted aggregates of the recent event sequence
  gbdt_history           the same plus window-long bag-of-kinds history (industrial standard)
  minilm_text            logistic probe on all-MiniLM-L6-v2 embeddings of the serialised user
  qanchor_prefix         logistic probe on the encoder's summary tokens ([USER], [MOD_m], [HIST_m]), the
                         decoder's input before any query: beside qanchor_query it says whether a
                         task's signal is lost in the encoder or between the prefix and <USER_EMB>
  static_query           logistic probe on Q-Anchor embeddings from one generic query for all tasks
  qanchor_query          logistic probe on Q-Anchor embeddings from the task's own query
  qanchor_paraphrase     the same with a paraphrased query never seen in pretraining or tuning
  qanchor_prompt         logistic probe on embeddings after tuning the scenario's soft prompt
  qanchor_prompt_proto   the tuned scenario's own prototype scorer (no probe), as served
Prompt tuning fits on the probe's train part and early-stops on its val part; test is touched
only for the final scores. Means over tasks leave out tasks with fewer than
`MIN_TEST_POSITIVES` test positives (listed as unreliable; their rows are still reported), and
differences between methods come with paired bootstrap intervals on the same test users.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from qanchor.embedding_engine import EmbeddingEngine
from qanchor.features import UserFeatures
from qanchor.modality_spec import ModalitySpec
from qanchor.model import QAnchor
from qanchor.model.text_encoder import TextEmbeddingCache
from training.evaluation.baselines import AggregateFeaturizer, HistoryFeaturizer, text_embeddings
from training.evaluation.geometry import embedding_geometry
from training.evaluation.metrics import METRICS, bootstrap_difference, bootstrap_mean, roc_auc
from training.evaluation.population import EvaluationPopulation
from training.evaluation.probe import Parts, gbdt_seed_scores, logistic_probe
from training.scenario_tuning import TuningSettings, tune

METHODS = ("oracle", "gbdt_aggregates", "gbdt_history", "minilm_text", "qanchor_prefix", "static_query", "qanchor_query",
           "qanchor_paraphrase", "qanchor_prompt", "qanchor_prompt_proto")
BASELINES = ("gbdt_aggregates", "gbdt_history", "minilm_text")
#: A task with fewer test positives than this is reported but left out of means over tasks.
MIN_TEST_POSITIVES = 20


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Names from the population's task set; None = all of them.
    tasks: list[str] | None = None
    baselines: bool = True
    #: The MiniLM row among the baselines (costly on CPU for large populations).
    text_baseline: bool = True
    #: LightGBM fits averaged per baseline row (`gbdt_seed_scores`): 1 is one fit, as every table
    #: of docs/benchmarks.md up to its sixteenth run; 5 is the stabler, stronger bagged row.
    gbdt_seeds: int = Field(default=1, ge=1)
    paraphrases: bool = True
    #: The `qanchor_prefix` row: a probe over every summary token (about 100 s for 5,000 users on 2 cores).
    prefix_probe: bool = True
    prompt_tuning: bool = True
    tune_steps: int = Field(default=150, gt=0)
    tokens: int = Field(default=6, ge=1, le=64)
    #: Passed to `TuningSettings`: the scenario's scoring space and prototypes per class, so the
    #: served prototype scorer can be compared with its earlier form (bench/scenario_scoring.py).
    whiten: bool = True
    prototypes_per_class: int = Field(default=1, ge=1)
    resamples: int = Field(default=1000, ge=10)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0


@dataclass
class EvaluationResult:
    rows: list[dict]                 # one per (method, task): auc/ks with 95% intervals
    summary: list[dict]              # one per method: mean auc/ks over tasks with 95% intervals
    test_labels: dict[str, np.ndarray]
    #: Test-user embeddings per task before ("query") and after ("prompt") tuning, for plots.
    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: `embedding_geometry` of the test users' task-query embeddings (and the generic query's).
    geometry: dict[str, float | int] = field(default_factory=dict)
    #: Paired differences of mean AUC / KS between methods on the same test users.
    comparisons: list[dict] = field(default_factory=list)
    #: Tasks left out of the means: fewer than MIN_TEST_POSITIVES test positives.
    unreliable: list[str] = field(default_factory=list)
    #: Test-user scores per method and task, in `test_labels` order: for paired comparisons
    #: across evaluations of the same population (other backbones, other configurations).
    test_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def query_embeddings(model: QAnchor, users: list[UserFeatures], times: list[int], queries: list[str],
                     prompt: torch.Tensor | None = None, batch_size: int = 64) -> np.ndarray:
    """[n_users, n_queries, D]: each user's prefix encoded once, every query answered from its KV."""
    engine = EmbeddingEngine(model, encode_batch_size=batch_size)
    return engine.embed(users, times, [engine.query_suffix(q, q, prompt) for q in queries])


@torch.no_grad()
def prefix_summaries(model: QAnchor, users: list[UserFeatures], times: list[int], batch_size: int = 64) -> np.ndarray:
    """[n_users, (1 + M + history tokens) * H]: each user's [USER], [MOD_m] and [HIST_m] token
    inputs, flattened (the event tokens are left out: their number varies per user)."""
    net = model.network.eval()
    out = []
    for start in range(0, len(users), batch_size):
        encoded = net.user_encoder(*model.collate(users[start:start + batch_size], times[start:start + batch_size]))
        tokens = torch.cat([encoded.user.unsqueeze(1), encoded.modalities, encoded.history], dim=1)
        out.append(tokens.flatten(1).float().cpu().numpy())
    return np.concatenate(out)


def _score_table(scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray], tasks: list[str],
                 resamples: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Per (method, task) rows over every task; per-method means over `tasks` only."""
    rows, summary = [], []
    for method in METHODS:
        by_task = scores.get(method)
        if not by_task:
            continue
        for task in by_task:
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


def _comparisons(scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray], tasks: list[str],
                 summary: list[dict], resamples: int, seed: int) -> list[dict]:
    """Paired differences that carry the method's claims: query vs generic, the embedding vs the
    prefix it was computed from, Q-Anchor vs the best baseline (best by mean test AUC, which
    favours the baseline), prototypes vs probe."""
    mean_auc = {s["method"]: s["mean_auc"] for s in summary}
    baselines = [m for m in BASELINES if m in mean_auc]
    best = max(baselines, key=mean_auc.__getitem__) if baselines else None
    pairs = [("qanchor_query", "static_query"), ("qanchor_query", "qanchor_prefix"),
             ("qanchor_prompt_proto", "qanchor_prompt")]
    if best is not None:
        pairs += [("qanchor_query", best), ("qanchor_prompt", best)]
    rows = [{"method": a, "versus": b, **paired_difference(labels, tasks, scores[a], scores[b], resamples, seed)}
            for a, b in pairs if a in scores and b in scores]
    if best is not None and "oracle" in mean_auc and mean_auc["oracle"] > mean_auc[best]:
        for row in rows:
            if row["versus"] == best:  # how much of the best baseline's distance to the ceiling it closes
                row["oracle_gap_closed"] = row["auc_diff"] / (mean_auc["oracle"] - mean_auc[best])
    return rows


def reliable_tasks(tasks: list[str], unreliable: list[str]) -> list[str]:
    """`tasks` less those with too few test positives to carry a mean (all of them if none is left)."""
    return [t for t in tasks if t not in unreliable] or list(tasks)


def paired_difference(labels: dict[str, np.ndarray], tasks: list[str], ours: dict[str, np.ndarray],
                      theirs: dict[str, np.ndarray], resamples: int, seed: int = 0) -> dict:
    """Mean-over-`tasks` AUC and KS of `ours` minus `theirs` (test scores per task, same users), with
    paired bootstrap 95% intervals, and on how many tasks `ours` has the higher AUC."""
    entry: dict = {"tasks": len(tasks)}
    for name, metric in METRICS.items():
        est = bootstrap_difference([labels[t] for t in tasks], [ours[t] for t in tasks], [theirs[t] for t in tasks],
                                   metric, resamples, seed)
        entry.update({f"{name}_diff": est.value, f"{name}_diff_low": est.low, f"{name}_diff_high": est.high})
    entry["tasks_ahead"] = sum(roc_auc(labels[t], ours[t]) > roc_auc(labels[t], theirs[t]) for t in tasks)
    return entry


def population_parts(population: EvaluationPopulation) -> Parts:
    return Parts(population.index("train"), population.index("val"), population.index("test"))


def baseline_tables(spec: ModalitySpec, population: EvaluationPopulation) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The LightGBM baselines' inputs for every user: aggregates of the recent events, and those
    joined to the window-long history columns (None for a spec without history modalities).
    Vocabularies are learnt from the probe's train users only."""
    users, times = population.users, population.reference_times
    train_users = [users[i] for i in population_parts(population).train]
    table = AggregateFeaturizer(spec).fit(train_users).transform(users, times)
    history = pd.concat([table, HistoryFeaturizer(spec).fit(train_users).transform(users, times)], axis=1) \
        if spec.history_modalities else None
    return table, history


def score_baselines(spec: ModalitySpec, cache: TextEmbeddingCache, population: EvaluationPopulation,
                    labels: dict[str, np.ndarray], seed: int = 0,
                    text: bool = True, gbdt_seeds: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Test scores of the backbone-independent baselines, per method and task.

    Computed once per population (they need LightGBM and the MiniLM weights, which a GPU node
    may lack) and passed to `evaluate(baseline_scores=...)` wherever the backbones are scored.
    `text=False` skips the MiniLM row: it encodes six 256-token sections per user, about an hour
    for 5,000 users on two CPU cores.
    `gbdt_seeds` > 1 averages that many LightGBM fits per row (`gbdt_seed_scores`).
    """
    parts = population_parts(population)
    users = population.users
    table, history = baseline_tables(spec, population)
    serialised = text_embeddings(users, spec, cache) if text else None
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for task, y in labels.items():
        out["gbdt_aggregates"][task] = np.mean(gbdt_seed_scores(table, y, parts, gbdt_seeds, seed), axis=0)
        if history is not None:
            out["gbdt_history"][task] = np.mean(gbdt_seed_scores(history, y, parts, gbdt_seeds, seed), axis=0)
        if serialised is not None:
            out["minilm_text"][task] = logistic_probe(serialised, y, parts, seed).test_scores
    return dict(out)


def task_labels(population: EvaluationPopulation, tasks: list[str]) -> dict[str, np.ndarray]:
    """0/1 labels per task over the whole population; refuses a task with one class in a part."""
    parts = population_parts(population)
    labels = {t: population.labels[t].to_numpy().astype(int) for t in tasks}
    for task, y in labels.items():
        for name, rows in vars(parts).items():
            if y[rows].min() == y[rows].max():
                raise ValueError(f"task {task!r} has a single class among the {len(rows)} {name} users; "
                                 "evaluate on more users")
    return labels


def evaluate(model: QAnchor, population: EvaluationPopulation, settings: EvaluationSettings,
             progress: bool = True, baseline_scores: dict[str, dict[str, np.ndarray]] | None = None) -> EvaluationResult:
    """Score every method on every selected task (test part of `population`).

    `baseline_scores` (from `score_baselines` on the same population) replaces computing them here.
    """
    parts = population_parts(population)
    users, times = population.users, population.reference_times
    tasks = population.tasks.select(settings.tasks)
    names = tasks.names
    labels = task_labels(population, names)
    # the paraphrase row needs a paraphrase of every task (the generator's tasks have them)
    paraphrases = settings.paraphrases and all(t.paraphrase for t in tasks.tasks)
    scores: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    seconds: dict[str, float] = {}
    stages = 1 + (settings.baselines and baseline_scores is None) + settings.prompt_tuning * len(names)
    bar = tqdm(total=stages, desc="evaluate", disable=not progress)

    if settings.baselines and baseline_scores is not None:
        for method, by_task in baseline_scores.items():
            scores[method].update({t: by_task[t] for t in names})
    if population.latent is not None:
        for task, y in labels.items():
            scores["oracle"][task] = logistic_probe(population.latent, y, parts, settings.seed).test_scores
    if settings.baselines and baseline_scores is None:
        start = time.perf_counter()
        for method, by_task in score_baselines(model.spec, model.cache, population, labels, settings.seed,
                                               text=settings.text_baseline, gbdt_seeds=settings.gbdt_seeds).items():
            scores[method].update(by_task)
        seconds["baselines"] = time.perf_counter() - start
        bar.update()

    if settings.prefix_probe:
        start = time.perf_counter()
        summaries = prefix_summaries(model, users, times, settings.batch_size)
        for task, y in labels.items():
            scores["qanchor_prefix"][task] = logistic_probe(summaries, y, parts, settings.seed).test_scores
        seconds["prefix_probe"] = time.perf_counter() - start

    start = time.perf_counter()
    queries = [tasks.generic_query, *(t.query for t in tasks.tasks)]
    if paraphrases:
        queries += [t.paraphrase for t in tasks.tasks]
    emb = query_embeddings(model, users, times, queries, batch_size=settings.batch_size)
    n = len(names)
    for i, (task, y) in enumerate(labels.items()):
        scores["static_query"][task] = logistic_probe(emb[:, 0], y, parts, settings.seed).test_scores
        scores["qanchor_query"][task] = logistic_probe(emb[:, 1 + i], y, parts, settings.seed).test_scores
        if paraphrases:
            scores["qanchor_paraphrase"][task] = logistic_probe(emb[:, 1 + n + i], y, parts, settings.seed).test_scores
    seconds["query_embeddings"] = time.perf_counter() - start
    generic = embedding_geometry(emb[parts.test][:, :1])
    geometry = {**embedding_geometry(emb[parts.test][:, 1:1 + n]).as_dict(),
                "generic_user_variance_share": generic.user_variance_share,
                "generic_mean_user_cosine": generic.mean_user_cosine}
    bar.update()

    embeddings: dict[str, dict[str, np.ndarray]] = {}
    if settings.prompt_tuning:
        start = time.perf_counter()
        fit_rows = np.concatenate([parts.train, parts.val])
        split = (np.arange(len(parts.train)), np.arange(len(parts.train), len(fit_rows)))
        tuning = TuningSettings(tokens=settings.tokens, steps=settings.tune_steps, seed=settings.seed,
                                whiten=settings.whiten, prototypes_per_class=settings.prototypes_per_class)
        for i, (task, y) in enumerate(labels.items()):
            bar.set_postfix(task=task)
            result = tune(model, [users[r] for r in fit_rows], [times[r] for r in fit_rows], y[fit_rows],
                          queries[1 + i], tuning, split=split)
            soft = result.prompt.prompt
            tuned = query_embeddings(model, users, times, [queries[1 + i]], None if soft is None else soft.detach(),
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
    unreliable = [t for t, y in test_labels.items() if y.sum() < MIN_TEST_POSITIVES]
    reliable = reliable_tasks(list(test_labels), unreliable)
    rows, summary = _score_table(scores, test_labels, reliable, settings.resamples, settings.seed)
    comparisons = _comparisons(scores, test_labels, reliable, summary, settings.resamples, settings.seed)
    return EvaluationResult(rows, summary, test_labels, embeddings, seconds, geometry, comparisons, unreliable,
                            {m: dict(by_task) for m, by_task in scores.items()})
