"""Reliability: signals, atomic files, divergence, safe loading, fuzzed inputs, determinism."""
import ast
import csv
import json
import math
import os
import pathlib
import pickle
import re
import signal
import subprocess
import time

import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image

import engine.loop
import train_scratch
from conftest import QUICK, REPO, run_script, start_script
from engine import atomic
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import UserError
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import evaluate
from engine.plots import plot_curves
from engine.sources import load_image_folder, make_synthetic
from engine.summary import Column, Table, write_summary
from engine.training import use_deterministic_algorithms, write_history
from models import build_model

# Dropout draws from the global RNG, so resuming reproduces a run only if it restores that too.
RUN = [*QUICK[:4], "--batch-size", "32", "--no-progress", "--subset", "1280", "--val-size", "100",
       "--epochs", "2", "--seed", "3", "--dropout", "0.2"]


def run_of(study):
    """The run directory of RUN in its study folder (--out)."""
    return study / "synthetic" / "seed3"


def history_rows(run):
    with open(run / "history.csv", newline="") as handle:
        return [{key: value for key, value in row.items()
                 if key not in ("seconds", "images_per_second")} for row in csv.DictReader(handle)]


def same_weights(run_a, run_b):
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    study = tmp_path_factory.mktemp("straight") / "study"
    run_script("train_scratch.py", *RUN, "--out", study)
    return run_of(study)


def interrupt_mid_epoch_two(study, signum):
    """Start the run, wait until epoch 2 has begun, send `signum`; return (exit code, stderr).

    The run prints its epoch-1 line after every epoch-1 file is written, so the signal sent
    just after that line lands inside epoch 2 (40 steps) on a fast machine as on a slow one.
    """
    process = start_script("train_scratch.py", *RUN, "--out", study, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch   1/2"):
            break
    time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130),
                                         pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_a_signal_saves_mid_epoch_and_resume_matches_an_uninterrupted_run(
        tmp_path, straight_run, signum, code):
    study, run = tmp_path / "study", run_of(tmp_path / "study")
    returncode, stderr = interrupt_mid_epoch_two(study, signum)
    assert returncode == code
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    command = stderr.split("continue with: ")[1]
    assert command.startswith("python ") and "train_scratch.py" in command
    assert command.strip().endswith("--resume") and f"--out {study}" in command
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["step"] > 0  # mid-epoch 2
    assert len(history_rows(run)) == 1  # the finished epoch is kept

    resumed = run_script("train_scratch.py", *RUN, "--out", study, "--resume")
    assert f"in epoch 2 of 2 after step {saved['partial_epoch']['step']} of 40" in resumed.stdout
    assert history_rows(run) == history_rows(straight_run)
    assert same_weights(run, straight_run)


# --- atomic files ---------------------------------------------------------------------------

def _fail_midway(monkeypatch, target, name):
    """Make target.name write half its output, then crash (a full disk, a kill)."""
    original = getattr(target, name)

    def half_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        path = next(a for a in args if isinstance(a, (str, os.PathLike)))
        data = pathlib.Path(path).read_bytes()
        pathlib.Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target, name, half_then_crash)


def _no_temporary_files(directory):
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = tmp_path / "checkpoint.pt"
    arguments = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     history=[], config={"a": 1}, best_val_accuracy=0.0)
    save_checkpoint(path, epoch=1, **arguments)
    _fail_midway(monkeypatch, torch, "save")
    with pytest.raises(OSError):
        save_checkpoint(path, epoch=2, **arguments)
    assert load_checkpoint(path)["epoch"] == 1
    assert _no_temporary_files(tmp_path)


