"""The contrastive objective: alignment, the false-negative margin mask, gradients across ranks."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from qanchor.losses import _masked_infonce, contrastive_loss, retrieval_accuracy, uniformity_loss


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_aligned_pairs_give_low_loss_and_random_pairs_high():
    anchors = _unit(16, 64, seed=1)
    aligned = contrastive_loss(anchors, anchors.clone(), temperature=0.05, margin=0.1)
    shuffled = contrastive_loss(anchors, _unit(16, 64, seed=2), temperature=0.05, margin=0.1)
    assert aligned < 0.05
    # Random 64-d unit vectors: the positive is no better than 31 negatives -> loss near log(32).
    assert shuffled > 0.5 * math.log(32)
    assert retrieval_accuracy(anchors, anchors) == 1.0


def test_a_planted_false_negative_above_the_margin_is_masked_out():
    """m_ij = 1[s_ij <= s_ii + margin]: a candidate scoring above the positive by more than the
    margin contributes nothing, exactly as if it were not in the batch."""
    positive = torch.tensor([0.5])
    others = torch.tensor([[0.1, -0.2, 0.3]])
    planted = torch.cat([others, torch.tensor([[0.9]])], dim=1)  # 0.9 > 0.5 + 0.1
    no_self = torch.zeros_like(planted, dtype=torch.bool)
    with_planted = _masked_infonce(planted, positive, no_self, no_self, temperature=0.1, margin=0.1)
    without = _masked_infonce(others, positive, no_self[:, :3], no_self[:, :3], temperature=0.1, margin=0.1)
    assert torch.allclose(with_planted, without)
    unmasked = _masked_infonce(planted, positive, no_self, no_self, temperature=0.1, margin=1.0)
    assert unmasked > with_planted + 1.0, "inside the margin the same candidate is a hard negative"


def test_the_same_users_other_query_stays_a_negative_above_the_margin():
    """One user under two queries: its anchors are near-identical, so the margin rule alone would
    drop each as a "false negative" of the other and nothing would reward query dependence."""
    base = _unit(4, 32, seed=7)
    anchors = torch.stack([base[0], F.normalize(base[0] + 0.05 * base[1], dim=0), base[2], base[3]])
    answers = _unit(4, 32, seed=8)
    users = torch.tensor([10, 10, 11, 12])
    answer_ids = torch.tensor([1, 2, 3, 4])
    grouped = contrastive_loss(anchors, answers, 0.05, 0.1, users=users, answers=answer_ids)
    ungrouped = contrastive_loss(anchors, answers, 0.05, 0.1, users=users, answers=answer_ids, same_user_negatives=False)
    assert grouped > ungrouped + 1.0


def test_an_identical_answer_text_is_never_a_negative():
    anchors, answers = _unit(6, 32, seed=5), _unit(6, 32, seed=6)
    answers = answers.clone()
    answers[3] = answers[0]  # two users answering "no": the same text, the same vector
    ids = torch.tensor([7, 1, 2, 7, 4, 5])
    with_ids = contrastive_loss(anchors, answers, 0.05, 10.0, answers=ids)
    keep_all = contrastive_loss(anchors, answers, 0.05, 10.0)
    assert with_ids < keep_all
    assert torch.isfinite(with_ids)


def test_planted_duplicate_answer_does_not_dominate_the_batch_loss():
    anchors, answers = _unit(8, 32, seed=3), _unit(8, 32, seed=4)
    answers = answers.clone()
    answers[5] = anchors[0]  # another user's answer that matches anchor 0 perfectly
    masked = contrastive_loss(anchors, answers, temperature=0.05, margin=0.1)
    unmasked = contrastive_loss(anchors, answers, temperature=0.05, margin=10.0)
    assert masked < unmasked


def test_gradient_flows_through_all_gathered_embeddings_under_ddp(tmp_path):
    """Two CPU processes (gloo) under torchrun: each rank's gradient must match a single-process
    reference that sums both ranks' losses, i.e. include the other rank's use of its rows."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    script = Path(__file__).with_name("ddp_gather_check.py")
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "ok").read_text() == "match"


def test_uniformity_is_lower_for_spread_embeddings_than_for_a_crowded_cap():
    """The optional term rewards users spread over the sphere, not crowded around one direction."""
    torch.manual_seed(0)
    spread = F.normalize(torch.randn(64, 32), dim=-1)
    crowded = F.normalize(torch.ones(64, 32) + 0.1 * torch.randn(64, 32), dim=-1)
    assert uniformity_loss(spread) < uniformity_loss(crowded) - 1.0
    crowded.requires_grad_(True)
    uniformity_loss(crowded).backward()
    assert torch.isfinite(crowded.grad).all() and crowded.grad.abs().sum() > 0
