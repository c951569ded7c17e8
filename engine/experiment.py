"""One training run from start (or checkpoint) to finished run directory.

Scripts describe a run as an `Experiment` (flags, how to build the model, the data and its
augmentation) and call `run_training`; this module owns the lifecycle: refuse to clobber,
resume, train and evaluate each epoch, write the run directory atomically, summarise.
Under torchrun the same code runs in every process (engine.distributed): rank 0 decides,
writes and prints; every rank trains on its slice of each batch and evaluates its share.
"""
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torchvision

from engine import checkpoint as ckpt
from engine import distributed
from engine.augment import Compose
from engine.cli import describe_lr, show_progress
from engine.device import grad_scaler, resolve_device, resolve_precision
from engine.errors import Interrupted, UserError
from engine.loader import DeviceLoader, Normalizer, channel_stats
from engine.loop import EpochState, evaluate, make_optimizer, make_scheduler
from engine.loop import recompute_batchnorm_statistics, train_one_epoch
from engine.plots import plot_curves
from engine.rundir import RunDirectory, final_metrics
from engine.signals import AgreedStop, stop_on_signals
from engine.sources import load_source
from engine.split import split_validation, take_subset

# Flags that do not choose what a run computes: they may differ when resuming. Like the
# number of torchrun processes, device, precision and --sync-bn change how the numbers come
# out, not the experiment; --seeds chooses runs (each run's own seed is its --seed). How the
# peak lr was reached (lr_base, lr_reference_batch, lr_rule) is recorded, not compared: the
# resolved lr is.
RESUME_FREE_FLAGS = {"resume", "overwrite", "no_progress", "device", "compile", "out",
                     "data_dir", "precision", "sync_bn", "seeds",
                     "lr_base", "lr_reference_batch", "lr_rule"}

# Training images over which BatchNorm statistics are re-estimated before each evaluation
# (engine.loop.recompute_batchnorm_statistics): 4 batches of 512, ~1.5% of a CIFAR epoch.
BATCHNORM_IMAGES = 2048


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
    """The device this process trains on: --device, or under torchrun this rank's own
    (joining the process group the first time)."""
    return distributed.setup(resolve_device(args.device))


def load_splits(args, image_size=32):
    """Source -> class-balanced train/val split -> optional class-balanced subset."""
    return split_data(args, *load_data(args, image_size))


def load_data(args, image_size=32):
    """(train, test) of --dataset. Under torchrun rank 0 loads (and downloads) first; the
    others read what it fetched."""
    training_device(args)
    return distributed.main_first(
        lambda: load_source(args.dataset, args.data_dir, image_size=image_size))


def split_data(args, train, test):
    """The validation split and the subset of args.seed, from loaded data."""
    val_size = args.val_size
    if val_size is None:
        val_size = 5000 if args.dataset.startswith("cifar") else len(train) // 10
    val = None
    if val_size > 0:
        train, val = split_validation(train, val_size, args.seed)
    if args.subset is not None:
        train = take_subset(train, args.subset, args.seed)
    return Splits(train, val, test, args.dataset)


