"""Training objectives of Q-Anchor pretraining.

`contrastive_loss` is InfoNCE over three kinds of negatives for each aligned (anchor, answer)
pair i: other answers (anchor->answer), other anchors (anchor->anchor) and, symmetrically,
other anchors for the answer (answer->anchor). A candidate j whose similarity exceeds the
positive's by more than `margin` is presumed a false negative (another user with the same
answer, say) and dropped: m_ij = 1[s_ij <= s_ii + margin]. Under DDP, pass the all-gathered
embeddings as `*_all` (gathered with gradient) so negatives span all ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_infonce(scores: torch.Tensor, positive: torch.Tensor, self_mask: torch.Tensor,
                    temperature: float, margin: float) -> torch.Tensor:
    """scores [B, N] candidates; positive [B]; self_mask [B, N] True where j is i's own positive/itself."""
    keep = (scores <= positive.unsqueeze(1) + margin) & ~self_mask
    logits = torch.cat([positive.unsqueeze(1), scores.masked_fill(~keep, float("-inf"))], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]


def contrastive_loss(anchor: torch.Tensor, answer: torch.Tensor, temperature: float, margin: float,
                     anchor_all: torch.Tensor | None = None, answer_all: torch.Tensor | None = None,
                     offset: int = 0) -> torch.Tensor:
    """Mean InfoNCE over anchor->answer, anchor->anchor and answer->anchor directions.

    `anchor`/`answer` are this rank's L2-normalised [B, D] rows; `*_all` the rows of every rank
    [N, D] (default: the local ones), in which this rank's rows start at `offset`.
    """
    anchor_all = anchor if anchor_all is None else anchor_all
    answer_all = answer if answer_all is None else answer_all
    b = anchor.shape[0]
    own = torch.zeros(b, anchor_all.shape[0], dtype=torch.bool, device=anchor.device)
    own[torch.arange(b), offset + torch.arange(b)] = True
    positive = (anchor * answer).sum(-1)
    a2p = anchor @ answer_all.T
    a2a = anchor @ anchor_all.T
    p2a = answer @ anchor_all.T
    anchor_side = _masked_infonce(torch.cat([a2p, a2a], dim=1), positive, torch.cat([own, own], dim=1),
                                  temperature, margin)
    answer_side = _masked_infonce(p2a, positive, own, temperature, margin)
    return (anchor_side.mean() + answer_side.mean()) / 2


def retrieval_accuracy(anchor: torch.Tensor, answer: torch.Tensor) -> float:
    """Share of anchors whose most similar answer in the batch is their own (chance: 1 / batch)."""
    return (anchor @ answer.T).argmax(dim=1).eq(torch.arange(anchor.shape[0], device=anchor.device)).float().mean().item()
