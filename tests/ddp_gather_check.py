"""Run by test_losses under `torchrun --nproc-per-node 2`; writes OUT/ok = "match" on success."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from qanchor.losses import contrastive_loss
from training.distributed import Dist, gather_with_grad


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    answers = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    rows = slice(rank * 4, rank * 4 + 4)
    mine_a = anchors[rows].clone().requires_grad_(True)
    mine_p = answers[rows].clone().requires_grad_(True)
    d = Dist(rank=rank, world=world)
    all_a, offset = gather_with_grad(mine_a, d)
    all_p, _ = gather_with_grad(mine_p, d)
    contrastive_loss(mine_a, mine_p, 0.1, 0.2, all_a, all_p, offset).backward()
    grads = [torch.zeros(4, 16) for _ in range(world)]
    dist.all_gather(grads, mine_a.grad)
    if rank == 0:
        ref_a = anchors.clone().requires_grad_(True)
        ref_p = answers.clone().requires_grad_(True)
        total = sum(contrastive_loss(ref_a[r * 4:r * 4 + 4], ref_p[r * 4:r * 4 + 4], 0.1, 0.2, ref_a, ref_p, r * 4)
                    for r in range(world))
        total.backward()
        ok = torch.allclose(torch.cat(grads), ref_a.grad, atol=1e-6)
        cross = mine_a.grad.abs().sum() > 0 and grads[1].abs().sum() > 0
        (out / "ok").write_text("match" if ok and cross else f"mismatch {(torch.cat(grads) - ref_a.grad).abs().max()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
