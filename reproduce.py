"""Reproduce the whole report in one command: parts (a), (b), (c) augmentation, (c) dropout,
(d), then REPORT.md, into one results folder: the report's settings where it states them,
ours where it does not (engine/configurations.py OUR_CHOICES).

It prints the plan first: every run with its epochs and images, and the time it should take
on this device, from the measured speed of each model here (a few timed steps). Rerun, it
continues where it stopped: finished runs are reused, an interrupted one resumed.

    python reproduce.py                          # the whole study on CIFAR-10 -> results/REPORT.md
    python reproduce.py --dry-run                # the plan only (no dataset needed)
    python reproduce.py --quick                  # the same runs, fewer epochs -> results/quick/
    python reproduce.py --parts scratch activations report --seeds 0 1 2
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

import augment_study
import dropout_sweep
import report
import train_scratch
import train_transfer
import visualize_activations
from engine import timing
from engine.cli import Parser, nonnegative_int, positive_int
from engine.device import PRECISIONS, autocast, resolve_device, resolve_precision
from engine.errors import UserError, exits_cleanly_on_user_error
from engine.report import REPORT_NAME
from engine.results import read_run
from engine.seeds import seeds_to_run
from engine.shards import Shard, deal, lock_beside, locked, shard
from engine.studies import PARTS as STUDY_PARTS
from engine.sources import SOURCES, load_source
from engine.training import BATCHNORM_IMAGES, format_seconds, validation_size
from models import build_model

# Each training part: its script and the flags that make it the report's study.
TRAINING = {
    "scratch": (train_scratch, []),
    "transfer": (train_transfer, ["--augment", "none"]),  # its runs show no augmentation
    "augment": (augment_study, ["--arms", "report"]),     # none and the report's nine
    # "after different layers": each placement the sweep has
    "dropout": (dropout_sweep, ["--dropout-at", "classifier", "stage", "block"]),
}
PARTS = [*STUDY_PARTS, "report"]  # the study's order, then REPORT.md
# --quick: the same runs with fewer epochs (and images for the dropout sweep), ~10 minutes
# on one GPU at the 25,000 img/s target of benchmarks/README.md (a target, not measured).
QUICK = {"scratch": ["--epochs", "15"], "transfer": ["--epochs", "10"],
         "augment": ["--epochs", "20"], "dropout": ["--epochs", "10", "--subset", "20000"]}
# Flags handed to the parts when given (else each part keeps its recipe); some only to some.
SHARED = ("--dataset", "--data-dir", "--device", "--precision", "--seeds", "--epochs",
          "--subset", "--val-size", "--batch-size", "--width", "--weights", "--compile",
          "--deterministic", "--no-progress")
ONLY = {"--width": ("scratch", "augment", "dropout"), "--weights": ("transfer",)}
# Training and test images of datasets with fixed splits: a --dry-run needs no download.
SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "synthetic": (5000, 1000)}
TIMED_STEPS = 3
CPU_TIMING_BATCHES = (8, 32)


def get_args_parser():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="parts to run, in the study's order (default: all)")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="the one results folder (default: results, or results/quick)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--quick", action="store_true",
                        help="a first look: the same runs with fewer epochs and images")
    shared = parser.add_argument_group("passed to every part that has the flag "
                                       "(default: each part's own)")
    shared.add_argument("--dataset", choices=SOURCES)
    shared.add_argument("--data-dir")
    shared.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    shared.add_argument("--precision", choices=PRECISIONS)
    shared.add_argument("--seeds", type=nonnegative_int, nargs="+")
    for flag in ("--epochs", "--subset", "--val-size", "--batch-size"):
        shared.add_argument(flag, type=positive_int if flag != "--val-size" else nonnegative_int,
                            help="the same for every part (overrides its recipe)")
    shared.add_argument("--width", type=positive_int, help="first-stage channels (not part (b))")
    shared.add_argument("--weights", help="part (b)'s pretrained weights: imagenet or PATH")
    for flag in ("--compile", "--deterministic", "--no-progress"):
        shared.add_argument(flag, action="store_true")
    spread = parser.add_argument_group(
        "many GPUs or machines: each run on one GPU (docs/scale.md)")
    spread.add_argument("--shard", type=shard, metavar="K/N",
                        help="run only this process's share: the study's runs in plan order, run "
                             "i to shard i mod N; a run another process holds is skipped; each "
                             "shard rewrites the summaries and REPORT.md as it ends")
    spread.add_argument("--local-gpus", type=positive_int, metavar="N",
                        help="N shards at once on this machine, shard k on GPU k "
                             "(CUDA_VISIBLE_DEVICES), logs in RESULTS/shards/")
    spread.add_argument("--slurm", metavar="PARTITION",
                        help="submit the study to Slurm as one job array of --jobs shards "
                             "through submitit (pip install submitit); rerun to continue it")
    spread.add_argument("--jobs", type=positive_int, default=8, help="shards for --slurm")
    spread.add_argument("--gpus-per-job", type=positive_int, default=1,
                        help="GPUs per --slurm job (more only with torchrun inside)")
    spread.add_argument("--timeout", type=positive_int, default=24 * 60, metavar="MIN",
                        help="time limit of each --slurm job in minutes")
    return parser


# --- the parts' own arguments ----------------------------------------------------------------

def passed_through(key, args):
    argv = []
    for flag in SHARED:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value in (None, False) or key not in ONLY.get(flag, TRAINING):
            continue
        values = value if isinstance(value, list) else [] if value is True else [value]
        argv += [flag, *map(str, values)]
    return argv


@cache
def dataset_sizes(dataset, data_dir):
    """(training, test) images: known for fixed datasets, else read from the data."""
    if dataset in SIZES:
        return SIZES[dataset]
    train, test = load_source(dataset, data_dir)
    return len(train), len(test)


def images(args):
    """(training, evaluated) images per epoch of a part's run."""
    train, test = dataset_sizes(args.dataset, args.data_dir)
    val = validation_size(args, train)
    return min(args.subset or train, train - val), val + test


