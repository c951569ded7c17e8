"""Runs, each from start (or checkpoint) to a finished run directory <study>/<configuration>/
seed<S>/: a finished one reused, an interrupted one resumed, a new one trained. Under torchrun
every rank runs this code; rank 0 decides, writes and prints."""
import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torchvision

from engine import atomic, distributed, shards
from engine import checkpoint as ckpt
from engine.augment import Compose
from engine.cli import describe_lr, show_progress
from engine.device import grad_scaler, resolve_device, resolve_precision
from engine.errors import Interrupted, UserError
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import (EpochState, RunClock, evaluate, format_seconds, load_optimizer_state,
                         make_optimizer, make_scheduler, recompute_batchnorm_statistics,
                         train_one_epoch)
from engine.plots import plot_confusion, plot_curves
from engine.pretrained import model_from_spec
from engine.results import RESUME_FREE, RUN_FILES, STUDY_ARGS, holds_run, read_run
from engine.signals import AgreedStop, stop_on_signals
from engine.sources import load_source, split_validation, take_subset

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "test_loss", "test_accuracy", "seconds", "images_per_second", "warning")
METRIC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy",
               "train_loss", "val_loss", "test_loss")
# Images over which BatchNorm statistics are re-estimated before each evaluation: 4 batches
# of 512, ~1.5% of a CIFAR-10 epoch.
BATCHNORM_IMAGES = 2048


# --- data ------------------------------------------------------------------------------------

@dataclass
class Splits:
    train: object
    val: object
    test: object
    dataset: str

    @property
    def classes(self):
        return self.train.classes


def training_device(args):
    """--device, or under torchrun this rank's own GPU."""
    return distributed.setup(resolve_device(args.device))


def load_data(args):
    """(train, test) of --dataset; under torchrun rank 0 loads (and downloads) first."""
    training_device(args)
    return distributed.main_first(lambda: load_source(args.dataset, args.data_dir))


def validation_size(args, train_size):
    """--val-size; by default 5,000 for CIFAR, a tenth of the training set otherwise."""
    if args.val_size is not None:
        return args.val_size
    return 5000 if args.dataset.startswith("cifar") else train_size // 10


def split_data(args, train, test):
    """The class-balanced validation split and --subset of args.seed."""
    val_size = validation_size(args, len(train))
    val = None
    if val_size > 0:
        train, val = split_validation(train, val_size, args.seed)
    if args.subset is not None:
        train = take_subset(train, args.subset, args.seed)
    return Splits(train, val, test, args.dataset)


# --- a run -----------------------------------------------------------------------------------

@dataclass
class Run:
    name: str                       # its configuration: a folder of the study
    args: argparse.Namespace        # its settings, seed included: config.json's "args"
    study: Path                     # the run directory is study/name/seed<S>
    model: dict                     # the model spec (engine.pretrained.model_from_spec)
    splits: Splits
    train_augment: Optional[Callable] = None   # (images, labels, generator) -> (images, targets)
    eval_augment: Optional[Callable] = None    # deterministic, applied to val/test too
    param_groups: Optional[Callable] = None    # model -> optimizer param groups
    normalization: Optional[tuple] = None      # (mean, std); default: the training split's
    image_size: Optional[int] = None           # model input size if not the stored one
    extra_config: dict = field(default_factory=dict)
    seconds: float = 0.0  # how long this command took to reuse, resume or train it (0: not yet)

    @property
    def path(self):
        return self.study / self.name / f"seed{self.args.seed}"

    @property
    def checkpoint(self):
        return self.path / "checkpoint.pt"


def run_args(args, seed, without=(), **own):
    """The command's settings less those that choose runs (STUDY_ARGS) and `without` (settings
    this run does not depend on), plus its own seed and choices."""
    kept = {key: value for key, value in vars(args).items()
            if key not in STUDY_ARGS and key not in without}
    return argparse.Namespace(**{**kept, "seed": seed, **own})


