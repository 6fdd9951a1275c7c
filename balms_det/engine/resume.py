"""Resume: which checkpoint a run continues from (chosen once, by the main process, and
shared), and the hook that makes the continued run the uninterrupted one (the training data
stream's position and the random numbers of every step).

Which checkpoint: the one ``last_checkpoint`` names, else the newest ``model_*.pth`` by the
iteration it holds, skipping (with a warning naming it) any file that is damaged or is not a
training checkpoint. A checkpoint in ``torch.save``'s zip format is checked without loading its
tensors into memory: the pickled structure is loaded memory-mapped (a dict with a ``model``
state dict of tensors and the trainer's state), then every archive member is read once against
its CRC-32 (truncation, zero-fill, flipped bits). Other files are loaded in full.
"""

import glob
import logging
import os
import zipfile
from collections.abc import Mapping

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable import SALT_STEP, derived_seed, seed_all_rngs

__all__ = [
    "DataStreamHook",
    "checkpoint_problem",
    "newest_loadable_checkpoint",
    "resume_checkpoint",
]

logger = logging.getLogger("balms_det")

_LAST = "last_checkpoint"


def _last_checkpoint_name(save_dir):
    """(path ``save_dir/last_checkpoint`` names or None, problem sentence or None)."""
    f = os.path.join(save_dir, _LAST)
    if not os.path.isfile(f):
        return None, None
    try:
        with open(f, "rb") as fh:
            raw = fh.read(4097)
        name = raw.decode("utf-8").strip()
        if not name or len(raw) > 4096 or any(c in name for c in "\0\n\r"):
            raise ValueError("its content is not one file name")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{f} names no checkpoint ({type(e).__name__}: {e})"
    return os.path.join(save_dir, name), None


def _structure(obj, required):
    """(iteration or None, problem or None) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping) or "model" not in obj:
        return None, "it is not a checkpoint (no 'model' entry)"
    model = obj["model"]
    if not isinstance(model, Mapping) or not model:
        return None, "its 'model' entry is not a state dict"
    if not all(torch.is_tensor(v) for v in model.values()):
        return None, "its 'model' entry holds values that are not tensors"
    missing = [k for k in required if k not in obj]
    if missing:
        return None, f"it is not a training checkpoint (no {', '.join(map(repr, missing))} state)"
    it = obj.get("iteration", (obj.get("trainer") or {}).get("iteration"))
    return (int(it) if isinstance(it, int) else None), None


def _crc_problem(path):
    """None, or a sentence naming the first archive member of ``path`` whose CRC-32 does not
    match its bytes (members written without a checksum, CRC 0, are not checked)."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0 and info.file_size:
                    continue
                try:
                    with z.open(info) as f:
                        while f.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    return (
                        f"it is damaged (archive member '{info.filename}' fails its CRC-32 check)"
                    )
    except (OSError, zipfile.BadZipFile) as e:
        return f"it cannot be read ({type(e).__name__}: {e})"
    return None


def _probe(path, required):
    """(iteration or None, problem or None, is_zip) without reading tensors (zip format)."""
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        else:
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # missing, truncated, zero-filled, garbage, unreadable
        return None, f"it cannot be read ({type(e).__name__}: {e})", False
    it, problem = _structure(obj, required)
    return it, problem, is_zip


def checkpoint_problem(path, required=("model",)):
    """None when ``path`` is a readable checkpoint with the entries ``required``, else a
    sentence saying what is wrong with it (see the module doc for what is checked)."""
    _, problem, is_zip = _probe(path, required)
    return problem if problem is not None or not is_zip else _crc_problem(path)


def _iter_from_name(path):
    tail = os.path.splitext(os.path.basename(path))[0].split("_")[-1]
    return int(tail) if tail.isdigit() else -1