def part_argv(key, args, results):
    """A training part's command line: the report's flags, --quick's, the shared ones."""
    argv = [*TRAINING[key][1], *(QUICK[key] if args.quick else []), *passed_through(key, args),
            "--out", str(results / key)]
    parsed = parse(key, argv)
    train, _ = images(parsed)
    if parsed.subset is not None and parsed.subset > train:  # a small dataset: all it has
        argv += ["--subset", str(train)]
    return argv


def parse(key, argv):
    return TRAINING[key][0].get_args_parser().parse_args(argv)


def part_args(key, args, results):
    return parse(key, part_argv(key, args, results))


def run_names(key, args):
    if key == "scratch":
        return [args.dataset]
    if key == "transfer":
        return args.configs
    if key == "augment":
        return augment_study.arms_to_run(args.arms)
    return [name for name, _, _ in dropout_sweep.planned_runs(sorted(set(args.rates)),
                                                              args.dropout_at)]


# --- the plan and its time -------------------------------------------------------------------

@dataclass
class Planned:
    path: Path
    epochs: int          # planned
    left: int            # epochs still to train
    train_images: int
    eval_images: int
    seconds: float       # estimated for the epochs left
    speed: float         # its model's training images/s measured here


def seconds_per_step(step, device):
    step()  # warm-up: allocations, cuDNN's choice of algorithms
    return timing.seconds(lambda: [step() for _ in range(TIMED_STEPS)], device) / TIMED_STEPS


@cache
def step_seconds(spec_json, batch, size, device, precision):
    """(training, evaluation) seconds per step of a model on `batch` random images."""
    model = build_model(json.loads(spec_json)).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)

    def train_step():
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step():
        with autocast(device, precision):
            model(images)

    model.train()
    trained = seconds_per_step(train_step, device)
    model.eval()
    return trained, seconds_per_step(eval_step, device)


def at_batch(batches, seconds, batch):
    """Seconds per step at `batch` on the line through the timed (batch, seconds): a step
    also has a cost that does not grow with the batch (the optimizer, weight layouts)."""
    if len(batches) == 1:
        return seconds[0]
    (small, large), (fast, slow) = batches, seconds
    per_image = max((slow - fast) / (large - small), slow / large / 2)  # against timing noise
    return fast + per_image * (batch - small)


