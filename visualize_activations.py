"""Part (d): every layer's activations of a network for one image, layer statistics, Grad-CAM.

Writes layers/NNN_<layer>.png, overview.png, stats.csv, gradcam.png and predictions.json into
--out; docs/parts.md, part (d), describes them, with more examples.

    python visualize_activations.py --run results/scratch/cifar10/seed0   # the report's car
    python visualize_activations.py --model transfer --weights imagenet --image photo.jpg
"""
import re
import sys
from pathlib import Path

from engine import activations
from engine.cli import Parser, nonnegative_int, positive_int
from engine.errors import UserError, exits_cleanly_on_user_error

OVERVIEW_MOST = 12  # rows of overview.png when --layers chooses the layers


def get_args_parser():
    parser = Parser(__doc__)
    model = parser.add_argument_group("the network (one of --run, --model)")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="DIR",
                        help="a run directory of train_scratch.py, train_transfer.py, "
                             "augment_study.py or dropout_sweep.py (its checkpoint.pt)")
    source.add_argument("--model", choices=list(activations.BARE_MODELS),
                        help="a bare network: the hand-written CIFAR ResNet-18 or torchvision's")
    model.add_argument("--weights", metavar="imagenet|none|PATH",
                       help="with --model: ImageNet weights (transfer only, with its 1000-class "
                            "head), none (random: shows little), or a state dict file")
    model.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                       help="with --model and --weights none/PATH: classes of the head (default "
                            "10, or the file's)")
    model.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                       help="with --model: the input side (default 32 scratch, 224 transfer)")

    image = parser.add_argument_group("the image (default: the run's first test car, as the "
                                      "report, or its first test image)")
    image.add_argument("--image", metavar="PATH",
                       help="any photograph: shorter side resized to the model's input size, "
                            "centre-cropped")
    image.add_argument("--class", dest="class_name", metavar="NAME",
                       help="with --run: a test image of this class, by name (e.g. cat, "
                            "Sneaker) or index (e.g. 7 for MNIST's '7 - seven')")
    image.add_argument("--index", type=nonnegative_int, default=None, metavar="N",
                       help="with --run: the N-th test image (of --class, if given)")
    image.add_argument("--data-dir", default=None, metavar="DIR",
                       help="with --run: where its dataset is (default: the run's --data-dir)")

    what = parser.add_argument_group("what to show")
    what.add_argument("--layers", nargs="+", metavar="NAME",
                      help="layers or modules (their output) to draw, e.g. relu layer1.0.relu "
                           "layer4 (default: all; see --list-layers)")
    what.add_argument("--list-layers", action="store_true",
                      help="print the layer names, kinds and shapes in forward order, and exit")
    what.add_argument("--cam-layer", default=activations.DEFAULT_CAM_LAYER, metavar="NAME",
                      help="the layer Grad-CAM looks at (default: layer4's output)")
    what.add_argument("--target-class", metavar="NAME|INDEX",
                      help="also show Grad-CAM for this class")
    what.add_argument("--max-channels", type=positive_int, default=64, metavar="N",
                      help="channels per layer picture (default 64)")

    run = parser.add_argument_group("output")
    run.add_argument("--out", default=None, metavar="DIR",
                     help="output folder (default: results/activations/<part>_<configuration>_"
                          "seed<S>_<image>, or <model>_<weights>_<image> with --model)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier result in --out (otherwise refuse)")
    return parser


def check_flag_combinations(args):
    """Flags of the other mode are refused rather than silently ignored."""
    if args.model and args.weights is None:
        raise UserError("--model needs --weights imagenet, none or PATH")
    other_mode = ({"--class": args.class_name, "--index": args.index, "--data-dir": args.data_dir}
                  if args.model else {"--weights": args.weights,
                                      "--num-classes": args.num_classes,
                                      "--image-size": args.image_size})
    misplaced = ", ".join(flag for flag, value in other_mode.items() if value is not None)
    if misplaced and args.model:
        raise UserError(f"{misplaced}: only with --run DIR (they choose an image of the run's "
                        f"dataset); with --model pass --image PATH")
    if misplaced:
        raise UserError(f"{misplaced}: only with --model (a run directory brings its own model, "
                        f"classes and input size)")
    if args.model and args.image is None and not args.list_layers:
        raise UserError("--model needs --image PATH (a bare model has no dataset)")
    if args.image is not None and (args.class_name is not None or args.index is not None):
        raise UserError("--image and --class/--index both choose the image: pass one of them")


@exits_cleanly_on_user_error
def main(args):
    check_flag_combinations(args)
    subject = (activations.load_run(args.run) if args.run else
               activations.build_bare(args.model, args.weights, args.num_classes, args.image_size))
    for warning in subject.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    capture = activations.LayerCapture(subject.model)
    if args.list_layers:
        print(activations.layer_table(capture, subject.input_size))
        return None

    # Everything that can be refused is checked before anything is written.
    layers = capture.resolve(args.layers) if args.layers else capture.layers
    cam_layer = capture.layer(args.cam_layer)
    target = (activations.class_index(args.target_class, subject.classes)
              if args.target_class is not None else None)
    picture = (activations.read_photo(args.image, subject.stored_size) if args.image else
               activations.dataset_picture(subject, args.data_dir, args.index, args.class_name))
    out = Path(args.out or Path("results", "activations", re.sub(
        r"[^A-Za-z0-9._-]+", "_", f"{subject.label}_{picture.label}")))
    activations.check_output_dir(out, args.overwrite)
    findings = activations.look(subject, capture, picture, layers, cam_layer, target,
                                overview=layers[:OVERVIEW_MOST] if args.layers else None)

    activations.write_results(out, subject, picture, findings, args.max_channels, args.overwrite)
    best = findings.predictions[0]
    dead = sum(row["dead_channels"] for row in findings.stats)
    print(f"{picture.description}: predicted {best['class']} (p = {best['probability']:.3f}); "
          f"{len(findings.layers)} layers, {dead} dead channels in all; Grad-CAM from "
          f"{cam_layer.name} -> {out}")
    return findings


if __name__ == "__main__":
    main(get_args_parser().parse_args())
