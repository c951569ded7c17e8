"""Part (b): transfer learning from ImageNet with torchvision's ResNet-18.

The report's four configurations, plus one it did not try, each a run under results/transfer/:
  scratch                random init, all layers trainable, linear head   (report: 73.8% test)
  pretrained             ImageNet weights, all trainable, linear head      (report: 80.4%)
  frozen-mlp             ImageNet, first 7 children frozen, config 1 head  (report: 79.0%)
  frozen-deep            ImageNet, first 7 children frozen, config 2 head  (report: 79.2%)
  pretrained-cifar-stem  ImageNet, 3x3 stride-1 conv1 and no max-pool, linear head
Why the numbers sit far below the from-scratch CIFAR ResNet (part (a)): ImageNet's stem
(7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 1x1 by layer4. The CIFAR stem, or
--image-size 224 (upsampled on the device, batch by batch), gives the features room.

    python train_transfer.py                          # all five, 30 epochs, 32x32 (as the report)
    python train_transfer.py --configs scratch pretrained --image-size 224 --epochs 10
    python train_transfer.py --seeds 0 1 2            # mean ± std; each vs scratch, tested
"""
from pathlib import Path

from engine import distributed
from engine.augment import CropFlip
from engine.cli import Parser, add_common_args, positive_float, positive_int
from engine.configurations import REPORT_DATASET, RECIPES, TRANSFER, TRANSFER_COMPARISONS
from engine.errors import exits_cleanly_on_user_error
from engine.loader import IMAGENET_STATS
from engine.plots import plot_runs
from engine.pretrained import model_from_spec
from engine.seeds import comparison_note, seeds_note, seeds_to_run, summarise_seeds
from engine.seeds import histories_by_name
from engine.summary import points, write_summary
from engine.training import Run, load_data, run_args, split_data, train_all
from models import build_model
from models.transfer import count_parameters, parameter_groups


def get_args_parser():
    parser = Parser(__doc__)
    add_common_args(parser, **RECIPES["transfer"],
                    out="the study folder: one run per configuration in "
                        "DIR/<configuration>/seed<S>/, summary and comparison plots in DIR "
                        "(default: results/transfer)")
    transfer = parser.add_argument_group("transfer")
    transfer.add_argument("--configs", nargs="+", choices=list(TRANSFER),
                          default=list(TRANSFER), help="configurations to run (default: all)")
    transfer.add_argument("--weights", default="imagenet",
                          help="pretrained weights: imagenet (torchvision's IMAGENET1K_V1, through "
                               "the torch hub cache) or PATH of a resnet18 state dict")
    transfer.add_argument("--image-size", type=positive_int, default=32,
                          help="model input size; larger sizes upsample on the device (the report: 32)")
    transfer.add_argument("--augment", choices=["none", "crop-flip"], default="none",
                          help="training augmentation (default none, as the report: its runs reach "
                               "98.6-99.5%% train vs 73.9-81.1%% val accuracy)")
    transfer.add_argument("--backbone-lr-mult", type=positive_float, default=1.0,
                          help="learning rate of pretrained layers relative to the head")
    return parser


def model_spec(name, args, num_classes):
    configuration = TRANSFER[name]
    return {"name": "torchvision_resnet18", "num_classes": num_classes,
            "weights": args.weights if configuration.pretrained else "none",
            "head": configuration.head, "freeze_children": configuration.freeze_children,
            "cifar_stem": configuration.cifar_stem}


def check_weights_fit(args, num_classes):
    """Fail before any training if the pretrained weights cannot be had or do not fit a
    configuration's model (building it loads them)."""
    for name in args.configs:
        if TRANSFER[name].pretrained:
            model_from_spec(model_spec(name, args, num_classes))


def make_run(name, args, splits, study):
    configuration = TRANSFER[name]
    spec = model_spec(name, args, len(splits.classes))
    # A configuration without pretrained weights does not depend on --weights.
    own = run_args(args, args.seed, choosing=() if configuration.pretrained else ("weights",),
                   config=name)
    return Run(name, own, study, spec, splits,
               train_augment=CropFlip() if args.augment == "crop-flip" else None,
               param_groups=lambda model: parameter_groups(model, args.lr, args.backbone_lr_mult),
               # ImageNet weights expect ImageNet's statistics; random init uses the data's own.
               normalization=IMAGENET_STATS if configuration.pretrained else None,
               image_size=args.image_size, extra_config={"study": "transfer", "configuration": name})


