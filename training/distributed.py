"""Process-group setup and the differentiable all-gather shared by pretraining and its GPU bench.

Kept free of MLflow/Feast imports so it also runs where only torch is installed (the GPU bench).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world, device=device)


def gather_with_grad(x: torch.Tensor, d: Dist) -> tuple[torch.Tensor, int]:
    """All ranks' rows, differentiable w.r.t. this rank's rows; and where they start."""
    if d.world == 1:
        return x, 0
    import torch.distributed._functional_collectives as fc

    # Backward reduce-scatters the gradients, so each rank's rows get every rank's use of them.
    # torch 2.13 renamed the op; the GPU image has 2.11.
    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    return gather(x.contiguous(), gather_dim=0, group=dist.group.WORLD), d.rank * x.shape[0]


def gather_ids(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """All ranks' rows of an integer tensor (no gradient), in rank order like `gather_with_grad`."""
    if d.world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)