def newest_loadable_checkpoint(checkpointer):
    """Path of the checkpoint of ``checkpointer.save_dir`` to resume from (on this process;
    :func:`resume_checkpoint` chooses once for all processes): the one ``last_checkpoint``
    names, else the newest ``model_*.pth`` by the iteration it holds, with a warning naming
    each file skipped and why; None when the folder has no checkpoint at all.

    Raises:
        RuntimeError: naming every file and its problem, when checkpoints exist (or
            ``last_checkpoint`` does) but none can be resumed from.
    """
    save_dir = checkpointer.save_dir
    named, problem = _last_checkpoint_name(save_dir)
    files = set(glob.glob(os.path.join(save_dir, "model_*.pth")))
    if named is None and not files and problem is None:
        return None
    failures = [problem] if problem else []
    if problem:
        logger.warning("--resume: %s; choosing among the model_*.pth files", problem)
    required = ("model", *sorted(getattr(checkpointer, "checkpointables", {}) or {}))
    probed = {p: _probe(p, required) for p in sorted(files | ({named} if named else set()))}
    for path, (_, problem, _) in probed.items():  # every damaged or foreign file, named
        if problem is not None:
            failures.append(f"{path}: {problem}")
            logger.warning("Skipping checkpoint '%s': %s", path, problem)
    # the named one, then newest first by the iteration a file holds (else by its name)
    order = sorted(
        (p for p in probed if p != named and probed[p][1] is None),
        key=lambda p: (_iter_from_name(p) if probed[p][0] is None else probed[p][0], p),
        reverse=True,
    )
    if named is not None and probed[named][1] is None:
        order.insert(0, named)
    for path in order:
        it, _, is_zip = probed[path]
        problem = _crc_problem(path) if is_zip else None
        if problem is None:
            if failures:
                logger.warning("--resume: continuing from '%s' (iteration %s)", path, it)
            return path
        failures.append(f"{path}: {problem}")
        logger.warning("Skipping checkpoint '%s': %s", path, problem)
    raise RuntimeError(
        "--resume: no checkpoint in '%s' can be resumed from:\n  %s\n(remove them, or run "
        "without --resume to start from MODEL.WEIGHTS)" % (save_dir, "\n  ".join(failures))
    )


def resume_checkpoint(checkpointer):
    """The checkpoint ``--resume`` continues from, chosen by the main process
    (:func:`newest_loadable_checkpoint`: one read of the candidates) and shared with every
    process, so that all of them continue from the same file. None: nothing to resume from.

    Raises:
        RuntimeError: on every process when the main one found no checkpoint to resume from.
    """
    if comm.get_world_size() == 1:
        return newest_loadable_checkpoint(checkpointer)
    outcome = None
    if comm.is_main_process():
        try:
            outcome = ("path", newest_loadable_checkpoint(checkpointer))
        except RuntimeError as e:
            outcome = ("error", str(e))
    outcome = comm.all_gather(outcome)[0]  # the main process's answer, on every process
    if outcome[0] == "error":
        raise RuntimeError(outcome[1])
    return outcome[1]


class DataStreamHook(HookBase):
    """The first hook of a training run: seeds ``random``, numpy and torch (CPU and CUDA) at
    the start of every iteration from ``(seed, rank, iteration)``, and keeps the training
    data loader's position (a :class:`balms_det.data.resumable.ResumableTrainLoader`) and the
    seed in the trainer's checkpointed state. A resumed run then takes the batches, and draws
    the random numbers (ROI sampling, dropout, ...), of the uninterrupted one.

    Args:
        data_loader: the trainer's data loader; one without ``state_dict`` is not resumable
            (the hook then only seeds the steps, and a resume warns that the stream restarts).
        seed (int or None): the seed of the steps (``SEED`` / ``train.seed`` when >= 0);
            None: the loader's seed, else one drawn at random and shared (saved either way).
    """

    def __init__(self, data_loader, seed=None):
        self.data_loader = data_loader
        self.resumable = hasattr(data_loader, "state_dict") and hasattr(
            data_loader, "load_state_dict"
        )
        if seed is None:
            seed = data_loader.seed if self.resumable else comm.shared_random_seed()
        self.seed = int(seed)
        self.restored = False

    def before_train(self):
        if self.trainer.start_iter > 0 and not self.restored:
            logger.warning(
                "Resumed at iteration %d without the training data stream's position (%s): "
                "the data stream starts again from its beginning, as Detectron2's does",
                self.trainer.start_iter,
                (
                    "the checkpoint has none: written by Detectron2 or an older balms-det"
                    if self.resumable
                    else f"the data loader ({type(self.data_loader).__name__}) cannot skip"
                ),
            )

    def before_step(self):
        seed_all_rngs(derived_seed(self.seed, SALT_STEP, comm.get_rank(), self.trainer.iter))

    def state_dict(self):
        state = {"seed": self.seed}
        if self.resumable:
            state["data_loader"] = self.data_loader.state_dict()
        return state

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
        if self.resumable and "data_loader" in state:
            self.data_loader.load_state_dict(state["data_loader"])
            self.restored = True
