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
from engine.configurations import RECIPES, TRANSFER
from engine.errors import exits_cleanly_on_user_error
from engine.loader import IMAGENET_STATS
from engine.pretrained import model_from_spec
from engine.seeds import seeds_to_run
from engine.studies import write_study
from engine.training import Run, load_data, run_args, split_data, train_all
from models.transfer import parameter_groups


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
    own = run_args(args, args.seed, without=() if configuration.pretrained else ("weights",),
                   config=name)
    return Run(name, own, study, spec, splits,
               train_augment=CropFlip() if args.augment == "crop-flip" else None,
               param_groups=lambda model: parameter_groups(model, args.lr, args.backbone_lr_mult),
               # ImageNet weights expect ImageNet's statistics; random init uses the data's own.
               normalization=IMAGENET_STATS if configuration.pretrained else None,
               image_size=args.image_size, extra_config={"study": "transfer", "configuration": name})


@exits_cleanly_on_user_error
def main(args):
    study = Path(args.out or Path("results") / "transfer")
    seeds = seeds_to_run(args)  # a bad --seeds is refused before weights are fetched
    train, test = load_data(args)  # under torchrun rank 0 first: it then downloads first
    distributed.main_first(lambda: check_weights_fit(args, len(train.classes)))
    runs = []
    for seed in seeds:
        seed_args = run_args(args, seed)
        splits = split_data(seed_args, train, test)
        runs += [make_run(name, seed_args, splits, study) for name in args.configs]
    train_all(runs, args.shard)
    if distributed.is_main_process():
        write_study("transfer", study, planned=runs)
    return runs


if __name__ == "__main__":
    main(get_args_parser().parse_args())
