"""The two decoder passes behind the prefix KV engine, on a bare Hugging Face decoder.

`encode_prefixes` runs the user prefixes once and returns their per-layer keys and values;
`suffix_states` runs every scenario suffix of every user in ONE pass against them: each user's
row holds its S suffixes side by side, each suffix at the positions right after that user's
prefix, and a block mask lets a suffix token see the user's real prefix tokens and the earlier
tokens of its own suffix only. The prefix KV is shared by a row's suffixes, never copied per
scenario. Only torch and transformers are imported here, so the GPU benchmark times exactly
this code on a paper-sized decoder without the rest of the stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from qanchor.prefix_cache import PrefixState



@dataclass(frozen=True)
class PrefixBatch:
    """Prefixes of several users stacked for one pass: per layer [U, kv_heads, P, head_dim], right-padded;
    with a summary readout, the users' summary tokens [U, S, hidden] and which are real [U, S]."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    lengths: torch.Tensor  # [U] real prefix tokens per user
    summary: torch.Tensor | None = None
    summary_mask: torch.Tensor | None = None

    @classmethod
    def stack(cls, states: Sequence[PrefixState]) -> PrefixBatch:
        width = max(s.length for s in states)
        layers = len(states[0].keys)

        def pad(t: torch.Tensor, to: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, 0, to - t.shape[-2]))

        keys = tuple(torch.stack([pad(s.keys[i], width) for s in states]) for i in range(layers))
        values = tuple(torch.stack([pad(s.values[i], width) for s in states]) for i in range(layers))
        lengths = torch.tensor([s.length for s in states], device=keys[0].device)
        if states[0].summary is None:
            return cls(keys, values, lengths)
        counts = torch.tensor([s.summary.shape[0] for s in states], device=keys[0].device)
        most = int(counts.max())
        summary = torch.stack([pad(s.summary, most) for s in states])
        return cls(keys, values, lengths, summary, torch.arange(most, device=counts.device) < counts.unsqueeze(1))

    @property
    def size(self) -> int:
        return self.lengths.shape[0]

    def select(self, index: torch.Tensor) -> PrefixBatch:
        index = index.to(self.lengths.device)
        pick = (lambda t: None if t is None else t.index_select(0, index))
        return PrefixBatch(tuple(k.index_select(0, index) for k in self.keys),
                           tuple(v.index_select(0, index) for v in self.values), self.lengths.index_select(0, index),
                           pick(self.summary), pick(self.summary_mask))

    def unstack(self) -> list[PrefixState]:
        """Per-user states, each trimmed to its real length and copied out of the batch's storage."""
        return [PrefixState(tuple(k[u, :, :n].clone() for k in self.keys), tuple(v[u, :, :n].clone() for v in self.values),
                            None if self.summary is None else self.summary[u][self.summary_mask[u]].clone())
                for u, n in enumerate(self.lengths.tolist())]


@torch.no_grad()
def encode_prefixes(decoder: torch.nn.Module, embeds: torch.Tensor, lengths: torch.Tensor) -> PrefixBatch:
    """Keys and values of right-padded prefix embeddings [U, P, H] (`lengths` real tokens each).

    Right padding under causal attention needs no mask: real positions never see the padding."""
    positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
    out = decoder(inputs_embeds=embeds, position_ids=positions, use_cache=True)
    layers = [(k, v) for k, v, *_ in out.past_key_values]
    return PrefixBatch(tuple(k for k, _ in layers), tuple(v for _, v in layers), lengths.to(embeds.device))


def suffix_states(decoder: torch.nn.Module, prefix: PrefixBatch, blocks: Sequence[torch.Tensor],
                  sdpa: bool = True) -> torch.Tensor:
    """Last-token hidden states [U, S, H] of every suffix block ([len_s, H] input embeddings) after
    every user's cached prefix, in one decoder pass. Differentiable with respect to `blocks`."""
    users, n_suffix = prefix.size, len(blocks)
    device, hidden = blocks[0].device, blocks[0].shape[-1]
    width = max(b.shape[0] for b in blocks)
    padded = [torch.nn.functional.pad(b, (0, 0, 0, width - b.shape[0])) for b in blocks]
    embeds = torch.stack(padded).reshape(1, n_suffix * width, hidden).expand(users, -1, -1)

    offset = torch.arange(width, device=device).repeat(n_suffix)              # position inside its suffix
    owner = torch.arange(n_suffix, device=device).repeat_interleave(width)     # which suffix a column is
    positions = prefix.lengths.unsqueeze(1) + offset.unsqueeze(0)               # right after each prefix
    prefix_width = prefix.keys[0].shape[2]
    sees_prefix = torch.arange(prefix_width, device=device) < prefix.lengths.unsqueeze(1)        # [U, P]
    sees_suffix = (owner.unsqueeze(1) == owner.unsqueeze(0)) & (offset.unsqueeze(0) <= offset.unsqueeze(1))
    allowed = torch.cat([sees_prefix.unsqueeze(1).expand(-1, n_suffix * width, -1),
                         sees_suffix.unsqueeze(0).expand(users, -1, -1)], dim=-1).unsqueeze(1)
    mask = allowed if sdpa else \
        torch.zeros(allowed.shape, dtype=embeds.dtype, device=device).masked_fill(~allowed, torch.finfo(embeds.dtype).min)

    cache = DynamicCache(ddp_cache_data=list(zip(prefix.keys, prefix.values)))
    out = decoder(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, past_key_values=cache,
                  use_cache=True)
    states = out.last_hidden_state.reshape(users, n_suffix, width, hidden)
    # Python indices, no host-to-device copy: the pass can be captured in a CUDA graph.
    return torch.stack([states[:, i, b.shape[0] - 1] for i, b in enumerate(blocks)], dim=1)
