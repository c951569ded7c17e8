"""Part (c): the augmentation study. One model per augmentation on "tiny CIFAR-10".

The report trained one network per augmentation on a small CIFAR-10 subset and tabulated
train/test accuracy and error. Here every arm trains the hand-written ResNet-18 on the same
class-balanced subset (--subset, default 5000 images), with a validation set held out of the
rest and the full test set. Augmentations run batched on the device with independent random
parameters per image (engine/augment.py); the AutoAugment family runs image by image through
torchvision, and the summary says which arms are which. Deterministic arms (resize, centre
crop) are applied to training and test images alike.

    python augment_study.py                                   # every arm
    python augment_study.py --arms report                     # none and the report's nine
    python augment_study.py --arms none standard cutout mixup --epochs 20
    python augment_study.py --arms none standard flip --seeds 0 1 2   # mean ± std, tested
Rerunning the command after an interruption continues it (finished arms are reused).
"""
from pathlib import Path

import torch

from engine import augment, distributed
from engine.cli import Parser, add_common_args, positive_int
from engine.configurations import RECIPES, REPORT_ARMS
from engine.errors import exits_cleanly_on_user_error
from engine.plots import plot_bars, plot_runs, save_image_grid
from engine.seeds import comparison_note, seeds_note, seeds_to_run, summarise_seeds
from engine.seeds import histories_by_name, in_points, with_seeds
from engine.summary import write_summary
from engine.training import Run, load_data, run_args, split_data, train_all

GALLERY_IMAGES = 8
PRESETS = {"report": ["none", *REPORT_ARMS]}  # --arms report: the report's study


def arms_to_run(names):
    """--arms with each preset expanded, each arm once, in the order given."""
    return list(dict.fromkeys(arm for name in names for arm in PRESETS.get(name, [name])))


def get_args_parser():
    parser = Parser(__doc__)
    add_common_args(parser, **RECIPES["augment"],
                    out="the study folder: one run per arm in DIR/<arm>/seed<S>/, summary and "
                        "plots in DIR (default: results/augment)")
    parser.set_defaults(subset=5000)
    study = parser.add_argument_group("study")
    study.add_argument("--arms", nargs="+", choices=[*augment.ARMS, *PRESETS],
                       default=list(augment.ARMS),
                       help="augmentations to train, one run each (default: all); report: none "
                            "and the report's nine")
    study.add_argument("--width", type=positive_int, default=64,
                       help="first-stage channels of the ResNet-18 (64; smaller for quick runs)")
    return parser


def make_run(arm, args, splits, study):
    spec = {"name": "resnet18_cifar", "num_classes": len(splits.classes), "width": args.width,
            "dropout": 0.0, "dropout_at": ["classifier"]}
    train_transform, eval_transform = augment.arm_transforms(arm, len(splits.classes),
                                                             splits.train.images.shape[-1])
    per_image = getattr(train_transform or eval_transform, "per_image", False)
    return Run(arm, run_args(args, args.seed, arm=arm), study, spec, splits,
               train_augment=train_transform, eval_augment=eval_transform,
               extra_config={"study": "augment", "arm": arm, "per_image": per_image})


def run_rows(runs):
    """One row per run (configuration and seed)."""
    rows = []
    for run in runs:
        metrics = run.metrics
        rows.append({"arm": run.name,
                     "in_report": "yes" if run.name in REPORT_ARMS else "",
                     "train_accuracy": metrics["train_accuracy"],
                     "test_accuracy": metrics["test_accuracy"],
                     "train_error": 1 - metrics["train_accuracy"],
                     "test_error": 1 - metrics["test_accuracy"],
                     "val_accuracy": metrics["val_accuracy"],
                     "seconds_per_epoch": metrics["train_seconds"] / metrics["epochs"],
                     "execution": "per image" if run.config["per_image"] else "batched",
                     "transform": run.config["train_augment"] if run.config["train_augment"]
                     != "None" else f"{run.config['eval_augment']} (train and test)"})
    return rows


MEASURED = ("train_accuracy", "test_accuracy", "train_error", "test_error", "val_accuracy",
            "seconds_per_epoch")
