"""torchrun with DistributedDataParallel (NCCL on CUDA, gloo on CPU). Every function also works in
one plain process (rank 0 of 1), so callers never branch. Rank 0 downloads first, decides, writes
and prints; its decisions and errors reach every rank (docs/scale.md)."""
import atexit
import os
from functools import lru_cache

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engine.errors import UserError


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    if is_distributed():
        return dist.get_rank()
    # Before the process group exists (a bad flag, a missing dataset), RANK still tells
    # rank 0 from the others, so only one of them reports the error.
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return rank() == 0


def setup(device):
    """Join torchrun's process group (once); return this process's device. Under torchrun a
    cuda `device` becomes the GPU of LOCAL_RANK (its index is ignored)."""
    if not launched_by_torchrun():
        return device
    if device.type == "mps":
        raise UserError("torchrun with --device mps is not supported (no multi-process backend "
                        "for MPS): use --device cpu, or run without torchrun")
    if device.type == "cuda":
        # Every process checks the machine's count (not just its own index), so rank 0 sees
        # the problem too and reports it.
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if processes > torch.cuda.device_count():
            raise UserError(f"torchrun started {processes} processes on a machine with "
                            f"{torch.cuda.device_count()} GPU(s): pass "
                            f"--nproc_per_node={torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_leave)
    return device


def _leave():
    if is_distributed():
        dist.destroy_process_group()


@lru_cache(maxsize=1)
def _cpu_group():
    """A gloo group for small host-side agreements (stop flags): no GPU synchronisation."""
    return dist.new_group(backend="gloo")


def broadcast_from_main(value):
    """rank 0's `value`, on every rank (any picklable object)."""
    if not is_distributed():
        return value
    holder = [value if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0, group=_cpu_group())
    return holder[0]


def on_main(function):
    """function() run on rank 0 only; its result (or its UserError) reaches every rank."""
    if not is_distributed():
        return function()
    outcome = None
    if is_main_process():
        try:
            outcome = ("ok", function())
        except UserError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_from_main(outcome)
    if kind == "error":
        raise UserError(value)
    return value


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def main_first(function):
    """function() on rank 0, then one process per machine, then the rest: a download happens
    once (per machine without a shared filesystem). A UserError on any rank stops them all."""
    if not is_distributed():
        return function()
    turns = (rank() == 0, rank() != 0 and local_rank() == 0, local_rank() != 0)
    result = None
    for my_turn in turns:
        problem = None
        if my_turn:
            try:
                result = function()
            except UserError as error:
                problem = str(error)
        problems = [None] * world_size()
        dist.all_gather_object(problems, problem, group=_cpu_group())
        first = next((text for text in problems if text is not None), None)
        if first is not None:
            raise UserError(first)
    return result


def over_ranks(*numbers, op="sum"):
    """The sums (op "min", "max": the least, the greatest) over ranks of plain numbers, as
    floats, on every rank; the numbers themselves in one process."""
    if not is_distributed():
        return numbers
    values = torch.tensor(numbers, dtype=torch.float64)
    dist.all_reduce(values, op=getattr(dist.ReduceOp, op.upper()), group=_cpu_group())
    return tuple(values.tolist())


def mean_over_ranks(tensors):
    """Each tensor replaced, in place, by its mean over ranks (one all-reduce each); left as
    it is in one process."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.all_reduce(tensor)  # a sum: gloo has no average
        tensor.div_(world_size())


def gather_to_main(value):
    """[value of rank 0, value of rank 1, ...] on rank 0 (None elsewhere)."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size() if is_main_process() else None
    dist.gather_object(value, gathered, dst=0, group=_cpu_group())
    return gathered


def mixed_seed(seed, *keys):
    """One seed from (seed, epoch, rank, ...), well apart for neighbouring values: it seeds each
    rank's own augmentation and dropout."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def sync_buffers(model):
    """Give every rank rank 0's BatchNorm statistics (each rank updated them with its own
    shard in the last step), so evaluation and the saved checkpoint see one model."""
    if not is_distributed():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def convert_sync_batchnorm(model):
    """nn.BatchNorm2d -> nn.SyncBatchNorm. Exactly BatchNorm2d: a frozen EvalModeBatchNorm2d
    (models/transfer.py) keeps its class and fixed ImageNet statistics."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_batchnorm(child)
    return model


def wrap_for_training(model, device, sync_bn):
    """The module that runs training steps: DDP over the process group, or `model` itself."""
    if not is_distributed():
        return model
    if sync_bn:
        if device.type == "cuda":
            convert_sync_batchnorm(model)
        elif is_main_process():
            print(f"--sync-bn: SyncBatchNorm needs CUDA; BatchNorm stays per process on "
                  f"{device.type}", flush=True)
    # No buffer broadcast before every forward: training-mode BatchNorm normalises with the
    # batch's statistics, and sync_buffers gives every rank rank 0's running ones at epoch end.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, broadcast_buffers=False)
