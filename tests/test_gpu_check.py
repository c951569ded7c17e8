"""benchmarks/gpu_check.py, dry run on the CPU: every step runs at tiny sizes and leaves its
figures in the JSON; a step that fails is recorded, the rest still run, and the exit status
says so. (On a GPU the same command proves and measures the CUDA path.)"""
import json
import subprocess

import pytest

from conftest import REPO, command, script_environment

SCRIPTS = {"train_scratch", "train_transfer", "augment_study", "dropout_sweep",
           "visualize_activations", "report"}


def gpu_check(*flags):
    return subprocess.run(command("benchmarks.gpu_check", "--device", "cpu", "--quick", *flags),
                          cwd=REPO, capture_output=True, text=True, env=script_environment(),
                          timeout=900)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu_check") / "check.json"
    result = gpu_check("--json", path)
    return result, json.loads(path.read_text())


def test_every_step_runs_and_the_check_passes(dry_run):
    result, report = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Compilation is left out on a CPU (its C++ build takes minutes on two cores).
    assert list(report["steps"]) == ["throughput", "cuda_tests", "augmentation_share",
                                     "epoch_time", "scripts_fp16", "torchrun",
                                     "throughput_workers8"]
    assert all(step["status"] == "ok" for step in report["steps"].values())
    assert {"device", "torch", "torchvision", "date", "command"} <= report["environment"].keys()


def test_the_figures_are_in_the_json_and_the_markdown_table(dry_run):
    result, report = dry_run
    steps = report["steps"]
    assert "skipped" in steps["cuda_tests"]["figures"]["summary"]  # no GPU here
    assert steps["throughput_workers8"]["figures"]["workers"] == 8
    assert steps["throughput"]["figures"]["workers"] == 2
    assert steps["epoch_time"]["figures"]["images"] == 512
    arms = steps["augmentation_share"]["figures"]["arms"]
    assert {"standard", "color_jitter", "autoaugment"} <= arms.keys()
    assert all(arm["seconds"] > 0 and arm["share"] == pytest.approx(
        arm["seconds"] / steps["augmentation_share"]["figures"]["step_seconds"]) for arm in arms.values())
    assert set(steps["scripts_fp16"]["figures"]["seconds"]) == SCRIPTS
    assert steps["torchrun"]["figures"]["processes"] == 2
    assert "| throughput | ok |" in result.stdout and "| autoaugment (per image) |" in result.stdout


def test_a_failing_step_is_recorded_and_the_exit_status_says_so(tmp_path):
    path = tmp_path / "check.json"
    result = gpu_check("--only", "epoch_time", "torchrun", "--budget", "0", "--json", path)
    assert result.returncode == 1
    steps = json.loads(path.read_text())["steps"]
    assert list(steps) == ["epoch_time", "torchrun"]  # the second ran after the first failed
    assert all(step["status"] == "failed" and "out of time" in step["error"]
               for step in steps.values())