REFERENCES = {"none": "vs_none", "standard": "vs_standard"}  # arms every other is set against


COLUMNS = [("arm", "arm", None), ("in_report", "in report", None), ("seeds", "seeds", None),
           ("train_accuracy", "train acc", "{:.2%}"), ("test_accuracy", "test acc", "{:.2%}"),
           ("train_error", "train error", "{:.2%}"), ("test_error", "test error", "{:.2%}"),
           ("val_accuracy", "val acc", "{:.2%}"),
           ("vs_none", "test acc vs none", None), ("vs_standard", "test acc vs standard", None),
           ("seconds_per_epoch", "s/epoch", "{:.1f}"),
           ("execution", "execution", None), ("transform", "transform", None)]


def gallery_images(splits):
    """One training image from each of the first GALLERY_IMAGES classes (or the first ones)."""
    labels = splits.train.labels
    firsts = [int(torch.nonzero(labels == label)[0]) for label in labels.unique()[:GALLERY_IMAGES]]
    index = firsts + [i for i in range(len(labels)) if i not in firsts][:GALLERY_IMAGES - len(firsts)]
    return splits.train.images[index], labels[index]


def write_gallery(names, splits, path, seed):
    """Each arm applied to the same eight images: one row per arm."""
    images, labels = gallery_images(splits)
    rows = {}
    for name in names:
        train_transform, eval_transform = augment.arm_transforms(name, len(splits.classes), images.shape[-1])
        generator = torch.Generator().manual_seed(seed)
        augmented, _ = (train_transform or eval_transform)(images.clone(), labels.clone(), generator)
        rows[name] = augmented
    save_image_grid(rows, path, title="each augmentation applied to the same images")


def write_outputs(runs, args, study_dir):
    splits = runs[0].splits  # the gallery shows the first seed's training images
    rows = summarise_seeds(run_rows(runs), "arm", MEASURED, REFERENCES)
    histories = histories_by_name(runs)
    plot_bars({row["arm"]: 100 * row["test_accuracy"] for row in rows}, "test accuracy (%)",
              study_dir / "test_accuracy.png", highlight=("none", "standard"),
              errors={row["arm"]: in_points(row["test_accuracy_std"]) for row in rows},
              chance=100 / len(splits.classes),
              title=with_seeds(f"test accuracy per augmentation ({args.dataset}, "
                               f"{len(splits.train)} training images, {args.epochs} epochs)", args))
    plot_runs(histories, ["train_accuracy", "test_accuracy", "test_loss"], study_dir / "curves.png",
              title=f"per-arm curves: {args.dataset}, {args.epochs} epochs")
    write_gallery(list(dict.fromkeys(run.name for run in runs)), splits, study_dir / "gallery.png",
                  args.seed)
    write_summary(study_dir, rows, COLUMNS, "Augmentation study (tiny CIFAR-10)", notes=[
        f"{len(splits.train)} class-balanced training images, {args.epochs} epochs, final epoch; "
        f"test set: {len(splits.test)} images. Error = 1 − accuracy.",
        "The report's own table is an image in the original report, with no numbers in its text "
        "to set beside ours.",
        seeds_note(seeds_to_run(args)),
        comparison_note("test acc vs none, vs standard"),
        "execution: batched = parameters drawn per image, whole batch augmented on the device "
        "at once; per image = torchvision.transforms.v2 in a loop (AutoAugment family).",
        "Plots: test_accuracy.png (bar per arm; error bar: std over seeds), curves.png "
        "(per-arm curves on shared axes), gallery.png (each arm on the same eight images)."])


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "augment")
    train, test = load_data(args)
    runs = []
    for seed in seeds_to_run(args):
        seed_args = run_args(args, seed, choosing=("arms",))
        splits = split_data(seed_args, train, test)  # each seed draws its own subset
        runs += [make_run(arm, seed_args, splits, study) for arm in arms_to_run(args.arms)]
    train_all(runs)
    if distributed.is_main_process():
        write_outputs(runs, args, study)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
