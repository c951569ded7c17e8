"""One command that proves the CUDA path and measures it, in under 8 minutes on one GPU.

    python -m benchmarks.gpu_check --json results/benchmarks/gpu_check.json   # on a GPU
    python -m benchmarks.gpu_check --device cpu --quick                       # dry run (CI)

Steps, most valuable first (a GPU lent for minutes may run out): the training-throughput
benchmark against the plain loop, the CUDA tests (tests/test_cuda.py), each augmentation
arm's cost as a share of a training step (and any host sync it makes), a real 50,000-image
epoch of part (a)'s defaults, every part script on synthetic data with --precision fp16
(then visualize_activations.py and report.py on their results), torchrun with NCCL on every
visible GPU (skipped on one: it needs 2), the benchmark compiled and with 8 baseline workers,
every part script with --compile. Each step runs on its own, within its cap (a failure is
recorded and the next one runs); a step whose cap no longer fits in what is left of --budget
is not started ("not run (budget)", not a failure). The JSON is rewritten after every step,
and the exit status is 1 if any step failed. --quick shrinks every size so that the same
steps finish in a few minutes on a CPU; on a CPU it leaves out --compile, whose C++ build
takes minutes on two cores.
"""
import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch
import torchvision

from benchmarks.augment_throughput import aten_ops
from engine import augment, timing
from engine.atomic import write_json
from engine.configurations import RECIPES
from engine.device import grad_scaler, resolve_device, resolve_precision
from engine.errors import exits_cleanly_on_user_error
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import make_optimizer, make_scheduler, train_one_epoch
from engine.pretrained import model_from_spec
from engine.sources import make_synthetic

STEP_TARGETS = {"epoch_seconds": 2.0, "ratio": 5.0, "augmentation_share": 0.05}


class StepFailed(Exception):
    """A step's check did not hold; the message says what, figures keeps what it measured."""

    def __init__(self, message, figures=None):
        super().__init__(message)
        self.figures = figures


class StepSkipped(Exception):
    """The step cannot run here (the message says why); not a failure."""


@contextmanager
def time_limit(seconds):
    """StepFailed in this (main) thread after `seconds`: caps in-process steps as well."""
    def stop(signum, frame):
        raise StepFailed(f"out of time: over the step's cap of {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def stop_group(process, grace=35):
    """SIGTERM to the process's group, then SIGKILL to what is left of it: torchrun's agent,
    told first, stops its workers, which it starts in sessions of their own (a SIGKILL to it
    alone leaves them holding the GPU), and SIGKILLs them itself 30 s later."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:  # the group has gone
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    process.wait()


def run(command, cwd, env=None):
    """A subprocess that must succeed, in a process group of its own, stopped with its
    children when the step runs out of time; its output's tail goes into the failure."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        stop_group(process)
        raise
    if process.returncode != 0:
        tail = (stdout + stderr)[-3000:]
        raise StepFailed(f"{shlex.join(map(str, command))} exited {process.returncode}:\n{tail}")
    return stdout, time.perf_counter() - started


def seconds_per_call(function, device, repeats):
    """Median wall time of one call, the device synchronised around each."""
    return statistics.median(timing.seconds(function, device) for _ in range(repeats))


# --- the steps: each takes the check's context and returns its figures ---------------------

def cuda_tests(check):
    stdout, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "cuda", "tests/test_cuda.py"], REPO)
    summary = stdout.strip().splitlines()[-1]
    if check.device.type == "cuda" and "skipped" in summary:
        raise StepFailed(f"CUDA tests were skipped on a GPU: {summary}")
    return {"summary": summary, "seconds": seconds}


def throughput(check, *extra):
    """benchmarks/train_throughput.py, its figures read back from its JSON."""
    out = check.workdir / f"throughput{'_'.join(extra).replace('-', '_')}.json"
    sizes = (["--width", "8", "--batch-size", "32", "--steps", "2", "--warmup", "1",
              "--repeats", "1", "--dataset-size", "256"] if check.quick else [])
    run([sys.executable, "-m", "benchmarks.train_throughput", "--device", str(check.device), *sizes,
         *extra, "--json", out], REPO)
    report = json.loads(out.read_text())
    return {"command": report["command"], "ratio": report["ratio"],
            **{f"{path}_{key}": report[path][key] for path in ("project", "baseline")
               for key in ("images_per_second", "epoch_seconds", "tflops", "peak_memory_bytes")},
            "flops_per_image": report["flops_per_image"], "workers": report["workers"]}


