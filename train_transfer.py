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
from dataclasses import dataclass
from pathlib import Path

from engine.augment import CropFlip
from engine.cli import Parser, add_common_args, positive_float, positive_int
from engine.distributed import main_first
from engine.errors import exits_cleanly_on_user_error
from engine.experiment import Experiment, training_device
from engine.loader import IMAGENET_STATS
from engine.plots import plot_comparison
from engine.seeds import add_comparison, comparison_note, seeds_note, seeds_to_run, summarise_seeds
from engine.study import args_per_seed, histories_by_name, run_flags, run_path
from engine.study import run_seeded_study
from engine.summary import write_summary
from models import build_model
from models.transfer import REPORT_FROZEN_CHILDREN, count_parameters, load_imagenet_state_dict
from models.transfer import load_weights_file, parameter_groups

RECIPE = dict(
    epochs=30,            # as the report
    batch_size=256,       # images per step
    lr=0.05,              # peak of the one-cycle schedule at batch 256, x sqrt(B / 256) at
    lr_reference_batch=256,  # batch B; fine-tuning wants less than part (a)
    weight_decay=5e-4,
    label_smoothing=0.0,
)


@dataclass(frozen=True)
class Configuration:
    pretrained: bool
    head: str
    freeze_children: int
    cifar_stem: bool
    report: tuple  # the report's (train, val, test) accuracy, or () where it has none


CONFIGURATIONS = {
    "scratch": Configuration(False, "linear", 0, False, (0.986, 0.739, 0.738)),
    "pretrained": Configuration(True, "linear", 0, False, (0.995, 0.811, 0.804)),
    "frozen-mlp": Configuration(True, "mlp", REPORT_FROZEN_CHILDREN, False, (0.990, 0.792, 0.790)),
    "frozen-deep": Configuration(True, "deep", REPORT_FROZEN_CHILDREN, False, (0.995, 0.791, 0.792)),
    "pretrained-cifar-stem": Configuration(True, "linear", 0, True, ()),
}
# The report's comparison plots: (file, title, configurations).
COMPARISONS = [
    ("compare_pretrained_vs_scratch.png", "ImageNet weights vs random init", ["pretrained", "scratch"]),
    ("compare_heads.png", "config 1 (mlp) vs config 2 (deep) vs the base model",
     ["frozen-mlp", "frozen-deep", "scratch"]),
    ("compare_all.png", "all configurations", list(CONFIGURATIONS)),
]
STUDY_FLAGS = ("configs",)


def get_args_parser():
    parser = Parser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, **RECIPE)
    transfer = parser.add_argument_group("transfer")
    transfer.add_argument("--configs", nargs="+", choices=list(CONFIGURATIONS),
                          default=list(CONFIGURATIONS), help="configurations to run (default: all)")
    transfer.add_argument("--weights", default="imagenet",
                          help="pretrained weights: imagenet (torchvision's IMAGENET1K_V1, through "
                               "the torch hub cache) or PATH of a resnet18 state dict")
    transfer.add_argument("--image-size", type=positive_int, default=32,
                          help="model input size; larger sizes upsample on the device (the report: 32)")
    transfer.add_argument("--backbone-lr-mult", type=positive_float, default=1.0,
                          help="learning rate of pretrained layers relative to the head")
    return parser


def check_weights_available(args):
    """Fail before any training if the pretrained weights cannot be had."""
    if any(CONFIGURATIONS[name].pretrained for name in args.configs):
        if args.weights == "imagenet":
            load_imagenet_state_dict()
        else:
            load_weights_file(args.weights)


def make_experiment(name, args, splits, study_dir):
    configuration = CONFIGURATIONS[name]
    spec = {"name": "torchvision_resnet18", "num_classes": len(splits.classes),
            "weights": args.weights if configuration.pretrained else "none",
            "head": configuration.head, "freeze_children": configuration.freeze_children,
            "cifar_stem": configuration.cifar_stem}
    return Experiment(
        name=name, flags=run_flags(args, STUDY_FLAGS, config=name),
        out=run_path(study_dir, name, args),
        make_model=lambda: build_model(spec), model_spec=spec, splits=splits,
        train_augment=CropFlip(),
        param_groups=lambda model: parameter_groups(model, args.lr, args.backbone_lr_mult),
        # ImageNet weights expect ImageNet's statistics; random init uses the data's own.
        normalization=IMAGENET_STATS if configuration.pretrained else None,
        image_size=args.image_size, extra_config={"study": "transfer", "configuration": name})