def test_a_crash_while_writing_a_run_file_or_summary_keeps_the_previous_version(tmp_path,
                                                                               monkeypatch):
    row = {key: 1 for key in ("epoch", "lr", "train_loss", "train_accuracy", "val_loss",
                              "val_accuracy", "test_loss", "test_accuracy", "seconds",
                              "images_per_second")}

    def writers(epochs):  # history, metrics (config.json alike), summaries, curves
        history = [{**row, "epoch": epoch} for epoch in range(1, epochs + 1)]
        return [lambda: write_history(tmp_path / "history.csv", history),
                lambda: atomic.write_json(tmp_path / "metrics.json", {"epochs": epochs}),
                lambda: write_summary(tmp_path, Table("title", [Column("a", "a")], [{"a": epochs}],
                                                      [None])),
                lambda: plot_curves(history, tmp_path / "curves.png")]

    for write in writers(1):
        write()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert len(before) == 5
    _fail_midway(monkeypatch, pathlib.Path, "write_text")
    _fail_midway(monkeypatch, matplotlib.figure.Figure, "savefig")
    for write in writers(2):
        with pytest.raises(OSError):
            write()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert _no_temporary_files(tmp_path)


def test_atomic_files_keep_the_usual_permissions(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- divergence ---------------------------------------------------------------------------

def test_a_diverging_run_stops_naming_epoch_and_step_and_keeps_the_last_good_epoch(
        tmp_path, monkeypatch, capsys):
    real_loss = engine.loop.soft_or_hard_loss
    calls = {"count": 0}

    def loss_that_explodes_in_epoch_two(logits, targets, label_smoothing):
        calls["count"] += 1
        loss = real_loss(logits, targets, label_smoothing)
        return loss * float("inf") if calls["count"] == 40 + 3 else loss  # epoch 2, step 3

    monkeypatch.setattr(engine.loop, "soft_or_hard_loss", loss_that_explodes_in_epoch_two)
    with pytest.raises(SystemExit) as stopped:
        train_scratch.main(train_scratch.get_args_parser().parse_args([*RUN, "--out", str(tmp_path)]))
    run = run_of(tmp_path)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert "diverged in epoch 2 at step 3" in err and "lower --lr" in err
    assert f"the last good checkpoint is kept in {run}" in err
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and all(np.isfinite(v) for v in metrics.values())


def test_a_learning_rate_far_too_high_is_reported_not_saved(tmp_path):
    result = run_script("train_scratch.py", *RUN, "--lr", "1e12", "--epochs", "1",
                        "--out", tmp_path / "run", check=False)
    assert result.returncode == 2
    assert re.search(r"diverged in epoch 1 at step \d+", result.stderr)
    assert "no checkpoint was written" in result.stderr and "last good" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing non-finite saved


def test_a_first_epoch_above_an_untrained_networks_loss_is_reported_with_a_hint(tmp_path,
                                                                             capsys):
    """lr 4 on these images: the first epoch's mean training loss ends above ln(10), the loss
    of guessing every class alike, yet finite (measured: 3.04). The epoch line says so with a
    hint, history.csv keeps it; a later epoch is not judged by it."""
    out = tmp_path / "run"
    train_scratch.main(train_scratch.get_args_parser().parse_args(
        [*QUICK, "--batch-size", "32", "--subset", "640", "--val-size", "100", "--epochs", "2",
         "--lr", "4", "--out", str(out)]))
    with open(out / "synthetic" / "seed0" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["train_loss"]) > math.log(10)  # computed here, not by the code
    assert rows[0]["warning"].startswith(
        f"first-epoch training loss {float(rows[0]['train_loss']):.2f} above an untrained "
        f"network's ln(10) = 2.30: the learning rate may be too high, try --lr below 4")
    assert rows[1]["warning"] == ""
    assert f"\n  warning: {rows[0]['warning']}\n" in capsys.readouterr().out


# --- safe loading -------------------------------------------------------------------------

# Calls that unpickle a file: torch.load, and torchvision's get_state_dict and torch.hub's
# load_state_dict_from_url, which default to weights_only=False.
LOADERS = {"torch.load", "get_state_dict", "load_state_dict_from_url"}


def project_sources(root=REPO):
    """The project's own Python files: top-level scripts, its packages and tests/ (not a
    virtual environment or anything else a clone may hold)."""
    folders = [init.parent for init in root.glob("*/__init__.py")] + [root / "tests"]
    return sorted([*root.glob("*.py"),
                   *(path for folder in folders for path in folder.rglob("*.py"))])


def loader_name(function):
    """"torch.load", "get_state_dict", ... for the callee of a call, else None."""
    if isinstance(function, ast.Attribute):
        if isinstance(function.value, ast.Name) and function.value.id == "torch":
            name = f"torch.{function.attr}"
        else:
            name = function.attr
    else:
        name = getattr(function, "id", None)
    return name if name in LOADERS else None


def loader_calls(path):
    """(loader, line, whether it passes weights_only=True) for each loader call in the file."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and loader_name(node.func):
            safe = any(keyword.arg == "weights_only" and isinstance(keyword.value, ast.Constant)
                       and keyword.value.value is True for keyword in node.keywords)
            yield loader_name(node.func), node.lineno, safe


def test_every_torch_load_in_the_project_is_weights_only():
    calls = [(path.relative_to(REPO).as_posix(), *call) for path in project_sources()
             for call in loader_calls(path)]
    assert [call for call in calls if not call[-1]] == []
    # The scan sees the project's own loads (so it would see one turned unsafe).
    seen = {(path, loader) for path, loader, _, _ in calls}
    assert {("engine/checkpoint.py", "torch.load"),
            ("engine/pretrained.py", "get_state_dict")} <= seen


def test_the_weights_only_scan_reads_the_project_not_a_virtual_environment_in_it(tmp_path):
    # A user's `python3 -m venv .venv` in the clone holds torch's own unsafe torch.load calls.
    site = tmp_path / ".venv" / "lib" / "site-packages" / "torch"
    for folder, name in ((tmp_path / "engine", "__init__.py"), (tmp_path / "tests", "test_a.py"),
                         (site, "serialization.py"), (tmp_path, "script.py")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("import torch\ntorch.load(path)\n")
    assert project_sources(tmp_path) == [tmp_path / "engine" / "__init__.py",
                                         tmp_path / "script.py", tmp_path / "tests" / "test_a.py"]
    assert [call[2] for call in loader_calls(tmp_path / "script.py")] == [False]


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path, capsys):
    run = run_of(tmp_path / "study")
    run.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"model": Payload()}, run / "checkpoint.pt")
    with pytest.raises(SystemExit) as stopped:
        train_scratch.main(train_scratch.get_args_parser().parse_args(
            [*RUN, "--out", str(tmp_path / "study"), "--resume"]))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "refusing to load" in err and "it calls getattr" in err
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload()))  # the payload is real: unpickling it runs the code
    assert marker.exists()


# --- fuzzed folder datasets -----------------------------------------------------------------

def _save(folder, name, image):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name)
    return folder / name


@pytest.fixture
def good_tree(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            _save(root / split / name, "base.png", Image.new("RGB", (20, 16), colour))
    return root


@pytest.mark.parametrize("mode,pixel,expected", [
    ("L", 100, (100, 100, 100)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
    ("P", None, None),
    ("I;16", 51400, (200, 200, 200)),  # 16-bit: scaled by 257, not clipped to 255
])
def test_unusual_image_modes_load_correctly(good_tree, mode, pixel, expected):
    if mode == "P":
        image = Image.new("P", (20, 20), 1)
        image.putpalette([0, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 6))
        expected = (0, 128, 255)
    elif mode == "I;16":
        image = Image.fromarray(np.full((20, 20), pixel, dtype=np.uint16))
    else:
        image = Image.new(mode, (20, 20), pixel)
    _save(good_tree / "train" / "a" / "nested" / "deeper", f"odd_{mode.replace(';', '')}.png", image)
    train, _ = load_image_folder(good_tree, 8)
    assert len(train) == 3  # nested folders belong to their class
    odd = train.images[(train.labels == 0)].view(-1, 3, 64)
    assert any(tuple(img[:, 0].tolist()) == tuple(expected) for img in odd)


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("make_bad", [
    lambda folder: (folder / "empty.png").write_bytes(b""),
    lambda folder: (folder / "text.jpg").write_text("not an image at all"),
    lambda folder: _truncated(_save(folder, "cut.png", Image.effect_noise((64, 64), 50))),
    lambda folder: _truncated(_save(folder, "cut.jpg", Image.effect_noise((64, 64), 50).convert("RGB"))),
], ids=["zero-byte", "non-image", "truncated-png", "truncated-jpeg"])
def test_broken_images_are_named_in_one_line(good_tree, make_bad):
    folder = good_tree / "train" / "b"
    make_bad(folder)
    bad = sorted(set(folder.iterdir()) - {folder / "base.png"})[0]
    with pytest.raises(UserError) as raised:
        load_image_folder(good_tree, 8)
    assert str(bad) in str(raised.value) and "\n" not in str(raised.value)


def test_files_without_an_image_extension_are_ignored(good_tree):
    (good_tree / "train" / "a" / "notes.txt").write_text("labels checked by hand")
    train, _ = load_image_folder(good_tree, 8)
    assert len(train) == 2


def test_an_empty_nested_class_folder_is_named(good_tree):
    (good_tree / "train" / "c" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match=r"train/c has no images"):
        load_image_folder(good_tree, 8)


def test_an_unwritable_out_is_reported_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker / "run", pathlib.Path("/proc/no-such-run")):
        with pytest.raises(SystemExit) as stopped:
            train_scratch.main(train_scratch.get_args_parser().parse_args(
                [*RUN, "--out", str(out)]))
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and "cannot write to" in err, err
    assert "/proc is on a file system that accepts no new files" in err  # not "No such file"


def test_an_empty_checkpoint_is_named_once_not_as_eoferror_twice(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError) as raised:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "(EOFError)" in str(raised.value) and "truncated or corrupt" in str(raised.value)


# --- determinism --------------------------------------------------------------------------

@pytest.fixture
def nondeterministic_torch(monkeypatch):
    """Torch's process-wide settings as a run without --deterministic may leave them (cuDNN
    benchmark on), so a test sees --deterministic change each one; put back afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]