def study_model(check, num_classes=10):
    """The augmentation study's network (full-width ResNet-18; narrow with --quick)."""
    torch.manual_seed(0)
    model = model_from_spec({"name": "resnet18_cifar", "num_classes": num_classes,
                             "width": 8 if check.quick else 64})
    return model.to(check.device, memory_format=torch.channels_last)


def train_steps(check, model, loader, epochs):
    """train_one_epoch as the scripts call it; returns each epoch's seconds."""
    precision = resolve_precision("auto", check.device)
    optimizer = make_optimizer(model.parameters(), 0.05, 5e-4, fused=check.device.type == "cuda")
    scheduler = make_scheduler(optimizer, epochs * len(loader))
    scaler = grad_scaler(check.device, precision)
    times = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        times.append(train_one_epoch(model, loader, optimizer, scheduler, scaler,
                                     device=check.device, precision=precision).seconds)
    return times, precision


def augmentation_share(check):
    """Each arm on a batch of the study's size (its recipe's, 128) against one training step
    of the study's model on that batch, both on this device. Batched arms must cost at most 5%
    of a step and make no host sync (CUDA's sync debug mode, "warn"); each arm's aten ops per
    batch (about its kernel launches) are recorded."""
    batch, repeats = (32, 2) if check.quick else (RECIPES["augment"]["batch_size"], 20)
    data, _ = make_synthetic(train_size=batch * (2 if check.quick else 8), test_size=8)
    stats = channel_stats(data.images)
    loader = DeviceLoader(data, batch, check.device, Normalizer(*stats, check.device),
                          shuffle=True, drop_last=True, seed=0)
    step_times, precision = train_steps(check, study_model(check), loader, 3)
    step = min(step_times[1:]) / len(loader)  # epoch 1 includes cuDNN's autotuning
    images = data.images[:batch].to(check.device)
    labels = data.labels[:batch].to(check.device)
    generator = torch.Generator(device=check.device).manual_seed(0)
    arms = {}
    for name, make in augment.ARMS.items():
        pipeline = make(10, 32)
        call = lambda: pipeline(images, labels, generator)  # noqa: E731
        call()  # warm-up (kernels, allocator)
        seconds = seconds_per_call(call, check.device, repeats)
        syncs = count_host_syncs(call, check.device)
        arms[name] = {"seconds": seconds, "share": seconds / step, "per_image": pipeline.per_image,
                      "host_syncs": syncs,
                      "aten_ops": sum(aten_ops(pipeline, images, labels, generator).values())}
    problems = [f"{name} {figures['share']:.1%} of a step" for name, figures in arms.items()
                if not figures["per_image"] and figures["share"] > STEP_TARGETS["augmentation_share"]]
    problems += [f"{name} synchronises with the host ({figures['host_syncs']} warnings)"
                 for name, figures in arms.items() if not figures["per_image"] and figures["host_syncs"]]
    figures = {"batch": batch, "precision": precision, "step_seconds": step, "arms": arms}
    if problems and not check.quick:
        raise StepFailed("; ".join(problems), figures)
    return figures


def count_host_syncs(call, device):
    if device.type != "cuda":
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def epoch_time(check):
    """A real epoch of part (a)'s defaults (50,000 images, batch 512, crop + flip, the
    full-width ResNet-18, automatic precision), after one epoch of warm-up."""
    images, batch = (512, 64) if check.quick else (50_000, 512)
    data, _ = make_synthetic(train_size=images, test_size=8)
    stats = channel_stats(data.images)
    loader = DeviceLoader(data, batch, check.device, Normalizer(*stats, check.device),
                          shuffle=True, drop_last=True, augment=augment.CropFlip(), seed=0)
    torch.backends.cudnn.benchmark = True
    times, precision = train_steps(check, study_model(check), loader, 2)
    figures = {"images": len(loader) * batch, "batch": batch, "precision": precision,
               "warmup_epoch_seconds": times[0], "epoch_seconds": times[1],
               "images_per_second": len(loader) * batch / times[1]}
    return figures


