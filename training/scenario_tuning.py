"""Scenario prompt tuning: k soft-prompt vectors + class prototypes on a frozen Q-Anchor model.

Labelled users are fetched point-in-time at their `label_time`, split stratified into train and
validation, embedded with the scenario query, and the prompt and prototypes are trained with the
prototypical contrastive loss while every backbone and encoder weight stays frozen. Validation
AUC is checked every `eval_every` steps; the best state is kept and training stops after
`patience` checks without improvement. The same split also scores the query-only version
(no prompt, class-mean prototypes alone), the starting point of tuning and one of the
candidate states: when no tuned state beats it on validation, the query-only state is what
tuning returns (`TuningResult.chosen`), so a registration can never ship a prompt worse than
not tuning at all. A validation split with fewer than `MIN_VAL_POSITIVES` users of its rarest
class cannot tell the two apart, and the result says so (`TuningResult.warnings`).

The frozen model makes each user's prefix KV a constant, so it is encoded once per tuning run
(`EmbeddingEngine`) and every step runs only the suffix positions forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from qanchor.embedding_engine import EmbeddingEngine, Suffix
from qanchor.suffix_attention import PrefixBatch
from qanchor.features import UserFeatures
from qanchor.model import QAnchor
from qanchor.scenario import ScenarioPrompt, ScoringSpace, kmeans_prototypes, ks_statistic, prototypical_loss
from training.scenario_labels import ScenarioLabels

if TYPE_CHECKING:  # Feast is imported only where a store is opened, so these run without it
    from feature_repo.store import UserFeatureStore


#: Below this many validation users of the rarest class, a validation AUC is mostly noise.
MIN_VAL_POSITIVES = 20


class TuningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(default=6, ge=0, le=64)
    steps: int = Field(default=500, gt=0)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=5e-3, gt=0.0)
    temperature: float = Field(default=0.1, gt=0.0)
    #: One prototype per class: in the whitened scoring space the class mean is the LDA
    #: direction, and k-means splits of a class scored 0.03 mean AUC lower (docs/benchmarks.md).
    prototypes_per_class: int = Field(default=1, ge=1)
    #: Score in the scenario's whitened space (`qanchor.scenario.ScoringSpace`); False = raw cosine.
    whiten: bool = True
    val_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    eval_every: int = Field(default=25, gt=0)
    patience: int = Field(default=4, ge=1)
    seed: int = 0


@dataclass
class TuningResult:
    """What tuning returns: the state to register and how it compares with the query-only one.

    `chosen` is "tuned" when the best tuned state beat query-only on validation AUC, else
    "query_only" (then `prompt` carries no soft-prompt vectors, only the initial prototypes).
    """

    prompt: ScenarioPrompt
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    chosen: str = "tuned"
    warnings: list[str] = field(default_factory=list)


def _embed(engine: EmbeddingEngine, prefixes: PrefixBatch, rows: np.ndarray, suffix: Suffix,
           batch_size: int = 256) -> torch.Tensor:
    """Embeddings of `rows` (indices into `prefixes`) with one suffix; only the suffix runs through the decoder."""
    return torch.cat([engine.suffix_embeddings(prefixes.select(torch.from_numpy(rows[i:i + batch_size])), [suffix])[:, 0]
                      for i in range(0, len(rows), batch_size)])


def _scores(prompt: ScenarioPrompt, embeddings: torch.Tensor, temperature: float) -> np.ndarray:
    with torch.no_grad():
        return prompt.probabilities(embeddings, temperature).cpu().numpy()


def evaluate(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC (one-vs-rest macro for several classes) and, for binary tasks, KS."""
    if probabilities.shape[1] == 2:
        return {"auc": float(roc_auc_score(y, probabilities[:, 1])), "ks": ks_statistic(y, probabilities[:, 1])}
    return {"auc": float(roc_auc_score(y, probabilities, multi_class="ovr"))}


def load_labelled_users(store: UserFeatureStore, labels: ScenarioLabels) -> tuple[list[UserFeatures], list[int]]:
    """Features of every labelled user at its label time (Feast point-in-time join)."""
    times = list(labels.frame["label_time"])
    return store.features_at(list(labels.frame["user_id"]), times), [int(t.timestamp()) for t in times]


