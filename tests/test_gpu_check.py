"""benchmarks/gpu_check.py, dry run on the CPU: every step runs at tiny sizes and leaves its
figures in the JSON; a step that fails is recorded, the rest still run, and the exit status
says so. (On a GPU the same command proves and measures the CUDA path.)"""
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import gpu_check as gpu_check_module
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


@pytest.mark.slow  # the whole dry run, ~100 s: the second tier (the step logic is tested below)
def test_every_step_runs_and_the_check_passes(dry_run):
    result, report = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Compilation is left out on a CPU (its C++ build takes minutes on two cores).
    assert list(report["steps"]) == ["throughput", "cuda_tests", "augmentation_share",
                                     "epoch_time", "scripts_fp16", "torchrun",
                                     "throughput_workers8"]
    assert all(step["status"] == "ok" for step in report["steps"].values())
    assert {"device", "torch", "torchvision", "date", "command"} <= report["environment"].keys()


@pytest.mark.slow
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


def test_steps_whose_cap_does_not_fit_the_budget_are_not_run_and_do_not_fail(tmp_path):
    path = tmp_path / "check.json"
    result = gpu_check("--only", "epoch_time", "torchrun", "--budget", "0", "--json", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = json.loads(path.read_text())["steps"]
    assert [step["status"] for step in steps.values()] == ["not run (budget)"] * 2


def sleeping_child_and_grandchild(check, pid_file):
    """A subprocess that starts one of its own and both sleep: what torchrun and its workers
    look like to gpu_check."""
    child = ("import subprocess, sys, time; grandchild = subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(grandchild.pid)); "
             "time.sleep(60)")
    gpu_check_module.run([sys.executable, "-c", child, pid_file], check.workdir)


def is_gone(pid, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_each_step_is_capped_and_a_failure_shows_its_reason_and_the_next_step_runs(tmp_path,
                                                                                    monkeypatch,
                                                                                    capsys):
    def failing(check):
        raise ValueError("the reason, on the traceback's last line")

    def in_process_for_20_seconds(check):  # (bounded: uncapped, the test fails, not hangs)
        started = time.monotonic()
        while time.monotonic() - started < 20:
            time.sleep(0.01)
        return {"seconds": {}}

    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setattr(gpu_check_module, "STEPS", {
        "failing": (failing, 30),
        "in_process": (in_process_for_20_seconds, 0.5),
        "subprocess": (lambda check: sleeping_child_and_grandchild(check, pid_file), 3),
        "after": (lambda check: {"seconds": {"a script": 1.0}}, 30),
        "too_long": (lambda check: {"seconds": {}}, 10_000),
    })
    path = tmp_path / "check.json"
    args = gpu_check_module.get_args_parser().parse_args(["--device", "cpu", "--json", str(path),
                                                          "--workdir", str(tmp_path)])
    assert gpu_check_module.main(args) == 1
    steps = json.loads(path.read_text())["steps"]
    assert {name: step["status"] for name, step in steps.items()} == {
        "failing": "failed", "in_process": "failed", "subprocess": "failed", "after": "ok",
        "too_long": "not run (budget)"}
    assert steps["in_process"]["seconds"] < 5 and "out of time" in steps["in_process"]["error"]
    assert steps["subprocess"]["seconds"] < 30 and "out of time" in steps["subprocess"]["error"]
    assert is_gone(int(pid_file.read_text()))  # the whole process group was stopped
    table = capsys.readouterr().out
    assert "| failing | failed | 0 | ValueError: the reason, on the traceback's last line |" in table


def test_torchrun_is_skipped_on_one_gpu_and_starts_a_process_per_gpu_on_several(monkeypatch,
                                                                               tmp_path):
    check = SimpleNamespace(device=torch.device("cuda"), quick=True, workdir=tmp_path,
                            left=lambda: 100.0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_check_module.run_step(check, gpu_check_module.torchrun, 60)["status"] == \
        "skipped: needs 2 GPUs"
    commands = []

    def started(command, cwd, env=None):
        commands.append(command)
        raise gpu_check_module.StepFailed("stopped here")
    monkeypatch.setattr(gpu_check_module, "run", started)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_check_module.run_step(check, gpu_check_module.torchrun, 60)["status"] == "failed"
    assert "--nproc_per_node=2" in commands[0]