def weights_file(check):
    """A random torchvision ResNet-18 state dict saved as a local weights file (no network)."""
    path = check.workdir / "resnet18-random.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def part_scripts(check, mode):
    """Every part script on synthetic data, in its own results folder: with --precision
    fp16 (then visualize_activations.py and report.py on those results), or --compile."""
    results = check.workdir / mode
    results.mkdir(exist_ok=True)
    common = ["--dataset", "synthetic", "--device", str(check.device), "--no-progress",
              "--precision" if mode == "fp16" else "--compile", *(["fp16"] if mode == "fp16" else [])]
    small = ["--subset", "100", "--val-size", "20", "--batch-size", "50"] if check.quick else \
            ["--subset", "2000"]
    narrow = ["--width", "8"] if check.quick else []
    few = mode == "compile" or check.quick  # every compiled run costs a compilation
    commands = {
        "train_scratch": ["train_scratch.py", *common, *narrow, "--epochs", "1" if few else "2",
                          *(small if check.quick else [])],
        "train_transfer": ["train_transfer.py", *common, *small, "--epochs", "1",
                           "--weights", weights_file(check), "--configs",
                           *(["pretrained"] if few else ["scratch", "pretrained", "frozen-mlp"])],
        "augment_study": ["augment_study.py", *common, *small, *narrow, "--epochs", "1", "--arms",
                          *(["none", "autoaugment" if check.quick else "rotation"] if few else
                            ["none", "rotation", "color_jitter", "cutmix", "autoaugment"])],
        "dropout_sweep": ["dropout_sweep.py", *common, *small, *narrow, "--epochs", "1",
                          "--rates", "0.0", "0.3",
                          "--dropout-at", *(["classifier"] if few else ["classifier", "block"])],
    }
    if mode == "fp16":
        commands["visualize_activations"] = ["visualize_activations.py", "--run",
                                             "results/scratch/synthetic/seed0"]
        commands["report"] = ["report.py", "--results", "results"]
    seconds = {}
    for name, command in commands.items():
        _, seconds[name] = run([sys.executable, REPO / command[0], *command[1:]], results)
    if mode == "fp16" and not (results / "results" / "REPORT.md").is_file():
        raise StepFailed("report.py wrote no REPORT.md")
    return {"seconds": seconds}


def torchrun(check):
    """train_scratch.py under torchrun on every visible GPU (NCCL), with --sync-bn; two
    processes with gloo on a CPU. One process is not distributed (no NCCL, DDP or
    SyncBatchNorm): on one GPU the step is skipped."""
    processes = torch.cuda.device_count() if check.device.type == "cuda" else 2
    if processes < 2:
        raise StepSkipped("needs 2 GPUs")
    sizes = ["--width", "8", "--subset", "200", "--val-size", "50", "--batch-size", "64"] \
        if check.quick else ["--subset", "4000"]
    out = check.workdir / "torchrun"
    _, seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", REPO / "train_scratch.py",
                           "--dataset", "synthetic", "--epochs", "1", "--sync-bn", "--no-progress",
                      "--device", check.device.type, *sizes, "--out", out], REPO,
                     env={"OMP_NUM_THREADS": "1"})
    metrics = json.loads((out / "synthetic" / "seed0" / "metrics.json").read_text())
    return {"processes": processes, "seconds": seconds, "test_accuracy": metrics["test_accuracy"]}


# name -> (step, the most seconds it may take), in the order they run. On one H100 the steps
# are estimated to take about 425 s of the 470 s budget (benchmarks/README.md: the table).
STEPS = {
    "throughput": (lambda check: throughput(check), 60),
    "cuda_tests": (cuda_tests, 90),
    "augmentation_share": (augmentation_share, 30),
    "epoch_time": (epoch_time, 30),
    "scripts_fp16": (lambda check: part_scripts(check, "fp16"), 100),
    "torchrun": (torchrun, 60),
    "throughput_workers8": (lambda check: throughput(check, "--workers", "8"), 50),
    "throughput_compiled": (lambda check: throughput(check, "--compile"), 90),
    "scripts_compile": (lambda check: part_scripts(check, "compile"), 150),
}
COMPILING = ("throughput_compiled", "scripts_compile")


class Check:
    """What the steps share: device, sizes, a scratch folder and the time left."""

    def __init__(self, args, workdir):
        self.device = resolve_device(args.device)
        self.quick = args.quick
        self.workdir = workdir
        # A --quick dry run on a (shared) CPU proves the steps run, not how fast: room to spare.
        self.slack = 4 if args.quick else 1
        self.deadline = time.monotonic() + args.budget * self.slack

    def left(self):
        return self.deadline - time.monotonic()