def speed(key, name, args):
    """A run's model's (training, evaluation) images/s on its device and batch."""
    device = resolve_device(args.device)
    if key == "transfer":  # as it trains: the CIFAR stem's 16x the pixels, frozen children
        # run forward only (no gradient through them), its head
        spec, size = train_transfer.model_spec(name, args, 10), args.image_size
    else:
        spec, size = {"name": "resnet18_cifar", "num_classes": 10, "width": args.width}, 32
    # A CPU takes minutes for a step of the real batch: two small ones, extrapolated.
    batches = (args.batch_size,) if device.type == "cuda" else CPU_TIMING_BATCHES
    timed = [step_seconds(json.dumps(spec), batch, size, device,
                          resolve_precision(args.precision, device)) for batch in batches]
    train, evaluate = zip(*timed)
    return tuple(args.batch_size / at_batch(batches, seconds, args.batch_size)
                 for seconds in (train, evaluate))


def share(plans, shard):
    """Each part's plan cut to this shard, the parts dealt as one plan (engine.shards):
    {key: (argv with --shard, parsed args, this shard's runs)}."""
    shared, offset = {}, 0
    for key, (argv, part, planned) in plans.items():
        own = shard.shifted(offset)
        part.shard, offset = own, offset + len(planned)
        shared[key] = ([*argv, "--shard", str(own)], part, deal(planned, own))
    return shared


def plan_part(key, args):
    """Every run of a part: what it trains and how long its epochs left should take."""
    train, evaluated = images(args)
    planned = []
    for seed in seeds_to_run(args):
        for name in run_names(key, args):
            train_speed, eval_speed = speed(key, name, args)
            epoch = train / train_speed + (evaluated + BATCHNORM_IMAGES) / eval_speed
            path = Path(args.out) / name / f"seed{seed}"
            left = max(0, args.epochs - read_run(path).epochs_done)
            planned.append(Planned(path, args.epochs, left, train, evaluated, left * epoch,
                                   train_speed))
    return planned


def activation_targets(args, results):
    """(run, output folder) of part (d): the report drew its transfer-learned network; ours
    also draws the one trained from scratch."""
    seed = args.seeds[0] if args.seeds else 0
    runs = {"scratch": results / "scratch" / (args.dataset or "cifar10") / f"seed{seed}",
            "transfer": results / "transfer" / "pretrained" / f"seed{seed}"}
    targets = [(run, results / "activations" / f"{key}_{run.parent.name}_seed{seed}")
               for key, run in runs.items() if key in args.parts or run.is_dir()]
    if not targets:
        raise UserError("part (d) draws a trained network: add scratch or transfer to --parts "
                        "(or train one into --results first)")
    return targets


def print_plan(plans, targets, args, results):
    device = resolve_device(args.device or "auto")
    print(f"plan{' (--quick)' if args.quick else ''}"
          f"{f' (shard {args.shard})' if args.shard else ''}: {', '.join(args.parts)} -> {results}/ "
          f"on {device}; times estimated from each model's speed measured now "
          f"({TIMED_STEPS} timed steps; model compute only, not augmentation or data handling)")
    total = 0.0
    for key, (argv, _, planned) in plans.items():
        seconds = sum(run.seconds for run in planned)
        total += seconds
        print(f"\n{key}: python {TRAINING[key][0].__name__}.py {' '.join(argv)}")
        for run in planned:
            state = ("done" if run.left == 0 else f"~{format_seconds(run.seconds)}"
                     + (f" ({run.epochs - run.left} done)" if run.left < run.epochs else ""))
            print(f"  {run.path.relative_to(results)}: {run.epochs} epochs x {run.train_images:,} "
                  f"images (+{run.eval_images:,} evaluated) at {run.speed:,.0f} img/s  {state}")
        print(f"  {key} total ~{format_seconds(seconds)} ({len(planned)} run"
              f"{'' if len(planned) == 1 else 's'})")
    for run, out in targets:
        print(f"\nactivations: {run.relative_to(results)} -> {out.relative_to(results)} (seconds)")
    if "report" in args.parts:
        print(f"\nreport: {results / REPORT_NAME}")
    print(f"\ntotal ~{format_seconds(total)} on {device}")


# --- running it ------------------------------------------------------------------------------

def scaled_eta(spent, estimated, left):
    """The estimate for what is left, scaled by how far off the estimates were so far."""
    return left * (spent / estimated if estimated else 1.0)


def draw(run, out, sharded):
    if (out / "predictions.json").is_file():
        print(f"activations: {out} finished earlier, reusing")
        return
    if sharded and not read_run(run).finished:  # another shard's run: its own end draws it
        print(f"activations: {run} is not finished yet: drawn by the shard that finishes it")
        return
    parser = visualize_activations.get_args_parser()
    visualize_activations.main(parser.parse_args(["--run", str(run), "--out", str(out),
                                                  "--overwrite"]))  # replaces a partial one


