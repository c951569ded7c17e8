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


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def in_points(fraction):
    """A fraction (an accuracy, or its spread over seeds) in percentage points; None (no
    spread with one seed) stays None."""
    return None if fraction is None else 100 * fraction
