"""Training under torchrun with DistributedDataParallel, on CPU with gloo: two processes.

The in-process tests check how the loader splits the work between ranks; the torchrun
tests run train_scratch.py as a user would (through tests/ddp_probe.py, which records which
rank writes which file and each rank's final model).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import QUICK, REPO, run_script, script_environment, start_script
from engine.distributed import convert_sync_batchnorm
from engine.loader import DeviceLoader, epoch_generators
from engine.loop import recompute_batchnorm_statistics
from engine.training import RUN_FILES
from engine.sources import ImageData
from models import build_model
from models.transfer import EvalModeBatchNorm2d

# 1,000 training images (15 steps of 64), a validation split of an odd size (so an even
# split between two ranks, or padding, would be caught), and synthetic's 1,000 test images.
SMALL = [*QUICK, "--subset", "1000", "--val-size", "255"]
VAL_IMAGES, TEST_IMAGES = 255, 1000


def torchrun(*args, processes=2, env=None, launch=("--standalone",), **popen_options):
    command = [sys.executable, "-m", "torch.distributed.run", *launch,
               f"--nproc_per_node={processes}", *map(str, args)]
    # A session of its own: a hung run can be killed with its workers (os.killpg).
    return subprocess.Popen(command, cwd=REPO, env=script_environment(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            **popen_options)


def finish(process, timeout=300):
    """(exit code, stdout, stderr); a run still going after `timeout` (a hang between ranks)
    is killed with its workers and fails the test."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{stdout}\n{stderr}") from None
    return process.returncode, stdout, stderr


def run_of(study):
    """train_scratch.py's run directory in its study folder (--out)."""
    return study / "synthetic" / "seed0"


def probed_run(probe_dir, *flags):
    probe_dir.mkdir(parents=True, exist_ok=True)
    process = torchrun("tests/ddp_probe.py", "train_scratch.py", *flags,
                       env={"PROBE_DIR": str(probe_dir)})
    code, stdout, stderr = finish(process)
    assert code == 0, f"torchrun exited {code}:\n{stdout}\n{stderr}"
    return stdout


def indexed_images(count):
    """Images whose pixels are their index, so a batch says which images it holds."""
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 2, 2)
    return ImageData(images.contiguous(), torch.arange(count) % 10, [str(c) for c in range(10)])


def epoch_batches(data, rank, world_size, batch_size=32, augment=None):
    loader = DeviceLoader(data, batch_size, "cpu", lambda images: images, shuffle=True,
                          drop_last=True, seed=3, rank=rank, world_size=world_size, augment=augment)
    loader.set_epoch(2)
    return [images[:, 0, 0, 0].tolist() for images, _ in loader]


