"""The Q-Anchor network: prefix independence, save/load, backbone presets, bad settings."""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import AS_OF
from qanchor.model import BackboneSettings, ModelSettings, QAnchor
from qanchor.model.batch import collate_users, history_key, kind_hash
from qanchor.model.text_encoder import TextEmbeddingCache

REF = int(pd.Timestamp(AS_OF).timestamp())


@pytest.fixture(scope="module")
def users(sqlite_store, dataset):
    ids = pd.read_parquet(dataset / "profiles")["user_id"].head(3).tolist()
    return sqlite_store.online(ids)


@pytest.fixture(scope="module")
def tiny(spec):
    return QAnchor.build(spec, ModelSettings(), seed=0)


@pytest.fixture(scope="module")
def slotted(spec):
    """History pooled by 4 attention slots per modality instead of one mean+max token."""
    return QAnchor.build(spec, ModelSettings(history_slots=4), seed=0)


def test_user_prefix_hidden_states_do_not_depend_on_the_query(tiny, users):
    net = tiny.network.eval()
    batch = collate_users(users[:1], [REF], tiny.spec, tiny.cache)
    prefix = net.prefix_embeddings(batch, tiny.cache.table())
    queries = ["will this user repay a loan late?", "does this user like travel deals and hotels in Sanya?"]
    packed = net.pack(prefix.repeat(2), net.suffix_ids(queries))
    with torch.no_grad():
        hidden = net.hidden_states(packed)
    n = prefix.host_lengths[0]
    assert torch.equal(hidden[0, :n], hidden[1, :n])
    assert not torch.allclose(hidden[0, packed.emb_index[0]], hidden[1, packed.emb_index[1]])


def test_right_padding_and_length_buckets_leave_embeddings_unchanged(tiny, users):
    """The decoder runs without an attention mask: causal attention keeps real tokens blind to
    the right padding, so a user's vector is the same alone, beside a longer user, or padded to a
    length bucket (as compiled training does)."""
    net = tiny.network.eval()
    query = ["will this user travel soon?"]
    with torch.no_grad():
        alone = [tiny.anchor_embeddings([u], [REF], query) for u in users]
        together = tiny.anchor_embeddings(users, [REF] * len(users), query)
        net.pad_to_multiple = 64
        try:
            bucketed = tiny.anchor_embeddings(users, [REF] * len(users), query)
        finally:
            net.pad_to_multiple = 1
    lengths = net.prefix_embeddings(collate_users(users, [REF] * len(users), tiny.spec, tiny.cache),
                                    tiny.cache.table()).host_lengths
    assert len(set(lengths)) > 1, "the fixture must mix prefix lengths for padding to occur"
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(bucketed, together, atol=1e-5, rtol=0)


def test_prefix_layout_is_user_then_modalities_then_histories_then_events(slotted, users):
    batch = collate_users(users[:1], [REF], slotted.spec, slotted.cache)
    prefix = slotted.network.prefix_embeddings(batch, slotted.cache.table())
    present = [name for name in slotted.spec.names if batch[name].mask[0].any()]
    histories = [m.name for m in slotted.spec.history_modalities if batch[history_key(m.name)].mask[0].any()]
    assert histories, "the fixture user must have a window-long history"
    events = sum(int(batch[name].mask[0].sum()) for name in slotted.spec.names)
    slots = slotted.settings.history_slots
    assert prefix.host_lengths == [1 + len(present) + slots * len(histories) + events]
    encoded = slotted.network.user_encoder(batch, slotted.cache.table())
    types = slotted.network._token_embeddings(slotted.network._type_ids)
    assert torch.allclose(prefix.tokens[0, 0], encoded.user[0] + types[0])
    first_mod = slotted.spec.names.index(present[0])
    assert torch.allclose(prefix.tokens[0, 1], encoded.modalities[0, first_mod] + types[1 + first_mod])
    first_history = 1 + len(present)
    history_type = types[1 + slotted.spec.names.index(histories[0])] + slotted.network.history_type
    for slot in range(slots):
        expected = encoded.history[0, slot] + history_type
        assert torch.allclose(prefix.tokens[0, first_history + slot], expected)


