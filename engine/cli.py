"""Command-line flags every training script shares, validated when they are parsed."""
import argparse
import math
import sys

from engine.device import PRECISIONS
from engine.shards import shard
from engine.sources import SOURCES


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default (unless its help already says it); the description
    and the examples keep their lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is unset for unset in (None, False, argparse.SUPPRESS)) or (
                "default" in text):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is answered with one line (and exit status 2, as argparse),
    and the learning rate comes out resolved for the batch (resolve_lr). doc: the script's
    docstring, whose first paragraph is the description and whose `python ...` lines are
    the examples after the flags."""

    lr_recipe = None  # (peak lr, the batch it is for): set by add_common_args

    def __init__(self, doc=None, **kwargs):
        if doc:
            examples = [line for line in doc.splitlines() if line.lstrip().startswith("python ")]
            kwargs = {"description": doc.split("\n\n")[0],
                      "epilog": "examples:\n" + "\n".join(examples), **kwargs}
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        parsed, extra = super().parse_known_args(args, namespace)
        if self.lr_recipe is not None:
            resolve_lr(parsed, *self.lr_recipe)
        return parsed, extra


KINDS = {int: "an integer", float: "a number"}


def _number(kind, minimum, inclusive=True, maximum=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {KINDS[kind]}") from None
        too_small = value < minimum if inclusive else value <= minimum
        if too_small or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            if maximum is not None:
                bound += f" and <= {maximum}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
positive_float = _number(float, 0.0, inclusive=False)
nonnegative_float = _number(float, 0.0)
fraction = _number(float, 0.0, maximum=1.0)


def dropout_rate(text):
    """A fraction below 1: dropout at 1 zeroes every activation."""
    value = fraction(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"{text} would drop every activation: must be < 1")
    return value


# The peak lr grows as the square root of the batch (docs/recipe.md: why not linear).
LR_RULE = "sqrt"


def scaled_lr(lr, reference_batch, batch_size):
    """The recipe's peak lr at reference_batch, scaled to batch_size by LR_RULE."""
    return lr * math.sqrt(batch_size / reference_batch)


def resolve_lr(args, lr, reference_batch):
    """--lr as given, or the recipe's peak scaled to the global --batch-size; the recipe and
    the rule are kept beside it (lr_base, lr_reference_batch, lr_rule) for config.json."""
    given = args.lr is not None
    args.lr_base, args.lr_reference_batch = lr, reference_batch
    args.lr_rule = "given" if given else LR_RULE
    if not given:
        args.lr = scaled_lr(lr, reference_batch, args.batch_size)
    return args


def describe_lr(flags):
    """'peak lr 0.07071 (0.2 at batch 512 x sqrt(64/512); --lr sets it)' for the startup output."""
    if flags.get("lr_rule") in (None, "given"):
        return f"peak lr {flags['lr']:g} (--lr)"
    return (f"peak lr {flags['lr']:.4g} ({flags['lr_base']:g} at batch {flags['lr_reference_batch']}"
            f" x {flags['lr_rule']}({flags['batch_size']}/{flags['lr_reference_batch']}); "
            f"--lr sets it)")


def add_common_args(parser, *, epochs, batch_size, lr, lr_reference_batch, weight_decay,
                    label_smoothing=0.0, out):
    """The design's command-line contract; the defaults are the calling script's recipe
    (lr: its peak learning rate for a batch of lr_reference_batch images); out: what --out
    holds for this script."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=SOURCES, default="cifar10",
                      help="synthetic: generated, for offline smoke runs")
    data.add_argument("--data-dir", default="data",
                      help="cifar: where it is or is downloaded to; folder: the tree's root")
    data.add_argument("--subset", type=positive_int, default=None,
                      help="train on N class-balanced training images (unset: all)")
    data.add_argument("--val-size", type=nonnegative_int, default=None,
                      help="validation images held out of training (default: 5000 for CIFAR, "
                           "10%% of the training images otherwise)")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=epochs, help="epochs per run")
    training.add_argument("--batch-size", type=positive_int, default=batch_size,
                          help="images per step (under torchrun: over all processes)")
    training.add_argument("--lr", type=positive_float, default=None,
                          help=f"peak learning rate (default: {lr:g} at batch {lr_reference_batch}"
                               f", times {LR_RULE}(--batch-size / {lr_reference_batch}); "
                               f"--batch-size is the global batch)")
    training.add_argument("--weight-decay", type=nonnegative_float, default=weight_decay,
                          help="L2 penalty on every parameter (SGD's weight_decay)")
    training.add_argument("--label-smoothing", type=fraction, default=label_smoothing,
                          help="share of each target spread over all classes")
    training.add_argument("--seed", type=nonnegative_int, default=0,
                          help="data split, initialisation and augmentation seed")
    training.add_argument("--seeds", type=nonnegative_int, nargs="+", default=None,
                          help="train each configuration once per seed, each in its own "
                               "seed<S>/ run directory, and summarise mean ± std (replaces --seed)")

    system = parser.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    system.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere")
    system.add_argument("--compile", action="store_true", help="torch.compile the model")
    system.add_argument("--sync-bn", action="store_true",
                        help="under torchrun on CUDA: BatchNorm statistics over the global batch "
                             "(SyncBatchNorm); ignored on CPU")
    system.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only: identical results run after run "
                             "(slower on GPU)")
    system.add_argument("--no-progress", action="store_true",
                        help="no progress bars or lines (bars need a terminal)")
    system.add_argument("--tensorboard", action="store_true",
                        help="also write history.csv's scalars to <run>/tensorboard/ (needs the "
                             "tensorboard package)")
    system.add_argument("--log-every", type=positive_float, default=30.0, metavar="SECONDS",
                        help="without a terminal: a progress line (step, img/s, run ETA) "
                             "this often")

    system.add_argument("--shard", type=shard, default=None, metavar="K/N",
                        help="train only this process's share of the study's runs: run i goes "
                             "to shard i mod N, so N processes (K = 0..N-1) cover it once; a run "
                             "another process is training (its folder is locked) is skipped "
                             "with a line naming that process; the summary is rewritten from "
                             "the run folders as each shard ends")

    run = parser.add_argument_group("run directory")
    run.add_argument("--out", default=None, metavar="DIR", help=out)
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing run in --out (otherwise refuse)")
    parser.lr_recipe = (lr, lr_reference_batch)
    return parser


def show_progress(args):
    return not args.no_progress and sys.stderr.isatty()