def test_each_rank_takes_a_disjoint_slice_of_every_global_batch():
    data = indexed_images(200)
    single = epoch_batches(data, rank=0, world_size=1)
    shards = [epoch_batches(data, rank, world_size=2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 200 // 32  # global steps
    for whole, first, second in zip(single, *shards):
        assert len(first) == len(second) == 16
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(whole)  # the same global batch, split


def test_each_rank_draws_its_own_augmentation_from_the_seed():
    order_0, augment_0 = epoch_generators(seed=3, epoch=2, rank=0, device="cpu")
    order_1, augment_1 = epoch_generators(seed=3, epoch=2, rank=1, device="cpu")
    assert torch.equal(torch.randperm(50, generator=order_0), torch.randperm(50, generator=order_1))
    assert not torch.equal(torch.rand(8, generator=augment_0), torch.rand(8, generator=augment_1))
    next_epoch = epoch_generators(seed=3, epoch=3, rank=1, device="cpu")[1]
    assert not torch.equal(torch.rand(8, generator=next_epoch),
                           torch.rand(8, generator=epoch_generators(3, 2, 1, "cpu")[1]))


# 4 epochs at a global batch of 64, with dropout (each rank must draw its own masks).
TWO_PROCESSES = [*SMALL, "--epochs", "4", "--dropout", "0.2"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """(probe folder, study, stdout) of train_scratch.py under torchrun with 2 processes."""
    root = tmp_path_factory.mktemp("two_processes")
    stdout = probed_run(root / "probe", *TWO_PROCESSES, "--out", root / "ddp")
    return root / "probe", root / "ddp", stdout


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The study of the same command in one process."""
    study = tmp_path_factory.mktemp("one_process") / "single"
    run_script("train_scratch.py", *TWO_PROCESSES, "--out", study)
    return study


def test_two_process_run_writes_once_agrees_on_the_model_and_counts_every_image(
        two_process_run, one_process_run):
    probe, study, stdout = two_process_run
    out = run_of(study)

    # Rank 0 alone wrote, and wrote every run file; rank 1 wrote nothing.
    assert not (probe / "writes.rank1").exists()
    written = {line for line in (probe / "writes.rank0").read_text().splitlines()}
    assert {str(out / name) for name in RUN_FILES} <= written
    assert sorted(path.name for path in out.iterdir()) == sorted(RUN_FILES)
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("epoch")] == \
        ["1/4", "2/4", "3/4", "4/4"]  # one progress line per epoch, from rank 0 only

    # Identical parameters and BatchNorm statistics on both ranks, and in the checkpoint,
    # whose keys have no DistributedDataParallel "module." prefix.
    states = [torch.load(probe / f"state.rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not [key for key in saved["model"] if key.startswith("module.")]
    assert states[0].keys() == states[1].keys() == saved["model"].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.equal(states[0][key], saved["model"][key]), key
    assert len(saved["rng_by_rank"]) == 2

    # Evaluation counted each image of each split exactly once over the two ranks.
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["val_images"], metrics["test_images"]) == (VAL_IMAGES, TEST_IMAGES)
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["sizes"]["val"] == VAL_IMAGES

    # One process with the same global batch learns as well (synthetic data: ~95%+ in 4
    # epochs); the ranks' different augmentation and BatchNorm batches change the numbers
    # a little, not the outcome.
    single = json.loads((run_of(one_process_run) / "metrics.json").read_text())
    assert single["test_images"] == TEST_IMAGES
    assert metrics["test_accuracy"] >= 0.85 and single["test_accuracy"] >= 0.85
    assert abs(metrics["test_accuracy"] - single["test_accuracy"]) <= 0.1


def test_two_processes_use_the_lr_of_one_process_at_the_same_global_batch(two_process_run,
                                                                          one_process_run):
    """--batch-size is the global batch: the peak lr follows it, not each rank's share."""
    _, study, stdout = two_process_run
    two = json.loads((run_of(study) / "config.json").read_text())["args"]
    one = json.loads((run_of(one_process_run) / "config.json").read_text())["args"]
    assert two["batch_size"] == one["batch_size"] == 64
    assert two["lr"] == one["lr"] == pytest.approx(0.2 * (64 / 512) ** 0.5)  # README's rule
    assert "peak lr 0.07071 (0.2 at batch 512 x sqrt(64/512)" in stdout


def test_each_rank_draws_its_own_dropout_masks(two_process_run):
    probe, _, _ = two_process_run
    masks = [torch.load(probe / f"dropout.rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert len(masks[0]) == len(masks[1]) > 0
    for first, second in zip(*masks):
        assert first.shape == second.shape and first.any() and second.any()
        assert not torch.equal(first, second)


def test_sync_bn_converts_trainable_batchnorm_and_keeps_frozen_layers_in_eval_mode():
    spec = {"name": "torchvision_resnet18", "num_classes": 10, "weights": "none", "head": "mlp",
            "freeze_children": 7, "cifar_stem": False}
    model = build_model(spec)
    parameters = {name: id(parameter) for name, parameter in model.named_parameters()}
    frozen = sum(isinstance(module, EvalModeBatchNorm2d) for module in model.modules())
    plain = sum(type(module) is torch.nn.BatchNorm2d for module in model.modules())
    assert frozen and plain  # frozen-mlp: layer4 trains, the stages before it are frozen

    convert_sync_batchnorm(model)
    assert sum(isinstance(module, EvalModeBatchNorm2d) for module in model.modules()) == frozen
    assert sum(type(module) is torch.nn.SyncBatchNorm for module in model.modules()) == plain
    assert not any(type(module) is torch.nn.BatchNorm2d for module in model.modules())
    # The same Parameter objects: an optimizer built before the conversion still holds them.
    assert {name: id(parameter) for name, parameter in model.named_parameters()} == parameters


class ShareOfBatches(list):
    """One rank's shares of the global batches (16 images), as its training loader yields them."""
    batch_size = 16


def batchnorm_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def shares(rank):
    """Rank `rank`'s halves of two global batches, each rank's data far from the other's."""
    generator = torch.Generator().manual_seed(rank)
    return ShareOfBatches((torch.randn(8, 3, 6, 6, generator=generator) * (1 + rank) + 3 * rank,
                           None) for _ in range(2))


def re_estimate_on_rank(rank, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    model = batchnorm_model()
    recompute_batchnorm_statistics(model, shares(rank), device=torch.device("cpu"),
                                   precision="fp32", images=32)
    torch.save(model[1].state_dict(), f"{out}.rank{rank}")
    torch.distributed.destroy_process_group()


def test_under_torchrun_batchnorm_statistics_come_from_every_ranks_share(tmp_path):
    """2,048 images in all, not rank 0's 2,048 / N: each rank measures its share of each
    batch and the ranks' statistics are averaged."""
    torch.multiprocessing.spawn(re_estimate_on_rank, args=(tmp_path / "init", tmp_path / "bn"),
                                nprocs=2)
    model = batchnorm_model()
    with torch.no_grad():
        features = [model[0](inputs) for rank in (0, 1) for inputs, _ in shares(rank)]
    mean = torch.stack([feature.mean(dim=(0, 2, 3)) for feature in features]).mean(0)
    variance = torch.stack([feature.var(dim=(0, 2, 3)) for feature in features]).mean(0)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"bn.rank{rank}", weights_only=True)
        torch.testing.assert_close(state["running_mean"], mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(state["running_var"], variance, rtol=0, atol=1e-4)


def wait_for_epochs(path, epochs, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) > epochs:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {epochs} epochs: {finish(process)}")


@pytest.mark.slow  # over the CI budget (README: run with -m slow)
def test_interrupted_ddp_run_resumes_under_ddp_on_the_same_trajectory_and_in_one_process(tmp_path):
    # Dropout draws from each rank's own RNG stream, which the checkpoint must restore.
    flags = [*SMALL, "--batch-size", "32", "--epochs", "3", "--dropout", "0.2"]
    straight = torchrun("train_scratch.py", *flags, "--out", tmp_path / "straight")

    stopped = tmp_path / "stopped"
    process = torchrun("train_scratch.py", *flags, "--out", stopped)
    wait_for_epochs(run_of(stopped) / "history.csv", 1, process)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    code, _, stderr = finish(process)
    assert code != 0
    assert "continue with: torchrun --standalone --nproc_per_node=2 " in stderr
    assert stderr.count("interrupted by SIGTERM") == 1  # rank 0 alone reports
    saved = torch.load(run_of(stopped) / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] < 3
    shutil.copytree(stopped, tmp_path / "single")

    # Under DDP: the resumed run ends where the uninterrupted one does, bit for bit.
    code, stdout, stderr = finish(torchrun("train_scratch.py", *flags, "--out", stopped, "--resume"))
    assert code == 0, stderr
    assert "resuming" in stdout
    assert finish(straight)[0] == 0
    resumed = torch.load(run_of(stopped) / "checkpoint.pt", weights_only=True)["model"]
    reference = torch.load(run_of(tmp_path / "straight") / "checkpoint.pt", weights_only=True)["model"]
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key

    # In one process: the same checkpoint loads into the plain model and finishes the run.
    single = start_script("train_scratch.py", *flags, "--out", tmp_path / "single", "--resume",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, stdout, stderr = finish(single)
    assert code == 0, stderr
    metrics = json.loads((run_of(tmp_path / "single") / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["test_images"] == TEST_IMAGES


@pytest.mark.slow  # a torchrun of its own, ~9 s: the second tier
def test_a_split_smaller_than_the_number_of_processes_is_still_evaluated(tmp_path):
    """One validation image over two ranks: rank 1's share is empty, yet it must take part
    in every sum (a rank that skipped one would pair its next sum with another's)."""
    out = tmp_path / "run"
    code, _, stderr = finish(torchrun("train_scratch.py", *SMALL, "--subset", "200",
                                      "--val-size", "1", "--epochs", "1", "--out", out),
                             timeout=120)
    assert code == 0, stderr
    assert json.loads((run_of(out) / "metrics.json").read_text())["val_images"] == 1


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "63"], "error: --batch-size 63 does not split evenly over 2 processes: "
                             "use a multiple of 2"),
    pytest.param(["--dataset", "folder", "--data-dir", "no-such-folder"], "error: ",
                 marks=pytest.mark.slow),
    pytest.param(["--subset", "100", "--batch-size", "128"],
                 "error: 100 training images are fewer than --batch-size 128",
                 marks=pytest.mark.slow),
])
def test_bad_input_under_torchrun_is_one_line_from_rank_0_and_writes_nothing(tmp_path, flags,
                                                                             message):
    out = tmp_path / "run"
    code, stdout, stderr = finish(torchrun("train_scratch.py", *SMALL, *flags, "--out", out))
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(message), stderr
    assert not out.exists()


@pytest.mark.slow  # over the CI budget (README: run with -m slow)
def test_a_study_runs_under_torchrun_and_its_rerun_reuses_the_finished_runs(tmp_path):
    out = tmp_path / "augment"
    flags = ["augment_study.py", *QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1",
             "--arms", "none", "flip", "--out", out]
    code, stdout, stderr = finish(torchrun(*flags))
    assert code == 0, stderr
    assert (out / "summary.md").is_file() and (out / "flip" / "seed0" / "checkpoint.pt").is_file()
    assert stdout.count("[2/2] flip seed 0: training") == 1  # rank 0 alone reports

    code, stdout, stderr = finish(torchrun(*flags))  # rank 0 decides, both ranks follow
    assert code == 0, stderr
    assert stdout.count("finished earlier, reusing") == 2
    assert not re.search(r"^epoch +\d", stdout, re.MULTILINE)  # no epoch trained


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # over the CI budget (README: run with -m slow)
def test_two_machines_meet_at_a_rendezvous_endpoint(tmp_path):
    """--nnodes 2 as on two machines (here both on localhost, one process each): the second
    machine's process is its machine's first, so it loads the data in its own turn."""
    out, endpoint = tmp_path / "run", f"127.0.0.1:{free_port()}"
    machines = [torchrun("train_scratch.py", *SMALL, "--subset", "300", "--val-size", "100",
                         "--epochs", "1", "--out", out, processes=1,
                         launch=("--nnodes=2", f"--node_rank={node}", "--rdzv_backend=c10d",
                                 f"--rdzv_endpoint={endpoint}", "--rdzv_id=test"))
                for node in (0, 1)]
    outcomes = [finish(machine) for machine in machines]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    metrics = json.loads((run_of(out) / "metrics.json").read_text())
    assert (metrics["val_images"], metrics["test_images"]) == (100, TEST_IMAGES)
    assert json.loads((run_of(out) / "config.json").read_text())["world_size"] == 2