def run_rows(results):
    """One row per run (configuration and seed)."""
    rows = []
    for result in results:
        metrics, configuration = result.metrics, CONFIGURATIONS[result.name]
        trainable, total = count_parameters(build_model(result.config["model"], load_pretrained=False))
        report = dict(zip(("report_train", "report_val", "report_test"), configuration.report))
        rows.append({"config": result.name,
                     **{key: metrics[key] for key in ("train_accuracy", "val_accuracy", "test_accuracy")},
                     **report,
                     "test_minus_report": (metrics["test_accuracy"] - report["report_test"]
                                           if report else None),
                     "trainable_parameters": trainable, "total_parameters": total,
                     "seconds_per_epoch": metrics["train_seconds"] / metrics["epochs"],
                     "epochs": metrics["epochs"]})
    return rows


MEASURED = ("train_accuracy", "val_accuracy", "test_accuracy", "test_minus_report",
            "seconds_per_epoch")
BASELINE = "scratch"  # random init: what ImageNet weights are worth is measured against it


def summary_rows(results):
    """One row per configuration: the mean ± std over its seeds, and its test accuracy
    against scratch (beyond noise or not)."""
    runs = run_rows(results)
    rows = summarise_seeds(runs, "config", MEASURED)
    add_comparison(rows, runs, "config", BASELINE, "vs_scratch")
    return rows


COLUMNS = [("config", "configuration", None), ("seeds", "seeds", None),
           ("train_accuracy", "train acc", "{:.1%}"), ("val_accuracy", "val acc", "{:.1%}"),
           ("test_accuracy", "test acc", "{:.1%}"), ("vs_scratch", "test acc vs scratch", None),
           ("report_train", "report train", "{:.1%}"),
           ("report_val", "report val", "{:.1%}"), ("report_test", "report test", "{:.1%}"),
           ("test_minus_report", "test − report", "{:+.1%}"),
           ("trainable_parameters", "trainable params", "{:,}"),
           ("total_parameters", "total params", "{:,}"),
           ("seconds_per_epoch", "s/epoch", "{:.1f}"), ("epochs", "epochs", None)]


def write_outputs(results, args, study_dir):
    histories = histories_by_name(results)  # every seed's history, per configuration
    for file_name, title, names in COMPARISONS:
        chosen = {name: histories[name] for name in names if name in histories}
        if len(chosen) >= 2:
            plot_comparison(chosen, study_dir / file_name, title=title)
    write_summary(study_dir, summary_rows(results), COLUMNS, "Transfer learning (part (b))", notes=[
        f"Ours: {args.epochs} epochs at {args.image_size}x{args.image_size}, final epoch; the "
        "report: 30 epochs at 32x32. Accuracies of the report are read off its text.",
        "Frozen = requires_grad off and BatchNorm kept in eval mode (ImageNet statistics fixed); "
        "the report only turned requires_grad off, so its frozen BatchNorm statistics drifted.",
        "At 32x32 ImageNet's stem leaves layer4 a 1x1 map; pretrained-cifar-stem (3x3 stride-1 "
        "conv1, no max-pool) keeps 4x4.",
        seeds_note(seeds_to_run(args)),
        comparison_note("test acc vs scratch")])


@exits_cleanly_on_user_error
def main(args):
    study_dir = Path(args.out or Path("results") / "transfer")
    args_per_seed(args)  # a bad --seeds is refused before weights are fetched
    training_device(args)  # joins torchrun's processes (if any): rank 0 then downloads first
    main_first(lambda: check_weights_available(args))
    return run_seeded_study(
        args, lambda seed_args, splits: [make_experiment(name, seed_args, splits, study_dir)
                                         for name in args.configs],
        lambda results, _: write_outputs(results, args, study_dir), study_dir)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
