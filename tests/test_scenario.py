"""Scenario prompts and prototypes: the per-scenario parameters and their scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

from conftest import AS_OF
from qanchor.model import ModelSettings, QAnchor
from qanchor.model.batch import collate_users
from qanchor.scenario import LoadedScenario, ScenarioPrompt, ScoringSpace, kmeans_prototypes, ks_statistic, prototypical_loss


def test_ks_statistic_matches_scipy():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.6, 0.2, 300), rng.normal(0.4, 0.2, 700)])
    labels = np.r_[np.ones(300), np.zeros(700)]
    assert ks_statistic(labels, scores) == pytest.approx(ks_2samp(scores[:300], scores[300:]).statistic)
    with pytest.raises(ValueError):
        ks_statistic(np.ones(5), np.arange(5.0))


def test_kmeans_gives_centroids_per_class_and_copes_with_tiny_classes():
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(-2, 0.1, (40, 8)), rng.normal(2, 0.1, (2, 8))])
    classes = np.r_[np.zeros(40, int), np.ones(2, int)]
    centroids, owners = kmeans_prototypes(points, classes, per_class=3)
    assert owners.tolist() == [0, 0, 0, 1, 1]
    assert (centroids[owners == 0].mean() < 0) and (centroids[owners == 1].mean() > 0)


def test_prototypes_learn_a_separable_task():
    g = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.randn(16, generator=g), dim=0)
    x = F.normalize(torch.randn(400, 16, generator=g) * 0.3 + torch.where(torch.rand(400, 1, generator=g) < 0.5, 1.0, -1.0) * direction, dim=-1)
    y = ((x @ direction) > 0).long()
    prompt = ScenarioPrompt(0, 16, torch.randn(4, 16, generator=g), torch.tensor([0, 0, 1, 1]))
    optimizer = torch.optim.Adam(prompt.parameters(), lr=0.05)
    first = prototypical_loss(prompt, x, y, temperature=0.1).item()
    for _ in range(100):
        optimizer.zero_grad()
        prototypical_loss(prompt, x, y, temperature=0.1).backward()
        optimizer.step()
    assert prototypical_loss(prompt, x, y, temperature=0.1).item() < first / 4
    accuracy = (prompt.probabilities(x, 0.1).argmax(1) == y).float().mean()
    assert accuracy > 0.95


def _anisotropic_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings as a trained backbone gives them: one direction shared by every user, a noisy
    nuisance direction the class means also differ along, and the class signal in a quiet one."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    x = rng.normal(0, 0.02, (n, 16))
    x[:, 0] += 1.0                                          # shared by everyone
    x[:, 1] += rng.normal(0, 0.5, n) + 0.15 * y             # nuisance: large spread, small shift
    x[:, 2] += 0.03 * y                                     # signal: small spread, clear shift
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _prototype_auc(space: ScoringSpace, x_train, y_train, x_test, y_test) -> float:
    from sklearn.metrics import roc_auc_score

    centroids, owners = kmeans_prototypes(space.apply_numpy(x_train), y_train, per_class=1)
    prompt = ScenarioPrompt(0, 16, centroids, owners, space=space)
    with torch.no_grad():
        return roc_auc_score(y_test, prompt.probabilities(torch.from_numpy(x_test).float(), 0.1)[:, 1].numpy())


def test_whitened_class_means_score_like_a_logistic_probe_where_raw_cosine_does_not():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x_train, y_train = _anisotropic_task(2000, 0)
    x_test, y_test = _anisotropic_task(2000, 1)
    probe = roc_auc_score(y_test, LogisticRegression(C=100, max_iter=2000).fit(x_train, y_train).decision_function(x_test))
    whitened = _prototype_auc(ScoringSpace.fit(x_train), x_train, y_train, x_test, y_test)
    raw = _prototype_auc(ScoringSpace.identity(16), x_train, y_train, x_test, y_test)
    assert whitened > probe - 0.02
    assert raw < whitened - 0.1


def test_a_scoring_space_needs_embeddings_of_the_prototypes_width():
    with pytest.raises(ValueError, match="at least two embeddings"):
        ScoringSpace.fit(np.zeros((1, 8)))
    identical = ScoringSpace.fit(np.ones((5, 8)))  # no spread to whiten: finite, not a division by zero
    assert torch.equal(identical.whitening, torch.eye(8)) and torch.isfinite(identical.apply(torch.ones(2, 8))).all()
    with pytest.raises(ValueError, match="8-dimensional embeddings, the prototypes are 16-dimensional"):
        ScenarioPrompt(0, 16, torch.randn(2, 16), torch.tensor([0, 1]), space=ScoringSpace.identity(8))


def test_a_scenario_saved_without_a_scoring_space_scores_in_the_raw_space(tmp_path):
    """Scenario versions registered before the scoring space existed keep their scores."""
    import json

    from safetensors.torch import save_file

    prototypes, owners = F.normalize(torch.randn(2, 16), dim=-1), torch.tensor([0, 1])
    save_file({"prototypes": prototypes, "prototype_classes": owners}, str(tmp_path / "prompt.safetensors"))
    (tmp_path / "scenario.json").write_text(json.dumps({"name": "old", "query": "q?", "zero_shot": False,
                                                        "backbone_version": "1", "classes": ["no", "yes"],
                                                        "temperature": 0.1}))
    loaded = LoadedScenario.from_folder(tmp_path)
    x = F.normalize(torch.randn(5, 16), dim=-1)
    raw = (x @ prototypes.T / 0.1).softmax(dim=-1)
    assert torch.allclose(loaded.prompt.probabilities(x, 0.1), raw, atol=1e-6)


def test_soft_prompt_changes_the_embedding_but_never_the_user_prefix(spec, sqlite_store, dataset):
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    net = model.network.eval()
    users = sqlite_store.online(pd.read_parquet(dataset / "profiles")["user_id"].head(1).tolist())
    batch = collate_users(users, [int(pd.Timestamp(AS_OF).timestamp())], spec, model.cache)
    prefix = net.prefix_embeddings(batch, model.cache.table())
    suffix = net.suffix_ids(["will this user redeem a coupon?"])
    prompt = torch.randn(6, net.backbone.hidden_size) * 0.5
    with torch.no_grad():
        plain = net.pack(prefix, suffix)
        tuned = net.pack(prefix, suffix, soft_prompt=prompt)
        h_plain, h_tuned = net.hidden_states(plain), net.hidden_states(tuned)
    n = prefix.host_lengths[0]
    assert torch.equal(h_plain[0, :n], h_tuned[0, :n])
    assert tuned.emb_index.item() == plain.emb_index.item() + 6
    e_plain = net.project(h_plain[0, plain.emb_index[0]])
    e_tuned = net.project(h_tuned[0, tuned.emb_index[0]])
    assert not torch.allclose(e_plain, e_tuned)
