"""dropout_sweep.py: every run, plot and summary; an interrupted sweep continues."""
import csv
import json
import signal
import subprocess
import time

import pytest

import dropout_sweep
from conftest import QUICK, run_script, start_script

SWEEP = [*QUICK, "--subset", "400", "--val-size", "200", "--epochs", "2"]


def summary(study):
    with open(study / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_planned_runs_share_rate_zero_across_placements():
    assert dropout_sweep.planned_runs([0.0, 0.2], ["classifier", "block"]) == [
        ("rate0.0", "none", 0.0), ("classifier_rate0.2", "classifier", 0.2),
        ("block_rate0.2", "block", 0.2)]


def test_placements_are_validated_and_canonical():
    assert dropout_sweep.placement("classifier+block") == "classifier+block"
    assert dropout_sweep.placement("block+classifier") == "classifier+block"
    for bad in ("everywhere", "block+block"):
        with pytest.raises(ValueError):
            dropout_sweep.placement(bad)


def test_a_short_sweep_writes_every_run_the_plots_and_the_summary(tmp_path):
    study = tmp_path / "dropout"
    result = run_script("dropout_sweep.py", *SWEEP, "--rates", "0", "0.3", "--dropout-at",
                        "classifier", "block+stage", "--out", study)
    runs = ["rate0.0", "classifier_rate0.3", "stage+block_rate0.3"]
    # Run i of n, and from the second run on the study's ETA.
    heads = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [head.split()[0] for head in heads] == ["[1/3]", "[2/3]", "[3/3]"]
    assert "ETA" not in heads[0] and all(" (study ETA " in head for head in heads[1:]), heads
    for name in runs:
        assert sorted(p.name for p in (study / name / "seed0").iterdir()) == [
            "checkpoint.pt", "config.json", "confusion.png", "curves.png", "history.csv", "metrics.json",
        "per_class.csv"]
    model = json.loads((study / "stage+block_rate0.3" / "seed0" / "config.json").read_text())["model"]
    assert model["dropout"] == 0.3 and model["dropout_at"] == ["stage", "block"]
    for plot in ("curves_classifier.png", "curves_stage+block.png", "rate_summary.png"):
        assert (study / plot).read_bytes()[:4] == b"\x89PNG"
    rows = summary(study)
    assert [row["run"] for row in rows] == runs
    metrics = json.loads((study / "classifier_rate0.3" / "seed0" / "metrics.json").read_text())
    row = rows[1]
    assert float(row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    assert float(row["gap"]) == pytest.approx(metrics["train_accuracy"] - metrics["test_accuracy"])
    markdown = (study / "summary.md").read_text()
    assert "| stage+block_rate0.3 | stage+block | 0.3 |" in markdown
    gap = 100 * float(row["gap"])
    assert f" {gap:+.2f} pp |" in markdown  # a difference of accuracies, in points


@pytest.mark.parametrize("rates,fragment", [
    (["1.0"], "1.0 would drop every activation: must be < 1"),
    (["0.2", "0.2"], "the study lists a configuration twice"),
])
def test_a_rate_of_one_or_twice_is_refused(capsys, tmp_path, rates, fragment):
    with pytest.raises(SystemExit) as stopped:
        dropout_sweep.main(dropout_sweep.get_args_parser().parse_args(
            [*SWEEP, "--rates", *rates, "--out", str(tmp_path / "study")]))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and fragment in err, err
    assert not (tmp_path / "study").exists()


@pytest.mark.slow  # over the CI budget (README: run with -m slow)
def test_an_interrupted_sweep_continues_without_retraining(tmp_path):
    study = tmp_path / "dropout"
    args = [*SWEEP, "--rates", "0", "0.2", "--dropout-at", "classifier", "--out", str(study)]
    process = start_script("dropout_sweep.py", *args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    second = study / "classifier_rate0.2" / "seed0" / "history.csv"
    deadline = time.monotonic() + 300
    while not (second.exists() and len(second.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "sweep ended too soon"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = study / "rate0.0" / "seed0" / "checkpoint.pt"
    stamp = finished.stat().st_mtime_ns

    result = run_script("dropout_sweep.py", *args)
    assert "rate0.0 seed 0: finished earlier, reusing" in result.stdout
    assert "classifier_rate0.2 seed 0: resuming" in result.stdout
    assert "resuming " in result.stdout and "after epoch 1 of 2" in result.stdout
    assert finished.stat().st_mtime_ns == stamp  # not retrained
    assert [row["epochs"] for row in summary(study)] == ["2/2", "2/2"]  # done / planned

    # Asking for the same runs with other flags is refused, not silently reused.
    changed = run_script("dropout_sweep.py", *args[:-2], "--lr", "0.1", "--out", study, check=False)
    assert changed.returncode == 2
    assert "started with --lr 0.0707" in changed.stderr  # 0.2 at 512, scaled to batch 64
    assert "(now 0.1)" in changed.stderr and "--overwrite" in changed.stderr


def test_bad_rates_are_refused(tmp_path):
    result = run_script("dropout_sweep.py", *SWEEP, "--rates", "1.5", "--out", tmp_path / "d",
                        check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "1.5 is out of range" in result.stderr and not (tmp_path / "d").exists()