@dataclass
class Experiment:
    name: str                          # shown in titles and the final line
    flags: dict                        # the run's resolved flags (stored, compared on resume)
    out: Path
    make_model: Callable[[], torch.nn.Module]
    model_spec: dict                   # enough to rebuild the model (models.build_model)
    splits: Splits
    train_augment: Optional[Callable] = None   # (images, labels, generator) -> (images, targets)
    eval_augment: Optional[Callable] = None    # deterministic, applied to val/test too
    param_groups: Optional[Callable] = None    # model -> optimizer param groups
    normalization: Optional[tuple] = None      # (mean, std); default: the training split's
    image_size: Optional[int] = None           # model input size if not the stored one
    extra_config: dict = field(default_factory=dict)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def build_config(experiment, device, precision, mean, std):
    splits = experiment.splits
    return {
        "flags": experiment.flags,
        "model": experiment.model_spec,
        "dataset": splits.dataset,
        "classes": splits.classes,
        "num_classes": len(splits.classes),
        "sizes": {"train": len(splits.train), "val": len(splits.val) if splits.val else 0,
                  "test": len(splits.test)},
        "normalization": {"mean": list(mean), "std": list(std)},
        "stored_image_size": splits.train.images.shape[-1],
        "image_size": experiment.image_size or splits.train.images.shape[-1],
        "train_augment": repr(experiment.train_augment),
        "eval_augment": repr(experiment.eval_augment),
        **experiment.extra_config,
        "device": str(device),
        "precision": precision,
        "torch": str(torch.__version__),  # TorchVersion is not plain data for weights_only
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def run_identity(config):
    """What must match for stored results to belong to this run: flags, model, data.

    Takes a config (or any dict with its "flags", "model", "dataset" and "classes") and
    normalises it through JSON, so a config read back from config.json compares equal.
    """
    flags = {key: value for key, value in config["flags"].items() if key not in RESUME_FREE_FLAGS}
    wanted = {"flags": flags, "model": config["model"], "dataset": config["dataset"],
              "classes": config["classes"]}
    return json.loads(json.dumps(wanted, default=str))


def experiment_identity(experiment):
    return run_identity({"flags": experiment.flags, "model": experiment.model_spec,
                         "dataset": experiment.splits.dataset, "classes": experiment.splits.classes})


def check_same_run(saved_config, wanted_identity, path):
    """Refuse to continue (or reuse) a run that was started with other flags, model or data."""
    saved = run_identity(saved_config)
    if saved == wanted_identity:
        return
    for section in ("model", "dataset", "classes"):
        if saved[section] != wanted_identity[section]:
            raise UserError(f"{path} holds a run of another {section} ({saved[section]!r}, not "
                            f"{wanted_identity[section]!r}): use another --out or --overwrite")
    flags, wanted = saved["flags"], wanted_identity["flags"]
    differing = sorted(key for key in set(flags) | set(wanted) if flags.get(key) != wanted.get(key))
    shown = ", ".join(f"--{key.replace('_', '-')} {flags.get(key)!r} (now {wanted.get(key)!r})"
                      for key in differing[:3])
    raise UserError(f"the run in {path} was started with {shown}: pass the same flags to "
                    f"continue it, or --overwrite to start again")


def compose_optional(*transforms):
    """The transforms that are not None, one after the other (None if there are none)."""
    present = [transform for transform in transforms if transform is not None]
    return Compose(*present) if len(present) > 1 else (present[0] if present else None)


def make_loaders(experiment, device, normalize, batch_size, seed):
    """(train, val or None, test) loaders. Under torchrun batch_size stays the global batch
    (each rank takes its slice), and each rank evaluates every world_size-th image."""
    splits = experiment.splits
    rank, world_size = distributed.rank(), distributed.world_size()
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {world_size} "
                        f"processes: use a multiple of {world_size}")
    if world_size > 1 and len(splits.train) < batch_size:
        # One short batch would be split unevenly (or leave a rank without images).
        raise UserError(f"{len(splits.train)} training images are fewer than --batch-size "
                        f"{batch_size}: under torchrun every step takes a full batch; choose "
                        f"--batch-size {len(splits.train) // world_size * world_size} or less")
    eval_batch = max(batch_size, 1024) if device.type == "cuda" else batch_size

    def eval_loader(data):
        share = data.select(slice(rank, None, world_size))  # every image once over all ranks
        return DeviceLoader(share, eval_batch, device, normalize, shuffle=False, drop_last=False,
                            augment=experiment.eval_augment, seed=seed)

    # drop_last keeps every training batch the same shape (one graph for torch.compile, and
    # BatchNorm never sees a batch of one); eval loaders see every image.
    train = DeviceLoader(splits.train, batch_size, device, normalize, shuffle=True,
                         drop_last=len(splits.train) >= batch_size,
                         augment=compose_optional(experiment.eval_augment, experiment.train_augment),
                         seed=seed, rank=rank, world_size=world_size)
    return train, (eval_loader(splits.val) if splits.val else None), eval_loader(splits.test)


@dataclass
class Training:
    """Everything one run's epochs need, built (or restored) by prepare_training."""
    run_dir: RunDirectory
    config: dict
    device: torch.device
    precision: str
    model: torch.nn.Module          # the plain module (what checkpoints hold)
    compiled: torch.nn.Module       # what runs the steps (DDP under torchrun, then --compile)
    evaluator: torch.nn.Module      # what evaluates: the plain module (--compile'd); each
                                    # rank evaluates a different number of images, which
                                    # DDP's forward (a collective) would not allow
    loaders: tuple                  # (train, val or None, test)
    optimizer: object
    scheduler: object
    scaler: object
    history: list = field(default_factory=list)
    best_val: float = 0.0
    start_epoch: int = 0
    partial: Optional[EpochState] = None  # an epoch interrupted by a signal, to continue
    replace_old_run: bool = False          # --overwrite: clear the old files at the first save

    def save(self, epoch, partial=None):
        """Every rank calls this (their RNG states are gathered); rank 0 writes."""
        rng_by_rank = distributed.gather_to_main(ckpt.rng_states())
        if not distributed.is_main_process():
            return
        if self.replace_old_run:
            self.run_dir.clear_previous_run()
            self.replace_old_run = False
        ckpt.save_checkpoint(self.run_dir.checkpoint, model=self.model, optimizer=self.optimizer,
                             scheduler=self.scheduler, scaler=self.scaler, epoch=epoch,
                             history=self.history, config=self.config,
                             best_val_accuracy=self.best_val,
                             partial_epoch=asdict(partial) if partial else None,
                             rng_by_rank=rng_by_rank)


