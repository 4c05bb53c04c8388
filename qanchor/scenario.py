"""Scenario soft prompts and class prototypes (the per-scenario part of Q-Anchor).

A scenario adds k learnable vectors after the user prefix and before the query, so the prefix
(and its KV cache) stays shared across scenarios, and a set of class prototypes in embedding
space. Prototypes start as k-means centroids of each class's labelled training embeddings (by
default one per class: the class mean) and are trained with a prototypical contrastive loss: an
embedding is pulled towards its own class's prototypes and pushed from the others. Scores are
softmax probabilities over classes, each class's evidence being the log-sum-exp of its
prototypes' similarities.

Similarities are taken in the scenario's *scoring space*: the embedding minus the mean of the
scenario's labelled users, whitened with their (shrunk) covariance, then L2-normalised. Why: the
users of one query share most of their vector's direction (mean cosine 0.8 on the benchmark), so
a cosine in the raw space mostly measures that shared part, and the nearest class mean there
ignores how the user-specific directions co-vary. In the whitened space the nearest class mean
is linear discriminant analysis, which scores as well as a logistic probe on the same vectors
(docs/benchmarks.md, "Prototype scoring in a whitened space"). Both statistics ship with the
scenario; a scenario saved without them scores in the raw space, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ScoringSpace:
    """Where a scenario compares embeddings with its prototypes: `normalize((x - center) @ whitening)`."""

    center: torch.Tensor     # [D]
    whitening: torch.Tensor  # [D, D], symmetric

    @classmethod
    def identity(cls, dim: int) -> ScoringSpace:
        """The raw embedding space (scenarios saved before the scoring space existed)."""
        return cls(torch.zeros(dim), torch.eye(dim))

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> ScoringSpace:
        """Mean and ZCA whitening of a scenario's labelled training embeddings. The covariance is
        Ledoit-Wolf shrunk: a scenario may label fewer users than the embedding has dimensions,
        and a plain sample covariance would then be singular. Directions with less than 1e-6 of
        the largest variance are scaled as if they had that much, so an unseen user's component
        along a direction the labelled users never vary in cannot dominate its scores."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"fitting a scoring space needs at least two embeddings, got shape {x.shape}")
        values, vectors = np.linalg.eigh(LedoitWolf().fit(x).covariance_)
        if values.max() <= 0:  # every labelled user has the same vector: nothing to whiten
            return cls(torch.from_numpy(x.mean(0)).float(), torch.eye(x.shape[1]))
        whitening = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-6 * values.max()))) @ vectors.T
        return cls(torch.from_numpy(x.mean(0)).float(), torch.from_numpy(whitening).float())

    def apply(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = embeddings.to(self.whitening.dtype)
        return F.normalize((x - self.center.to(x.device)) @ self.whitening.to(x.device), dim=-1)

    def apply_numpy(self, embeddings: np.ndarray) -> np.ndarray:
        return self.apply(torch.from_numpy(np.asarray(embeddings, dtype=np.float32))).numpy()


class ScenarioPrompt(nn.Module):
    """k soft-prompt vectors in the backbone's input space plus L2-normalised class prototypes."""

    def __init__(self, tokens: int, hidden: int, prototypes: torch.Tensor, prototype_classes: torch.Tensor,
                 init_scale: float = 0.02, space: ScoringSpace | None = None):
        super().__init__()
        if prototypes.shape[0] != prototype_classes.shape[0]:
            raise ValueError("one class id per prototype")
        dim = prototypes.shape[1]
        space = space or ScoringSpace.identity(dim)
        if space.center.shape != (dim,) or space.whitening.shape != (dim, dim):
            raise ValueError(f"the scoring space is for {space.center.shape[0]}-dimensional embeddings, the "
                             f"prototypes are {dim}-dimensional")
        self.prompt = nn.Parameter(torch.randn(tokens, hidden) * init_scale) if tokens else None
        self.prototypes = nn.Parameter(F.normalize(prototypes.float(), dim=-1))
        self.register_buffer("prototype_classes", prototype_classes.long())
        self.register_buffer("center", space.center.float())
        self.register_buffer("whitening", space.whitening.float())

    @property
    def n_classes(self) -> int:
        return int(self.prototype_classes.max()) + 1

    @property
    def space(self) -> ScoringSpace:
        return ScoringSpace(self.center, self.whitening)

    def class_logits(self, embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
        """[N, C]: log-sum-exp over each class's prototypes of cosine similarity / temperature,
        in the scoring space."""
        sims = self.space.apply(embeddings) @ F.normalize(self.prototypes, dim=-1).T / temperature
        out = torch.full((embeddings.shape[0], self.n_classes), float("-inf"), device=embeddings.device,
                         dtype=sims.dtype)
        for c in range(self.n_classes):
            out[:, c] = torch.logsumexp(sims[:, self.prototype_classes == c], dim=1)
        return out

    def probabilities(self, embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
        return self.class_logits(embeddings, temperature).softmax(dim=-1)


def prototypical_loss(prompt: ScenarioPrompt, embeddings: torch.Tensor, classes: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """-log P(own class) where a class's evidence sums over its prototypes (multi-positive InfoNCE)."""
    return F.cross_entropy(prompt.class_logits(embeddings, temperature), classes)


def kmeans_prototypes(embeddings: np.ndarray, classes: np.ndarray, per_class: int,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` k-means centroids of each class's embeddings (fewer if a class has fewer points)."""
    from sklearn.cluster import KMeans

    centroids, owners = [], []
    for c in np.unique(classes):
        points = embeddings[classes == c]
        k = max(1, min(per_class, len(points)))
        fit = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(points)
        centroids.append(fit.cluster_centers_)
        owners.append(np.full(k, c))
    return torch.from_numpy(np.concatenate(centroids)).float(), torch.from_numpy(np.concatenate(owners)).long()


def ks_statistic(labels: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov: max gap between the score CDFs of positives and negatives."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("KS needs both positives and negatives")
    thresholds = np.unique(scores)
    pos = np.searchsorted(np.sort(scores[labels]), thresholds, side="right") / labels.sum()
    neg = np.searchsorted(np.sort(scores[~labels]), thresholds, side="right") / (~labels).sum()
    return float(np.max(np.abs(pos - neg)))


class ScenarioMismatchError(ValueError):
    """A scenario used with a backbone version other than the one it was tuned on."""


@dataclass(frozen=True)
class LoadedScenario:
    """A registered scenario version, ready to embed and score with its backbone."""

    name: str
    query: str
    zero_shot: bool
    backbone_version: str
    classes: tuple[str, ...]
    temperature: float
    prompt: ScenarioPrompt | None
    #: Registry version, where it came from the registry (batch outputs and responses name it).
    version: str | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> LoadedScenario:
        """Read the `scenario/` artifact folder (scenario.json [+ prompt.safetensors])."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "scenario.json").read_text())
        prompt = None
        if not meta["zero_shot"]:
            tensors = load_file(str(folder / "prompt.safetensors"))
            soft = tensors.get("prompt")
            space = ScoringSpace(tensors["center"], tensors["whitening"]) if "center" in tensors else None
            prompt = ScenarioPrompt(0 if soft is None else soft.shape[0], 1 if soft is None else soft.shape[1],
                                    tensors["prototypes"], tensors["prototype_classes"], space=space)
            if soft is not None:
                prompt.prompt.data.copy_(soft)
        return cls(meta["name"], meta["query"], meta["zero_shot"], str(meta["backbone_version"]),
                   tuple(meta["classes"]), float(meta["temperature"]), prompt)
