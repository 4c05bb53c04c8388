"""The prefix KV engine: cached prefixes give the same vectors as a full recompute, and a cache
entry can never outlive the features or the backbone it was computed from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import AS_OF
from qanchor.embedding_engine import EmbeddingEngine, QueryTooLongError
from qanchor.features import ModalityEvents
from qanchor.model import ModelSettings, QAnchor
from qanchor.prefix_cache import PrefixCache, PrefixKey, PrefixState
from qanchor.scenario import LoadedScenario, ScenarioMismatchError, ScenarioPrompt
from qanchor.suffix_attention import PrefixBatch

REF = int(pd.Timestamp(AS_OF).timestamp())
QUERIES = ["will this user repay a loan late?", "does this user like travel deals?", "night owl?"]


@pytest.fixture(scope="module", params=["state", "summary_readout", "query_meaning"])
def model(spec, request):
    """Every engine behaviour holds for both readouts: the `<USER_EMB>` state alone, and that state
    attending over the user's summary tokens (which then travel in the cache beside the KV); and
    for a model that adds each query's sentence meaning to its `<USER_EMB>` input (its last layer
    randomised here, as training leaves it, since it starts at zero)."""
    option = request.param
    model = QAnchor.build(spec, ModelSettings(**({} if option == "state" else {option: True})), seed=3)
    if option == "query_meaning":
        torch.nn.init.normal_(model.network.query_meaning.mlp[-1].weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def users(sqlite_store, dataset):
    ids = pd.read_parquet(dataset / "profiles")["user_id"].head(6).tolist()
    return sqlite_store.online(ids)


def _tuned(model: QAnchor, name: str, tokens: int, version: str = "1") -> LoadedScenario:
    torch.manual_seed(len(name))
    prompt = ScenarioPrompt(tokens, model.network.backbone.hidden_size, torch.randn(4, 128), torch.tensor([0, 0, 1, 1]),
                            init_scale=0.5)
    return LoadedScenario(name, f"{name}?", False, version, ("0", "1"), 0.1, prompt)


def test_cached_prefix_equals_full_recompute_for_mixed_queries_and_soft_prompts(model, users):
    """Free-text queries and scenarios with soft prompts of different sizes share one pass; each
    vector matches `anchor_embeddings`, which packs and runs the whole sequence again."""
    registered = model
    registered.registry_version = "1"  # scenarios are served only with the backbone version they were tuned on
    try:
        engine = EmbeddingEngine(registered, PrefixCache(device_bytes=64 << 20))
        scenarios = [_tuned(registered, "travel", 6), _tuned(registered, "credit", 2)]
        suffixes = [engine.suffix(q) for q in QUERIES] + [engine.scenario_suffix(s) for s in scenarios]
        times = [REF] * len(users)
        cold = engine.embed(users, times, suffixes)
        warm = engine.embed(users, times, suffixes)
        with torch.no_grad():
            full = registered.anchor_embeddings(users, times, QUERIES).reshape(len(users), len(QUERIES), -1)
            prompted = [registered.anchor_embeddings(users, times, [s.query], soft_prompt=s.prompt.prompt)
                        for s in scenarios]
    finally:
        registered.registry_version = None
    expected = torch.cat([full, *(p.unsqueeze(1) for p in prompted)], dim=1).numpy()
    assert engine.cache.stats().hits == len(users) and engine.cache.stats().misses == len(users)
    lengths = {s.length for s in engine.prefixes(users, times)}
    assert len(lengths) > 1, "users must differ in prefix length so padding and masking are exercised"
    np.testing.assert_allclose(cold, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(warm, cold)


def test_batching_does_not_change_a_users_vector(model, users):
    engine = EmbeddingEngine(model, None, encode_batch_size=2, max_suffix_rows=3)
    suffixes = [engine.suffix(q) for q in QUERIES]
    together = engine.embed(users, [REF] * len(users), suffixes)
    alone = np.concatenate([engine.embed([u], [REF], suffixes) for u in users])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_a_feature_update_is_a_new_cache_entry_never_a_stale_vector(model, users):
    cache = PrefixCache(device_bytes=64 << 20)
    engine = EmbeddingEngine(model, cache)
    suffixes = [engine.suffix(QUERIES[0])]
    user = users[0]
    before = engine.embed([user], [REF], suffixes)
    bill = user.modalities["bill"]
    changed = replace(user, modalities={**user.modalities, "bill": ModalityEvents(
        bill.texts[:-1], bill.times[:-1], {k: v[:-1] for k, v in bill.numeric.items()})})
    after = engine.embed([changed], [REF], suffixes)
    fresh = EmbeddingEngine(model, None).embed([changed], [REF], suffixes)
    np.testing.assert_array_equal(after, fresh)
    assert not np.allclose(before, after, atol=1e-6)
    later = engine.embed([user], [REF + 86_400], suffixes)
    assert cache.stats().misses == 3 and cache.stats().hits == 0, "new features and a new day both miss"
    assert not np.allclose(later, before, atol=1e-6)


def test_a_new_backbone_version_never_reads_the_old_versions_entries(spec, users):
    cache = PrefixCache(device_bytes=64 << 20)
    old, new = QAnchor.build(spec, ModelSettings(), seed=1), QAnchor.build(spec, ModelSettings(), seed=2)
    old.registry_version, new.registry_version = "1", "2"
    query = EmbeddingEngine(old, cache).suffix(QUERIES[0])
    EmbeddingEngine(old, cache).embed(users[:2], [REF] * 2, [query])
    served = EmbeddingEngine(new, cache).embed(users[:2], [REF] * 2, [query])
    expected = EmbeddingEngine(new, None).embed(users[:2], [REF] * 2, [query])
    np.testing.assert_array_equal(served, expected)
    assert cache.stats().hits == 0 and cache.stats().misses == 4


def test_cache_is_bounded_by_bytes_and_evicts_least_recently_used(model, users):
    engine = EmbeddingEngine(model, None)
    states = engine.prefixes(users[:3], [REF] * 3)
    budget = states[0].nbytes + states[1].nbytes + states[2].nbytes - 1
    cache = PrefixCache(device_bytes=budget)
    keys = [PrefixKey("1", u.user_id, "fv") for u in users[:3]]
    cache.put(keys[0], states[0])
    cache.put(keys[1], states[1])
    assert cache.get(keys[0]) is not None   # keys[0] is now the most recent
    cache.put(keys[2], states[2])           # over budget: the least recent (keys[1]) goes
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    stats = cache.stats()
    assert stats.evictions == 1 and stats.device_entries == 2
    assert stats.device_bytes == states[0].nbytes + states[2].nbytes <= budget
    tiny_cache = PrefixCache(device_bytes=states[0].nbytes - 1)
    tiny_cache.put(keys[0], states[0])
    assert tiny_cache.stats().device_entries == 0, "an entry larger than the whole budget is not kept"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the host tier sits behind a GPU tier; no GPU here")
def test_entries_evicted_from_the_gpu_tier_move_to_host_memory_and_come_back(model, users):
    engine = EmbeddingEngine(model, None)
    states = engine.prefixes(users[:2], [REF] * 2)
    cache = PrefixCache(device_bytes=states[0].nbytes, host_bytes=1 << 30, device="cuda")
    keys = [PrefixKey("1", u.user_id, "fv") for u in users[:2]]
    cache.put(keys[0], states[0])
    cache.put(keys[1], states[1])
    assert cache.stats().host_entries == 1
    back = cache.get(keys[0])
    assert back.device.type == "cuda" and cache.stats().host_hits == 1
    torch.testing.assert_close(back.keys[0].cpu(), states[0].keys[0])


def test_prefix_batch_round_trips_through_stack_and_unstack(model, users):
    states = EmbeddingEngine(model, None).prefixes(users[:3], [REF] * 3)
    batch = PrefixBatch.stack(states)
    assert batch.keys[0].shape[2] == max(s.length for s in states)
    for original, back in zip(states, batch.unstack()):
        assert isinstance(back, PrefixState) and back.length == original.length
        torch.testing.assert_close(back.values[-1], original.values[-1], atol=0, rtol=0)
    picked = batch.select(torch.tensor([2, 0]))
    assert picked.lengths.tolist() == [states[2].length, states[0].length]
    if model.network.readout is not None:
        for original, back in zip(states, batch.unstack()):
            torch.testing.assert_close(back.summary, original.summary, atol=0, rtol=0)
        assert picked.summary_mask.sum(1).tolist() == [states[2].summary.shape[0], states[0].summary.shape[0]]
        assert states[0].nbytes > sum(t.numel() * t.element_size() for t in (*states[0].keys, *states[0].values))


def test_free_text_queries_never_grow_the_text_cache_yet_embed_like_a_remembered_query(model, users):
    """A client's free text is encoded for its request only; a scenario's or benchmark's query
    (`query_suffix`) is remembered. Both give the same vector."""
    engine = EmbeddingEngine(model)
    rows = len(model.cache)
    free = engine.suffix("will this user open a savings plan next week?")
    assert len(model.cache) == rows
    remembered = engine.query_suffix("will this user open a savings plan next week?", "remembered")
    assert len(model.cache) == rows + (model.network.query_meaning is not None)
    times = [REF] * len(users)
    np.testing.assert_allclose(engine.embed(users, times, [free]), engine.embed(users, times, [remembered]), atol=1e-6)


def test_free_text_queries_longer_than_the_budget_are_refused_not_truncated(model):
    engine = EmbeddingEngine(model, None)
    with pytest.raises(QueryTooLongError, match=r"has \d+ tokens; this backbone reads at most 48"):
        engine.suffix("will this user " * 40)
    with pytest.raises(QueryTooLongError, match="empty"):
        engine.suffix("   ")


def test_a_scenario_tuned_on_another_backbone_version_is_refused(model):
    engine = EmbeddingEngine(model, None)
    with pytest.raises(ScenarioMismatchError, match="load the backbone through the registry"):
        engine.scenario_suffix(_tuned(model, "travel", 2))
    model.registry_version = "2"
    try:
        with pytest.raises(ScenarioMismatchError, match="tuned on backbone v1, this model is v2"):
            engine.scenario_suffix(_tuned(model, "travel", 2))
    finally:
        model.registry_version = None


def test_soft_prompt_gradients_through_the_cached_prefix_equal_the_full_pass(model, users):
    """Prompt tuning backpropagates through the suffix only; the prefix KV is a constant of the
    frozen model, so the soft prompt's gradient is the one a full forward/backward gives."""
    engine = EmbeddingEngine(model, None)
    times = [REF] * len(users)
    prompt = torch.nn.Parameter(torch.randn(4, model.network.backbone.hidden_size) * 0.1)
    target = torch.randn(len(users), 128)

    def grad(embeddings: torch.Tensor) -> torch.Tensor:
        prompt.grad = None
        ((embeddings - target) ** 2).sum().backward()
        return prompt.grad.clone()

    prefixes = PrefixBatch.stack(engine.prefixes(users, times))
    cached = grad(engine.suffix_embeddings(prefixes, [engine.query_suffix(QUERIES[1], "q", prompt)])[:, 0])
    full = grad(model.anchor_embeddings(users, times, [QUERIES[1]], soft_prompt=prompt))
    assert cached.abs().max() > 0
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-3)
