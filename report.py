"""The whole study as one document: REPORT.md beside the runs, set against the original report.

Reads whatever runs exist under --results (<part>/<configuration>/seed<S>/ of scratch,
transfer, augment and dropout; activations/<name>/) and writes --results/REPORT.md: per part
ours beside the original report's figures, each run's settings and the plots (docs/reproduce.md:
REPORT.md). A --results folder that is missing or holds no runs is an
error (exit 2).

    python report.py                     # results/REPORT.md
    python report.py --results /data/my_results
"""
from engine import report
from engine.cli import Parser
from engine.errors import exits_cleanly_on_user_error


def get_args_parser():
    parser = Parser(__doc__)
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="the folder holding scratch/, transfer/, augment/, dropout/ and "
                             "activations/ (default: results); REPORT.md is written there")
    return parser


@exits_cleanly_on_user_error
def main(args):
    path, found = report.write_report(args.results)
    print(f"wrote {path} ({', '.join(f'{part} {len(items)}' for part, items in found.items())})")
    return path


if __name__ == "__main__":
    main(get_args_parser().parse_args())
