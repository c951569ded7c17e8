"""train_scratch.py end to end: learning, the run-directory contract, resume, errors."""
import csv
import json
import signal
import subprocess
import time

import pytest
import torch

import train_scratch
from conftest import QUICK, run_script, start_script
from engine.rundir import HISTORY_COLUMNS, METRIC_KEYS

SMALL = [*QUICK, "--subset", "1000", "--val-size", "500"]


def read_history(run):
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_run_directory(run, epochs):
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoint.pt", "config.json", "curves.png", "history.csv", "metrics.json"]
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
    return rows, metrics


def test_a_short_synthetic_run_learns_and_writes_the_contract(tmp_path):
    run = tmp_path / "run"
    result = run_script("train_scratch.py", *SMALL, "--epochs", "3", "--out", run)
    _, metrics = assert_run_directory(run, epochs=3)
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": "resnet18_cifar", "num_classes": 10, "width": 8,
                               "dropout": 0.0, "dropout_at": ["classifier"]}
    assert config["flags"]["epochs"] == 3
    # No --lr: the recipe's 0.2 at batch 512, scaled to batch 64, and how it was reached.
    assert {key: config["flags"][key] for key in ("lr_base", "lr_reference_batch", "lr_rule")} == {
        "lr_base": 0.2, "lr_reference_batch": 512, "lr_rule": "sqrt"}
    assert config["flags"]["lr"] == pytest.approx(0.2 / 8 ** 0.5)
    assert result.stdout.startswith("scratch: peak lr 0.07071 (0.2 at batch 512 x sqrt(64/512)")
    assert config["classes"][0] == "class0" and config["sizes"] == {"train": 1000, "val": 500,
                                                                     "test": 1000}
    assert config["device"] == "cpu" and config["torch"] == str(torch.__version__)
    assert len(config["normalization"]["std"]) == 3
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["config"] == config
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("done scratch: accuracy train") and "test" in last and str(run) in last


def test_resume_after_a_kill_continues_the_same_trajectory(tmp_path):
    args = [*QUICK, "--subset", "500", "--val-size", "200", "--epochs", "2", "--seed", "5"]
    straight = tmp_path / "straight"
    run_script("train_scratch.py", *args, "--out", straight)

    interrupted = tmp_path / "interrupted"
    process = start_script("train_scratch.py", *args, "--out", interrupted,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = interrupted / "history.csv"
    deadline = time.monotonic() + 300
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before epoch 1"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # a real kill, mid-epoch 2
    process.wait()
    assert len(read_history(interrupted)) < 2

    result = run_script("train_scratch.py", *args, "--out", interrupted, "--resume")
    assert "resuming" in result.stdout
    exact = [column for column in HISTORY_COLUMNS if column not in ("seconds", "images_per_second")]
    rows_a, rows_b = read_history(straight), read_history(interrupted)
    assert [[row[c] for c in exact] for row in rows_a] == [[row[c] for c in exact] for row in rows_b]
    weights_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(interrupted / "checkpoint.pt", weights_only=True)["model"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_an_image_folder_dataset_trains(tmp_path, image_tree):
    run = tmp_path / "folder-run"
    run_script("train_scratch.py", "--dataset", "folder", "--data-dir", image_tree, "--width", "8",
               "--batch-size", "8", "--epochs", "4", "--lr", "0.05", "--val-size", "6",
               "--no-progress", "--out", run)
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    run_script("train_scratch.py", *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
               "--out", run)
    return run


def test_an_existing_run_is_not_replaced_without_overwrite(capsys, finished_run):
    before = {path.name: path.read_bytes() for path in finished_run.iterdir()}
    code, err = run_main(capsys, *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
                         "--out", finished_run)
    assert_one_line_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert {path.name: path.read_bytes() for path in finished_run.iterdir()} == before


def test_overwrite_replaces_the_run(tmp_path):
    run = tmp_path / "run"
    run_script("train_scratch.py", *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
               "--out", run)
    (run / "notes.txt").write_text("mine")
    first = read_history(run)
    run_script("train_scratch.py", *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
               "--seed", "1", "--out", run, "--overwrite")
    assert read_history(run)[0]["train_loss"] != first[0]["train_loss"]
    assert json.loads((run / "config.json").read_text())["flags"]["seed"] == 1
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_of_another_model_is_refused_before_anything_changes(capsys, finished_run):
    before = {path.name: path.read_bytes() for path in finished_run.iterdir()}
    code, err = run_main(capsys, *QUICK[:2], "--width", "16", *QUICK[4:], "--subset", "200",
                         "--val-size", "100", "--epochs", "1", "--out", finished_run, "--resume")
    assert_one_line_error(code, err, "holds a run of another model")
    code, err = run_main(capsys, *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
                         "--lr", "0.5", "--out", finished_run, "--resume")
    assert_one_line_error(code, err, "--lr 0.0707", "(now 0.5)")  # the resolved lr, 0.2 at 512
    assert {path.name: path.read_bytes() for path in finished_run.iterdir()} == before


def test_resume_without_a_checkpoint(capsys, tmp_path):
    code, err = run_main(capsys, *QUICK, "--epochs", "1", "--out", tmp_path / "nothing", "--resume")
    assert_one_line_error(code, err, "no checkpoint.pt in")
    assert not (tmp_path / "nothing").exists()


def test_a_corrupt_checkpoint_is_refused(capsys, tmp_path, finished_run):
    run = tmp_path / "corrupt"
    run.mkdir()
    data = (finished_run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    code, err = run_main(capsys, *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
                         "--out", run, "--resume")
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
    (["--batch-size", "many"], "'many' is not a int"),
    (["--label-smoothing", "1.5"], "1.5 is out of range"),
    (["--subset", "999999"], "--subset 999999 is larger than"),
    (["--val-size", "5000"], "--val-size 5000 leaves no training images"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_bad_values_are_refused_in_one_line(capsys, tmp_path, flags, fragment):
    with pytest.raises(SystemExit) as stopped:
        train_scratch.main(train_scratch.get_args_parser().parse_args(
            [*QUICK, "--out", str(tmp_path / "run"), *flags]))
    assert_one_line_error(stopped.value.code, capsys.readouterr().err, fragment)
    assert not (tmp_path / "run").exists()
