"""Every process evaluates the model its checkpoint holds.

In a multi-process run DDP keeps the parameters equal on every process, but not the buffers:
Detectron2 builds DDP with ``broadcast_buffers=False``, so each process's BatchNorm keeps the
running statistics of its own images, and the checkpoint (written by the main process) holds
the main process's. Before an evaluation, :func:`broadcast_buffers` copies the main process's
buffers (all of them: BatchNorm statistics, the head's class counts and weights, ...) into
every process, so the metrics a run prints are those of its saved checkpoint evaluated alone.
Training is unaffected: BatchNorm in training mode normalises with the batch's statistics.
"""

from collections import defaultdict

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["broadcast_buffers"]


def broadcast_buffers(model, src=0):
    """Copy process ``src``'s buffers of ``model`` (a module or its DDP wrapper) into every
    process's, in place: one broadcast per device and dtype. A no-op in one process; returns
    the number of buffers sent."""
    if comm.get_world_size() == 1:
        return 0
    groups = defaultdict(list)
    for b in model.buffers():
        groups[(b.device, b.dtype)].append(b)
    for (device, dtype), bufs in groups.items():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        if dtype == torch.bool:  # not a gloo/NCCL type
            flat = flat.to(torch.uint8)
        # CPU buffers under NCCL travel over Detectron2's gloo group
        group = comm._get_global_gloo_group() if device.type == "cpu" else None
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        with torch.no_grad():
            for b in bufs:
                n = b.numel()
                b.copy_(flat[offset : offset + n].reshape(b.shape).to(dtype))
                offset += n
    return sum(len(v) for v in groups.values())
