"""Runs a training script under torchrun for tests/test_distributed.py, recording what a test
cannot see from outside: which rank wrote which file (every run file is written through
os.replace, see engine/atomic.py), each rank's model state when training ends, and which
activations its first dropout calls in training dropped.

    torchrun --standalone --nproc_per_node=2 tests/ddp_probe.py train_scratch.py FLAGS...
with PROBE_DIR set: writes.rank<R> (one replaced path per line), state.rank<R>.pt,
dropout.rank<R>.pt (a list of boolean masks, empty without dropout).
"""
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import engine.training  # noqa: E402

PROBE_DIR = Path(os.environ["PROBE_DIR"])
RANK = os.environ.get("RANK", "0")
trainings = []
dropped = []  # per early training call of F.dropout (nn.Dropout): True where it zeroed
MASKS = 3


def logged_replace(source, destination, _replace=os.replace):
    with open(PROBE_DIR / f"writes.rank{RANK}", "a") as log:
        log.write(f"{destination}\n")
    _replace(source, destination)


def kept_training(*args, _prepare=engine.training.prepare_training, **kwargs):
    training = _prepare(*args, **kwargs)
    trainings.append(training)
    return training


def recorded_dropout(input, p=0.5, training=True, inplace=False, _dropout=F.dropout):
    output = _dropout(input, p, training, False)  # out of place: the input is compared below
    if training and len(dropped) < MASKS:
        dropped.append((output == 0) & (input != 0))
    return output


os.replace = logged_replace
F.dropout = recorded_dropout
engine.training.prepare_training = kept_training
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(str(REPO / script), run_name="__main__")
finally:
    torch.save(dropped, PROBE_DIR / f"dropout.rank{RANK}.pt")
    if trainings:
        torch.save(trainings[-1].model.state_dict(), PROBE_DIR / f"state.rank{RANK}.pt")
