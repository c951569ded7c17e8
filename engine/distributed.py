"""Several processes (torchrun) training one model with DistributedDataParallel.

A script started by torchrun finds RANK, WORLD_SIZE and LOCAL_RANK in its environment;
everything here also works in a plain single process (rank 0 of 1), so callers never branch
on how they were started.
"""
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """Rank 0: the one process that downloads, writes files and shows progress."""
    return rank() == 0