def run_rows(runs):
    """One row per run (configuration and seed)."""
    rows = []
    for run in runs:
        metrics, configuration = run.metrics, TRANSFER[run.name]
        trainable, total = count_parameters(build_model(run.model))
        report = dict(zip(("report_train", "report_val", "report_test"), configuration.report))
        # Set against the report only where both measured the same: all of CIFAR-10.
        comparable = report and run.splits.dataset == REPORT_DATASET and run.args.subset is None
        rows.append({"config": run.name,
                     **{key: metrics[key] for key in ("train_accuracy", "val_accuracy", "test_accuracy")},
                     **report,
                     "test_minus_report": (metrics["test_accuracy"] - report["report_test"]
                                           if comparable else None),
                     "trainable_parameters": trainable, "total_parameters": total,
                     "seconds_per_epoch": metrics["train_seconds"] / metrics["epochs"],
                     "epochs": metrics["epochs"]})
    return rows


MEASURED = ("train_accuracy", "val_accuracy", "test_accuracy", "test_minus_report",
            "seconds_per_epoch")
BASELINE = "scratch"  # random init: what ImageNet weights are worth is measured against it


COLUMNS = [("config", "configuration", None), ("seeds", "seeds", None),
           ("train_accuracy", "train acc", "{:.1%}"), ("val_accuracy", "val acc", "{:.1%}"),
           ("test_accuracy", "test acc", "{:.1%}"), ("vs_scratch", "test acc vs scratch", None),
           ("report_train", "report train", "{:.1%}"),
           ("report_val", "report val", "{:.1%}"), ("report_test", "report test", "{:.1%}"),
           ("test_minus_report", "test − report", points(1)),
           ("trainable_parameters", "trainable params", "{:,}"),
           ("total_parameters", "total params", "{:,}"),
           ("seconds_per_epoch", "s/epoch", "{:.1f}"), ("epochs", "epochs", None)]


def write_outputs(runs, args, study_dir):
    histories = histories_by_name(runs)  # every seed's history, per configuration
    rows = summarise_seeds(run_rows(runs), "config", MEASURED, {BASELINE: "vs_scratch"})
    for file_name, title, names in TRANSFER_COMPARISONS:
        chosen = {name: histories[name] for name in names if name in histories}
        if len(chosen) >= 2:
            plot_runs(chosen, [("train_accuracy", "val_accuracy"), ("train_loss", "val_loss")],
                      study_dir / file_name, title=f"{title}: {args.dataset}, {args.epochs} epochs")
    write_summary(study_dir, rows, COLUMNS, "Transfer learning (part (b))", notes=[
        f"Ours: {args.epochs} epochs at {args.image_size}x{args.image_size}, augmentation "
        f"{args.augment}, final epoch; the report: 30 epochs at 32x32, no augmentation (its "
        "train-val gap says so; the text does not). Accuracies of the report are read off its text.",
        "Frozen = requires_grad off and BatchNorm kept in eval mode (ImageNet statistics fixed); "
        "the report only turned requires_grad off, so its frozen BatchNorm statistics drifted.",
        "At 32x32 ImageNet's stem leaves layer4 a 1x1 map; pretrained-cifar-stem (3x3 stride-1 "
        "conv1, no max-pool) keeps 4x4.",
        seeds_note(seeds_to_run(args)),
        comparison_note("test acc vs scratch")])


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "transfer")
    seeds = seeds_to_run(args)  # a bad --seeds is refused before weights are fetched
    train, test = load_data(args)  # under torchrun rank 0 first: it then downloads first
    distributed.main_first(lambda: check_weights_fit(args, len(train.classes)))
    runs = []
    for seed in seeds:
        seed_args = run_args(args, seed, choosing=("configs",))
        splits = split_data(seed_args, train, test)
        runs += [make_run(name, seed_args, splits, study) for name in args.configs]
    train_all(runs)
    if distributed.is_main_process():
        write_outputs(runs, args, study)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