def use_deterministic_algorithms(device):
    """--deterministic: the same seed gives the same numbers, run after run.

    warn_only: a few torchvision ops (adaptive average pooling's CUDA backward) have no
    deterministic kernel; they are reported as warnings rather than stopping the run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def load_run_to_resume(run_dir, experiment):
    saved = ckpt.load_checkpoint(run_dir.checkpoint)
    check_same_run(saved["config"], experiment_identity(experiment), run_dir.path)
    return saved


def prepare_training(experiment, args):
    run_dir = RunDirectory(experiment.out)
    device = training_device(args)
    # Rank 0 checks the run directory and reads the checkpoint; every rank gets its answer
    # (the other machines of a multi-node run need not see the files).
    distributed.on_main(lambda: run_dir.check_can_start(args.resume, args.overwrite))
    precision = resolve_precision(args.precision, device)
    if getattr(args, "deterministic", False):
        use_deterministic_algorithms(device)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels

    mean, std = experiment.normalization or channel_stats(experiment.splits.train.images)
    config = build_config(experiment, device, precision, mean, std)
    config["world_size"] = distributed.world_size()
    saved = distributed.on_main(lambda: load_run_to_resume(run_dir, experiment)) if args.resume else None

    torch.manual_seed(args.seed)  # model initialisation (the same on every rank) draws from this
    model = experiment.make_model().to(device, memory_format=torch.channels_last)
    if distributed.world_size() > 1:
        torch.manual_seed(distributed.mixed_seed(args.seed, distributed.rank()))  # own dropout
    normalize = Normalizer(mean, std, device, image_size=experiment.image_size)
    loaders = make_loaders(experiment, device, normalize, args.batch_size, args.seed)
    groups = experiment.param_groups(model) if experiment.param_groups else model.parameters()
    optimizer = make_optimizer(groups, args.lr, args.weight_decay, device=device)
    stepper = distributed.wrap_for_training(model, device, getattr(args, "sync_bn", False))
    compiled = torch.compile(stepper) if args.compile else stepper
    evaluator = compiled if stepper is model else torch.compile(model) if args.compile else model
    training = Training(run_dir, config, device, precision, model, compiled, evaluator, loaders,
                        optimizer, make_scheduler(optimizer, args.epochs * len(loaders[0])),
                        grad_scaler(device, precision), replace_old_run=args.overwrite)
    if saved is not None:
        # Every rank loads the same state, so it does not matter that DDP already wraps it.
        restore(training, saved, args.seed)
        where = (f"epoch {training.start_epoch + 1} step {training.partial.step}" if training.partial
                 else f"epoch {training.start_epoch}")
        print_on_main(f"resuming {run_dir.path} after {where} of {args.epochs}")
    return training


def restore(training, saved, seed):
    training.model.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    training.scaler.load_state_dict(saved["scaler"])
    restore_this_ranks_rng(saved, seed)
    training.history = saved["history"]
    training.best_val = saved["best_val_accuracy"]
    training.start_epoch = saved["epoch"]
    if saved.get("partial_epoch"):
        training.partial = EpochState(**saved["partial_epoch"])
        if not distributed.is_main_process():
            training.partial = training.partial.progress_only()  # rank 0 carries the sums


def restore_this_ranks_rng(saved, seed):
    """Each rank continues its own random stream (dropout) when the number of processes is
    the one the checkpoint was saved with; otherwise rank 0 takes the saved one and the
    others start fresh streams from the seed, the rank and the epoch."""
    by_rank = saved.get("rng_by_rank") or [saved["rng"]]
    if len(by_rank) == distributed.world_size():
        ckpt.restore_rng_states(by_rank[distributed.rank()])
    elif distributed.is_main_process():
        ckpt.restore_rng_states(by_rank[0])
    else:
        torch.manual_seed(distributed.mixed_seed(seed, distributed.rank(), saved["epoch"]))


def print_on_main(text):
    if distributed.is_main_process():
        print(text, flush=True)


def run_training(experiment, args):
    """Train (or resume) one run; return its final metrics dict.

    SIGINT/SIGTERM finish the current step, save a checkpoint (mid-epoch if need be) and
    raise Interrupted; a non-finite loss raises UserError, keeping the last good checkpoint.
    """
    training = prepare_training(experiment, args)
    print_on_main(f"{experiment.name}: {describe_lr(experiment.flags)}")
    with stop_on_signals() as request:
        stop = AgreedStop(request)
        for epoch in range(training.start_epoch, args.epochs):
            train_epoch(training, experiment, args, epoch, stop)
            if stop():
                raise Interrupted(stop.signum, f"after epoch {epoch + 1} (checkpoint saved in "
                                               f"{training.run_dir.path})")
    if training.start_epoch == args.epochs:  # finished before: refresh its files
        write_run_files(training.run_dir, training.config, training.history, training.best_val,
                        experiment.name)
    metrics = final_metrics(training.history, training.best_val)
    print_on_main(f"done {experiment.name}: accuracy train {metrics['train_accuracy']:.4f} "
                  f"val {metrics['val_accuracy']:.4f} test {metrics['test_accuracy']:.4f} in "
                  f"{format_seconds(metrics['train_seconds'])} -> {training.run_dir.path}")
    return metrics


def train_epoch(training, experiment, args, epoch, stop):
    """One epoch: train, check, evaluate, then save the checkpoint and every run file."""
    train_loader, val_loader, test_loader = training.loaders
    train_loader.set_epoch(epoch)
    start, training.partial = training.partial, None
    state = train_one_epoch(training.compiled, train_loader, training.optimizer,
                            training.scheduler, training.scaler, device=training.device,
                            precision=training.precision, label_smoothing=args.label_smoothing,
                            progress=show_progress(args) and distributed.is_main_process(),
                            should_stop=stop, start=start,
                            description=f"{experiment.name} epoch {epoch + 1}/{args.epochs}")
    state = state.summed_over_ranks()
    if state.first_bad_step >= 0:
        raise UserError(f"training diverged in epoch {epoch + 1} at step {state.first_bad_step + 1}"
                        f" (the loss is not finite): lower --lr (now {args.lr}); the last good "
                        f"checkpoint is kept in {training.run_dir.path}")
    if not state.finished:
        training.save(epoch, partial=state)
        raise Interrupted(stop.signum, f"in epoch {epoch + 1} after step {state.step} of "
                                       f"{len(train_loader)} (checkpoint saved in "
                                       f"{training.run_dir.path})")
    evaluate_started = time.perf_counter()
    recompute_batchnorm_statistics(training.model, train_loader, device=training.device,
                                   precision=training.precision, images=BATCHNORM_IMAGES)
    distributed.sync_buffers(training.model)  # one model on every rank, as the checkpoint
    val = (evaluate(training.evaluator, val_loader, device=training.device,
                    precision=training.precision) if val_loader is not None
           else {"loss": float("nan"), "accuracy": float("nan"), "images": 0})
    test = evaluate(training.evaluator, test_loader, device=training.device,
                    precision=training.precision)
    training.history.append({
        "epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"],
        "train_loss": state.loss, "train_accuracy": state.accuracy,
        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
        "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "seconds": state.seconds + time.perf_counter() - evaluate_started,
        "images_per_second": state.seen / state.seconds,
        "val_images": val["images"], "test_images": test["images"],
    })
    if val_loader is not None:  # (an empty share of a tiny split is still a loader)
        training.best_val = max(training.best_val, val["accuracy"])
    training.save(epoch + 1)
    write_run_files(training.run_dir, training.config, training.history, training.best_val,
                    experiment.name)
    print_on_main(epoch_line(training.history[-1], args.epochs))


def write_run_files(run_dir, config, history, best_val, title):
    """config.json, history.csv, metrics.json and curves.png (rank 0 only)."""
    if not distributed.is_main_process():
        return
    run_dir.write_config(config)
    run_dir.write_history(history)
    run_dir.write_metrics(final_metrics(history, best_val))
    plot_curves(history, run_dir.path / "curves.png", title=title)


def epoch_line(row, epochs):
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4f}  "
            f"train {row['train_loss']:.3f} / {100 * row['train_accuracy']:.2f}%  "
            f"val {row['val_loss']:.3f} / {100 * row['val_accuracy']:.2f}%  "
            f"test {row['test_loss']:.3f} / {100 * row['test_accuracy']:.2f}%  "
            f"{row['images_per_second']:.0f} img/s")


def format_seconds(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
