"""The Q-Anchor network: hierarchical user encoder -> soft-token prefix -> decoder LLM -> embedding.

Sequence of the anchor tower (one row per (user, query) pair, packed left, right-padded):

    [USER] [MOD_1..MOD_M] [events of modality 1] ... [events of modality M] | [soft prompt x k] <QUERY> query <USER_EMB> [answer]

Everything left of `|` is the user prefix: it is built from the user's features alone, so under
causal attention its hidden states (and KV cache) never depend on the query. Empty modalities
and padded events are dropped from the packed row rather than masked, so a user's prefix is
the same tokens at the same positions whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qanchor.modality_spec import ModalitySpec
from qanchor.model.backbone import EMB_TOKEN, QUERY_TOKEN, USER_TOKEN, Backbone, modality_token
from qanchor.model.batch import TIME_FEATURES, ModalityBatch, numeric_width
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


class HierarchicalUserEncoder(nn.Module):
    """Events -> event tokens (per-modality MLP); masked mean -> modality tokens (shared adapter);
    mean over present modalities -> user token (user adapter)."""

    def __init__(self, spec: ModalitySpec, hidden: int, event_hidden: int, text_dim: int = TextEmbeddingCache.dim):
        super().__init__()
        self.names = spec.names
        self.event_mlps = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(text_dim + numeric_width(spec, name) + TIME_FEATURES, event_hidden),
                                nn.GELU(), nn.Linear(event_hidden, hidden))
            for name in self.names
        })
        self.modal_adapter = _adapter(hidden)
        self.user_adapter = _adapter(hidden)

    def forward(self, batch: dict[str, ModalityBatch], text_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns user tokens [B, H], modality tokens [B, M, H] and event tokens per modality [B, N_m, H]."""
        events, summaries, present = [], [], []
        for name in self.names:
            mb = batch[name]
            x = torch.cat([text_table[mb.ids], mb.numeric, mb.time], dim=-1)
            tokens = self.event_mlps[name](x) * mb.mask.unsqueeze(-1)
            count = mb.mask.sum(1, keepdim=True)
            summaries.append(self.modal_adapter(tokens.sum(1) / count.clamp(min=1)))
            present.append(count > 0)
            events.append(tokens)
        mods = torch.stack(summaries, dim=1)
        weight = torch.stack(present, dim=1).to(mods.dtype)
        user = self.user_adapter((mods * weight).sum(1) / weight.sum(1).clamp(min=1))
        return user, mods, events


@dataclass
class PackedSequences:
    embeds: torch.Tensor       # [R, L, H]
    attention_mask: torch.Tensor  # [R, L]
    emb_index: torch.Tensor    # [R] position of <USER_EMB>
    prefix_lengths: torch.Tensor  # [R]
    answer_ids: torch.Tensor | None = None  # [R, A] (pad -100)


