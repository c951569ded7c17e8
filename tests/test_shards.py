"""A study spread over processes: --shard K/N covers the plan once, two shards at once give
the runs and summary one process does, a run folder's lock keeps a second process off it and
dies with its holder, and reproduce.py's shards, local GPUs and Slurm array."""
import csv
import json
import subprocess
import sys

import pytest

import reproduce
from conftest import QUICK, REPO, run_script, script_environment, start_script
from engine import shards

STUDY = [*QUICK, "--subset", "100", "--val-size", "50", "--epochs", "1", "--arms", "none",
         "flip", "cutout", "--seeds", "0", "1"]
RUNS = [f"{arm}/seed{seed}" for seed in (0, 1) for arm in ("none", "flip", "cutout")]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def figures(study):
    """Each run's metrics and the summary's accuracies: what must not depend on sharding."""
    runs = {run: json.loads((study / run / "metrics.json").read_text()) for run in RUNS}
    accuracies = [{key: value for key, value in row.items() if "accuracy" in key or "error" in key
                   or key in ("arm", "seeds", "status", "epochs")}
                  for row in read_csv(study / "summary.csv")]
    for metrics in runs.values():
        metrics.pop("train_seconds")
    return runs, accuracies


def test_shards_deal_every_run_once():
    items = list(range(11))
    dealt = [shards.deal(items, shards.Shard(index, 4)) for index in range(4)]
    assert dealt[1] == [1, 5, 9]
    assert sorted(item for share in dealt for item in share) == items  # each exactly once
    # reproduce.py deals its parts as one plan: a part after 7 runs continues the round.
    assert shards.deal(range(5), shards.Shard(1, 4).shifted(7)) == [2]  # plan positions 9


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(Exception):
        shards.shard(text)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "augment"
    run_script("augment_study.py", *STUDY, "--out", out)
    return out


def test_two_shards_at_once_give_the_runs_and_summary_of_one_process(single, tmp_path):
    out = tmp_path / "augment"
    processes = [start_script("augment_study.py", *STUDY, "--out", out, "--shard", f"{index}/2",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for index in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "runs      3 (shard 0/2): 3 train" in outputs[0]
    assert "[3/3] flip seed 1: training" in outputs[0]  # runs 0, 2, 4 of the plan
    assert "[1/3] flip seed 0: training" in outputs[1]  # runs 1, 3, 5
    assert figures(out) == figures(single)
    summary = (out / "summary.md").read_text()  # the last shard to end saw every run
    assert "not yet" not in summary and summary.count("2/2 seeds finished") == 3
    assert not list(out.parent.rglob("*.lock"))  # every lock went with its run


def test_a_shard_alone_says_which_planned_runs_are_not_finished(tmp_path):
    out = tmp_path / "augment"
    run_script("augment_study.py", *STUDY, "--out", out, "--shard", "1/2")
    note = next(line for line in (out / "summary.md").read_text().splitlines()
                if "planned runs finished" in line)
    assert note.startswith("- 3 of 6 planned runs finished; not yet: none/seed0, cutout/seed0, "
                           "flip/seed1"), note


def hold_lock(folder):
    """Another process holding folder's run lock until killed."""
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from engine import shards\n"
            f"with shards.locked(shards.lock_beside({str(folder)!r})):\n"
            f"    print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               env=script_environment())
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_locked_run_is_skipped_naming_its_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    out = tmp_path / "augment"
    args = [*QUICK, "--subset", "100", "--val-size", "50", "--epochs", "1", "--arms", "none",
            "flip", "--out", out]
    holder = hold_lock(out / "flip" / "seed0")
    try:
        result = run_script("augment_study.py", *args)
    finally:
        holder.kill()
        holder.wait()
    assert f"[2/2] flip seed 0: skipped, pid {holder.pid} on " in result.stdout
    assert (out / "none" / "seed0" / "metrics.json").is_file()
    assert not (out / "flip" / "seed0").exists()  # nothing written for the skipped run
    # The holder was killed (SIGKILL): the OS dropped its lock, the rerun trains the run.
    again = run_script("augment_study.py", *args)
    assert "[1/2] none seed 0: finished earlier, reusing" in again.stdout
    assert "[2/2] flip seed 0: training" in again.stdout
    assert (out / "flip" / "seed0" / "metrics.json").is_file()


def test_dry_run_of_a_shard_prints_its_share_and_its_eta(tmp_path):
    result = run_script("reproduce.py", "--dry-run", "--shard", "1/4", "--width", "8",
                        "--results", tmp_path / "r", "--parts", "scratch", "augment", "dropout")
    out = result.stdout
    assert out.startswith("plan (shard 1/4): ")
    assert "scratch total ~0m00s (0 runs)" in out  # the one part (a) run is shard 0's
    # The parts are one plan of 1 + 10 + 16 runs: shard 1 takes positions 1, 5, 9, ... 25.
    assert "augment total ~" in out and "(3 runs)" in out and "  augment/none/seed0:" in out
    assert "dropout total ~" in out and "(4 runs)" in out and "  dropout/rate0.0/seed0" not in out
    assert "--shard 1/4" in out and "--shard 0/4" in out  # the parts' own command lines
    assert "\ntotal ~" in out and not (tmp_path / "r").exists()


def test_reproduce_rebuilds_a_shards_command_line():
    args = reproduce.get_args_parser().parse_args(
        ["--quick", "--dataset", "synthetic", "--seeds", "0", "1", "--local-gpus", "2"])
    assert reproduce.shard_argv(args, 1, 2) == ["--quick", "--dataset", "synthetic",
                                                "--seeds", "0", "1", "--shard", "1/2"]


SMALL = ["--dataset", "synthetic", "--width", "8", "--epochs", "1", "--subset", "100",
         "--val-size", "50", "--batch-size", "50", "--seeds", "0", "1", "--no-progress",
         "--parts", "scratch", "report"]


def test_local_shards_run_at_once_and_end_with_the_report(tmp_path):
    results = tmp_path / "results"
    run_script("reproduce.py", *SMALL, "--device", "cpu", "--local-gpus", "2",
               "--results", results)
    for seed in (0, 1):
        assert (results / "scratch" / "synthetic" / f"seed{seed}" / "metrics.json").is_file()
    logs = [(results / "shards" / f"shard{index}.log").read_text() for index in range(2)]
    assert "scratch: python train_scratch.py" in logs[0] and "--shard 0/2" in logs[0]
    assert "synthetic seed 1: training" in logs[1]
    assert "2/2 seeds finished" in (results / "REPORT.md").read_text()


def test_the_slurm_array_through_submitits_local_executor(tmp_path, capsys):
    pytest.importorskip("submitit", reason="submitit is optional: pip install submitit")
    results = tmp_path / "results"
    args = reproduce.get_args_parser().parse_args(
        [*SMALL, "--device", "cpu", "--slurm", "debug-partition", "--jobs", "2",
         "--results", str(results)])
    jobs = reproduce.submit_to_slurm(args, results, cluster="local")
    assert [job.result() for job in jobs] == [True, True]  # each shard's main returned
    out = capsys.readouterr().out
    assert "submitted 2 jobs: " in out and "rerun this command to continue" in out
    for seed in (0, 1):
        assert (results / "scratch" / "synthetic" / f"seed{seed}" / "metrics.json").is_file()
    assert (results / "REPORT.md").is_file()


def test_slurm_without_submitit_is_one_line_with_the_install_command(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        reproduce.main(reproduce.get_args_parser().parse_args(
            [*SMALL, "--device", "cpu", "--slurm", "gpu", "--results", str(tmp_path / "r")]))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1
    assert "pip install submitit" in error
