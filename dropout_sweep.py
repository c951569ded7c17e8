"""Part (c): the dropout sweep. One hand-written ResNet-18 per dropout rate (and placement).

The report varied the rate from 0 to 0.5 in steps of 0.1 for 80 epochs, with dropout
"after different layers". Here the placement is explicit (--dropout-at, one study line per
placement; join places with "+" to combine them):
  classifier  before the final linear layer (nn.Dropout on the pooled features)
  stage       after each residual stage, as channel dropout (nn.Dropout2d)
  block       inside each BasicBlock, between its two convolutions (nn.Dropout2d)
Rate 0 is the same network for every placement, so it is trained once and shared.

    python dropout_sweep.py                                  # 3 placements x 5 rates + rate 0, 80 epochs
    python dropout_sweep.py --dropout-at classifier block+stage --epochs 30
    python dropout_sweep.py --rates 0 0.2 0.4 --seeds 0 1 2   # mean ± std, each rate vs 0 tested
Rerunning the command after an interruption continues it (finished rates are reused).
"""
from pathlib import Path

from engine import distributed
from engine.augment import CropFlip
from engine.cli import Parser, add_common_args, dropout_rate, positive_int
from engine.configurations import RECIPES
from engine.errors import exits_cleanly_on_user_error
from engine.seeds import seeds_to_run
from engine.studies import write_study
from engine.training import Run, load_data, run_args, split_data, train_all
from models.resnet import DROPOUT_PLACES

DEFAULT_RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
# The one rate-0 run: every placement's line starts there, every rate is compared with it.
RATE_ZERO = "rate0.0"


def placement(text):
    places = text.split("+")
    unknown = [place for place in places if place not in DROPOUT_PLACES]
    if unknown or len(set(places)) != len(places):
        raise ValueError(text)
    return "+".join(place for place in DROPOUT_PLACES if place in places)  # canonical order


placement.__name__ = "placement (classifier, stage, block, or several joined by +)"


def get_args_parser():
    parser = Parser(__doc__)
    add_common_args(parser, **RECIPES["dropout"],
                    out="the study folder: one run per rate and placement in "
                        "DIR/<run>/seed<S>/, summary and plots in DIR (default: "
                        "results/dropout)")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--rates", type=dropout_rate, nargs="+", default=DEFAULT_RATES,
                       help="dropout rates to train (default 0.0 0.1 ... 0.5)")
    sweep.add_argument("--dropout-at", type=placement, nargs="+", default=list(DROPOUT_PLACES),
                       help="placements, one study line each: classifier, stage, block, or "
                            "several joined by + (e.g. block+classifier); default: each of the "
                            "three (the report: \"after different layers\")")
    sweep.add_argument("--width", type=positive_int, default=64, help="first-stage channels (64: ResNet-18)")
    return parser


def planned_runs(rates, placements):
    """(run name, placement, rate): rate 0 once, shared by every placement."""
    runs = [(RATE_ZERO, "none", 0.0)] if 0.0 in rates else []
    for place in placements:
        runs += [(f"{place}_rate{rate:.1f}", place, rate) for rate in rates if rate > 0]
    return runs


def make_runs(args, rates, splits, study):
    runs = []
    for name, place, rate in planned_runs(sorted(rates), args.dropout_at):
        spec = {"name": "resnet18_cifar", "num_classes": len(splits.classes), "width": args.width,
                "dropout": rate, "dropout_at": place.split("+") if rate > 0 else ["classifier"]}
        runs.append(Run(name, run_args(args, args.seed, dropout=rate, dropout_at=place),
                        study, spec, splits, train_augment=CropFlip(),
                        extra_config={"study": "dropout"}))
    return runs


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "dropout")
    train, test = load_data(args)
    runs = []
    for seed in seeds_to_run(args):
        seed_args = run_args(args, seed)
        runs += make_runs(seed_args, args.rates, split_data(seed_args, train, test), study)
    train_all(runs, args.shard)
    if distributed.is_main_process():
        write_study("dropout", study, planned=runs)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