def test_default_history_layout_is_one_pooled_token_per_modality(tiny, slotted, users):
    """`history_slots: 0` (the default) gives each history one [HIST_m]; k slots give k."""
    assert tiny.settings.history_slots == 0
    batch = collate_users(users[:1], [REF], tiny.spec, tiny.cache)
    one_each = tiny.network.prefix_embeddings(batch, tiny.cache.table()).host_lengths[0]
    with_slots = slotted.network.prefix_embeddings(batch, tiny.cache.table()).host_lengths[0]
    histories = sum(bool(batch[history_key(m.name)].mask[0].any()) for m in tiny.spec.history_modalities)
    assert with_slots - one_each == (slotted.settings.history_slots - 1) * histories


def test_one_rare_old_kind_moves_a_history_slot(slotted, users):
    """A single payment months ago (one kind among a user's kinds) changes that modality's slot
    tokens, and only those."""
    user = users[0]
    past = user.history["bill"]
    ref = REF
    extra = replace(past, kinds=past.kinds + ("paid #.## at HomeShield Property Fee, quarterly plans",),
                    counts={d: v + ((1,) if d == max(past.counts) else (0,)) for d, v in past.counts.items()},
                    sums={n: v + (300.0,) for n, v in past.sums.items()},
                    last_seen=past.last_seen + (ref - 80 * 86_400,), first_seen=past.first_seen + (ref - 80 * 86_400,),
                    events=past.events + 1)
    twin = replace(user, history={**user.history, "bill": extra})
    batch = collate_users([user, twin], [ref, ref], slotted.spec, slotted.cache)
    encoded = slotted.network.user_encoder(batch, slotted.cache.table())
    slots = slotted.settings.history_slots
    bill = [m.name for m in slotted.spec.history_modalities].index("bill") * slots
    bill_slots = slice(bill, bill + slots)
    assert (encoded.history[0, bill_slots] - encoded.history[1, bill_slots]).abs().max() > 1e-4
    others = torch.ones(encoded.history.shape[1], dtype=torch.bool)
    others[bill_slots] = False
    assert torch.equal(encoded.history[0, others], encoded.history[1, others]), "other modalities' slots unchanged"


@pytest.fixture(scope="module")
def with_kinds(spec):
    """Each history modality's 3 most frequent kinds also enter the prefix as tokens."""
    return QAnchor.build(spec, ModelSettings(history_kind_tokens=3), seed=0)


def test_kind_tokens_add_the_users_own_kinds_up_to_k_per_history_modality(tiny, with_kinds, users):
    """A user with 2 kinds in a modality gets 2 kind tokens there, one with 10 gets k; the pooled
    [HIST_m] stays, and the prefix still never depends on the query."""
    batch = collate_users(users, [REF] * len(users), tiny.spec, tiny.cache)
    pooled = tiny.network.prefix_embeddings(batch, tiny.cache.table()).host_lengths
    prefix = with_kinds.network.prefix_embeddings(collate_users(users, [REF] * len(users), tiny.spec, with_kinds.cache),
                                                  with_kinds.cache.table())
    k = with_kinds.settings.history_kind_tokens
    added = [sum(min(k, int(batch[history_key(m.name)].mask[row].sum())) for m in tiny.spec.history_modalities)
             for row in range(len(users))]
    assert all(added), "the fixture users must have histories"
    assert prefix.host_lengths == [p + a for p, a in zip(pooled, added)]
    net = with_kinds.network.eval()
    first = net.prefix_embeddings(collate_users(users[:1], [REF], tiny.spec, with_kinds.cache), with_kinds.cache.table())
    packed = net.pack(first.repeat(2), net.suffix_ids(["will this user renew a plan?", "does this user buy pet food again?"]))
    with torch.no_grad():
        hidden = net.hidden_states(packed)
    n = first.host_lengths[0]
    assert torch.equal(hidden[0, :n], hidden[1, :n])


