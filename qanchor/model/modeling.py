"""The Q-Anchor network: hierarchical user encoder -> soft-token prefix -> decoder LLM -> embedding.

Sequence of the anchor tower (one row per (user, query) pair, packed left, right-padded):

    [USER] [MOD_1..MOD_M] [HIST_1..HIST_M] [KIND ...] [events of modality 1] ... [events of modality M] | [soft prompt x k] <QUERY> query <USER_EMB> [answer]

`[HIST_m]` (one token per modality, or k with `history_slots: k`) summarises every event of
modality m's window (per-kind counts, recency, sums from the history feature view), while the
event tokens are only its last `max_events` events. With `history_kind_tokens: k` each history
modality's k most frequent kinds follow as tokens of their own (`[KIND]`), so a query naming one
kind can attend to that kind's counts and recency.

With `summary_readout` the embedding also reads the summary tokens directly: the `<USER_EMB>`
state attends over the row's `[USER] [MOD_m] [HIST_m]` inputs (`SummaryReadout`), so what the
decoder's mixing washes out of that one state stays within the query's reach.

With `loss.ntp_input: embedding` the `[answer]` is not in the anchor row: a second, short pass
decodes it from the projected embedding alone (`embedding_ntp`), so NTP rewards an embedding
that holds the answer to its own query instead of letting the answer read the prefix directly.

Everything left of `|` is the user prefix: it is built from the user's features alone, so under
causal attention its hidden states (and KV cache) never depend on the query. Empty modalities
and padded events are dropped from the packed row rather than masked, so a user's prefix is
the same tokens at the same positions whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from qanchor.modality_spec import ModalitySpec
from qanchor.model.backbone import EMB_TOKEN, QUERY_TOKEN, USER_TOKEN, Backbone, modality_token
from qanchor.model.batch import TIME_FEATURES, ModalityBatch, history_key, history_width, numeric_width
from qanchor.model.config import ModelSettings
from qanchor.model.text_encoder import TextEmbeddingCache


class Projection(nn.Module):
    """Hidden state -> embedding: an MLP plus a linear skip. The skip keeps the map injective
    when the MLP's units saturate, which otherwise lets early contrastive training collapse
    every embedding onto one point (loss stuck at log of the candidate count)."""

    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.skip = nn.Linear(hidden, out)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.mlp(x)


def _adapter(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def _mlp(width: int, inner: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, hidden))


@dataclass
class EncodedUsers:
    """The hierarchical encoder's output, before the prefix is laid out."""

    user: torch.Tensor               # [B, H]
    modalities: torch.Tensor         # [B, M, H] mean of each modality's recent events, adapted
    history: torch.Tensor            # [B, M_h * k, H] k tokens per history modality (its whole window), adapted
    history_present: torch.Tensor    # [B, M_h * k] bool: the user has any history in that modality
    kinds: torch.Tensor              # [B, M_h * K, H] the K most frequent kinds per history modality, adapted
    kinds_present: torch.Tensor      # [B, M_h * K] bool: the user has that many kinds in that modality
    events: list[torch.Tensor]       # per modality [B, N_m, H]


class SlotPooling(nn.Module):
    """Pooling by attention (the Set Transformer's PMA, single head): k learned queries per
    modality over that modality's set of kind vectors. A row with an empty set gets zeros (the
    caller drops it from the prefix), never NaN."""

    def __init__(self, modalities: int, slots: int, hidden: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(modalities, slots, hidden) * hidden ** -0.5)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, index: int, kinds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """kinds [B, K, H], mask [B, K] -> slots [B, k, H]."""
        scores = torch.einsum("sh,bkh->bsk", self.seeds[index], self.key(kinds)) * kinds.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        pooled = torch.softmax(scores, dim=-1) @ self.value(kinds)
        return pooled * mask.any(1).view(-1, 1, 1)