@exits_cleanly_on_user_error
def main(args):
    results = Path(args.results or ("results/quick" if args.quick else "results"))
    argvs = {key: part_argv(key, args, results) for key in TRAINING if key in args.parts}
    targets = activation_targets(args, results) if "activations" in args.parts else []
    plans = {key: (argv, parse(key, argv)) for key, argv in argvs.items()}
    plans = {key: (argv, part, plan_part(key, part)) for key, (argv, part) in plans.items()}
    if args.shard:
        plans = share(plans, args.shard)
    print_plan(plans, targets, args, results)
    if args.dry_run:
        return plans
    if args.local_gpus or args.slurm:
        return (run_local_shards if args.local_gpus else submit_to_slurm)(args, results)
    spent = estimated = 0.0
    left = sum(run.seconds for *_, planned in plans.values() for run in planned)
    for key, (_, part, planned) in plans.items():
        print(f"\n=== {key} ===")
        took = sum(run.seconds for run in TRAINING[key][0].main(part))  # as train_all timed them
        planned_seconds = sum(run.seconds for run in planned)
        spent, estimated, left = spent + took, estimated + planned_seconds, left - planned_seconds
        print(f"{key} took {format_seconds(took)}; the parts left: ETA "
              f"{format_seconds(scaled_eta(spent, estimated, left))}")
    for run, out in targets:
        with locked(lock_beside(out)) as holder:
            print(f"activations: {out} is being drawn by {holder}") if holder else draw(
                run, out, sharded=args.shard is not None)
    if "report" in args.parts:
        with locked(results / ".report.lock", wait=True):  # the last shard to end reads all
            report.main(report.get_args_parser().parse_args(["--results", str(results)]))
    return plans


# --- shards at once ----------------------------------------------------------------------------

def command_line(args, **changes):
    """The flags that give `args` (with `changes`) to this parser: a shard's command line."""
    values, argv = {**vars(args), **changes}, []
    for action in get_args_parser()._actions:
        value = values.get(action.dest)
        if not action.option_strings or value in (None, False) or value == action.default:
            continue
        argv += [action.option_strings[0]] + (
            [] if value is True else list(map(str, value)) if isinstance(value, list) else [str(value)])
    return argv


def shard_argv(args, index, count):
    return command_line(args, local_gpus=None, slurm=None, shard=Shard(index, count))


def run_local_shards(args, results):
    """args.local_gpus shards as processes at once, shard k on GPU k; waits for them all."""
    logs = results / "shards"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(args.local_gpus):
        log = logs / f"shard{index}.log"
        print(f"shard {index}/{args.local_gpus} on GPU {index}: log {log}")
        with open(log, "w") as handle:
            processes.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *shard_argv(args, index, args.local_gpus)],
                stdout=handle, stderr=subprocess.STDOUT,
                env={**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}))
    failed = [index for index, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise UserError(f"shards {', '.join(map(str, failed))} failed: see {logs}/shard<k>.log, "
                        f"then rerun the same command (finished runs are reused)")
    print(f"all {args.local_gpus} shards finished: {results / REPORT_NAME}")


def run_shard(argv):
    """One Slurm job's work: this command line's shard (submitit pickles the call)."""
    return main(get_args_parser().parse_args(argv)) is not None


def submit_to_slurm(args, results, cluster="slurm"):
    """The study as one job array of args.jobs shards, through submitit (cluster "local" or
    "debug" runs the same jobs on this machine). Prints the job ids and how to follow them."""
    try:
        import submitit
    except ImportError:
        raise UserError("--slurm needs the submitit package: pip install submitit") from None
    executor = submitit.AutoExecutor(folder=results / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(timeout_min=args.timeout, gpus_per_node=args.gpus_per_job,
                               tasks_per_node=1, name="reproduce",
                               slurm_partition=args.slurm, slurm_array_parallelism=args.jobs)
    jobs = executor.map_array(run_shard, [shard_argv(args, index, args.jobs)
                                          for index in range(args.jobs)])
    print(f"submitted {len(jobs)} jobs: {' '.join(job.job_id for job in jobs)}")
    print(f"follow them with: squeue -j {jobs[0].job_id.split('_')[0]}; logs in "
          f"{results / 'slurm'}/<job id>/; rerun this command to continue the study")
    return jobs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
