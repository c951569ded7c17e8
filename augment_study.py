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
from engine.plots import save_image_grid
from engine.seeds import seeds_to_run
from engine.studies import write_study
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


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "augment")
    train, test = load_data(args)
    runs = []
    for seed in seeds_to_run(args):
        seed_args = run_args(args, seed)
        splits = split_data(seed_args, train, test)  # each seed draws its own subset
        runs += [make_run(arm, seed_args, splits, study) for arm in arms_to_run(args.arms)]
    train_all(runs, args.shard)
    if distributed.is_main_process():
        write_study("augment", study, planned=runs)
        # each arm on the first seed's training images
        write_gallery(list(dict.fromkeys(run.name for run in runs)), runs[0].splits,
                      study / "gallery.png", args.seed)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
