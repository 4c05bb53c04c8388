"""Training objectives of Q-Anchor pretraining.

`contrastive_loss` is InfoNCE over three kinds of negatives for each aligned (anchor, answer)
pair i: other answers (anchor->answer), other anchors (anchor->anchor) and, symmetrically,
other anchors for the answer (answer->anchor). A candidate j whose similarity exceeds the
positive's by more than `margin` is presumed a false negative (another user with the same
answer, say) and dropped: m_ij = 1[s_ij <= s_ii + margin]. Under DDP, pass the all-gathered
embeddings as `*_all` (gathered with gradient) so negatives span all ranks.

Two facts about the rows refine the mask when the caller knows them. A candidate whose answer
text is the same as the positive's is a false negative whatever its score (two users both
answering "no"). A candidate of the SAME user with a different answer is a true negative
whatever its score: the similarity rule would drop exactly those (one user's anchors under two
queries are close), which is what lets an embedding ignore the query, so they are kept.

`uniformity_loss` is an optional third term that spreads the anchors over the sphere, and
`answer_number_loss` one that makes the anchor state its answer's numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_infonce(scores: torch.Tensor, positive: torch.Tensor, drop: torch.Tensor, keep: torch.Tensor,
                    temperature: float, margin: float) -> torch.Tensor:
    """scores [B, N] candidates; positive [B]; `drop` / `keep` [B, N] override the margin rule."""
    kept = ((scores <= positive.unsqueeze(1) + margin) | keep) & ~drop
    logits = torch.cat([positive.unsqueeze(1), scores.masked_fill(~kept, float("-inf"))], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]


def contrastive_loss(anchor: torch.Tensor, answer: torch.Tensor, temperature: float, margin: float,
                     anchor_all: torch.Tensor | None = None, answer_all: torch.Tensor | None = None,
                     offset: int = 0, *, users: torch.Tensor | None = None, users_all: torch.Tensor | None = None,
                     answers: torch.Tensor | None = None, answers_all: torch.Tensor | None = None,
                     same_user_negatives: bool = True) -> torch.Tensor:
    """Mean InfoNCE over anchor->answer, anchor->anchor and answer->anchor directions.

    `anchor`/`answer` are this rank's L2-normalised [B, D] rows; `*_all` the rows of every rank
    [N, D] (default: the local ones), in which this rank's rows start at `offset`. `users` /
    `answers` are integer ids of each row's user and answer text ([B], and [N] for `*_all`).
    """
    anchor_all = anchor if anchor_all is None else anchor_all
    answer_all = answer if answer_all is None else answer_all
    b, n = anchor.shape[0], anchor_all.shape[0]
    own = torch.zeros(b, n, dtype=torch.bool, device=anchor.device)
    own[torch.arange(b), offset + torch.arange(b)] = True
    drop, keep = own, torch.zeros_like(own)
    if answers is not None:
        answers_all = answers if answers_all is None else answers_all
        same_answer = answers.unsqueeze(1) == answers_all.unsqueeze(0)
        drop = drop | same_answer
        if users is not None and same_user_negatives:
            users_all = users if users_all is None else users_all
            keep = (users.unsqueeze(1) == users_all.unsqueeze(0)) & ~same_answer
    positive = (anchor * answer).sum(-1)
    a2p = anchor @ answer_all.T
    a2a = anchor @ anchor_all.T
    p2a = answer @ anchor_all.T
    anchor_side = _masked_infonce(torch.cat([a2p, a2a], dim=1), positive, torch.cat([drop, drop], dim=1),
                                  torch.cat([keep, keep], dim=1), temperature, margin)
    answer_side = _masked_infonce(p2a, positive, drop, keep, temperature, margin)
    return (anchor_side.mean() + answer_side.mean()) / 2


def uniformity_loss(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E[exp(-t ||x_i - x_j||^2)] over distinct rows of L2-normalised [N, D] embeddings
    (Wang & Isola, 2020): lowest when the rows spread over the sphere.

    InfoNCE only separates a pair when the margin mask keeps it as a negative; a decoder whose
    last state is dominated by the query can satisfy it with users crowded in one cap per query
    (mean cosine between users 0.6 on the synthetic benchmark), which prototype scoring and any
    cosine use of the vectors suffer from. This term spreads all rows directly.
    """
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    return torch.pdist(embeddings, p=2).pow(2).mul(-t).exp().mean().log()


def answer_number_loss(predicted: torch.Tensor, values: torch.Tensor, present: torch.Tensor,
                       questions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over number slots of 1 - Pearson correlation, within the batch, between the head's
    predictions and the answers' numbers (`qanchor.answer_numbers`); predicted / values [B, S],
    present [B, S] bool. With `questions` ([B] dense ids 0..B-1 of each row's question) both sides
    are centred within each question first, so only how users differ under one question counts.
    A slot with fewer than 3 numbers, or nothing left to correlate, is left out; a batch without
    one such slot gives 0 (with a graph). All slots at once, with no host sync: it runs every step.

    Why a correlation and not a squared error: it asks only that the embedding vary with the
    numbers, not that a head reach their scale and offset. At the reference code's learning rate
    (1e-4) a head bias needs tens of thousands of steps to reach a log1p mean of ~3, and until then
    a squared error pushes every user's embedding along one direction, crowding them together.
    Why centre per question: a slot holds a spend under one question and a count under another,
    so across a mixed batch most of its variance is which question was asked, which the query
    token alone explains; without centring the head is satisfied without reading the user.
    """
    weight = present.to(values.dtype)
    guess = predicted.float()
    group = torch.zeros(len(values), dtype=torch.long, device=values.device) if questions is None else questions

    def centred(x: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros_like(x).index_add(0, group, x * weight)
        counts = torch.zeros_like(x).index_add(0, group, weight).clamp(min=1)
        return (x - (sums / counts)[group]) * weight

    target, guess = centred(values), centred(guess)
    target_norm, guess_norm = target.norm(dim=0), guess.norm(dim=0)
    correlation = (target * guess).sum(0) / (target_norm * guess_norm).clamp(min=1e-8)
    used = ((weight.sum(0) >= 3) & (target_norm > 1e-6)).to(values.dtype)
    return ((1 - correlation) * used).sum() / used.sum().clamp(min=1)


def retrieval_accuracy(anchor: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Share of anchors whose most similar answer in the batch is their own (chance: 1 / batch).

    A 0-d tensor on the anchors' device: reading it waits for the accelerator, so the training
    loop reads it only when it logs, not every step."""
    return (anchor @ answer.T).argmax(dim=1).eq(torch.arange(anchor.shape[0], device=anchor.device)).float().mean()