def identity(config):
    """What must match for stored results to belong to a run (through JSON, so a config read
    back from config.json compares equal)."""
    wanted = {"args": {key: value for key, value in config["args"].items()
                       if key not in RESUME_FREE},
              "model": config["model"], "dataset": config["dataset"], "classes": config["classes"]}
    return json.loads(json.dumps(wanted, default=str))


def run_identity(run):
    return identity({"args": vars(run.args), "model": run.model, "dataset": run.splits.dataset,
                     "classes": run.splits.classes})


def check_same_run(saved_config, run):
    """Refuse to continue or reuse a run started with other settings, model or data."""
    saved, wanted = identity(saved_config), run_identity(run)
    if saved == wanted:
        return
    for section in ("model", "dataset", "classes"):
        if saved[section] != wanted[section]:
            raise UserError(f"{run.path} holds a run of another {section} ({saved[section]!r}, "
                            f"not {wanted[section]!r}): use another --out or --overwrite")
    old, new = saved["args"], wanted["args"]
    differing = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    shown = ", ".join(f"--{key.replace('_', '-')} {old.get(key)!r} (now {new.get(key)!r})"
                      for key in differing[:3])
    raise UserError(f"the run in {run.path} was started with {shown}: pass the same flags to "
                    f"continue it, or --overwrite to start again")


def check_unique(runs):
    names = [(run.name, run.args.seed) for run in runs]
    if len(set(names)) != len(names):
        raise UserError(f"the study lists a configuration twice ({[run.name for run in runs]}): "
                        f"list each once")


# --- reuse, resume or train -----------------------------------------------------------------

