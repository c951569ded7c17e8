"""Runs a training script under torchrun for tests/test_distributed.py, recording what a test
cannot see from outside: which rank wrote which file (every run file is written through
os.replace, see engine/atomic.py), and each rank's model state when training ends.

    torchrun --standalone --nproc_per_node=2 tests/ddp_probe.py train_scratch.py FLAGS...
with PROBE_DIR set: writes.rank<R> (one replaced path per line), state.rank<R>.pt.
"""
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import engine.training  # noqa: E402

PROBE_DIR = Path(os.environ["PROBE_DIR"])
RANK = os.environ.get("RANK", "0")
trainings = []


def logged_replace(source, destination, _replace=os.replace):
    with open(PROBE_DIR / f"writes.rank{RANK}", "a") as log:
        log.write(f"{destination}\n")
    _replace(source, destination)


def kept_training(*args, _prepare=engine.training.prepare_training, **kwargs):
    training = _prepare(*args, **kwargs)
    trainings.append(training)
    return training


os.replace = logged_replace
engine.training.prepare_training = kept_training
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(str(REPO / script), run_name="__main__")
finally:
    if trainings:
        torch.save(trainings[-1].model.state_dict(), PROBE_DIR / f"state.rank{RANK}.pt")
