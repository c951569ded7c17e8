"""Shared test helpers: run a script as a user would, generate image datasets, stand in
for ImageNet's weights."""
import contextlib
import hashlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# Tests train tiny networks, for which one thread is as fast as two on an idle 2-core machine
# and much faster on a busy one; subprocesses get the same through OMP_NUM_THREADS.
torch.set_num_threads(1)

# Every script run in tests is small: a narrow network on a few synthetic images.
QUICK = ["--dataset", "synthetic", "--width", "8", "--batch-size", "64", "--no-progress"]


def script_environment(env=None):
    """The environment every script runs in under test: one thread (the same float results
    in every process, so runs compared across processes match bit for bit) and no network
    (a download attempt fails at once instead of waiting)."""
    return dict(os.environ, OMP_NUM_THREADS="1", https_proxy="http://127.0.0.1:9",
                http_proxy="http://127.0.0.1:9", **(env or {}))


def command(script, *args):
    """A repository script (a .py file) or module (benchmarks.NAME) as the shell runs it."""
    target = [str(REPO / script)] if script.endswith(".py") else ["-m", script]
    return [sys.executable, *target, *map(str, args)]


def start_script(script, *args, **popen_options):
    """Start a repository script in the background (to signal or kill it); return the Popen."""
    return subprocess.Popen(command(script, *args), cwd=REPO, env=script_environment(),
                            **popen_options)


# Part scripts run in this process (no interpreter and torch import per call, ~3-4 s each):
# each has main(args) and get_args_parser(), as the shell runs it. Benchmarks, a changed
# environment, signals and kills (start_script) keep a process of their own.
IN_PROCESS = {"train_scratch.py", "train_transfer.py", "augment_study.py", "dropout_sweep.py",
              "visualize_activations.py", "report.py", "reproduce.py"}


def run_script(script, *args, check=True, env=None, timeout=600):
    """Run a repository script or module as the shell would; return the CompletedProcess."""
    if script in IN_PROCESS and env is None:
        result = run_in_process(script, *args)
    else:
        result = subprocess.run(command(script, *args), cwd=REPO, capture_output=True,
                                text=True, env=script_environment(env), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_in_process(script, *args):
    """A part script's main() in this process, as `python script args` runs it: its output
    captured, SystemExit's code as the return code, in the repository with no network and
    torch's global settings put back afterwards (--deterministic changes them)."""
    module = importlib.import_module(script.removesuffix(".py"))
    argv = [str(arg) for arg in args]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with (contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr),
          script_setting(script, argv), torch_settings_kept()):
        try:
            module.main(module.get_args_parser().parse_args(argv))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def script_setting(script, argv):
    """What the shell gives a script: its name in sys.argv (argparse's messages use it), the
    repository as the working directory, and script_environment's variables."""
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = [script, *argv]
    os.chdir(REPO)
    os.environ.update(script_environment())
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def torch_settings_kept():
    """torch's process-wide switches as they were: a script's --deterministic sets them."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.get_num_threads())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:4]
        torch.set_num_threads(saved[4])


def write_image_tree(root, classes=("cat", "dog", "frog"), per_class=(12, 4), size=40,
                     splits=("train", "test")):
    """An ImageFolder tree of real PNG/JPEG files whose class is visible in the pixels.

    Each class has its own colour; images vary in size so the source must resize them.
    """
    generator = np.random.default_rng(0)
    palette = generator.integers(30, 225, size=(len(classes), 3))
    for split, count in zip(splits, per_class):
        for index, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                height, width = size + number % 5, size + 2 * (number % 3)
                noise = generator.normal(0, 20, size=(height, width, 3))
                pixels = np.clip(palette[index] + noise, 0, 255).astype(np.uint8)
                suffix = ".png" if number % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{name}_{number}{suffix}")
    return Path(root)


def use_stand_in_imagenet(monkeypatch, data, base_url="https://download.pytorch.org/models"):
    """Make `data` (a saved resnet18 state dict) what --weights imagenet names; return the
    hub-cache path it is looked for at (the caller puts it there, or lets it be downloaded).

    The real file's name carries its hash prefix, which generated bytes cannot match, so
    engine.pretrained gets a stand-in for torchvision's weights whose file name carries the
    prefix of `data`, with the real categories.
    """
    from engine import pretrained
    real = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    url = f"{base_url}/resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    stand_in = torchvision.models.WeightsEnum(
        "StandInWeights", {"IMAGENET1K_V1": torchvision.models.Weights(url, real.transforms,
                                                                        real.meta)})
    monkeypatch.setattr(pretrained, "IMAGENET_WEIGHTS", stand_in.IMAGENET1K_V1)
    return pretrained.imagenet_cache_path()


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped where there is no GPU (CI); the GPU check runs them."""
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_check.py)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def image_tree(tmp_path):
    return write_image_tree(tmp_path / "images")