def check_writable(path):
    """Try it: permissions alone say nothing for root or on a read-only filesystem."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to {path}: {existing} is a file; choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except FileNotFoundError:  # of a directory that exists: its file system makes no files
        raise UserError(f"cannot write to {path}: {existing} is on a file system that accepts no "
                        f"new files (such as /proc or /sys); choose another --out") from None
    except OSError as error:
        raise UserError(f"cannot write to {existing} ({error.strerror}): choose another --out") from None


def plan(run):
    """"reuse" (finished earlier, same run), "resume" (a checkpoint) or "train"."""
    if run.args.resume and run.args.overwrite:
        raise UserError("--resume continues the runs in --out and --overwrite replaces them: "
                        "pass one of them")
    if run.path.exists() and not run.path.is_dir():
        raise UserError(f"{run.path} is a file, not a directory: choose another --out")
    check_writable(run.path)
    if run.args.overwrite:
        return "train"
    record = read_run(run.path)
    if record.finished and run.checkpoint.is_file():
        check_same_run(record.config, run)
        return "reuse"
    if run.checkpoint.is_file():
        return "resume"
    if holds_run(run.path):
        raise UserError(f"{run.path} holds run files but no checkpoint.pt to continue from: "
                        f"pass --overwrite to replace them, or choose another --out")
    return "train"


ACTION_WORDS = {"reuse": "finished earlier, reusing", "resume": "resuming", "train": "training"}


def augmentation(run):
    transform = compose_optional(run.eval_augment, run.train_augment)
    return repr(transform) if transform else "none"


def startup_block(runs, actions, shard=None):
    """What is about to happen: device, data, schedule, lr, output, and each run's plan."""
    args, splits = runs[0].args, runs[0].splits
    device = training_device(args)
    steps = max(1, len(splits.train) // args.batch_size)  # the training loader's drop_last
    augments = {augmentation(run) for run in runs}
    precision = resolve_precision(args.precision, device)
    lines = [f"device    {device}, precision {precision}" + (
                 " (warning: fp16 on a CPU is slow and its loss scaling is for GPUs: use bf16 or "
                 "fp32)" if (device.type, precision) == ("cpu", "fp16") else ""),
             f"data      {splits.dataset} ({len(splits.classes)} classes): {len(splits.train)} "
             f"train / {len(splits.val) if splits.val else 0} val / {len(splits.test)} test images"
             + (f" (--subset {args.subset}: there are only {len(splits.train)}, all used)"
                if args.subset and args.subset > len(splits.train) else ""),
             f"schedule  {args.epochs} epochs x {steps} steps of {args.batch_size} images; "
             f"{describe_lr(vars(args))}",
             f"augment   {augments.pop() if len(augments) == 1 else 'per run, below'}",
             f"output    {runs[0].study}",
             f"runs      {len(runs)}" + (f" (shard {shard})" if shard else "") + ": "
             + ", ".join(f"{actions.count(action)} {action}" for action in dict.fromkeys(actions))]
    lines += [f"  [{number}/{len(runs)}] {run.name} seed {run.args.seed}: {action}"
              + (f" ({augmentation(run)})" if len(augments) > 1 else "")
              for number, (run, action) in enumerate(zip(runs, actions), 1)]
    return "\n".join(lines)


def train(run, action, header="", note=""):
    """Reuse, resume or train one run; on rank 0 its files are then read back into it."""
    print_on_main(f"{header}{run.name} seed {run.args.seed}: {ACTION_WORDS[action]} {run.path}"
                  f"{note}")
    started = time.perf_counter()
    if action != "reuse":
        run_training(run, resume=action == "resume")
    run.seconds = time.perf_counter() - started
    return run


def train_all(runs, shard=None):
    """Every run in order, or this --shard's share of them; every plan is made (any refusal
    raised) before the first trains. A run another process holds is skipped (seconds 0)."""
    check_unique(runs)
    planned, runs = len(runs), shards.deal(runs, shard)
    if not runs:
        print_on_main(f"shard {shard}: none of the study's {planned} runs is this process's")
        return runs
    actions = distributed.on_main(lambda: [plan(run) for run in runs])
    if runs[0].args.resume and set(actions) == {"train"}:
        raise UserError(f"--resume: no run to continue in {runs[0].study} (no checkpoint.pt "
                        f"there): drop --resume to start, or point --out at the study to continue")
    print_on_main(startup_block(runs, actions, shard))
    started, trained = time.perf_counter(), 0  # runs trained or resumed so far
    for number, (run, action) in enumerate(zip(runs, actions), 1):
        left = sum(later != "reuse" for later in actions[number - 1:])
        eta = (time.perf_counter() - started) / trained * left if trained else float("nan")
        header = f"[{number}/{len(runs)}] "
        with claimed(run) as holder:
            if holder:
                print_on_main(f"{header}{run.name} seed {run.args.seed}: skipped, {holder} is "
                              f"training it ({run.path} is locked)")
                run.seconds = 0.0
                continue
            # Planned again under the lock: another process may have finished it meanwhile.
            action = distributed.on_main(lambda: plan(run))
            train(run, action, header,
                  f" (study ETA {format_seconds(eta)})" if trained and action != "reuse" else "")
        trained += action != "reuse"
    return runs


@contextlib.contextmanager
def claimed(run):
    """Run's folder locked by rank 0 while the block runs (engine.shards.locked); yields who
    holds it instead where another process does, on every rank."""
    lock = (shards.locked(shards.lock_beside(run.path)) if distributed.is_main_process()
            else contextlib.nullcontext())
    with lock as holder:
        yield distributed.broadcast_from_main(holder)


# --- one run's training ----------------------------------------------------------------------

def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def build_config(run, device, precision, mean, std):
    splits = run.splits
    return {
        "args": vars(run.args),
        "model": run.model,
        "dataset": splits.dataset,
        "classes": splits.classes,
        "num_classes": len(splits.classes),
        "sizes": {"train": len(splits.train), "val": len(splits.val) if splits.val else 0,
                  "test": len(splits.test)},
        "normalization": {"mean": list(mean), "std": list(std)},
        "stored_image_size": splits.train.images.shape[-1],
        "image_size": run.image_size or splits.train.images.shape[-1],
        "train_augment": repr(run.train_augment),
        "eval_augment": repr(run.eval_augment),
        **run.extra_config,
        "device": str(device),
        "precision": precision,
        "world_size": distributed.world_size(),
        "torch": str(torch.__version__),  # TorchVersion is not plain data for weights_only
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def compose_optional(*transforms):
    present = [transform for transform in transforms if transform is not None]
    return Compose(*present) if len(present) > 1 else (present[0] if present else None)


def evaluation_batch(batch_size, image_size, device):
    """On CUDA, as many pixels per evaluation batch as 1,024 images of 32x32 (no gradients,
    so memory allows it; fewer, larger batches are faster), never fewer images than training:
    at 224 px it is the training batch, which a user lowers when memory runs short."""
    if device.type != "cuda":
        return batch_size
    return max(batch_size, 1024 * 32 ** 2 // image_size ** 2)


def make_loaders(run, device, normalize):
    """(train, val or None, test); under torchrun each rank takes its slice of the global
    batch and evaluates every world_size-th image."""
    splits, batch_size, seed = run.splits, run.args.batch_size, run.args.seed
    rank, world_size = distributed.rank(), distributed.world_size()
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {world_size} "
                        f"processes: use a multiple of {world_size}")
    if world_size > 1 and len(splits.train) < batch_size:  # one short batch splits unevenly
        raise UserError(f"{len(splits.train)} training images are fewer than --batch-size "
                        f"{batch_size}: under torchrun every step takes a full batch; choose "
                        f"--batch-size {len(splits.train) // world_size * world_size} or less")
    eval_batch = evaluation_batch(batch_size, run.image_size or splits.train.images.shape[-1],
                                  device)

    def eval_loader(data):
        share = data.select(slice(rank, None, world_size))  # every image once over all ranks
        return DeviceLoader(share, eval_batch, device, normalize, shuffle=False, drop_last=False,
                            augment=run.eval_augment, seed=seed)

    # drop_last: every training batch has one shape (one graph for torch.compile, and
    # BatchNorm never sees a batch of one).
    train_loader = DeviceLoader(splits.train, batch_size, device, normalize, shuffle=True,
                                drop_last=len(splits.train) >= batch_size,
                                augment=compose_optional(run.eval_augment, run.train_augment),
                                seed=seed, rank=rank, world_size=world_size)
    return train_loader, (eval_loader(splits.val) if splits.val else None), eval_loader(splits.test)


@dataclass
class Training:
    """Everything one run's epochs need, built (or restored) by prepare_training."""
    run: Run
    config: dict
    device: torch.device
    precision: str
    model: torch.nn.Module          # the plain module (what checkpoints hold)
    stepper: torch.nn.Module        # what runs the steps (DDP under torchrun, then compiled)
    evaluator: torch.nn.Module      # the plain module (compiled): ranks evaluate different
                                    # numbers of images, which DDP's forward cannot
    loaders: tuple                  # (train, val or None, test)
    optimizer: object
    scheduler: object
    scaler: object
    history: list = field(default_factory=list)
    best_val: float = 0.0
    start_epoch: int = 0
    partial: Optional[EpochState] = None  # an epoch interrupted by a signal, to continue
    clock: Optional[RunClock] = None      # the run's pace, for its ETA
    confusion: Optional[torch.Tensor] = None  # of the test set, at the last evaluation
    tensorboard: object = None            # a SummaryWriter with --tensorboard, on rank 0
    clear_old_files: bool = False         # --overwrite: at the first save, not before

    def save(self, epoch, partial=None):
        """Every rank calls this (their RNG states are gathered); rank 0 writes."""
        rng_by_rank = distributed.gather_to_main(ckpt.rng_states(self.device))
        if not distributed.is_main_process():
            return
        if self.clear_old_files:
            for name in RUN_FILES:
                (self.run.path / name).unlink(missing_ok=True)
            self.clear_old_files = False
        ckpt.save_checkpoint(self.run.checkpoint, model=self.model, optimizer=self.optimizer,
                             scheduler=self.scheduler, scaler=self.scaler, epoch=epoch,
                             history=self.history, config=self.config,
                             best_val_accuracy=self.best_val,
                             partial_epoch=asdict(partial) if partial else None,
                             rng_by_rank=rng_by_rank)


def use_deterministic_algorithms():
    """--deterministic (warn_only: a few ops, e.g. adaptive average pooling's CUDA backward,
    have no deterministic kernel)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def prepare_training(run, resume):
    args = run.args
    device = training_device(args)
    precision = resolve_precision(args.precision, device)
    if args.deterministic:
        use_deterministic_algorithms()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    mean, std = run.normalization or channel_stats(run.splits.train.images)
    config = build_config(run, device, precision, mean, std)
    saved = distributed.on_main(lambda: load_run_to_resume(run)) if resume else None

    torch.manual_seed(args.seed)  # model initialisation (the same on every rank) draws from this
    model = model_from_spec(run.model).to(device, memory_format=torch.channels_last)
    if distributed.world_size() > 1:
        torch.manual_seed(distributed.mixed_seed(args.seed, distributed.rank()))  # own dropout
    loaders = make_loaders(run, device, Normalizer(mean, std, device, image_size=run.image_size))
    groups = run.param_groups(model) if run.param_groups else model.parameters()
    optimizer = make_optimizer(groups, args.lr, args.weight_decay, fused=device.type == "cuda")
    stepper = distributed.wrap_for_training(model, device, args.sync_bn)
    if args.compile:
        # A study trains many models in one process: without a reset, each run's graphs pile
        # up under the same forward() until dynamo's recompile limit sends runs to eager.
        torch._dynamo.reset()
        stepper = torch.compile(stepper)
    evaluator = (stepper if not distributed.is_distributed() else
                 torch.compile(model) if args.compile else model)
    training = Training(run, config, device, precision, model, stepper, evaluator, loaders,
                        optimizer, make_scheduler(optimizer, args.epochs * len(loaders[0])),
                        grad_scaler(device, precision), clear_old_files=args.overwrite)
    if saved is not None:
        restore(training, saved)  # every rank loads the same state
        where = (f"in epoch {training.start_epoch + 1} of {args.epochs} after step "
                 f"{training.partial.step} of {len(loaders[0])}" if training.partial
                 else f"after epoch {training.start_epoch} of {args.epochs}")
        print_on_main(f"resuming {run.path} {where}")
    if args.tensorboard and distributed.is_main_process():
        training.tensorboard = summary_writer()(run.path / "tensorboard")
    steps = len(loaders[0])
    training.clock = RunClock(args.epochs * steps, training.start_epoch * steps
                              + (training.partial.step if training.partial else 0))
    return training


def summary_writer():
    """torch's SummaryWriter class, imported only for --tensorboard (an optional package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or drop --tensorboard)") from None
    return SummaryWriter


def load_run_to_resume(run):
    saved = ckpt.load_checkpoint(run.checkpoint)
    check_same_run(saved["config"], run)
    return saved


def restore(training, saved):
    training.model.load_state_dict(saved["model"])
    load_optimizer_state(training.optimizer, saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:  # empty when saved without fp16 (--precision may change on resume)
        training.scaler.load_state_dict(saved["scaler"])
    restore_this_ranks_rng(saved, training.run.args.seed, training.device)
    training.history = saved["history"]
    training.best_val = saved["best_val_accuracy"]
    training.start_epoch = saved["epoch"]
    if saved.get("partial_epoch"):
        training.partial = EpochState(**saved["partial_epoch"])
        if not distributed.is_main_process():
            training.partial = training.partial.progress_only()  # rank 0 carries the sums


def restore_this_ranks_rng(saved, seed, device):
    """Each rank continues its own random stream (dropout); with another number of processes
    rank 0 takes the saved one and the others start fresh ones from seed, rank and epoch."""
    by_rank = saved.get("rng_by_rank") or [saved["rng"]]
    if len(by_rank) == distributed.world_size():
        ckpt.restore_rng_states(by_rank[distributed.rank()], device)
    elif distributed.is_main_process():
        ckpt.restore_rng_states(by_rank[0], device)
    else:
        torch.manual_seed(distributed.mixed_seed(seed, distributed.rank(), saved["epoch"]))


def print_on_main(text):
    if distributed.is_main_process():
        print(text, flush=True)


def run_training(run, resume=False):
    """Train (or resume) one run to its last epoch. SIGINT/SIGTERM save a checkpoint after the
    current step and raise Interrupted; a non-finite loss raises UserError."""
    training = prepare_training(run, resume)
    args = run.args
    with stop_on_signals() as request:
        stop = AgreedStop(request)
        for epoch in range(training.start_epoch, args.epochs):
            train_epoch(training, epoch, stop)
            if stop(force=True):
                raise Interrupted(stop.signum, f"after epoch {epoch + 1} (checkpoint saved in "
                                               f"{run.path})")
    if training.start_epoch == args.epochs:  # finished before: refresh its files
        write_run_files(training)
        training.confusion = evaluate(training.evaluator, training.loaders[2],
                                      device=training.device, precision=training.precision,
                                      num_classes=len(run.splits.classes))["confusion"]
    if distributed.is_main_process():
        write_per_class(run.path, run.splits.classes, training.confusion, run.splits.dataset)
    metrics = final_metrics(training.history, training.best_val)
    print_on_main(f"done {run.name}: accuracy train {100 * metrics['train_accuracy']:.2f}% "
                  f"val {100 * metrics['val_accuracy']:.2f}% test "
                  f"{100 * metrics['test_accuracy']:.2f}% in "
                  f"{format_seconds(metrics['train_seconds'])} -> {run.path}")
    return metrics


def train_epoch(training, epoch, stop):
    """One epoch: train, check, evaluate, then save the checkpoint and every run file."""
    run, args = training.run, training.run.args
    train_loader, val_loader, test_loader = training.loaders
    train_loader.set_epoch(epoch)
    progress = show_progress(args) and distributed.is_main_process()
    start, training.partial = training.partial, None
    state = train_one_epoch(training.stepper, train_loader, training.optimizer,
                            training.scheduler, training.scaler, device=training.device,
                            precision=training.precision, label_smoothing=args.label_smoothing,
                            progress=progress, log_every=args.log_every if
                            distributed.is_main_process() and not args.no_progress else None,
                            clock=training.clock, should_stop=stop, start=start,
                            description=f"{run.name} epoch {epoch + 1}/{args.epochs}")
    state = state.summed_over_ranks()
    if state.first_bad_step >= 0:
        raise UserError(f"training diverged in epoch {epoch + 1} at step {state.first_bad_step + 1}"
                        f" (the loss is not finite): lower --lr (now {args.lr:g}); " + (
                            f"the last good checkpoint is kept in {run.path}"
                            if run.checkpoint.is_file() else "no checkpoint was written"))
    if not state.finished:
        training.save(epoch, partial=state)
        raise Interrupted(stop.signum, f"in epoch {epoch + 1} after step {state.step} of "
                                       f"{len(train_loader)} (checkpoint saved in {run.path})")
    evaluate_started = time.perf_counter()
    recompute_batchnorm_statistics(training.model, train_loader, device=training.device,
                                   precision=training.precision, images=BATCHNORM_IMAGES)
    distributed.sync_buffers(training.model)  # one model on every rank, as the checkpoint
    val = (evaluate(training.evaluator, val_loader, device=training.device,
                    precision=training.precision, progress=progress, description="val")
           if val_loader is not None else {"loss": float("nan"), "accuracy": float("nan"),
                                           "images": 0})
    test = evaluate(training.evaluator, test_loader, device=training.device,
                    precision=training.precision, progress=progress, description="test",
                    num_classes=len(run.splits.classes))
    training.confusion = test["confusion"]
    training.history.append({
        "epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"],
        "train_loss": state.loss, "train_accuracy": state.accuracy,
        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
        "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "seconds": state.seconds + time.perf_counter() - evaluate_started,
        "images_per_second": state.seen / state.seconds,
        "val_images": val["images"], "test_images": test["images"],
        "warning": loss_warning(state.loss, len(run.splits.classes), args.lr) if epoch == 0 else "",
    })
    if val_loader is not None:  # (an empty share of a tiny split is still a loader)
        training.best_val = max(training.best_val, val["accuracy"])
    training.save(epoch + 1)
    write_run_files(training)
    print_on_main(epoch_line(training.history[-1], args.epochs))
    if training.tensorboard:  # the scalars of history.csv, against the epoch
        for key in HISTORY_COLUMNS[1:-1]:  # the numbers, not the warning
            training.tensorboard.add_scalar(key, training.history[-1][key], epoch + 1)
        training.tensorboard.flush()


# --- the run directory's files ---------------------------------------------------------------

def write_run_files(training):
    """config.json, history.csv, metrics.json and curves.png, atomically (rank 0 only)."""
    if not distributed.is_main_process():
        return
    path, history = training.run.path, training.history
    atomic.write_json(path / "config.json", training.config)
    write_history(path / "history.csv", history)
    atomic.write_json(path / "metrics.json", final_metrics(history, training.best_val))
    run = training.run
    plot_curves(history, path / "curves.png", label_smoothing=run.args.label_smoothing,
                title=f"{run.name} seed {run.args.seed}: {run.splits.dataset}, "
                      f"{run.args.epochs} epochs")


def write_per_class(path, classes, confusion, dataset):
    """per_class.csv (each class's test images, correct and accuracy) and confusion.png."""
    images, correct = confusion.sum(dim=1).tolist(), confusion.diagonal().tolist()
    atomic.write_csv(path / "per_class.csv", ["class", "images", "correct", "accuracy"],
                     [{"class": name, "images": count, "correct": right,
                       "accuracy": f"{right / max(count, 1):.4f}"}
                      for name, count, right in zip(classes, images, correct)])
    plot_confusion(confusion, classes, path / "confusion.png",
                   title=f"{dataset} test set: {sum(images)} images")


def write_history(path, history):
    # Rows carry more than the file's columns (the evaluated image counts): left out.
    atomic.write_csv(path, HISTORY_COLUMNS, history)


def final_metrics(history, best_val_accuracy):
    last = history[-1]
    metrics = {key: last[key] for key in METRIC_KEYS}
    metrics.update(best_val_accuracy=best_val_accuracy, epochs=last["epoch"],
                   train_seconds=sum(row["seconds"] for row in history))
    # How many images the last evaluation counted (summed over ranks under torchrun).
    metrics.update({key: last[key] for key in ("val_images", "test_images") if key in last})
    return metrics


def loss_warning(loss, num_classes, lr):
    """A first epoch whose mean training loss is above an untrained network's, ln(classes):
    what a peak lr too high for the model looks like (README: the recipe)."""
    if not loss > math.log(num_classes):
        return ""
    return (f"first-epoch training loss {loss:.2f} above an untrained network's "
            f"ln({num_classes}) = {math.log(num_classes):.2f}: the learning rate may be too high, "
            f"try --lr below {lr:.3g} (e.g. {lr / 4:.3g})")


def epoch_line(row, epochs):
    """Loss / accuracy per split, the lr (3 significant digits: it ends near 0), the time."""
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.3g}  "
            f"train {row['train_loss']:.3f} / {100 * row['train_accuracy']:.2f}%  "
            f"val {row['val_loss']:.3f} / {100 * row['val_accuracy']:.2f}%  "
            f"test {row['test_loss']:.3f} / {100 * row['test_accuracy']:.2f}%  "
            f"{row['images_per_second']:.0f} img/s  {format_seconds(row['seconds'])}"
            + (f"\n  warning: {row['warning']}" if row.get("warning") else ""))
