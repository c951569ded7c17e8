"""train_scratch.py end to end: learning, the run-directory contract, resume, errors."""
import csv
import json
import re
import sys
import types
import signal
import subprocess
import time

import pytest
import torch

import train_scratch
from conftest import QUICK, run_script, start_script, write_image_tree
from engine.training import HISTORY_COLUMNS, METRIC_KEYS

SMALL = [*QUICK, "--subset", "1000", "--val-size", "500"]


def run_of(study, seed=0):
    """train_scratch.py's run directory in its study folder (--out): <dataset>/seed<S>/."""
    return study / "synthetic" / f"seed{seed}"


def read_history(run):
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_run_directory(run, epochs):
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoint.pt", "config.json", "confusion.png", "curves.png", "history.csv", "metrics.json",
        "per_class.csv"]
    rows = read_history(run)
    assert list(rows[0].keys()) == list(HISTORY_COLUMNS)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(float(rows[-1][key]))
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["epochs"] == epochs and metrics["train_seconds"] > 0
    assert metrics["best_val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Per class on the test set: every test image once, the diagonal the accuracy.
    with open(run / "per_class.csv", newline="") as handle:
        per_class = list(csv.DictReader(handle))
    config = json.loads((run / "config.json").read_text())
    assert [row["class"] for row in per_class] == config["classes"]
    assert sum(int(row["images"]) for row in per_class) == config["sizes"]["test"]
    assert sum(int(row["correct"]) for row in per_class) == round(
        metrics["test_accuracy"] * config["sizes"]["test"])
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows, metrics


STARTUP = ["device", "data", "schedule", "augment", "output", "runs"]


def startup_block(stdout):
    """The lines before the first run starts, by their first word."""
    lines = stdout.splitlines()
    return {line.split()[0]: line for line in lines[:len(STARTUP)]}


def test_a_short_synthetic_run_learns_and_writes_the_contract(tmp_path):
    # Not on a terminal and without --no-progress: progress lines, here one per step.
    args = [arg for arg in SMALL if arg != "--no-progress"]
    result = run_script("train_scratch.py", *args, "--epochs", "3", "--log-every", "0.001",
                        "--out", tmp_path / "study")
    block = startup_block(result.stdout)  # said before the first step, in this order
    assert list(block) == STARTUP, result.stdout
    assert block["device"].endswith("cpu, precision fp32")
    assert "1000 train / 500 val / 1000 test images" in block["data"]
    assert "3 epochs x 15 steps of 64 images; peak lr 0.07071" in block["schedule"]
    assert "CropFlip" in block["augment"] and block["output"].endswith(str(tmp_path / "study"))
    assert "1: 1 train" in block["runs"]
    run = run_of(tmp_path / "study")
    _, metrics = assert_run_directory(run, epochs=3)
    assert (tmp_path / "study" / "summary.md").is_file()
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": "resnet18_cifar", "num_classes": 10, "width": 8,
                               "dropout": 0.0, "dropout_at": ["classifier"]}
    assert config["args"]["epochs"] == 3 and config["args"]["seed"] == 0
    assert config["classes"][0] == "class0" and config["sizes"] == {"train": 1000, "val": 500,
                                                                     "test": 1000}
    assert config["device"] == "cpu" and config["torch"] == str(torch.__version__)
    assert len(config["normalization"]["std"]) == 3
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["config"] == config
    lines = result.stdout.splitlines()
    last = [line for line in lines if line.startswith("done ")][-1]
    assert last.startswith("done synthetic: accuracy train") and "test" in last and str(run) in last
    assert f"test {100 * metrics['test_accuracy']:.2f}% in 0m" in last
    # Within the first epoch, before its epoch line: step, images/s and the run's ETA.
    first_epoch = lines[:lines.index(next(line for line in lines if line.startswith("epoch ")))]
    assert any(re.fullmatch(r"synthetic epoch 1/3 step 2/15  loss \S+  \d+ img/s  run ETA "
                            r"\d+m\d\ds", line) for line in first_epoch), result.stdout
    # The last epoch's lr ends near zero: shown in 3 significant digits, not as 0.0000.
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    lr = float(read_history(run)[-1]["lr"])
    assert lr < 1e-3 and f"  lr {lr:.3g}  " in epoch_lines[-1]
    assert re.search(r"img/s  \dm\d\ds$", epoch_lines[-1])  # the epoch's time


