"""Progress a user sees during an epoch: tqdm bars on a terminal (training and evaluation),
a plain line every few seconds without one, and the run's ETA."""
import time

import torch

from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import ProgressBar, RunClock, evaluate, format_seconds
from engine.sources import make_synthetic


def test_evaluation_has_its_own_bar_and_counts_the_confusion(capsys):
    _, test = make_synthetic(train_size=10, test_size=40)
    loader = DeviceLoader(test, 8, "cpu", Normalizer(*channel_stats(test.images), "cpu"),
                          shuffle=False, drop_last=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    result = evaluate(model, loader, device=torch.device("cpu"), precision="fp32",
                      progress=True, description="test", num_classes=10)
    err = capsys.readouterr().err
    assert "test:" in err and "/5 [" in err, err  # a bar over the 5 batches, then erased
    confusion = result["confusion"]
    assert confusion.sum() == 40 and confusion.sum(dim=1).tolist() == test.labels.bincount(
        minlength=10).tolist()
    assert confusion.diagonal().sum() / 40 == result["accuracy"]


def test_without_a_terminal_a_line_every_log_every_seconds_with_the_runs_eta(capsys):
    clock = RunClock(total_steps=30, done=10)  # a resumed run: 10 steps done before
    bar = ProgressBar(10, "cifar10 epoch 2/3", enabled=False, log_every=0.25, clock=clock)
    started = time.perf_counter()
    for step in range(6):  # 0.1 s each (a sleep: load barely stretches it)
        time.sleep(0.1)
        bar.step(step, torch.tensor(8.0), torch.tensor(2), 4 * (step + 1), 4 * (step + 1), started)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert 1 <= len(lines) <= 3, lines  # every 0.25 s, not every step
    assert lines[0].startswith("cifar10 epoch 2/3 step ") and " img/s  run ETA 0m0" in lines[0]
    # 6 steps of ~0.1 s in this process, 14 of the run's 30 left: ~1.4 s.
    assert clock.done == 16 and 0.7 < clock.eta() < 3
    assert format_seconds(float("nan")) == "?" and format_seconds(3725) == "1h02m05s"