def assert_deterministic_settings():
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_deterministic_runs_repeat_exactly(tmp_path, nondeterministic_torch):
    # On a CPU with one thread runs repeat anyway: the second run is in-process so that the
    # settings it leaves show that --deterministic reached torch.
    run_script("train_scratch.py", *RUN, "--epochs", "1", "--deterministic", "--out",
               tmp_path / "first")
    train_scratch.main(train_scratch.get_args_parser().parse_args(
        [*RUN, "--epochs", "1", "--deterministic", "--out", str(tmp_path / "second")]))
    assert_deterministic_settings()
    first, second = run_of(tmp_path / "first"), run_of(tmp_path / "second")
    assert history_rows(first) == history_rows(second)
    assert same_weights(first, second)
    assert json.loads((first / "config.json").read_text())["args"]["deterministic"] is True


def test_deterministic_mode_switches_torch_to_deterministic_algorithms(nondeterministic_torch):
    use_deterministic_algorithms()
    assert_deterministic_settings()


def test_evaluation_repeats_exactly_and_changes_nothing_in_the_model():
    """Dropout off, BatchNorm on its running statistics (a model fresh from training is in
    training mode): the same figures twice, and every buffer as it was."""
    torch.manual_seed(0)
    model = build_model({"name": "resnet18_cifar", "num_classes": 10, "width": 8,
                         "dropout": 0.5, "dropout_at": ["classifier", "block"]})
    data, _ = make_synthetic(train_size=64, test_size=1)
    loader = DeviceLoader(data, 32, "cpu", Normalizer(*channel_stats(data.images), "cpu"),
                          shuffle=False, drop_last=False)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    first, again = (evaluate(model, loader, device=torch.device("cpu"), precision="fp32")
                    for _ in range(2))
    assert torch.equal(first.pop("confusion"), again.pop("confusion"))
    assert first == again and first["images"] == 64
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in model.named_buffers())
