"""Collectives and process groups that suit a tensor's device under any backend.

Detectron2's ``launch`` initialises NCCL whenever CUDA is available, also for a model on the CPU
(``MODEL.DEVICE cpu``, e.g. the CPU rehearsal of a multi-process run on a GPU machine), and NCCL
carries CUDA tensors only. Detectron2 keeps a gloo group beside it for its own object gathers
(``comm._get_global_gloo_group()``, the default group itself when the backend is gloo): CPU
tensors, and the DDP of a CPU model, go over that group; CUDA tensors over the default one.
"""

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["all_reduce_sum", "group_for"]


def group_for(device):
    """The process group for collectives on tensors of ``device``: None (the default group),
    or Detectron2's gloo group for CPU tensors when the default backend is NCCL."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if torch.device(device).type == "cpu" and dist.get_backend() == dist.Backend.NCCL:
        return comm._get_global_gloo_group()
    return None


def all_reduce_sum(t):
    """Sum ``t`` in place over the processes (over the group of :func:`group_for`); ``t``
    itself on one process. Returns ``t``."""
    if comm.get_world_size() > 1:
        dist.all_reduce(t, group=group_for(t.device))
    return t