class QAnchorModel(nn.Module):
    def __init__(self, spec: ModalitySpec, settings: ModelSettings, backbone: Backbone):
        super().__init__()
        self.spec = spec
        self.settings = settings
        self.backbone = backbone
        self.lm = backbone.lm
        hidden = backbone.hidden_size
        self.user_encoder = HierarchicalUserEncoder(spec, hidden, settings.event_hidden)
        self.projection = Projection(hidden, settings.embed_dim)
        ids = backbone.token_ids
        self.register_buffer("_type_ids", torch.tensor([ids[USER_TOKEN], *(ids[modality_token(m)] for m in spec.names),
                                                        ids[QUERY_TOKEN], ids[EMB_TOKEN]]), persistent=False)

    @property
    def decoder(self) -> nn.Module:
        """The transformer body without the LM head (hidden states only)."""
        return self.lm.get_decoder()

    def _token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def prefix_embeddings(self, batch: dict[str, ModalityBatch], text_table: torch.Tensor) -> list[torch.Tensor]:
        """Per user, the packed prefix [L_u, H]: user, present modalities, their events."""
        user, mods, events = self.user_encoder(batch, text_table)
        types = self._token_embeddings(self._type_ids)
        user = user + types[0]
        mods = mods + types[1:1 + len(self.spec.names)]
        rows = []
        for b in range(user.shape[0]):
            present = [i for i, name in enumerate(self.spec.names) if batch[name].mask[b].any()]
            parts = [user[b:b + 1], mods[b, present]]
            for i, name in enumerate(self.spec.names):
                mask = batch[name].mask[b]
                if mask.any():
                    parts.append(events[i][b, mask] + types[1 + i])
            rows.append(torch.cat(parts))
        return rows

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

    def pack(self, prefixes: list[torch.Tensor], suffixes: list[torch.Tensor], answers: list[torch.Tensor] | None = None,
             soft_prompt: torch.Tensor | None = None) -> PackedSequences:
        """Concatenate prefix | soft prompt | suffix (| answer) per row and right-pad."""
        device = prefixes[0].device
        rows, emb_index, answer_rows = [], [], []
        for i, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
            parts = [prefix]
            if soft_prompt is not None:
                parts.append(soft_prompt.to(prefix.dtype))
            parts.append(self._token_embeddings(suffix.to(device)))
            emb_index.append(sum(p.shape[0] for p in parts) - 1)
            if answers is not None:
                parts.append(self._token_embeddings(answers[i].to(device)))
            rows.append(torch.cat(parts))
        length = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), length, rows[0].shape[-1], dtype=rows[0].dtype, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        packed = PackedSequences(embeds, mask, torch.tensor(emb_index, device=device),
                                 torch.tensor([p.shape[0] for p in prefixes], device=device))
        if answers is not None:
            width = max(a.shape[0] for a in answers)
            packed.answer_ids = torch.full((len(answers), width), -100, dtype=torch.long, device=device)
            for i, a in enumerate(answers):
                packed.answer_ids[i, :a.shape[0]] = a.to(device)
        return packed

    def hidden_states(self, packed: PackedSequences) -> torch.Tensor:
        positions = torch.arange(packed.embeds.shape[1], device=packed.embeds.device).expand(packed.embeds.shape[0], -1)
        out = self.decoder(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask, position_ids=positions,
                           use_cache=False)
        return out.last_hidden_state

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(hidden).float(), dim=-1)

    def anchor_forward(self, packed: PackedSequences) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anchor embeddings [R, D] and, when answers are packed, the mean NTP loss of the answers."""
        hidden = self.hidden_states(packed)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        embedding = self.project(hidden[rows, packed.emb_index])
        if packed.answer_ids is None:
            return embedding, None
        width = packed.answer_ids.shape[1]
        # The hidden state at <USER_EMB> + t predicts answer token t (causal: the embedding never sees it).
        # Only real answer positions go through the LM head: it is the costliest matmul on a large vocabulary.
        valid = packed.answer_ids != -100
        positions = packed.emb_index.unsqueeze(1) + torch.arange(width, device=hidden.device)
        answer_hidden = hidden[rows.unsqueeze(1).expand(-1, width)[valid], positions[valid]]
        logits = self.lm.get_output_embeddings()(answer_hidden).float()
        ntp = F.cross_entropy(logits, packed.answer_ids[valid])
        return embedding, ntp

    def semantic_forward(self, answers: list[torch.Tensor]) -> torch.Tensor:
        """Semantic tower: the same backbone on the answer alone, last-token pooling, same projection."""
        device = self._type_ids.device
        width = max(a.shape[0] for a in answers)
        ids = torch.full((len(answers), width), self.backbone.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, a in enumerate(answers):
            ids[i, :a.shape[0]] = a.to(device)
            mask[i, :a.shape[0]] = 1
        hidden = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = mask.sum(1) - 1
        return self.project(hidden[torch.arange(len(answers), device=device), last])

    def forward(self, users: dict[str, ModalityBatch], text_table: torch.Tensor, suffixes: list[torch.Tensor],
                answers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pretraining pass: anchor embeddings, answer embeddings, NTP loss, tokens processed."""
        packed = self.pack(self.prefix_embeddings(users, text_table), suffixes, answers)
        anchor, ntp = self.anchor_forward(packed)
        answer = self.semantic_forward(answers)
        tokens = packed.attention_mask.sum() + sum(a.numel() for a in answers)
        return anchor, answer, ntp, tokens
