"""The one clock of the speed measurements (reproduce.py's estimates, benchmarks/): the
device's queued work is waited for before the clock starts and before it stops."""
import time

import torch


def synchronize(device):
    """Wait for the work queued on `device` (a CPU runs it as it is called)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds(function, device, clock=time.perf_counter):
    """How long function() takes by `clock`, the device work it queues included."""
    synchronize(device)
    started = clock()
    function()
    synchronize(device)
    return clock() - started
