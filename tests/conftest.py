"""Shared test helpers: run a script as a user would, and generate image datasets."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
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


def run_script(script, *args, check=True, env=None, timeout=600):
    """Run a repository script or module in a subprocess; return the CompletedProcess."""
    result = subprocess.run(command(script, *args), cwd=REPO,
                            capture_output=True, text=True, env=script_environment(env),
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


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