def tune(model: QAnchor, users: list[UserFeatures], times: list[int], classes: np.ndarray, query: str,
         settings: TuningSettings, split: tuple[np.ndarray, np.ndarray] | None = None) -> TuningResult:
    """Train prompt + prototypes on a stratified split; backbone and encoders never change.

    `split` gives (train, validation) row indices when the caller owns the split (the
    evaluation harness keeps its probe split); otherwise `val_fraction` is held out, stratified.
    """
    torch.manual_seed(settings.seed)
    net = model.network.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if split is None:
        split = train_test_split(np.arange(len(users)), test_size=settings.val_fraction, stratify=classes,
                                 random_state=settings.seed)
    train, val = split
    y_train, y_val = torch.from_numpy(classes[train]).long(), classes[val]
    # The model is frozen, so every user's prefix KV is a constant: encode it once, and each
    # step runs only the suffix (soft prompt + query + <USER_EMB>) forward and backward.
    engine = EmbeddingEngine(model)
    with torch.no_grad():
        prefixes = PrefixBatch.stack(engine.prefixes(users, times))
        plain = engine.query_suffix(query, "query")
        zero_train = _embed(engine, prefixes, train, plain)
        zero_val = _embed(engine, prefixes, val, plain)
    # The scoring space is fitted once, on the query-only embeddings of the training users: the
    # prompt then learns to move users within it, and validation compares both states in it.
    train_vectors = zero_train.cpu().numpy()
    space = ScoringSpace.fit(train_vectors) if settings.whiten else ScoringSpace.identity(train_vectors.shape[1])
    centroids, owners = kmeans_prototypes(space.apply_numpy(train_vectors), classes[train],
                                          settings.prototypes_per_class, settings.seed)
    query_only = ScenarioPrompt(0, net.backbone.hidden_size, centroids, owners, space=space).to(model.device)
    metrics = {f"query_only_val_{k}": v for k, v in evaluate(y_val, _scores(query_only, zero_val, settings.temperature)).items()}

    prompt = ScenarioPrompt(settings.tokens, net.backbone.hidden_size, centroids, owners, space=space).to(model.device)
    prompted = engine.query_suffix(query, "prompted", prompt.prompt)
    optimizer = torch.optim.Adam(prompt.parameters(), lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    best, best_state, stale, history = -1.0, None, 0, []
    for step in range(1, settings.steps + 1):
        batch = rng.choice(len(train), size=min(settings.batch_size, len(train)), replace=False)
        embeddings = _embed(engine, prefixes, train[batch], prompted, batch_size=len(batch))
        loss = prototypical_loss(prompt, embeddings, y_train[batch].to(model.device), settings.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            with torch.no_grad():
                val_embeddings = _embed(engine, prefixes, val, prompted)
            scores = evaluate(y_val, _scores(prompt, val_embeddings, settings.temperature))
            history.append({"step": step, "loss": float(loss.detach()), **{f"val_{k}": v for k, v in scores.items()}})
            if scores["auc"] > best:
                best, stale = scores["auc"], 0
                best_state = {k: v.detach().clone() for k, v in prompt.state_dict().items()}
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    metrics["tuned_val_auc"] = best
    metrics["steps_run"] = float(history[-1]["step"])
    chosen = "tuned" if best > metrics["query_only_val_auc"] else "query_only"
    if chosen == "tuned":
        prompt.load_state_dict(best_state)
        with torch.no_grad():
            final_train = _embed(engine, prefixes, train, prompted)
            final_val = _embed(engine, prefixes, val, prompted)
    else:
        prompt, final_train, final_val = query_only, zero_train, zero_val
    metrics.update({f"train_{k}": v for k, v in evaluate(classes[train], _scores(prompt, final_train, settings.temperature)).items()})
    metrics.update({f"val_{k}": v for k, v in evaluate(y_val, _scores(prompt, final_val, settings.temperature)).items()})
    rarest = int(np.bincount(y_val).min())
    metrics["val_rarest_class_count"] = float(rarest)
    warnings = [] if rarest >= MIN_VAL_POSITIVES else [
        f"the validation split has only {rarest} users of its rarest class (< {MIN_VAL_POSITIVES}): its AUC "
        "cannot reliably tell the tuned prompt from query-only; label more users"]
    return TuningResult(prompt=prompt, metrics=metrics, history=history, chosen=chosen, warnings=warnings)