class KindBuckets(nn.Module):
    """A history modality's kinds at fixed coordinates: each kind's row (window counts, sums,
    recency) goes to bucket `kind_hash % buckets` (the hashing trick; colliding kinds keep the
    elementwise max, plus a presence channel), and an MLP reads the flattened table.

    Why: a pooled set of kind vectors (mean, max or attention) must pick a kind out by its text
    before it can pass on that kind's recency (a plan renewal is one payment 60-90 days ago).
    Here "the recency of the kind in bucket 17" is one input coordinate for every user, as a
    column is to LightGBM on the same history view. Pretrained on the recency questions alone,
    refill read 0.767 AUC with buckets against 0.580 pooled (docs/benchmarks.md, "What the
    pretraining asks"). The table starts at zero, so a negative signed-log sum reads as 0; the
    presence channel still marks the bucket.
    """

    def __init__(self, buckets: int, width: int, inner: int, hidden: int):
        super().__init__()
        self.buckets = buckets
        self.mlp = _mlp(buckets * (width + 1), inner, hidden)

    def table(self, numeric: torch.Tensor, hashes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """numeric [B, K, F], hashes [B, K], mask [B, K] -> the bucket table [B, buckets, F + 1];
        an empty bucket (and an empty history) reads all zeros."""
        rows = torch.cat([numeric, torch.ones_like(numeric[..., :1])], dim=-1) * mask.unsqueeze(-1)
        index = (hashes % self.buckets).unsqueeze(-1).expand_as(rows)
        empty = rows.new_zeros(rows.shape[0], self.buckets, rows.shape[-1])
        return empty.scatter_reduce(1, index, rows, reduce="amax", include_self=True)

    def forward(self, numeric: torch.Tensor, hashes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> [B, H]."""
        return self.mlp(self.table(numeric, hashes, mask).flatten(1))


class HierarchicalUserEncoder(nn.Module):
    """Events -> event tokens (per-modality MLP); masked mean -> modality tokens (shared adapter);
    per-kind history rows -> kind vectors (per-modality MLP), pooled -> history tokens (history
    adapter); mean over present summaries -> user token (user adapter).

    `buckets` B > 0: each history modality's kinds are also hashed into B fixed buckets
    (`KindBuckets`), whose reading is added to every history token of that modality before the
    history adapter; the prefix keeps its length.

    History pooling, `history_slots` = 0: mean and max over the kinds, one token per modality
    (max keeps a rare kind seen once months ago visible next to the frequent ones). k > 0: k
    attention slots per modality, each free to pick out the few kinds a scenario turns on.
    `kind_tokens` K > 0: the first K kind vectors (most frequent first, as the history view
    stores them) are also returned one by one, through their own adapter.
    """

    def __init__(self, spec: ModalitySpec, hidden: int, event_hidden: int, history: bool = True,
                 history_slots: int = 0, kind_tokens: int = 0, buckets: int = 0,
                 text_dim: int = TextEmbeddingCache.dim, profile_values: bool = False):
        super().__init__()
        self.names = spec.names
        #: Numeric columns each modality's event MLP reads (a batch may carry more: the profile's
        #: value column, which a model without `profile_values` leaves unread).
        self.numeric_widths = {name: numeric_width(spec, name, profile_values) for name in self.names}
        self.history_names = tuple(m.name for m in spec.history_modalities) if history else ()
        #: History tokens per history modality in the prefix.
        self.history_width = max(1, history_slots) if self.history_names else 0
        #: Kind tokens per history modality (candidates; a user's missing kinds are dropped).
        self.kind_width = kind_tokens if self.history_names else 0
        self.event_mlps = nn.ModuleDict({
            name: _mlp(text_dim + self.numeric_widths[name] + TIME_FEATURES, event_hidden, hidden) for name in self.names
        })
        self.history_mlps = nn.ModuleDict({
            name: _mlp(text_dim + history_width(spec, spec.modality(name)), event_hidden, hidden)
            for name in self.history_names
        })
        self.modal_adapter = _adapter(hidden)
        self.user_adapter = _adapter(hidden)
        self.slot_pool = None
        if self.history_names:
            if history_slots:
                self.slot_pool = SlotPooling(len(self.history_names), history_slots, hidden)
            else:
                self.history_pool = nn.Linear(2 * hidden, hidden)
            self.history_adapter = _adapter(hidden)
        self.kind_adapter = _adapter(hidden) if self.kind_width else None
        self.buckets = nn.ModuleDict({
            name: KindBuckets(buckets, history_width(spec, spec.modality(name)), event_hidden, hidden)
            for name in self.history_names
        }) if buckets else None

    def _pool_history(self, index: int, kinds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, K, H] kind vectors -> [B, history_width, H]."""
        if self.slot_pool is not None:
            return self.slot_pool(index, kinds, mask)
        count = mask.sum(1, keepdim=True)
        mean = (kinds * mask.unsqueeze(-1)).sum(1) / count.clamp(min=1)
        peak = kinds.masked_fill(~mask.unsqueeze(-1), torch.finfo(kinds.dtype).min).amax(1) * (count > 0)
        return self.history_pool(torch.cat([mean, peak], dim=-1)).unsqueeze(1)

    def _kind_tokens(self, kinds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, K', H] kind vectors -> exactly `kind_width` adapted tokens and their mask (padded or cut)."""
        width = self.kind_width
        kinds, mask = kinds[:, :width], mask[:, :width]
        if kinds.shape[1] < width:
            kinds = F.pad(kinds, (0, 0, 0, width - kinds.shape[1]))
            mask = F.pad(mask, (0, width - mask.shape[1]))
        return self.kind_adapter(kinds) * mask.unsqueeze(-1), mask

    def _history(self, batch: dict[str, ModalityBatch], text_table: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled, present, kind_tokens, kind_present = [], [], [], []
        for index, name in enumerate(self.history_names):
            hb = batch[history_key(name)]
            kinds = self.history_mlps[name](torch.cat([text_table[hb.ids], hb.numeric], dim=-1))
            tokens = self._pool_history(index, kinds, hb.mask)
            if self.buckets is not None:
                if hb.hashes is None:
                    raise ValueError(f"history buckets need each kind's hash: collate {name!r} with collate_users")
                tokens = tokens + self.buckets[name](hb.numeric, hb.hashes, hb.mask).unsqueeze(1)
            pooled.append(self.history_adapter(tokens))
            present.append(hb.mask.any(1, keepdim=True).expand(-1, self.history_width))
            if self.kind_adapter is not None:
                tokens, mask = self._kind_tokens(kinds, hb.mask)
                kind_tokens.append(tokens)
                kind_present.append(mask)
        history, history_present = torch.cat(pooled, dim=1), torch.cat(present, dim=1)
        if not kind_tokens:
            return history, history_present, history[:, :0], history_present[:, :0]
        return history, history_present, torch.cat(kind_tokens, dim=1), torch.cat(kind_present, dim=1)

    def forward(self, batch: dict[str, ModalityBatch], text_table: torch.Tensor) -> EncodedUsers:
        events, summaries, present = [], [], []
        for name in self.names:
            mb = batch[name]
            x = torch.cat([text_table[mb.ids], mb.numeric[..., :self.numeric_widths[name]], mb.time], dim=-1)
            tokens = self.event_mlps[name](x) * mb.mask.unsqueeze(-1)
            count = mb.mask.sum(1, keepdim=True)
            summaries.append(self.modal_adapter(tokens.sum(1) / count.clamp(min=1)))
            present.append(count.squeeze(1) > 0)
            events.append(tokens)
        mods = torch.stack(summaries, dim=1)
        batch_size, hidden = mods.shape[0], mods.shape[-1]
        if self.history_names:
            history, history_present, kinds, kinds_present = self._history(batch, text_table)
            # The user token weighs each history modality once, whatever its number of slots.
            per_modality = history.view(batch_size, -1, self.history_width, hidden).mean(2)
            per_modality_present = history_present[:, ::self.history_width]
        else:
            history = per_modality = kinds = mods.new_zeros(batch_size, 0, hidden)
            history_present = per_modality_present = kinds_present = torch.zeros(
                batch_size, 0, dtype=torch.bool, device=mods.device)
        summary = torch.cat([mods, per_modality], dim=1)
        weight = torch.cat([torch.stack(present, dim=1), per_modality_present], dim=1).to(mods.dtype).unsqueeze(-1)
        user = self.user_adapter((summary * weight).sum(1) / weight.sum(1).clamp(min=1))
        return EncodedUsers(user, mods, history, history_present, kinds, kinds_present, events)


class SummaryReadout(nn.Module):
    """Multi-head attention by the `<USER_EMB>` state over the user's summary tokens, added back
    to that state before the projection.

    Why: a linear probe on the `[MOD_m]` / `[HIST_m]` inputs reads habits (a refill, a renewal)
    that a probe on the `<USER_EMB>` state no longer can (docs/benchmarks.md, "Where the habit
    signal is lost"): the decoder mixes ~100 event tokens into that one state and the few summary
    tokens drown. Here the query's state chooses which summaries to read. The summaries come
    from the user's features alone, so they are cached with the prefix and the prefix still
    never depends on the query.
    """

    def __init__(self, hidden: int, heads: int = 4):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} readout heads")
        self.heads = heads
        self.norm = nn.LayerNorm(hidden)
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, state: torch.Tensor, summary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """state [R, H], summary [R, S, H], mask [R, S] -> [R, H]. A row without summaries keeps its state."""
        rows, width, hidden = summary.shape
        dtype = self.norm.weight.dtype
        state, summary = state.to(dtype), self.norm(summary.to(dtype))
        head = hidden // self.heads
        q = self.query(state).view(rows, self.heads, head)
        k = self.key(summary).view(rows, width, self.heads, head)
        v = self.value(summary).view(rows, width, self.heads, head)
        scores = torch.einsum("rhd,rshd->rhs", q, k) * head ** -0.5
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        pooled = torch.einsum("rhs,rshd->rhd", torch.softmax(scores, dim=-1), v).reshape(rows, hidden)
        return state + self.out(pooled) * mask.any(1, keepdim=True)


class QueryMeaning(nn.Module):
    """A query's frozen sentence embedding -> one vector added to its `<USER_EMB>` input (`query_meaning`).

    The last layer starts at zero, so a model starts out reading its query tokens alone and
    learns how much of the sentence meaning to take. The `<USER_EMB>` position is where the
    decoder's last attention picks what to read from the prefix, so the meaning steers that choice.
    """

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.mlp(sentence.to(self.mlp[0].weight.dtype))


@dataclass
class Prefixes:
    """User prefixes, one row per user: valid tokens first (in layout order), then filler."""

    tokens: torch.Tensor      # [B, P, H]
    lengths: torch.Tensor     # [B] valid tokens per row (device)
    host_lengths: list[int]   # the same, on the host: sizes the packed batch without a sync
    #: [B, S, H] the [USER] [MOD_m] [HIST_m] candidates and [B, S] which are in the prefix; only
    #: for a model with a `SummaryReadout` (None otherwise: nothing reads them).
    summary: torch.Tensor | None = None
    summary_mask: torch.Tensor | None = None

    def repeat(self, n: int) -> Prefixes:
        """Each row `n` times in a row: one user, several queries."""
        summary, mask = (None, None) if self.summary is None else (
            self.summary.repeat_interleave(n, dim=0), self.summary_mask.repeat_interleave(n, dim=0))
        return Prefixes(self.tokens.repeat_interleave(n, dim=0), self.lengths.repeat_interleave(n),
                        [length for length in self.host_lengths for _ in range(n)], summary, mask)


@dataclass
class PackedSequences:
    """Rows packed left and right-padded.

    Under causal attention a real token never attends to the padding after it, so the decoder
    runs with no mask at all (SDPA's causal fast path) and real positions are exact; only real
    positions are ever read. `attention_mask` marks them for counting.
    """

    embeds: torch.Tensor       # [R, L, H]
    attention_mask: torch.Tensor  # [R, L]
    emb_index: torch.Tensor    # [R] position of <USER_EMB>
    summary: torch.Tensor | None = None      # [R, S, H] each row's user summaries (`Prefixes.summary`)
    summary_mask: torch.Tensor | None = None  # [R, S]
    answer_ids: torch.Tensor | None = None  # [R, A] (pad -100)


class PretrainPass(NamedTuple):
    anchor: torch.Tensor            # [R, D] L2-normalised anchor embeddings
    answer: torch.Tensor            # [R, D] the semantic tower's answer embeddings
    ntp: torch.Tensor               # mean NTP loss of the answers
    tokens: torch.Tensor            # tokens processed
    numbers: torch.Tensor | None    # [R, number_slots] the answers' numbers read from the anchors (`number_head`)


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


class QAnchorModel(nn.Module):
    def __init__(self, spec: ModalitySpec, settings: ModelSettings, backbone: Backbone):
        super().__init__()
        self.spec = spec
        self.settings = settings
        self.backbone = backbone
        self.lm = backbone.lm
        hidden = backbone.hidden_size
        self.user_encoder = HierarchicalUserEncoder(spec, hidden, settings.event_hidden, settings.history_tokens,
                                                    settings.history_slots, settings.history_kind_tokens,
                                                    settings.history_buckets, profile_values=settings.profile_values)
        if self.user_encoder.history_names:
            #: Added to a history token on top of its modality's type embedding: "this modality, whole window".
            self.history_type = nn.Parameter(torch.zeros(hidden))
        if self.user_encoder.kind_width:
            #: Added to a kind token on top of its modality's type embedding: "one kind, whole window".
            self.kind_type = nn.Parameter(torch.zeros(hidden))
        self.projection = Projection(hidden, settings.embed_dim)
        self.readout = SummaryReadout(hidden) if settings.summary_readout else None
        self.query_meaning = QueryMeaning(TextEmbeddingCache.dim, hidden) if settings.query_meaning else None
        #: Embedding -> one input token the answer is decoded from (`loss.ntp_input: embedding`).
        self.answer_bridge = nn.Linear(settings.embed_dim, hidden) if settings.loss.ntp_input == "embedding" else None
        #: Embedding -> the answer's first numbers (`loss.number_weight`); only pretraining reads it.
        loss = settings.loss
        self.number_head = nn.Linear(settings.embed_dim, loss.number_slots) if loss.number_weight > 0 else None
        #: Packed widths are rounded up to this; `compile_decoder` raises it so shapes repeat.
        self.pad_to_multiple = 1
        ids = backbone.token_ids
        self.register_buffer("_type_ids", torch.tensor([ids[USER_TOKEN], *(ids[modality_token(m)] for m in spec.names),
                                                        ids[QUERY_TOKEN], ids[EMB_TOKEN]]), persistent=False)

    @property
    def decoder(self) -> nn.Module:
        """The transformer body without the LM head (hidden states only); compiled if `compile_decoder` ran."""
        compiled = self.__dict__.get("_compiled_decoder")
        return compiled if compiled is not None else self.lm.get_decoder()

    def compile_decoder(self, pad_to_multiple: int = 64, **options) -> None:
        """Run both towers' decoder passes through `torch.compile` (weights stay shared with `lm`).

        Packed widths are rounded up to `pad_to_multiple`, so variable-length batches hit a few
        static shapes (a handful of graphs, CUDA graphs usable) and attention tiles stay aligned.
        Kept outside the module tree, so state dicts and checkpoints are unchanged.
        """
        self.pad_to_multiple = pad_to_multiple
        # One graph per length bucket and tower: raise dynamo's per-function limit to fit them.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.__dict__["_compiled_decoder"] = torch.compile(self.lm.get_decoder(), **options)

    def _token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def prefix_embeddings(self, batch: dict[str, ModalityBatch], text_table: torch.Tensor) -> Prefixes:
        """Per user, `[USER] [present modalities] [present histories' slots] [their kinds] [their events]`,
        packed to the left of the row.

        Vectorised: every candidate token is laid out densely, then a stable sort on validity
        moves each row's real tokens to the front in layout order; one host sync sizes the rows.
        """
        encoded = self.user_encoder(batch, text_table)
        types = self._token_embeddings(self._type_ids)
        n_mod = len(self.spec.names)
        candidates = [encoded.user.unsqueeze(1) + types[0], encoded.modalities + types[1:1 + n_mod]]
        if self.user_encoder.history_names:
            history_types = types[[1 + self.spec.names.index(n) for n in self.user_encoder.history_names]]
            history_types = history_types.repeat_interleave(self.user_encoder.history_width, dim=0)
            candidates.append(encoded.history + history_types + self.history_type)
        if self.user_encoder.kind_width:
            kind_types = history_types[::self.user_encoder.history_width]
            candidates.append(encoded.kinds + kind_types.repeat_interleave(self.user_encoder.kind_width, dim=0)
                              + self.kind_type)
        present = torch.stack([batch[name].mask.any(1) for name in self.spec.names], dim=1)
        summaries = self.settings.summary_tokens
        valid = [torch.full_like(present[:, :1], summaries), present & summaries]
        if self.user_encoder.history_names:
            valid.append(encoded.history_present)
        if self.user_encoder.kind_width:
            valid.append(encoded.kinds_present)
        summary, summary_mask = (torch.cat(candidates, dim=1), torch.cat(valid, dim=1)) if self.readout is not None else (None, None)
        for i, name in enumerate(self.spec.names):
            candidates.append(encoded.events[i] + types[1 + i])
            valid.append(batch[name].mask)
        tokens, valid_mask = torch.cat(candidates, dim=1), torch.cat(valid, dim=1)
        order = torch.sort((~valid_mask).to(torch.int8), dim=1, stable=True).indices
        tokens = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        lengths = valid_mask.sum(1)
        return Prefixes(tokens, lengths, lengths.tolist(), summary, summary_mask)

    def suffix_ids(self, queries: list[str]) -> list[torch.Tensor]:
        """`<QUERY> query tokens <USER_EMB>` per query (the soft prompt, if any, goes before these)."""
        tok = self.backbone.tokenizer
        encoded = tok(queries, add_special_tokens=False, truncation=True, max_length=self.settings.max_query_tokens)["input_ids"]
        q, e = self.backbone.token_ids[QUERY_TOKEN], self.backbone.token_ids[EMB_TOKEN]
        return [torch.tensor([q, *ids, e]) for ids in encoded]

    def answer_ids(self, answers: list[str]) -> list[torch.Tensor]:
        tok = self.backbone.tokenizer
        encoded = tok(answers, add_special_tokens=False, truncation=True,
                      max_length=self.settings.max_answer_tokens - 1)["input_ids"]
        return [torch.tensor([*ids, self.backbone.eos_id]) for ids in encoded]

    def query_meanings(self, query_rows: torch.Tensor | None, text_table: torch.Tensor) -> torch.Tensor | None:
        """Per row, the vector its `<USER_EMB>` input gains from the query's sentence embedding
        (`query_rows` index `text_table`); None for a model without `query_meaning`."""
        if self.query_meaning is None:
            return None
        if query_rows is None:
            raise ValueError("this model reads each query's sentence embedding (query_meaning): give the "
                             "queries' rows of the text table (QAnchor.query_rows)")
        return self.query_meaning(text_table[query_rows])

    def pack(self, prefixes: Prefixes, suffixes: list[torch.Tensor], answers: list[torch.Tensor] | None = None,
             soft_prompt: torch.Tensor | None = None, meanings: torch.Tensor | None = None) -> PackedSequences:
        """Row r = prefix_r | soft prompt | suffix_r (| answer_r), right-padded; built with one scatter.
        `meanings` [R, H] are added to each row's `<USER_EMB>` input (`query_meanings`)."""
        device = prefixes.tokens.device
        rows = len(suffixes)
        tails = [torch.cat([s, answers[i]]) if answers is not None else s for i, s in enumerate(suffixes)]
        tail_lengths = [t.shape[0] for t in tails]
        tail_ids = torch.nn.utils.rnn.pad_sequence(tails, batch_first=True, padding_value=self.backbone.pad_id).to(device)
        tail = self._token_embeddings(tail_ids)
        if meanings is not None:
            emb_at = torch.tensor([s.shape[0] - 1 for s in suffixes], device=device)
            tail = tail.index_put((torch.arange(rows, device=device), emb_at), meanings.to(tail.dtype), accumulate=True)
        k = 0
        if soft_prompt is not None:
            k = soft_prompt.shape[0]
            tail = torch.cat([soft_prompt.to(tail.dtype).unsqueeze(0).expand(rows, -1, -1), tail], dim=1)
        totals = [p + k + t for p, t in zip(prefixes.host_lengths, tail_lengths)]
        length = round_up(max(totals), self.pad_to_multiple)
        width = max(length, prefixes.tokens.shape[1]) + tail.shape[1]
        embeds = torch.zeros(rows, width, tail.shape[-1], dtype=tail.dtype, device=device)
        embeds[:, :prefixes.tokens.shape[1]] = prefixes.tokens.to(tail.dtype)
        index = prefixes.lengths.unsqueeze(1) + torch.arange(tail.shape[1], device=device)
        embeds = embeds.scatter(1, index.unsqueeze(-1).expand(-1, -1, tail.shape[-1]), tail)[:, :length]
        total = torch.tensor(totals, device=device)
        mask = (torch.arange(length, device=device) < total.unsqueeze(1)).long()
        suffix_lengths = torch.tensor([s.shape[0] for s in suffixes], device=device)
        packed = PackedSequences(embeds, mask, prefixes.lengths + k + suffix_lengths - 1,
                                 summary=prefixes.summary, summary_mask=prefixes.summary_mask)
        if answers is not None:
            packed.answer_ids = torch.nn.utils.rnn.pad_sequence(answers, batch_first=True, padding_value=-100).to(device)
        return packed

    def hidden_states(self, packed: PackedSequences) -> torch.Tensor:
        positions = torch.arange(packed.embeds.shape[1], device=packed.embeds.device).expand(packed.embeds.shape[0], -1)
        out = self.decoder(inputs_embeds=packed.embeds, position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(hidden).float(), dim=-1)

    def embed_state(self, state: torch.Tensor, summary: torch.Tensor | None,
                    summary_mask: torch.Tensor | None) -> torch.Tensor:
        """The anchor embedding from the `<USER_EMB>` state [R, H] and the rows' user summaries
        (required, and read, only with `summary_readout`)."""
        if self.readout is not None:
            if summary is None:
                raise ValueError("this model reads the users' summary tokens: give them with the state "
                                 "(EmbeddingEngine.encode attaches them to a PrefixBatch)")
            state = self.readout(state, summary, summary_mask)
        return self.project(state)

    def anchor_forward(self, packed: PackedSequences) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anchor embeddings [R, D] and, when answers are packed, the mean NTP loss of the answers."""
        hidden = self.hidden_states(packed)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        embedding = self.embed_state(hidden[rows, packed.emb_index], packed.summary, packed.summary_mask)
        if packed.answer_ids is None:
            return embedding, None
        width = packed.answer_ids.shape[1]
        # The hidden state at <USER_EMB> + t predicts answer token t (causal: the embedding never sees it).
        valid = packed.answer_ids != -100
        positions = packed.emb_index.unsqueeze(1) + torch.arange(width, device=hidden.device)
        answer_hidden = hidden[rows.unsqueeze(1).expand(-1, width)[valid], positions[valid]]
        return embedding, self._answer_loss(answer_hidden, packed.answer_ids[valid])

    def _answer_loss(self, answer_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of answer tokens; only real answer positions go through the LM head,
        the costliest matmul on a large vocabulary."""
        return F.cross_entropy(self.lm.get_output_embeddings()(answer_hidden).float(), targets)

    def _padded_answers(self, answers: list[torch.Tensor]) -> torch.Tensor:
        """Answer ids [R, W] right-padded with the pad id; W rounded to a fine bucket (answers are short)."""
        ids = torch.nn.utils.rnn.pad_sequence(answers, batch_first=True, padding_value=self.backbone.pad_id)
        width = round_up(ids.shape[1], min(self.pad_to_multiple, 16))
        return F.pad(ids, (0, width - ids.shape[1]), value=self.backbone.pad_id).to(self._type_ids.device)

    def embedding_ntp(self, embedding: torch.Tensor, answers: list[torch.Tensor]) -> torch.Tensor:
        """NTP of each row's answer decoded from its embedding alone (`loss.ntp_input: embedding`).

        Row r is `bridge(embedding_r) a_0 .. a_{W-2}`; position t predicts a_t. The decoder sees
        neither the prefix nor the query, so the loss falls only as the embedding comes to hold
        what the answer to its question says.
        """
        if self.answer_bridge is None:
            raise ValueError("this model decodes answers from the sequence (loss.ntp_input: sequence)")
        ids = self._padded_answers(answers)
        lengths = torch.tensor([a.shape[0] for a in answers], device=ids.device)
        valid = torch.arange(ids.shape[1], device=ids.device) < lengths.unsqueeze(1)
        start = self.answer_bridge(embedding.to(self.answer_bridge.weight.dtype)).unsqueeze(1)
        tokens = self._token_embeddings(ids[:, :-1])
        hidden = self.decoder(inputs_embeds=torch.cat([start.to(tokens.dtype), tokens], dim=1),
                              use_cache=False).last_hidden_state
        return self._answer_loss(hidden[valid], ids[valid])

    def semantic_forward(self, answers: list[torch.Tensor]) -> torch.Tensor:
        """Semantic tower: the same backbone on the answer alone, last-token pooling, same projection."""
        device = self._type_ids.device
        ids = self._padded_answers(answers)
        # Right padding under causal attention needs no mask (see PackedSequences).
        hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
        last = torch.tensor([a.shape[0] - 1 for a in answers], device=device)
        return self.project(hidden[torch.arange(len(answers), device=device), last])

    def forward(self, users: dict[str, ModalityBatch], text_table: torch.Tensor, suffixes: list[torch.Tensor],
                answers: list[torch.Tensor], query_rows: torch.Tensor | None = None) -> PretrainPass:
        """One pretraining pass (inside `forward`, so DDP syncs every head it uses)."""
        from_embedding = self.answer_bridge is not None
        packed = self.pack(self.prefix_embeddings(users, text_table), suffixes, None if from_embedding else answers,
                           meanings=self.query_meanings(query_rows, text_table))
        anchor, ntp = self.anchor_forward(packed)
        if from_embedding:
            ntp = self.embedding_ntp(anchor, answers)
        answer = self.semantic_forward(answers)
        answer_tokens = sum(a.numel() for a in answers)
        tokens = packed.attention_mask.sum() + answer_tokens * (2 if from_embedding else 1)
        numbers = None if self.number_head is None else self.number_head(anchor)
        return PretrainPass(anchor, answer, ntp, tokens, numbers)
