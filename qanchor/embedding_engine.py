"""Scenario embeddings over cached user prefixes: encode a prefix once, answer every scenario from it.

The anchor sequence is `prefix | [soft prompt] <QUERY> query <USER_EMB>`; under causal attention the
prefix's keys and values do not depend on what follows, so they are computed once per user
(`encode`) and kept in a `PrefixCache`. A call for U users and S scenarios then runs the decoder
only over the suffixes, all of them in ONE batched pass: each user's row holds its S suffixes
side by side, every suffix at the positions right after that user's prefix, and a block mask lets
a suffix token see the user's real prefix tokens and the earlier tokens of its own suffix only.
The prefix KV is shared by the S suffixes of a row, never copied per scenario.

The decoder passes themselves live in `qanchor.suffix_attention`; this module adds the model's
encoder, tokenisation, soft prompts, the cache and the projection. The result equals a full recompute of `prefix | suffix` (`QAnchor.anchor_embeddings`) up to
floating-point summation order; `tests/test_embedding_engine.py` holds it to 1e-4 in fp32.
Prompt tuning uses the same pass with gradients: the backbone is frozen, so a tuning user's
prefix KV is a constant and a step runs only the ~20 suffix positions forward and backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from qanchor.features import UserFeatures, feature_digest, text_key
from qanchor.model.qanchor import QAnchor
from qanchor.prefix_cache import PrefixCache, PrefixKey, PrefixState
from qanchor.scenario import LoadedScenario
from qanchor.suffix_attention import PrefixBatch, encode_prefixes, suffix_states


class QueryTooLongError(ValueError):
    """A free-text query longer than the backbone's query budget (it would be silently truncated)."""


@dataclass(frozen=True)
class Suffix:
    """What follows the user prefix for one scenario: optional soft prompt, then `<QUERY> query <USER_EMB>`."""

    name: str
    ids: torch.Tensor                  # [n] token ids, <QUERY> ... <USER_EMB>
    soft_prompt: torch.Tensor | None   # [k, hidden] or None
    #: [hidden] added to the `<USER_EMB>` input: the query's sentence meaning (`query_meaning`), or None.
    meaning: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.ids.shape[0] + (0 if self.soft_prompt is None else self.soft_prompt.shape[0])


