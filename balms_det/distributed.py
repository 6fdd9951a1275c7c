"""Collectives and process groups that suit a tensor's device under any backend.

Detectron2's ``launch`` initialises NCCL whenever CUDA is available, also for a model on the CPU
(``MODEL.DEVICE cpu``, e.g. the CPU rehearsal of a multi-process run on a GPU machine), and NCCL
carries CUDA tensors only. Detectron2 keeps a gloo group beside it for its own object gathers
(``comm._get_global_gloo_group()``, the default group itself when the backend is gloo): CPU
tensors, and the DDP of a CPU model, go over that group; CUDA tensors over the default one.

The tools go one step further for a CPU run in several processes (``--num-gpus N MODEL.DEVICE
cpu``): :func:`hide_cuda_for_cpu_processes` hides the GPUs from the processes before the launch,
so that Detectron2 picks gloo and asserts nothing about the number of GPUs (the rehearsal of an
N-process run works on a machine with fewer than N GPUs, or with GPUs busy elsewhere).
"""

import logging
import os

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["all_reduce_sum", "group_for", "hide_cuda_for_cpu_processes"]

logger = logging.getLogger(__name__)


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


def hide_cuda_for_cpu_processes(device, num_processes, environ=None):
    """Before Detectron2's ``launch`` of a run on ``device`` in ``num_processes`` processes
    (all machines together): for a CPU run in several processes, set
    ``CUDA_VISIBLE_DEVICES=""`` in ``environ`` (default ``os.environ``), which the spawned
    processes inherit, so that ``launch`` initialises gloo (it picks NCCL whenever CUDA is
    available) and does not require a GPU per process. Returns True when it did."""
    environ = os.environ if environ is None else environ
    if torch.device(device).type != "cpu" or int(num_processes) <= 1:
        return False
    if environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    environ["CUDA_VISIBLE_DEVICES"] = ""
    logger.info(
        "MODEL.DEVICE cpu in %d processes: CUDA hidden from them (CUDA_VISIBLE_DEVICES=''), "
        "so that the launch uses gloo",
        num_processes,
    )
    return True
