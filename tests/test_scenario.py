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
from qanchor.scenario import ScenarioPrompt, kmeans_prototypes, ks_statistic, prototypical_loss


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
