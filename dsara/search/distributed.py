"""One search on several processes (`torchrun --nproc_per_node N -m dsara search ...`).

Data-parallel over the global batch: `batch_size` stays the global batch and each rank takes its
1/N slice of every weight-train and arch-val batch (`Loader(rank=, world_size=)`), including its
slice of the global batch's PGD random start. Weight gradients and the alpha gradients (g_adv, and
g_nat before the min-norm combination, so that gamma* is computed from the global gradients) are
averaged over the ranks before each optimizer step, so every rank holds identical weights and alpha
at every step. Rank 0 alone writes the run directory; every rank loads the checkpoint on resume.

BatchNorm: by default each rank normalizes with the statistics of its own slice (as DDP does),
which is cheap but makes an N-process search differ from a one-process search on the same global
batch. With ``sync_bn = true`` every BatchNorm uses the statistics of the global batch
(`GlobalBatchNorm2d`, CPU/gloo and CUDA/NCCL alike): the search then equals the one-process search
up to floating-point summation order, at the cost of two all-reduces per BatchNorm layer per pass
(the dsara proxy supernet has ~900 BatchNorm layers), so it is latency-bound on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DsaraError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    def mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The average over the ranks of each tensor, with one coalesced all-reduce (no host sync
        on NCCL). Identity with one process."""
        if not self.enabled or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        return [f.view_as(t).to(t.dtype) for f, t in zip(flat.split([t.numel() for t in tensors]),
                                                          tensors)]

    def mean_grads_(self, params: list[torch.Tensor]) -> None:
        """Average `.grad` of `params` over the ranks in place (params without a grad are skipped:
        the same ones on every rank, since every rank runs the same graph)."""
        with_grad = [p for p in params if p.grad is not None]
        for p, g in zip(with_grad, self.mean([p.grad for p in with_grad])):
            p.grad.copy_(g)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values into `tensors` on every rank."""
        if self.enabled:
            for t in tensors:
                dist.broadcast(t, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_same(self, tensors: list[torch.Tensor], what: str) -> None:
        """Raise on every rank if any rank's `tensors` differ from rank 0's (a cheap guard run
        once per epoch; it syncs)."""
        if not self.enabled:
            return
        mine = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        ref = mine.clone()
        dist.broadcast(ref, 0)
        differ = torch.stack([(mine != ref).any().float()])
        dist.all_reduce(differ, op=dist.ReduceOp.MAX)
        if differ.item():
            raise DsaraError(f"{what} differs between the ranks of this data-parallel search; "
                             "this is a bug, please report it")


def from_env() -> Dist:
    """The process's place in a `torchrun` job (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    try:
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise DsaraError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch a "
                         "data-parallel search with torchrun") from None


def setup(device: torch.device) -> tuple[Dist, torch.device, bool]:
    """(Dist, this rank's device, whether this call created the process group).

    The process group is NCCL for CUDA and gloo for CPU; on CUDA each rank takes cuda:LOCAL_RANK.
    """
    d = from_env()
    if not d.enabled:
        return d, device, False
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device, created


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch of all ranks.

    One all-reduce per forward (and one per backward) of per-channel [sum, M2, n*mean^2] in fp32
    (Chan et al.'s parallel variance: each rank's M2 is about its own mean, so the only
    cancellation left is between the ranks' means). Gradients flow through the global statistics
    exactly as in a one-process BatchNorm. Assumes equal slices per rank (the Loader's sharding
    guarantees it). Eval mode is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W)
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        xf = x.float()
        m = x.numel() // x.shape[1]  # values per channel on this rank
        n = m * dist.get_world_size()  # ... on all ranks
        local_mean = xf.mean((0, 2, 3))
        m2 = (xf - local_mean.view(1, -1, 1, 1)).square().sum((0, 2, 3))
        total, m2, sq = _AllReduceSum.apply(
            torch.cat([m * local_mean, m2, m * local_mean.square()])).chunk(3)
        mean = total / n
        var = ((m2 + sq - n * mean.square()) / n).clamp_min(0)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / max(n - 1, 1))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), m)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of the ranks' output
    gradients (each rank's input feeds every rank's output)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced, in place, by a GlobalBatchNorm2d holding its
    parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats, device=_device_of(child))
            g.load_state_dict(child.state_dict())
            setattr(module, name, g)
        else:
            global_batchnorm(child)
    return module


def _device_of(m: nn.Module) -> torch.device:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return torch.device("cpu")
