"""Pitfalls of the CUDA path that CPU kernels can show: fused SGD under an fp16 GradScaler,
checkpoints resumed with fewer GPUs, another precision or another device, and how often the
ranks of a torchrun agree to stop. tests/test_cuda.py checks the rest on a GPU."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import engine.signals
from conftest import QUICK, run_script
from engine import checkpoint as ckpt, timing
from engine.device import resolve_device, resolve_precision
from engine.errors import UserError
from engine.loader import Normalizer
from engine.loop import (evaluate, load_optimizer_state, make_optimizer,
                         recompute_batchnorm_statistics)
from engine.training import evaluation_batch


def train_with_an_overflow_first(fused, steps=4):
    """A small model trained with an fp16-style GradScaler whose first step overflows."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    optimizer = make_optimizer(model.parameters(), lr=0.1, weight_decay=5e-4, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        loss = model(torch.randn(32, 16, generator=data)).square().mean()
        if step == 0:
            loss = loss * float("inf")  # as fp16's first steps at the initial scale often do
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return model


def test_fused_sgd_after_a_skipped_first_step_trains_as_the_foreach_kernel():
    # Uninitialised momentum buffers (the fused kernel's empty_like, left unwritten by the
    # skipped step) sent the weights to ~1e20 by the second step.
    fused, foreach = train_with_an_overflow_first(True), train_with_an_overflow_first(False)
    for ours, reference in zip(fused.parameters(), foreach.parameters()):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_a_resumed_optimizer_keeps_the_kernels_of_the_device_it_resumes_on():
    model = torch.nn.Linear(4, 2)
    on_cpu = make_optimizer(model.parameters(), lr=0.1, weight_decay=0.0, fused=False)
    model(torch.randn(3, 4)).sum().backward()
    on_cpu.step()
    on_gpu = make_optimizer(model.parameters(), lr=0.1, weight_decay=0.0, fused=True)
    load_optimizer_state(on_gpu, copy.deepcopy(on_cpu.state_dict()))
    assert on_gpu.param_groups[0]["fused"] is True and not on_gpu.param_groups[0]["foreach"]
    assert torch.equal(on_gpu.state[model.weight]["momentum_buffer"],
                       on_cpu.state[model.weight]["momentum_buffer"])


def test_checkpoints_hold_and_restore_the_training_gpus_own_rng_state(monkeypatch):
    """One state, the training device's: a checkpoint saved with 2 GPUs visible restores
    where 1 is (get_rng_state_all / set_rng_state_all raised IndexError there)."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0", "gpu1"])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: seen.update({device: state}))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: seen.update(all=states))
    states = ckpt.rng_states(torch.device("cuda", 1))
    assert states["cuda"] == "state of cuda:1"
    assert "cuda" not in ckpt.rng_states(torch.device("cpu"))

    saved = {"torch": torch.get_rng_state(), "cuda": torch.zeros(16, dtype=torch.uint8)}
    ckpt.restore_rng_states(saved, torch.device("cuda", 0))
    assert list(seen) == [torch.device("cuda", 0)] and torch.equal(seen[torch.device("cuda", 0)],
                                                                   saved["cuda"])
    seen.clear()
    ckpt.restore_rng_states({**saved, "cuda": ["gpu0", "gpu1"]}, torch.device("cuda", 0))
    assert seen == {}  # an older checkpoint's list of every GPU's state is left alone


@pytest.mark.parametrize("first, then", [("fp32", "fp16"),
                                         pytest.param("fp16", "bf16", marks=pytest.mark.slow)])
def test_a_run_resumes_in_another_precision(tmp_path, first, then):
    """--precision may change on resume; the grad scaler's state is empty without fp16 (and
    loading it into fp16's enabled scaler raised)."""
    flags = [*QUICK, "--subset", "200", "--val-size", "50", "--epochs", "1", "--out", tmp_path]
    trained = run_script("train_scratch.py", *flags, "--precision", first)
    metrics = tmp_path / "synthetic" / "seed0" / "metrics.json"
    metrics.unlink()  # not finished, then: the checkpoint is restored
    resumed = run_script("train_scratch.py", *flags, "--precision", then, "--resume")
    assert "resuming" in resumed.stdout
    fp16_run = trained if first == "fp16" else resumed
    assert "precision fp16 (warning: fp16 on a CPU is slow" in fp16_run.stdout
    assert json.loads(metrics.read_text())["epochs"] == 1


def test_torchrun_ranks_agree_to_stop_every_few_steps_and_at_every_forced_check(monkeypatch):
    asked = []
    monkeypatch.setattr(engine.signals, "is_distributed", lambda: True)
    monkeypatch.setattr(engine.signals, "over_ranks",
                        lambda flag, op: asked.append(flag) or (flag,))
    stop = engine.signals.AgreedStop(lambda: True, poll_every=10)
    answers = [stop() for _ in range(30)]
    assert len(asked) == 3 and answers.count(True) == 3 and answers[9] and answers[29]
    assert stop(force=True) and len(asked) == 4


