"""Part (a): the hand-written CIFAR ResNet-18 trained from scratch on CIFAR-10.

The report: 50 epochs, 87.35% test accuracy. Ours: the same network and epochs with
kuangliu/pytorch-cifar's recipe (SGD, momentum 0.9, weight decay 5e-4, crop + flip) made
one-cycle with Nesterov momentum and label smoothing 0.1 (docs/recipe.md: the recipe and why).

    python train_scratch.py                       # CIFAR-10 -> results/scratch/cifar10/seed0/
    python train_scratch.py --dataset synthetic --epochs 2 --width 16 --batch-size 64  # offline
    python train_scratch.py --seeds 0 1 2         # one run per seed, then mean ± std
"""
from pathlib import Path

from engine import distributed
from engine.augment import CropFlip
from engine.cli import Parser, add_common_args, dropout_rate, positive_int
from engine.configurations import RECIPES
from engine.errors import UserError, exits_cleanly_on_user_error
from engine.seeds import seeds_to_run
from engine.studies import write_study
from engine.training import Run, load_data, run_args, split_data, train_all
from models.resnet import DROPOUT_PLACES


def get_args_parser():
    parser = Parser(__doc__)
    add_common_args(parser, **RECIPES["scratch"],
                    out="the study folder: the run goes to DIR/<dataset>/seed<S>/ and "
                        "summary.md to DIR (default: results/scratch)")
    model = parser.add_argument_group("model")
    model.add_argument("--width", type=positive_int, default=64,
                       help="channels of the first stage (64 is ResNet-18; smaller for quick tests)")
    model.add_argument("--dropout", type=dropout_rate, default=0.0, help="dropout rate")
    model.add_argument("--dropout-at", nargs="+", choices=DROPOUT_PLACES, default=None,
                       help="where dropout goes, with --dropout > 0 (default: classifier)")
    return parser


@exits_cleanly_on_user_error
def main(args):
    if args.dropout_at and not args.dropout:
        raise UserError("--dropout-at places dropout but --dropout is 0: pass --dropout RATE")
    args.dropout_at = args.dropout_at or ["classifier"]  # what finished runs hold
    study = Path(args.out or Path("results") / "scratch")
    train, test = load_data(args)
    runs = []
    for seed in seeds_to_run(args):
        seed_args = run_args(args, seed)
        spec = {"name": "resnet18_cifar", "num_classes": len(train.classes), "width": args.width,
                "dropout": args.dropout, "dropout_at": list(args.dropout_at)}
        runs.append(Run(args.dataset, seed_args, study, spec, split_data(seed_args, train, test),
                        train_augment=CropFlip()))
    train_all(runs, args.shard)
    if distributed.is_main_process():
        write_study("scratch", study, planned=runs)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
