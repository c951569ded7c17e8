"""Repeated runs over seeds: which seeds to run; per configuration the mean, sample std
(ddof=1) and count over seeds; and whether two configurations differ beyond run-to-run
noise (Welch's t-test on final test accuracy, with at least MIN_SEEDS_TO_TEST seeds a side).
"""
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from engine.errors import UserError

MIN_SEEDS_TO_TEST = 3   # below this a t-test's p-value says little (and needs a variance)
ALPHA = 0.05            # "beyond noise": p below this
COMPARED_KEY = "test_accuracy"  # what comparisons compare: the final epoch's, per seed
DEFAULT_SEED = 0        # --seed's default (engine.cli)
SEED_FOLDER = re.compile(r"seed(\d+)")


# --- which seeds ---------------------------------------------------------------------------------

def seeds_to_run(args):
    """The seeds to run: --seeds (each once), else --seed."""
    if args.seeds is None:
        return [args.seed]
    repeated = sorted({seed for seed in args.seeds if args.seeds.count(seed) > 1})
    if repeated:
        raise UserError(f"--seeds lists {', '.join(map(str, repeated))} more than once: "
                        f"list each seed once")
    if args.seed != DEFAULT_SEED:  # the default cannot be told apart from no --seed
        raise UserError(f"--seed {args.seed} and --seeds {' '.join(map(str, args.seeds))} both "
                        f"choose the seed: pass --seeds alone (e.g. --seeds {args.seed})")
    return list(args.seeds)


def folder_seed(name):
    """The seed of a seed<S> folder name; None for any other name."""
    match = SEED_FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


# --- statistics over seeds ------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """A figure over seeds: mean, sample std (None with one seed) and number of seeds."""
    mean: float
    std: object  # float, or None when one seed leaves it undefined
    n: int


def spread(values):
    values = np.asarray(values, dtype=float)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return Spread(mean=float(np.mean(values)), std=std, n=len(values))


def welch_p_value(a, b):
    """Welch's t-test p-value (two-sided) of two samples; NaN where it is undefined."""
    with warnings.catch_warnings():
        # Nearly identical samples make scipy warn about precision; the p-value stands.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class Comparison:
    """Configuration a against reference b: difference of means and whether it is real."""
    difference: float         # mean(a) - mean(b), as a fraction (accuracies)
    p_value: object           # Welch's p, or None where no test was made
    verdict: str              # "beyond noise", "within noise", "single run", ...

    def text(self):
        """'+1.32 pp, p = 0.004 (beyond noise)' or '+0.20 pp (single run)'."""
        points = f"{100 * self.difference:+.2f} pp"
        if self.p_value is None:
            return f"{points} ({self.verdict})"
        return f"{points}, {format_p(self.p_value)} ({self.verdict})"


def format_p(p_value):
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"


def compare(a, b):
    """Compare per-seed values a (a configuration) with b (its reference)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(np.mean(a) - np.mean(b))
    fewest = min(len(a), len(b))
    if fewest == 1:
        return Comparison(difference, None, "single run")
    if fewest < MIN_SEEDS_TO_TEST:
        return Comparison(difference, None, f"{fewest} seeds: too few to test, "
                                            f"need {MIN_SEEDS_TO_TEST}")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # No spread on either side: the t statistic is 0/0 or x/0; no p-value means anything.
        return Comparison(difference, None, "no difference: identical values" if difference == 0
                          else "cannot test: no variance")
    p_value = welch_p_value(a, b)
    return Comparison(difference, p_value,
                      "beyond noise" if p_value < ALPHA else "within noise")


# --- summary rows over seeds ----------------------------------------------------------------------

def group_rows(rows, by):
    """{configuration: [its runs' rows]}, configurations in the order they first appear."""
    groups = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row)
    return groups


def summarise_seeds(rows, by, measured, references=None):
    """Per-run rows -> one per configuration (`by`): each `measured` key as the mean over seeds
    with <key>_std (None with one seed), "seeds", the rest from the first run; then each
    {reference: column} comparison (add_comparison)."""
    summary = []
    for group in group_rows(rows, by).values():
        row = dict(group[0])
        for key in measured:
            values = [run[key] for run in group if is_number(run.get(key))]
            figure = spread(values) if values else None
            row[key], row[f"{key}_std"] = (figure.mean, figure.std) if figure else (None, None)
        row["seeds"] = len(group)
        summary.append(row)
    for reference, column in (references or {}).items():
        add_comparison(summary, rows, by, reference, column)
    return summary


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def add_comparison(summary, rows, by, reference, column, key=COMPARED_KEY):
    """Set, on each configuration's summary row, its comparison with `reference`:
    <column> (the text), <column>_difference (mean difference) and <column>_p (Welch's p or
    None). The reference's own row, and every row when the reference did not run, get None."""
    values = {name: [run[key] for run in group] for name, group in group_rows(rows, by).items()}
    for row in summary:
        found = None
        if reference in values and row[by] != reference:
            found = compare(values[row[by]], values[reference])
        row[column] = found.text() if found else None
        row[f"{column}_difference"] = found.difference if found else None
        row[f"{column}_p"] = found.p_value if found else None


def comparison_note(references):
    """The note under a table that compares: what is compared and how it is judged."""
    return (f"{references}: difference of the mean final-epoch test accuracy, in points (pp). "
            f"With at least {MIN_SEEDS_TO_TEST} seeds on both sides, Welch's t-test on the "
            f"per-seed values (scipy.stats.ttest_ind, equal_var=False): beyond noise when "
            f"p < {ALPHA}; with fewer, the difference is that of a single run (or of too few "
            f"seeds) and may be noise. — where the row is the reference or the reference did "
            f"not run.")


def histories_by_name(runs):
    """{configuration: [its history per seed]}, in the order the runs came."""
    histories = {}
    for run in runs:
        histories.setdefault(run.name, []).append(run.history)
    return histories


def in_points(fraction):
    """A fraction (an accuracy, or its spread over seeds) in percentage points; None (no
    spread with one seed) stays None."""
    return None if fraction is None else 100 * fraction


def with_seeds(title, args):
    """A plot title, saying what its points are when they average several seeds."""
    seeds = seeds_to_run(args)
    return f"{title} (mean ± std of {len(seeds)} seeds)" if seeds and len(seeds) > 1 else title


def seeds_note(seeds):
    """The note that says how many seeds each row averages."""
    if len(seeds) == 1:
        return (f"One run per configuration (seed {seeds[0]}): no spread; run with --seeds to "
                f"measure it.")
    return (f"Seeds {' '.join(map(str, seeds))}: each figure is the mean ± sample standard "
            f"deviation over the finished seeds of its configuration (column seeds).")
