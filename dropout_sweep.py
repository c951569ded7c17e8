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
from engine.plots import plot_lines, plot_runs
from engine.seeds import comparison_note, seeds_note, seeds_to_run, summarise_seeds
from engine.seeds import histories_by_name, in_points, with_seeds
from engine.summary import points, write_summary
from engine.training import Run, load_data, run_args, split_data, train_all
from models.resnet import DROPOUT_PLACES

DEFAULT_RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
# The one rate-0 run: every placement's line starts there, every rate is compared with it.
RATE_ZERO = "rate0.0"
STUDY_FLAGS = ("rates", "dropout_at")  # they choose the sweep's runs


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


def make_runs(args, splits, study):
    runs = []
    for name, place, rate in planned_runs(sorted(args.rates), args.dropout_at):
        spec = {"name": "resnet18_cifar", "num_classes": len(splits.classes), "width": args.width,
                "dropout": rate, "dropout_at": place.split("+") if rate > 0 else ["classifier"]}
        runs.append(Run(name, run_args(args, args.seed, STUDY_FLAGS, dropout=rate, dropout_at=place),
                        study, spec, splits, train_augment=CropFlip(),
                        extra_config={"study": "dropout"}))
    return runs


def run_rows(runs):
    """One row per run (rate, placement and seed)."""
    rows = []
    for run in runs:
        metrics, own = run.metrics, run.args
        rows.append({"run": run.name, "placement": own.dropout_at, "rate": own.dropout,
                     **{key: metrics[key] for key in ("train_accuracy", "val_accuracy",
                                                      "test_accuracy", "test_loss")},
                     "gap": metrics["train_accuracy"] - metrics["test_accuracy"],
                     "best_val_accuracy": metrics["best_val_accuracy"], "epochs": metrics["epochs"],
                     "seconds_per_epoch": metrics["train_seconds"] / metrics["epochs"]})
    return rows


MEASURED = ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss", "gap",
            "best_val_accuracy", "seconds_per_epoch")


COLUMNS = [("run", "run", None), ("placement", "placement", None), ("rate", "rate", "{:.1f}"),
           ("seeds", "seeds", None),
           ("train_accuracy", "train acc", "{:.2%}"), ("val_accuracy", "val acc", "{:.2%}"),
           ("test_accuracy", "test acc", "{:.2%}"), ("vs_rate0", "test acc vs rate 0", None),
           ("test_loss", "test loss", "{:.3f}"),
           ("gap", "train − test", points(2)), ("best_val_accuracy", "best val acc", "{:.2%}"),
           ("epochs", "epochs", None), ("seconds_per_epoch", "s/epoch", "{:.1f}")]


def lines_per_placement(rows, placements, key):
    """{placement: (rates, values, stds)} in percent, each line starting from the shared
    rate-0 run; stds are the spread over seeds (None with one seed)."""
    zero = [row for row in rows if row["rate"] == 0.0]
    lines = {}
    for place in placements:
        own = zero + [row for row in rows if row["placement"] == place]
        lines[place] = ([row["rate"] for row in own], [in_points(row[key]) for row in own],
                        [in_points(row[f"{key}_std"]) for row in own])
    return lines


def write_outputs(runs, args, study_dir):
    rows = summarise_seeds(run_rows(runs), "run", MEASURED, {RATE_ZERO: "vs_rate0"})
    histories = histories_by_name(runs)  # every seed's history, per run name
    placements = {run.name: run.args.dropout_at for run in runs}
    zero = {name: runs for name, runs in histories.items() if name == RATE_ZERO}
    for place in args.dropout_at:
        own = {**zero, **{name: runs for name, runs in histories.items()
                          if placements[name] == place}}
        plot_runs(own, ["test_accuracy", "test_loss"], study_dir / f"curves_{place}.png",
                  title=f"dropout at {place}: {args.dataset}, {args.epochs} epochs")
    plot_lines([("final test accuracy (%)", lines_per_placement(rows, args.dropout_at, "test_accuracy")),
                ("train − test accuracy (points)", lines_per_placement(rows, args.dropout_at, "gap"))],
               "dropout rate", study_dir / "rate_summary.png",
               title=with_seeds(f"dropout sweep: final epoch ({args.dataset}, {args.epochs} epochs)",
                                args))
    write_summary(study_dir, rows, COLUMNS, "Dropout sweep", notes=[
        "The report shows this sweep only as plots (80 epochs, placement unstated); it gives no "
        "numbers to compare with.",
        "Accuracies are the final epoch's; the test set is never used to choose anything.",
        seeds_note(seeds_to_run(args)),
        comparison_note("test acc vs rate 0 (the one rate-0 run, shared by every placement)"),
        "Plots: curves_<placement>.png (test accuracy and loss per epoch, one curve per rate), "
        "rate_summary.png (final test accuracy and generalisation gap against the rate; error "
        "bars: std over seeds)."])


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "dropout")
    train, test = load_data(args)
    runs = []
    for seed in seeds_to_run(args):
        seed_args = run_args(args, seed)
        runs += make_runs(seed_args, split_data(seed_args, train, test), study)
    train_all(runs)
    if distributed.is_main_process():
        write_outputs(runs, args, study)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