def test_resume_after_a_kill_continues_the_same_trajectory(tmp_path):
    # Dropout draws from the global RNG, which the checkpoint must hold and resume restore.
    args = [*QUICK, "--subset", "500", "--val-size", "200", "--epochs", "2", "--seed", "5",
            "--dropout", "0.2"]
    run_script("train_scratch.py", *args, "--out", tmp_path / "straight")
    straight, interrupted = run_of(tmp_path / "straight", 5), run_of(tmp_path / "interrupted", 5)
    process = start_script("train_scratch.py", *args, "--out", tmp_path / "interrupted",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = interrupted / "history.csv"
    deadline = time.monotonic() + 300
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before epoch 1"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # a real kill, mid-epoch 2
    process.wait()
    assert len(read_history(interrupted)) < 2

    result = run_script("train_scratch.py", *args, "--out", tmp_path / "interrupted", "--resume")
    assert "resuming" in result.stdout
    exact = [column for column in HISTORY_COLUMNS if column not in ("seconds", "images_per_second")]
    rows_a, rows_b = read_history(straight), read_history(interrupted)
    assert [[row[c] for c in exact] for row in rows_a] == [[row[c] for c in exact] for row in rows_b]
    weights_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)["model"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_an_image_folder_dataset_trains(tmp_path, image_tree):
    run_script("train_scratch.py", "--dataset", "folder", "--data-dir", image_tree, "--width", "8",
               "--batch-size", "8", "--epochs", "4", "--lr", "0.05", "--val-size", "6",
               "--no-progress", "--out", tmp_path / "study")
    run = tmp_path / "study" / "folder" / "seed0"
    _, metrics = assert_run_directory(run, epochs=4)
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["cat", "dog", "frog"] and config["sizes"]["test"] == 12
    assert metrics["train_accuracy"] > 0.5  # 3 colour-coded classes: chance is 1/3


# --- refusals: run in-process, they stop before any training --------------------------

def run_main(capsys, *argv):
    """train_scratch's main as the shell would call it; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        train_scratch.main(train_scratch.get_args_parser().parse_args([str(a) for a in argv]))
    return stopped.value.code, capsys.readouterr().err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


ONE_EPOCH = [*QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1"]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    study = tmp_path_factory.mktemp("finished") / "study"
    run_script("train_scratch.py", *ONE_EPOCH, "--out", study)
    return study


def files_of(run):
    return {path.name: path.read_bytes() for path in run.iterdir()}


def test_a_short_run_counts_each_class_right_and_wrong(finished_study):
    _, metrics = assert_run_directory(run_of(finished_study), epochs=1)
    assert metrics["test_accuracy"] < 0.9  # wrong answers too, off the confusion's diagonal


def test_a_rerun_reuses_the_finished_run_and_changes_nothing(finished_study):
    before = files_of(run_of(finished_study))
    result = run_script("train_scratch.py", *ONE_EPOCH, "--out", finished_study)
    assert "finished earlier, reusing" in result.stdout
    assert startup_block(result.stdout)["runs"].endswith("1: 1 reuse")
    assert files_of(run_of(finished_study)) == before


def test_overwrite_replaces_the_run(tmp_path):
    run = run_of(tmp_path / "study")
    run_script("train_scratch.py", *ONE_EPOCH, "--out", tmp_path / "study")
    (run / "notes.txt").write_text("mine")
    first = read_history(run)
    run_script("train_scratch.py", *ONE_EPOCH, "--lr", "0.05", "--out", tmp_path / "study",
               "--overwrite")
    assert read_history(run)[0]["train_loss"] != first[0]["train_loss"]
    assert json.loads((run / "config.json").read_text())["args"]["lr"] == 0.05
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_a_run_of_another_model_or_settings_is_refused_before_anything_changes(capsys,
                                                                               finished_study):
    before = files_of(run_of(finished_study))
    code, err = run_main(capsys, *QUICK[:2], "--width", "16", *QUICK[4:], "--subset", "200",
                         "--val-size", "100", "--epochs", "1", "--out", finished_study)
    assert_one_line_error(code, err, "holds a run of another model")
    code, err = run_main(capsys, *ONE_EPOCH, "--lr", "0.5", "--out", finished_study, "--resume")
    assert_one_line_error(code, err, "--lr 0.0707", "(now 0.5)")  # 0.2 at 512, at batch 64
    assert files_of(run_of(finished_study)) == before


def test_a_run_on_images_of_another_class_set_is_refused_before_anything_changes(
        capsys, tmp_path, image_tree):
    flags = ["--dataset", "folder", "--width", "8", "--batch-size", "8", "--epochs", "1",
             "--val-size", "3", "--no-progress", "--out", tmp_path / "study"]
    train_scratch.main(train_scratch.get_args_parser().parse_args(
        [str(flag) for flag in (*flags, "--data-dir", image_tree)]))
    run = tmp_path / "study" / "folder" / "seed0"
    before = files_of(run)
    # The same model, dataset and flags (--data-dir may change): only the class names differ.
    other = write_image_tree(tmp_path / "other", classes=("cat", "dog", "emu"))
    code, err = run_main(capsys, *flags, "--data-dir", other)
    assert_one_line_error(code, err, "holds a run of another classes",
                          "['cat', 'dog', 'frog'], not ['cat', 'dog', 'emu']")
    assert files_of(run) == before


def test_resume_without_a_checkpoint(capsys, tmp_path):
    code, err = run_main(capsys, *QUICK, "--epochs", "1", "--out", tmp_path / "nothing", "--resume")
    assert_one_line_error(code, err, "--resume: no run to continue in")
    assert not (tmp_path / "nothing").exists()


def test_a_corrupt_checkpoint_is_refused(capsys, tmp_path, finished_study):
    run = run_of(tmp_path / "corrupt")
    run.mkdir(parents=True)
    data = (run_of(finished_study) / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    code, err = run_main(capsys, *ONE_EPOCH, "--out", tmp_path / "corrupt", "--resume")
    assert_one_line_error(code, err, "cannot read checkpoint", "truncated or corrupt")


def test_cifar_offline_stops_with_one_clear_line_and_no_run_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    out = tmp_path / "run"
    code, err = run_main(capsys, "--data-dir", tmp_path / "data", "--out", out, "--no-progress")
    assert_one_line_error(code, err, "cifar-10-python.tar.gz", "cifar-10-batches-py/",
                          "--dataset folder", "--dataset synthetic")
    assert not out.exists()


def test_folder_errors_leave_no_run_directory(capsys, tmp_path, image_tree):
    out = tmp_path / "run"
    code, err = run_main(capsys, "--dataset", "folder", "--data-dir", tmp_path / "missing",
                         "--out", out)
    assert_one_line_error(code, err, "no train/ split in")
    (image_tree / "train" / "cat" / "bad.jpg").write_bytes(b"not an image")
    code, err = run_main(capsys, "--dataset", "folder", "--data-dir", image_tree, "--out", out)
    assert_one_line_error(code, err, "cannot read image", "cat/bad.jpg")
    assert not out.exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--epochs", "0"], "argument --epochs: 0 is out of range"),
    (["--lr", "-1"], "argument --lr: -1 is out of range"),
    (["--batch-size", "many"], "'many' is not an integer"),
    (["--label-smoothing", "1.5"], "1.5 is out of range"),
    (["--dropout", "1"], "1 would drop every activation"),
    (["--dropout-at", "block"], "--dropout-at places dropout but --dropout is 0"),
    (["--val-size", "5000"], "--val-size 5000 leaves no training images"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_bad_values_are_refused_in_one_line(capsys, tmp_path, flags, fragment):
    with pytest.raises(SystemExit) as stopped:
        train_scratch.main(train_scratch.get_args_parser().parse_args(
            [*QUICK, "--out", str(tmp_path / "run"), *flags]))
    assert_one_line_error(stopped.value.code, capsys.readouterr().err, fragment)
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_the_package_is_one_line_and_writes_nothing(capsys, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it fails
    code, err = run_main(capsys, *ONE_EPOCH, "--tensorboard", "--out", tmp_path / "study")
    assert_one_line_error(code, err, "--tensorboard needs the tensorboard package: pip install")
    assert not (tmp_path / "study").exists()


def test_tensorboard_gets_the_scalars_of_history_csv(tmp_path, monkeypatch):
    logged, folders = [], []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, folder):
            folders.append(folder)

        def add_scalar(self, key, value, step):
            logged.append((key, step, value))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=Writer))
    train_scratch.main(train_scratch.get_args_parser().parse_args(
        [str(arg) for arg in (*ONE_EPOCH, "--tensorboard", "--out", tmp_path / "study")]))
    run = run_of(tmp_path / "study")
    row = read_history(run)[0]
    assert folders == [run / "tensorboard"]
    assert logged == [(key, 1, pytest.approx(float(row[key]), rel=1e-5))
                      for key in HISTORY_COLUMNS[1:] if key != "warning"]