def run_step(check, step, cap):
    """The step's entry: ok with its figures, skipped, failed with the error, or not run when
    its cap no longer fits in the budget."""
    if cap > check.left():
        return {"status": "not run (budget)", "figures": None}
    try:
        with time_limit(cap):
            return {"status": "ok", "figures": step(check)}
    except StepSkipped as reason:
        return {"status": f"skipped: {reason}", "figures": None}
    except Exception as error:  # recorded; the next step still runs
        detail = str(error) if isinstance(error, StepFailed) else traceback.format_exc()
        print(detail[-4000:], flush=True)
        return {"status": "failed", "error": detail[-4000:],
                "figures": getattr(error, "figures", None)}


def environment(device):
    figures = {"device": str(device), "torch": str(torch.__version__),
               "torchvision": str(torchvision.__version__), "python": sys.version.split()[0],
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": "python -m benchmarks.gpu_check " + shlex.join(sys.argv[1:])}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        figures.update(device_name=properties.name, gpus=torch.cuda.device_count(),
                       memory_gib=properties.total_memory / 2 ** 30,
                       bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                       cuda=torch.version.cuda, archs=torch.cuda.get_arch_list(),
                       cudnn=torch.backends.cudnn.version())
    return figures


def markdown(report):
    """The rows for benchmarks/README.md's GPU table."""
    env, steps = report["environment"], report["steps"]
    lines = [f"{env.get('device_name', env['device'])}, torch {env['torch']}, {env['date']}, "
             f"`{env['command']}`", "", "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, step in steps.items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.0f} | {headline(name, step)} |")
    share = steps.get("augmentation_share", {}).get("figures")
    if share:
        lines += ["", f"Augmentation per batch of {share['batch']} against one training step "
                      f"({share['step_seconds'] * 1e3:.2f} ms, {share['precision']}):", "",
                  "| arm | ms | share of a step | host syncs | aten ops |", "|---|---|---|---|---|"]
        for name, arm in share["arms"].items():
            lines.append(f"| {name}{' (per image)' if arm['per_image'] else ''} | "
                         f"{arm['seconds'] * 1e3:.3f} | {arm['share']:.1%} | {arm['host_syncs']} "
                         f"| {arm['aten_ops']} |")
    return "\n".join(lines)


def headline(name, step):
    figures = step.get("figures") or {}
    if step["status"] != "ok":  # an error's last line is its reason (a traceback's exception)
        return step["error"].strip().splitlines()[-1][:160] if step.get("error") else ""
    if name.startswith("throughput"):
        return (f"project {figures['project_images_per_second']:,.0f} img/s, baseline "
                f"{figures['baseline_images_per_second']:,.0f} img/s ({figures['workers']} workers), "
                f"ratio {figures['ratio']:.2f}x, {figures['project_tflops']:.1f} TFLOP/s")
    if name == "epoch_time":
        return (f"{figures['images']:,} images in {figures['epoch_seconds']:.2f} s "
                f"({figures['images_per_second']:,.0f} img/s, {figures['precision']})")
    if name == "augmentation_share":
        batched = [arm["share"] for arm in figures["arms"].values() if not arm["per_image"]]
        return f"batched arms at most {max(batched):.1%} of a step"
    if name == "cuda_tests":
        return figures["summary"]
    if name == "torchrun":
        return f"{figures['processes']} process(es), {figures['seconds']:.0f} s"
    return ", ".join(f"{script} {seconds:.0f} s" for script, seconds in figures["seconds"].items())


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a dry run of every step (CI runs it on the CPU)")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="run these steps only")
    parser.add_argument("--budget", type=float, default=470,
                        help="seconds for the whole check; a step whose cap no longer fits is "
                             "not started (\"not run (budget)\", not a failure)")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "benchmarks" / "gpu_check.json")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the runs are written (default: a temporary folder)")
    return parser


@exits_cleanly_on_user_error  # a GPU without kernels in this torch: one line, exit 2
def main(args):
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        check = Check(args, workdir)
        report = {"environment": environment(check.device), "targets": STEP_TARGETS, "steps": {}}
        chosen = args.only or [name for name in STEPS
                               if not (check.quick and check.device.type == "cpu" and name in COMPILING)]
        for name in chosen:
            print(f"--- {name}", flush=True)
            started = time.perf_counter()
            step, cap = STEPS[name]
            entry = run_step(check, step, cap * check.slack)
            entry["seconds"] = time.perf_counter() - started
            report["steps"][name] = entry
            print(f"{name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
            write_json(args.json, report)
        print(markdown(report))
        return 1 if any(step["status"] == "failed" for step in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
