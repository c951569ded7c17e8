"""The whole study as one document: REPORT.md beside the runs, set against the original report.

Reads whatever exists under --results (scratch runs, the transfer, augmentation and dropout
studies, activation visualisations) and writes --results/REPORT.md: per part a table of ours,
the original report's figure where it has one, and the difference; each run's settings; the
plots, embedded by relative path. Every figure comes from a file named beside it (see
engine/report.py). Runs repeated with --seeds (<configuration>/seed<S>/) make one row per
configuration, mean ± std over its finished seeds, with whether differences exceed noise.
Unfinished runs are marked as such; a part with no runs gets the command that runs it. A
--results folder that does not exist, or holds no runs, is an error (exit 2).

    python report.py                     # results/REPORT.md
    python report.py --results /data/my_results
"""
from pathlib import Path

import augment_study
import train_transfer
from engine import augment, report
from engine.cli import Parser
from engine.errors import exits_cleanly_on_user_error

# Part (a) of the original report, from its training log after 50 epochs:
#   "Train Epoch: 49 ... Acc: 89.290% (44645/50000)" and "Test set: ... Accuracy: 8735/10000".
REPORT_SCRATCH = {"epochs": 50, "train_accuracy": 0.8929, "test_accuracy": 0.8735}


def original_report():
    """The original report's figures, each written down once: part (b)'s in train_transfer."""
    return report.OriginalReport(
        scratch=REPORT_SCRATCH,
        transfer={name: configuration.report
                  for name, configuration in train_transfer.CONFIGURATIONS.items()},
        transfer_plots={file_name: title for file_name, title, _ in train_transfer.COMPARISONS},
        augment_arms=tuple(augment.ARMS), report_arms=tuple(augment_study.REPORT_ARMS))


def get_args_parser():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="the folder holding scratch/, transfer/, augment/, dropout/ and "
                             "activations/ (default: results); REPORT.md is written there")
    return parser


@exits_cleanly_on_user_error
def main(args):
    path, found = report.write_report(Path(args.results), original_report())
    print(report.summary_line(path, found))
    return path


if __name__ == "__main__":
    main(get_args_parser().parse_args())