def test_a_kind_token_holds_that_kinds_recency_and_nothing_else_moves(with_kinds, users):
    """Moving one kind's last payment from yesterday to 80 days ago changes that kind's token
    (and the pooled bill history), not the other kinds' tokens."""
    user = users[0]
    past = user.history["bill"]
    assert len(past) >= 2, "the fixture user must have two bill kinds"
    last_seen = (REF - 80 * 86_400, *past.last_seen[1:])
    first_seen = (min(past.first_seen[0], last_seen[0]), *past.first_seen[1:])
    twin = replace(user, history={**user.history, "bill": replace(past, last_seen=last_seen, first_seen=first_seen)})
    batch = collate_users([user, twin], [REF, REF], with_kinds.spec, with_kinds.cache)
    encoded = with_kinds.network.user_encoder(batch, with_kinds.cache.table())
    k = with_kinds.settings.history_kind_tokens
    first = [m.name for m in with_kinds.spec.history_modalities].index("bill") * k
    assert (encoded.kinds[0, first] - encoded.kinds[1, first]).abs().max() > 1e-4
    others = torch.ones(encoded.kinds.shape[1], dtype=torch.bool)
    others[first] = False
    torch.testing.assert_close(encoded.kinds[0, others], encoded.kinds[1, others], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def bucketed(spec):
    """Each history modality's kinds also hashed into 32 fixed buckets."""
    return QAnchor.build(spec, ModelSettings(history_buckets=32), seed=0)


#: A quarterly-plan kind as the history view stores it (lower-cased, digits masked).
PLAN_KIND = "paid # at homeshield property fee, quarterly plans"


def _with_plan_payment(user, days_ago: int):
    """`user` with one extra quarterly-plan payment `days_ago` days before REF in its bill history."""
    past = user.history["bill"]
    paid = REF - days_ago * 86_400
    plan = replace(past, kinds=past.kinds + (PLAN_KIND,),
                   counts={d: v + ((1,) if d >= days_ago else (0,)) for d, v in past.counts.items()},
                   sums={n: v + (300.0,) for n, v in past.sums.items()},
                   last_seen=past.last_seen + (paid,), first_seen=past.first_seen + (paid,), events=past.events + 1)
    return replace(user, history={**user.history, "bill": plan})


def test_kind_hash_is_the_crc32_of_the_kind_text():
    """The same kind lands in the same bucket in every process: a saved model must find it there."""
    assert kind_hash(PLAN_KIND) == zlib.crc32(PLAN_KIND.encode("utf-8"))
    assert kind_hash("searched #") != kind_hash("searched # ")


def test_history_buckets_hold_one_old_kinds_recency_at_its_own_bucket(bucketed, users):
    """A plan paid 80 days ago and one paid 10 days ago differ in exactly one bucket of the bill
    table (the plan kind's), so the bill history token differs and no other modality's does."""
    early, late = _with_plan_payment(users[0], 80), _with_plan_payment(users[0], 10)
    batch = collate_users([early, late], [REF, REF], bucketed.spec, bucketed.cache)
    bill = batch[history_key("bill")]
    assert bill.hashes[0, len(early.history["bill"]) - 1] == kind_hash(PLAN_KIND)
    buckets = bucketed.network.user_encoder.buckets["bill"]
    table = buckets.table(bill.numeric, bill.hashes, bill.mask)
    differs = (table[0] != table[1]).any(-1).nonzero().flatten().tolist()
    assert differs == [kind_hash(PLAN_KIND) % buckets.buckets]
    encoded = bucketed.network.user_encoder(batch, bucketed.cache.table())
    names = [m.name for m in bucketed.spec.history_modalities]
    moved = [(encoded.history[0, i] - encoded.history[1, i]).abs().max().item() > 1e-5 for i in range(len(names))]
    assert moved == [name == "bill" for name in names]


def test_history_buckets_round_trip_and_need_history_tokens(bucketed, users, tmp_path):
    queries = ["will this user renew a quarterly plan?"]
    before = bucketed.embed(users, queries, reference_time=REF)
    loaded = QAnchor.from_pretrained(bucketed.save_pretrained(tmp_path / "model"))
    assert loaded.settings.history_buckets == 32
    assert (loaded.embed(users, queries, reference_time=REF) == before).all()
    with pytest.raises(ValueError, match="history_buckets: 8 shape the history tokens"):
        ModelSettings(history_tokens=False, history_buckets=8)


def test_history_tokens_carry_events_that_fell_off_the_event_sequence(tiny, users):
    """Two users whose last events agree but whose older history differs get different vectors."""
    user = users[0]
    past = user.history["bill"]
    older = replace(past, counts={d: tuple(c + (5 if d == max(past.counts) else 0) for c in v) for d, v in past.counts.items()},
                    events=past.events + 5 * len(past))
    twin = replace(user, history={**user.history, "bill": older})
    a, b = tiny.embed([user, twin], ["will this user repay late?"], reference_time=REF)
    assert np.abs(a - b).max() > 1e-4
    without = QAnchor.build(tiny.spec, tiny.settings.model_copy(update={"history_tokens": False}))
    a, b = without.embed([user, twin], ["will this user repay late?"], reference_time=REF)
    assert np.abs(a - b).max() == 0.0, "with history tokens off, the history must not reach the model"


def test_profile_values_let_the_model_read_an_age(tiny, spec, users, tmp_path):
    """Digits are masked before the text encoder, so "age: 37" and "age: 62" are one text: without
    `profile_values` two users who differ only in age get one vector; with it they do not, and
    the setting round-trips."""
    user = users[0]
    older = replace(user, profile={**user.profile, "age": 62 if user.profile["age"] != 62 else 37})
    a, b = tiny.embed([user, older], ["will this user buy health insurance?"], reference_time=REF)
    assert np.abs(a - b).max() == 0.0, "the default model reads no profile number"
    reading = QAnchor.build(spec, ModelSettings(profile_values=True), seed=0)
    a, b = reading.embed([user, older], ["will this user buy health insurance?"], reference_time=REF)
    assert np.abs(a - b).max() > 1e-4
    loaded = QAnchor.from_pretrained(reading.save_pretrained(tmp_path / "model"))
    assert loaded.settings.profile_values
    assert (loaded.embed([user, older], ["will this user buy health insurance?"], reference_time=REF)
            == np.stack([a, b])).all()


def test_embeddings_are_normalised_and_query_specific(tiny, users):
    vectors = tiny.embed(users, ["repay late?", "book a trip?"], reference_time=REF)
    assert vectors.shape == (3, 2, 128)
    assert torch.allclose(torch.from_numpy(vectors).norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    single = tiny.embed(users[1], ["repay late?", "book a trip?"], reference_time=REF)
    assert abs(single[0] - vectors[1]).max() < 1e-5, "batching must not change a user's vector"


def test_save_and_load_round_trip(tiny, users, tmp_path):
    queries = ["will this user repay late?", "likes travel deals?"]
    before = tiny.embed(users, queries, reference_time=REF)
    loaded = QAnchor.from_pretrained(tiny.save_pretrained(tmp_path / "model"))
    assert (loaded.embed(users, queries, reference_time=REF) == before).all()


def test_summary_readout_round_trips_and_leaves_a_row_without_summaries_as_its_state(spec, users, tmp_path):
    read = QAnchor.build(spec, ModelSettings(summary_readout=True), seed=0)
    queries = ["will this user repay late?", "likes travel deals?"]
    before = read.embed(users, queries, reference_time=REF)
    loaded = QAnchor.from_pretrained(read.save_pretrained(tmp_path / "read"))
    assert loaded.network.readout is not None
    assert (loaded.embed(users, queries, reference_time=REF) == before).all()
    state, summary = torch.randn(2, 128), torch.randn(2, 5, 128)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out = read.network.readout(state, summary, mask)
    assert not torch.allclose(out[0], state[0]) and torch.equal(out[1], state[1])


def test_query_meaning_starts_silent_then_moves_the_vector_by_what_the_query_means(spec, users, tmp_path):
    """`query_meaning` adds the query's frozen sentence embedding to the `<USER_EMB>` input: at
    initialisation it adds nothing, so a model starts from its query tokens alone; once its last
    layer has weights, a query's vector depends on the sentence, and the model round-trips."""
    model = QAnchor.build(spec, ModelSettings(query_meaning=True), seed=0)
    queries = ["will this user repay late?", "likes travel deals?"]
    net = model.network.eval()
    with torch.no_grad():
        silent = net.query_meanings(model.query_rows(queries), model.cache.table())
    assert silent.shape == (2, net.backbone.hidden_size) and not silent.any()
    before = model.embed(users, queries, reference_time=REF)
    torch.nn.init.normal_(net.query_meaning.mlp[-1].weight, std=0.5)
    after = model.embed(users, queries, reference_time=REF)
    assert np.abs(after - before).max() > 1e-3
    loaded = QAnchor.from_pretrained(model.save_pretrained(tmp_path / "meaning"))
    assert (loaded.embed(users, queries, reference_time=REF) == after).all()
    batch, table = model.collate(users[:2], [REF, REF])
    with pytest.raises(ValueError, match="query_meaning"):
        net(batch, table, net.suffix_ids(queries), net.answer_ids(["yes", "no"]))
    assert QAnchor.build(spec, ModelSettings(), seed=0).query_rows(queries) is None


def test_ntp_from_the_embedding_decodes_each_answer_from_its_own_vector_only(spec):
    """With `ntp_input: embedding` the decoder sees one bridged vector and the answer, nothing
    else: after a few steps on two (vector, answer) pairs, each answer is likelier under its own
    vector than under the other's, so lowering this loss means putting the answer in the vector."""
    model = QAnchor.build(spec, ModelSettings(loss={"ntp_input": "embedding"}), seed=0)
    net = model.network.train()
    vectors = torch.nn.functional.normalize(torch.randn(2, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    answers = net.answer_ids(["12 days ago, the only refill purchase.", "60 days ago, the only refill purchase."])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        net.embedding_ntp(vectors, answers).backward()
        optimizer.step()
    with torch.no_grad():
        own = [net.embedding_ntp(vectors[i:i + 1], answers[i:i + 1]) for i in range(2)]
        swapped = [net.embedding_ntp(vectors[1 - i:2 - i], answers[i:i + 1]) for i in range(2)]
    assert all(s > o + 0.2 for o, s in zip(own, swapped)), (own, swapped)


def test_ntp_from_the_embedding_keeps_the_answer_out_of_the_anchor_row_and_round_trips(spec, users, tmp_path):
    model = QAnchor.build(spec, ModelSettings(loss={"ntp_input": "embedding"}), seed=0)
    net = model.network.eval()
    batch, table = model.collate(users[:2], [REF, REF])
    suffixes, answers = net.suffix_ids(["repay late?", "book a trip?"]), net.answer_ids(["yes", "no, never"])
    with torch.no_grad():
        anchor, _, ntp, tokens, numbers = net(batch, table, suffixes, answers)
        assert numbers is None  # no number head unless model.loss.number_weight > 0
        query_only = net.pack(net.prefix_embeddings(batch, table), suffixes)
        assert torch.allclose(anchor, net.anchor_forward(query_only)[0], atol=1e-6)
        assert torch.allclose(ntp, net.embedding_ntp(anchor, answers))
    assert tokens == query_only.attention_mask.sum() + 2 * sum(a.numel() for a in answers)
    with pytest.raises(ValueError, match="ntp_input: sequence"):
        QAnchor.build(spec, ModelSettings(), seed=0).network.embedding_ntp(anchor, answers)
    loaded = QAnchor.from_pretrained(model.save_pretrained(tmp_path / "bridged"))
    assert torch.equal(loaded.network.answer_bridge.weight, net.answer_bridge.weight)
    queries = ["repay late?"]
    assert (loaded.embed(users, queries, reference_time=REF) == model.embed(users, queries, reference_time=REF)).all()


def test_a_model_saved_before_the_history_view_loads_with_its_old_layout(spec, users, tmp_path):
    """Saved settings without `history_tokens` / `history_slots` (and weights without the history
    modules) still load."""
    import json

    from safetensors.torch import load_file

    old = QAnchor.build(spec, ModelSettings(history_tokens=False), seed=0)
    folder = old.save_pretrained(tmp_path / "old")
    meta = json.loads((folder / "qanchor.json").read_text())
    del meta["settings"]["history_tokens"], meta["settings"]["history_slots"]
    (folder / "qanchor.json").write_text(json.dumps(meta))
    assert not any("history" in k for k in load_file(folder / "model.safetensors"))
    loaded = QAnchor.from_pretrained(folder)
    assert not loaded.settings.history_tokens
    query = ["will this user repay late?"]
    assert np.allclose(loaded.embed(users, query, reference_time=REF), old.embed(users, query, reference_time=REF))


def test_empty_user_gets_a_finite_vector(tiny, spec):
    from qanchor.features import ModalityEvents, UserFeatures

    nobody = UserFeatures("nobody", {m.name: ModalityEvents() for m in spec.event_modalities},
                          {f.name: None for f in spec.profile.fields})
    assert torch.isfinite(torch.from_numpy(tiny.embed(nobody, ["anything?"], reference_time=REF))).all()


@pytest.mark.parametrize("name", ["gpt-17", "./no/such/dir"])
def test_unknown_backbone_is_refused_at_config_time(name):
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneSettings(name=name)


def test_tiny_backbone_resizes_and_its_saved_folder_keeps_the_shape(spec, users, tmp_path):
    settings = ModelSettings(backbone=BackboneSettings(hidden_size=192, num_hidden_layers=3))
    model = QAnchor.build(spec, settings, seed=0)
    config = model.network.lm.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (192, 3, 6)
    before = model.embed(users[:1], ["will this user repay late?"], reference_time=REF)
    loaded = QAnchor.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.network.lm.config.num_hidden_layers == 3
    assert (loaded.embed(users[:1], ["will this user repay late?"], reference_time=REF) == before).all()


def test_a_shape_is_refused_for_a_backbone_that_brings_its_own():
    with pytest.raises(ValueError, match="resize the random-init `tiny`"):
        BackboneSettings(name="smollm2-135m", hidden_size=256)


@pytest.mark.slow
def test_smollm2_preset_loads_from_the_pypi_gguf_and_runs_with_user_tokens(spec, users):
    model = QAnchor.build(spec, ModelSettings(backbone=BackboneSettings(name="smollm2-135m")), seed=0)
    assert model.network.backbone.hidden_size == 576
    vectors = model.embed(users[:1], ["will this user repay late?"], reference_time=REF)
    assert vectors.shape == (1, 1, 128) and torch.isfinite(torch.from_numpy(vectors)).all()


def test_lora_trains_adapters_and_new_tokens_only_and_round_trips(spec, users, tmp_path):
    from qanchor.model import LoraSettings

    settings = ModelSettings(backbone=BackboneSettings(name="tiny", lora=LoraSettings(r=4, alpha=8)))
    model = QAnchor.build(spec, settings, seed=0)
    trainable = {n for n, p in model.network.lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "embed_tokens" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    before = model.embed(users[:2], ["repay late?"], reference_time=REF)
    loaded = QAnchor.from_pretrained(model.save_pretrained(tmp_path / "lora"))
    assert abs(loaded.embed(users[:2], ["repay late?"], reference_time=REF) - before).max() < 1e-6


def test_saved_text_cache_serves_known_texts_without_loading_the_encoder(tiny, users, tmp_path):
    texts = [t for u in users for events in u.modalities.values() for t in events.texts]
    ids = tiny.cache.ids(texts)
    expected = tiny.cache.table()[ids]
    tiny.cache.save(tmp_path / "texts.npz")

    restored = TextEmbeddingCache.load(tmp_path / "texts.npz", model_dir=tmp_path / "no-encoder-here")
    assert torch.equal(restored.table()[restored.ids(texts)], expected)
    with pytest.raises(OSError):  # an unseen text needs the encoder, which this cache was told lives nowhere
        restored.ids(["a text no user ever produced"])


def test_text_cache_load_refuses_a_file_that_is_not_one(tmp_path):
    np.savez(tmp_path / "other.npz", keys=np.array(["a", "b"]), rows=np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="not a saved text-embedding cache"):
        TextEmbeddingCache.load(tmp_path / "other.npz")


def test_a_model_folder_embeds_without_feast_mlflow_or_bentoml(tiny, users, tmp_path):
    """The core loads folders: a serving or batch process that embeds from a saved model pulls in
    none of the platform services (they live in feature_repo, training and serving)."""
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    folder = tiny.save_pretrained(tmp_path / "model")
    user = asdict(users[0])
    script = f"""
import json, sys
from qanchor.features import ModalityEvents, UserFeatures
from qanchor.model import QAnchor
raw = json.loads({json.dumps(user, default=list)!r})
user = UserFeatures(raw["user_id"], {{k: ModalityEvents(tuple(v["texts"]), tuple(v["times"]),
                    {{n: tuple(x) for n, x in v["numeric"].items()}}) for k, v in raw["modalities"].items()}}, raw["profile"])
model = QAnchor.from_pretrained({str(folder)!r}, registry_version="3")
vector = model.embed(user, ["will this user travel soon?"], reference_time={REF})
assert vector.shape == (1, 1, 128) and model.registry_version == "3"
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{"feast", "mlflow", "bentoml"}})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_features_of_another_modality_spec_are_refused_naming_both(tiny, spec):
    from qanchor.modality_spec import FeatureSchemaError

    tiny.check_features(spec)
    bill = spec.modality("bill")
    other = spec.model_copy(update={"modalities": tuple(
        m.model_copy(update={"max_events": m.max_events + 1}) if m.name == "bill" else m for m in spec.modalities)})
    assert bill.max_events != other.modality("bill").max_events
    with pytest.raises(FeatureSchemaError, match=rf"{spec.fingerprint()}.*{other.fingerprint()}.*'bill' differs in \['max_events'\]"):
        tiny.check_features(other)