def test_upsampling_skips_antialiasing_which_changes_nothing_but_the_speed():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    up = Normalizer(*stats, "cpu", image_size=64, channels_last=False)(images)
    expected = F.interpolate((images / 255 - 0.5) / 0.25, size=(64, 64), mode="bilinear",
                             align_corners=False, antialias=True)
    torch.testing.assert_close(up, expected, rtol=0, atol=1e-5)
    down = Normalizer(*stats, "cpu", image_size=16, channels_last=False)(images)
    torch.testing.assert_close(down, F.interpolate((images / 255 - 0.5) / 0.25, size=(16, 16),
                                                   mode="bilinear", antialias=True))


def test_cuda_n_becomes_the_current_device(monkeypatch):
    """Otherwise bf16 support is asked of GPU 0, and GPU 0 gets a context and stray allocations."""
    chosen = []
    a_gpu(monkeypatch, (9, 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]


def a_gpu(monkeypatch, capability, name="a GPU"):
    """torch.cuda's queries answering as one GPU of this compute capability would, with bf16
    emulated below 8.0 as torch 2.14's is_bf16_supported finds it (a bf16 tensor works)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list",
                        lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])


@pytest.mark.parametrize("capability, precision", [((7, 5), "fp16"), ((8, 0), "bf16"),
                                                   ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability,
                                                                         precision):
    """A T4 (7.5) emulates bf16 (is_bf16_supported() says True): slow, and not compiled."""
    a_gpu(monkeypatch, capability)
    assert resolve_precision("auto", resolve_device("cuda")) == precision


def test_a_gpu_the_installed_torch_has_no_kernels_for_is_refused_in_one_line(monkeypatch):
    a_gpu(monkeypatch, (7, 0), name="Tesla V100-SXM2-16GB")
    with pytest.raises(UserError) as refused:
        resolve_device("auto")
    message = str(refused.value)
    assert "\n" not in message and "Tesla V100-SXM2-16GB" in message and "7.0" in message
    assert "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120" in message


def test_checkpoints_hold_and_restore_the_mps_generator_state(monkeypatch):
    """Dropout on Apple MPS draws from the MPS generator: a resumed run is exact only with it."""
    generator = {"state": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": generator["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state",
                        lambda state, device="mps": generator.update(state=state.clone()))
    states = ckpt.rng_states(torch.device("mps"))
    assert torch.equal(states["mps"], torch.arange(8, dtype=torch.uint8))
    generator["state"] = torch.zeros(8, dtype=torch.uint8)  # training went on
    ckpt.restore_rng_states(states, torch.device("mps"))
    assert torch.equal(generator["state"], torch.arange(8, dtype=torch.uint8))
    ckpt.restore_rng_states({"torch": states["torch"]}, torch.device("mps"))  # an older checkpoint
    assert "mps" not in ckpt.rng_states(torch.device("cpu"))


class HostReads(TorchDispatchMode):
    """Counts the ops that wait for a GPU to copy values to the host: .item() and kin
    (_local_scalar_dense), and bincount, whose CUDA kernel reads its input's min and max."""
    WAITING = {"_local_scalar_dense", "bincount", "nonzero"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in self.WAITING
        return func(*args, **(kwargs or {}))


class Batches(list):
    batch_size = 8


def test_evaluation_and_batchnorm_re_estimation_wait_for_the_gpu_once_not_per_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    cpu = torch.device("cpu")
    reads = []
    for count in (2, 5):
        batches = Batches((torch.randn(8, 3, 6, 6), torch.arange(8) % 3) for _ in range(count))
        with HostReads() as re_estimation:
            recompute_batchnorm_statistics(model, batches, device=cpu, precision="fp32",
                                           images=8 * count)
        with HostReads() as evaluation:
            result = evaluate(model, batches, device=cpu, precision="fp32", num_classes=3)
        reads.append((evaluation.count, re_estimation.count))
        with torch.no_grad():
            predicted = torch.cat([model(inputs).argmax(1) for inputs, _ in batches])
        targets = torch.cat([targets for _, targets in batches])
        expected = torch.zeros(3, 3, dtype=torch.int64)
        for true, guess in zip(targets.tolist(), predicted.tolist()):
            expected[true, guess] += 1
        assert torch.equal(result["confusion"], expected)
    assert reads[0] == reads[1] and reads[0][1] == 0


@pytest.mark.parametrize("batch, size, expected", [(512, 32, 1024), (2048, 32, 2048),
                                                   (128, 64, 256), (256, 224, 256), (32, 224, 32)])
def test_the_evaluation_batch_keeps_its_pixels_as_the_image_size_grows(batch, size, expected):
    """1,024 images at 224 px held ~20 GB in the CIFAR-stem network's evaluation, whatever
    --batch-size: more than a T4, L4 or A10 has."""
    assert evaluation_batch(batch, size, torch.device("cuda")) == expected
    assert evaluation_batch(batch, size, torch.device("cpu")) == batch


def test_the_one_timer_waits_for_the_device_before_starting_and_before_stopping(monkeypatch):
    """reproduce.py and every benchmark time with engine.timing.seconds: without the first
    wait a measurement includes work queued before it, without the second it misses its own."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = iter([10.0, 12.5])
    seconds = timing.seconds(lambda: events.append("work"), torch.device("cuda"),
                             clock=lambda: events.append("clock") or next(clock))
    assert seconds == 2.5 and events == ["sync", "clock", "work", "sync", "clock"]
