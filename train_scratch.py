"""Part (a): the hand-written CIFAR ResNet-18 trained from scratch on CIFAR-10.

The report trained 50 epochs and reached 87.35% test accuracy. The default recipe here is
the well-tested one for this network (kuangliu/pytorch-cifar's SGD + momentum 0.9 + weight
decay 5e-4 + padded-crop/flip, 95.4% after 200 cosine epochs), shortened to 50 epochs with
a one-cycle schedule, Nesterov momentum, label smoothing 0.1 and batch 512 (peak lr 0.2),
choices from "Bag of Tricks for Image Classification" (He et al. 2019). Expected: about
95% test accuracy on one GPU; see README.md for what has and has not been measured.

    python train_scratch.py                       # CIFAR-10, downloaded to data/
    python train_scratch.py --dataset synthetic --epochs 2 --width 16   # offline smoke run
    python train_scratch.py --seeds 0 1 2   # results/scratch/cifar10/seed<S>/ + mean ± std
"""
from pathlib import Path

from engine.augment import CropFlip
from engine.cli import Parser, add_common_args, fraction, positive_int
from engine.errors import exits_cleanly_on_user_error
from engine.experiment import Experiment, load_splits, run_training
from engine.seeds import seed_folder, seeds_note, seeds_to_run, summarise_seeds
from engine.study import run_flags, run_seeded_study
from engine.summary import write_summary
from models import build_model
from models.resnet import DROPOUT_PLACES

RECIPE = dict(
    epochs=50,             # as the report
    batch_size=512,        # images per step
    lr=0.2,                # peak of the one-cycle schedule at batch 512; at another batch B
    lr_reference_batch=512,  # 0.2 x sqrt(B / 512) (engine.cli.resolve_lr): 0.1 at 128
    weight_decay=5e-4,     # L2 on every parameter, as kuangliu/pytorch-cifar
    label_smoothing=0.1,   # softens targets; ~+0.3-0.5% on CIFAR (He et al. 2019)
)


def get_args_parser():
    parser = Parser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, **RECIPE)
    model = parser.add_argument_group("model")
    model.add_argument("--width", type=positive_int, default=64,
                       help="channels of the first stage (64 is ResNet-18; smaller for quick tests)")
    model.add_argument("--dropout", type=fraction, default=0.0, help="dropout rate")
    model.add_argument("--dropout-at", nargs="+", choices=DROPOUT_PLACES, default=["classifier"],
                       help="where dropout goes (with --dropout > 0)")
    return parser


def model_spec(args, num_classes):
    return {"name": "resnet18_cifar", "num_classes": num_classes, "width": args.width,
            "dropout": args.dropout, "dropout_at": list(args.dropout_at)}


def make_experiment(args, splits, out, flags):
    spec = model_spec(args, len(splits.classes))
    return Experiment(name="scratch", flags=flags, out=out,
                      make_model=lambda: build_model(spec), model_spec=spec,
                      splits=splits, train_augment=CropFlip())


MEASURED = ("train_accuracy", "val_accuracy", "test_accuracy", "best_val_accuracy",
            "train_seconds")
COLUMNS = [("run", "run", None), ("seeds", "seeds", None),
           ("train_accuracy", "train acc", "{:.2%}"), ("val_accuracy", "val acc", "{:.2%}"),
           ("test_accuracy", "test acc", "{:.2%}"), ("best_val_accuracy", "best val acc", "{:.2%}"),
           ("epochs", "epochs", None), ("train_seconds", "train seconds", "{:.0f}")]


def write_seed_summary(results, args, out):
    """summary.csv / summary.md of the seeds in --out: one line, mean ± std over seeds."""
    runs = [{"run": "scratch", **result.metrics} for result in results]
    write_summary(out, summarise_seeds(runs, "run", MEASURED), COLUMNS,
                  "ResNet-18 from scratch over seeds (part (a))", notes=[
                      f"Runs: {', '.join(result.experiment.out.name for result in results)} "
                      f"(each a run directory in this folder); the final epoch of {args.epochs}.",
                      seeds_note(seeds_to_run(args))])


def main_over_seeds(args):
    """--seeds: --out is a folder of seed<S>/ runs, run (or continued) as a study."""
    out = Path(args.out or Path("results") / "scratch" / args.dataset)
    return run_seeded_study(
        args, lambda seed_args, splits: [make_experiment(
            seed_args, splits, out / seed_folder(seed_args.seed), run_flags(seed_args, ()))],
        lambda results, _: write_seed_summary(results, args, out), out)


@exits_cleanly_on_user_error
def main(args):
    if args.seeds is not None:
        return main_over_seeds(args)
    splits = load_splits(args)
    out = Path(args.out or Path("results") / "scratch" / f"{args.dataset}_seed{args.seed}")
    return run_training(make_experiment(args, splits, out, vars(args)), args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