class EmbeddingEngine:
    """Embeddings for users x scenarios from cached prefix KV; `cache=None` computes prefixes every call."""

    def __init__(self, model: QAnchor, cache: PrefixCache | None = None, encode_batch_size: int = 32,
                 max_suffix_rows: int = 512):
        self.model = model
        self.cache = cache
        self.encode_batch_size = encode_batch_size
        self.max_suffix_rows = max_suffix_rows
        #: Cache keys carry the backbone version, so two backbones never share an entry.
        self.backbone_version = model.registry_version or "unregistered"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def suffix(self, query: str, name: str | None = None, soft_prompt: torch.Tensor | None = None) -> Suffix:
        """A free-text query's suffix; refused (not truncated) when longer than `max_query_tokens`."""
        if not query.strip():
            raise QueryTooLongError("the query is empty")
        tokens = len(self.model.network.backbone.tokenizer(query, add_special_tokens=False)["input_ids"])
        limit = self.model.settings.max_query_tokens
        if tokens > limit:
            raise QueryTooLongError(f"the query has {tokens} tokens; this backbone reads at most {limit}")
        return self.query_suffix(query, name or query, soft_prompt, remember=False)

    def scenario_suffix(self, scenario: LoadedScenario) -> Suffix:
        """A registered scenario's suffix: its query, tokenised exactly as when it was tuned, and its soft prompt."""
        self.model.check_scenario(scenario)
        return self.query_suffix(scenario.query, scenario.name,
                                 scenario.prompt.prompt if scenario.prompt is not None else None)

    def query_suffix(self, query: str, name: str, soft_prompt: torch.Tensor | None = None,
                     remember: bool = True) -> Suffix:
        """A suffix tokenised as training and tuning do (truncated to `max_query_tokens`), unchecked.

        For a `query_meaning` model the query's sentence embedding joins the text cache
        (`remember`), as a scenario's or a benchmark's few queries should; a client's free text
        is encoded without it, so distinct requests cannot grow the cache without bound.
        """
        net = self.model.network
        (ids,) = net.suffix_ids([query])
        meaning = None
        if net.query_meaning is not None:
            cache = self.model.cache
            if remember:
                rows = self.model.query_rows([query])  # before the table: it may add the query's row
                sentence = cache.table(self.device)[rows]
            else:
                sentence = torch.from_numpy(cache.encode([text_key(query)])).to(self.device)
            with torch.no_grad():
                meaning = net.query_meaning(sentence)[0]
        return Suffix(name, ids.to(self.device), soft_prompt, meaning)

    @torch.no_grad()
    def encode(self, users: Sequence[UserFeatures], reference_times: Sequence[int]) -> PrefixBatch:
        """Run the decoder over the users' prefixes (no cache involved); one batch, right-padded."""
        net = self.model.network
        prefixes = net.prefix_embeddings(*self.model.collate(list(users), list(reference_times)))
        width = max(prefixes.host_lengths)
        encoded = encode_prefixes(net.lm.get_decoder(), prefixes.tokens[:, :width].to(net.lm.dtype), prefixes.lengths)
        return replace(encoded, summary=prefixes.summary, summary_mask=prefixes.summary_mask)

    def prefixes(self, users: Sequence[UserFeatures], reference_times: Sequence[int]) -> list[PrefixState]:
        """Each user's prefix state: from the cache where the key matches, else encoded (and cached)."""
        keys = [PrefixKey(self.backbone_version, u.user_id, feature_digest(u, t)) for u, t in zip(users, reference_times)]
        states: list[PrefixState | None] = [self.cache.get(k) if self.cache is not None else None for k in keys]
        missing = [i for i, s in enumerate(states) if s is None]
        for start in range(0, len(missing), self.encode_batch_size):
            chunk = missing[start:start + self.encode_batch_size]
            encoded = self.encode([users[i] for i in chunk], [reference_times[i] for i in chunk]).unstack()
            for i, state in zip(chunk, encoded):
                states[i] = state
                if self.cache is not None:
                    self.cache.put(keys[i], state)
        return states  # type: ignore[return-value]

    def suffix_embeddings(self, prefix: PrefixBatch, suffixes: Sequence[Suffix]) -> torch.Tensor:
        """Embeddings [U, S, D] of every user with every suffix, in one decoder pass over the suffixes.

        Differentiable with respect to the soft prompts (prompt tuning); callers choose no_grad.
        """
        net = self.model.network
        token_embeds = net.lm.get_input_embeddings()
        blocks = []
        for s in suffixes:
            parts = [token_embeds(s.ids.to(self.device))]
            if s.meaning is not None:
                parts[0] = torch.cat([parts[0][:-1], parts[0][-1:] + s.meaning.to(parts[0].dtype)])
            if s.soft_prompt is not None:
                parts.insert(0, s.soft_prompt.to(self.device, parts[0].dtype))
            blocks.append(torch.cat(parts))
        states = suffix_states(net.lm.get_decoder(), prefix, blocks,
                               sdpa=net.settings.backbone.attn_implementation == "sdpa")
        n = len(suffixes)
        summary, mask = (None, None) if prefix.summary is None else (
            prefix.summary.repeat_interleave(n, dim=0), prefix.summary_mask.repeat_interleave(n, dim=0))
        return net.embed_state(states.flatten(0, 1), summary, mask).view(prefix.size, n, -1)

    @torch.no_grad()
    def embed(self, users: Sequence[UserFeatures], reference_times: Sequence[int],
              suffixes: Sequence[Suffix]) -> np.ndarray:
        """L2-normalised embeddings [n_users, n_suffixes, D]; prefixes from the cache where possible."""
        if not suffixes:
            raise ValueError("give at least one scenario or query")
        self.model.network.eval()
        states = self.prefixes(users, reference_times)
        out = np.zeros((len(users), len(suffixes), self.model.settings.embed_dim), dtype=np.float32)
        per_pass = max(1, self.max_suffix_rows // len(suffixes))
        for start in range(0, len(users), per_pass):
            batch = PrefixBatch.stack(states[start:start + per_pass])
            out[start:start + batch.size] = self.suffix_embeddings(batch, suffixes).float().cpu().numpy()
        return out
