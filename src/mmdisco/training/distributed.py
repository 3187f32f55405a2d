"""What several training processes share, by explicit collectives.

Gradients are averaged across processes by an explicit all-reduce rather than a DDP wrapper:
L_DLSM differentiates the discriminator's input-gradient (double backprop), which DDP's
gradient hooks do not support reliably. With one process every function here does nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def all_reduce_mean(tensor: Tensor, world_size: int) -> Tensor:
    """``tensor`` averaged over the processes, in place."""
    if world_size > 1:
        torch.distributed.all_reduce(tensor)
        tensor /= world_size
    return tensor


def sync_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over processes with one flat all-reduce."""
    if world_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    all_reduce_mean(flat, world_size)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def broadcast_parameters(model: nn.Module, world_size: int) -> None:
    """Start every process from rank 0's weights (whatever each process initialised)."""
    if world_size > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def finish_processes() -> None:
    """Wait for every process, then close the process group.

    A process that exits while its process group is open can abort with "terminate called
    without an active exception" (gloo's threads are still running), failing the whole launch
    even though training succeeded. Call this last in every multi-process entry point.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
