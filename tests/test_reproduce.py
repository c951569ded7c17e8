"""reproduce.py: the plan and its ETA, --dry-run, --parts, the report's presets, and a rerun
that continues an interrupted study without retraining what finished."""
import signal
import subprocess
from pathlib import Path

import pytest

import augment_study
import dropout_sweep
import reproduce
import train_transfer
from conftest import run_script, start_script
from engine.configurations import REPORT_ARMS

TINY = ["--dataset", "synthetic", "--width", "8", "--no-progress"]


def test_dry_run_plans_full_cifar10_without_the_dataset(tmp_path):
    results, data = tmp_path / "results", tmp_path / "data"
    result = run_script("reproduce.py", "--dry-run", "--width", "8", "--data-dir", data,
                        "--results", results, "--parts", "scratch", "augment", "dropout", "report")
    out = result.stdout
    assert "scratch/cifar10/seed0: 50 epochs x 45,000 images (+15,000 evaluated)" in out
    assert "augment/salt_pepper/seed0: 40 epochs x 5,000 images (+15,000 evaluated)" in out
    assert out.count("augment/") == 10 and "augment/standard/" not in out  # --arms report
    assert out.count("80 epochs x 45,000 images") == 16  # rate 0 + 3 placements x 5 rates
    assert "dropout/block_rate0.5/seed0" in out and "dropout/stage_rate0.1/seed0" in out
    assert "transfer" not in out and "activations" not in out  # --parts
    assert "\ntotal ~" in out and f"report: {results / 'REPORT.md'}" in out
    assert not results.exists() and not data.exists()  # nothing written, nothing downloaded


def test_quick_and_shared_flags_reach_each_part(tmp_path):
    args = reproduce.get_args_parser().parse_args(
        ["--quick", *TINY, "--seeds", "0", "1", "--weights", "w.pth"])
    parts = {key: reproduce.part_args(key, args, tmp_path) for key in reproduce.TRAINING}
    assert [parts[key].epochs for key in parts] == [15, 10, 20, 10]
    assert parts["dropout"].subset == 4500  # 20,000 asked; synthetic has 4,500 after validation
    assert parts["augment"].subset == 4500 and parts["scratch"].subset is None
    assert all(part.dataset == "synthetic" and part.seeds == [0, 1] for part in parts.values())
    assert parts["scratch"].width == 8 and not hasattr(parts["transfer"], "width")
    assert parts["transfer"].weights == "w.pth"
    assert parts["transfer"].out == str(tmp_path / "transfer")


def test_the_reports_choices_are_the_defaults():
    args = reproduce.get_args_parser().parse_args([])
    assert args.parts == reproduce.PARTS
    transfer = reproduce.part_args("transfer", args, Path("r"))
    assert transfer.augment == "none"
    assert train_transfer.get_args_parser().parse_args([]).augment == "none"
    assert reproduce.run_names("augment", reproduce.part_args("augment", args, Path("r"))) == [
        "none", *REPORT_ARMS]
    assert augment_study.arms_to_run(["flip", "report"]) == ["flip", "none", *[
        arm for arm in REPORT_ARMS if arm != "flip"]]
    assert dropout_sweep.get_args_parser().parse_args([]).dropout_at == [
        "classifier", "stage", "block"]


def test_the_eta_scales_what_is_left_by_the_error_so_far():
    assert reproduce.scaled_eta(spent=20.0, estimated=10.0, left=20.0) == 40.0  # twice as slow
    assert reproduce.scaled_eta(spent=0.0, estimated=0.0, left=30.0) == 30.0  # nothing timed yet


def test_a_cpu_step_is_extrapolated_from_two_small_batches():
    assert reproduce.at_batch((8, 32), (1.0, 2.2), 512) == pytest.approx(1.0 + 0.05 * 504)
    assert reproduce.at_batch((8, 32), (1.0, 0.9), 64) > 0.9  # noise never makes it free
    assert reproduce.at_batch((512,), (3.0,), 512) == 3.0


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    for flags, message in (
            (["--parts", "everything"], "invalid choice: 'everything'"),
            (["--parts", "activations"], "part (d) draws a trained network")):
        with pytest.raises(SystemExit) as stop:
            reproduce.main(reproduce.get_args_parser().parse_args(
                [*TINY, "--results", str(tmp_path / "r"), *flags]))
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1 and message in error
        assert not (tmp_path / "r").exists()


@pytest.mark.slow  # ~12 s: the second tier
def test_an_interrupted_study_continues_without_retraining(tmp_path, capsys):
    results = tmp_path / "results"
    args = [*TINY, "--subset", "200", "--val-size", "100", "--epochs", "1", "--seeds", "0", "1",
            "--results", results, "--parts", "scratch", "activations", "report"]
    process = start_script("reproduce.py", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    lines = []
    for line in process.stdout:  # stop it once the first run has finished
        lines.append(line)
        if line.startswith("done "):  # train_all's line as a run ends
            process.send_signal(signal.SIGTERM)
            break
    process.communicate(timeout=300)
    assert process.returncode != 0  # killed between runs, or stopped inside one (143)
    output = "".join(lines)
    assert output.index("plan: scratch, activations") < output.index("=== scratch ===")
    assert "scratch/synthetic/seed1: 1 epochs x 200 images (+1,100 evaluated) at" in output
    finished = results / "scratch" / "synthetic" / "seed0" / "checkpoint.pt"
    stamp = finished.stat().st_mtime_ns

    reproduce.main(reproduce.get_args_parser().parse_args(map(str, args)))
    out = capsys.readouterr().out
    assert "scratch/synthetic/seed0: 1 epochs x 200 images (+1,100 evaluated) at" in out
    assert "synthetic seed 0: finished earlier, reusing" in out
    assert "synthetic seed 1: training" in out or "synthetic seed 1: resuming" in out
    assert finished.stat().st_mtime_ns == stamp  # not retrained
    assert "scratch took " in out and "; the parts left: ETA " in out
    report = (results / "REPORT.md").read_text()
    for title in ("## Part (a)", "## Part (d)", "scratch_synthetic_seed0"):
        assert title in report
