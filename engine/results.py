"""A study's run folders read back: the only record of what ran. Each <configuration>/seed<S>/
folder is read once into a RunRecord (config, metrics, history, per-class accuracy); the seeds
of one configuration trained alike make a Group, one row of the tables built from them. The
training plan (reuse, resume or train), the study summaries, REPORT.md and reproduce.py's plan
all read runs here."""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from engine.seeds import folder_seed, is_number, spread

RUN_FILES = ("config.json", "history.csv", "metrics.json", "curves.png", "checkpoint.pt",
             "per_class.csv", "confusion.png")

# Which settings make a run what it is. Free: they change how the numbers come out, not the
# experiment, so a run may continue or be reused with others (how the peak lr was reached is
# recorded, not compared: the resolved lr is).
RESUME_FREE = frozenset({"resume", "overwrite", "no_progress", "log_every", "tensorboard",
                         "device", "compile", "data_dir", "precision", "sync_bn", "lr_base",
                         "lr_reference_batch", "lr_rule"})
# Settings that choose a study's runs rather than describe one: a run's own settings leave
# them out (adding a seed or an arm keeps finished runs valid).
STUDY_ARGS = frozenset({"seeds", "out", "configs", "arms", "rates", "shard"})
# A run's own settings that name its configuration within a study: configurations set against
# each other differ in them by design.
CONFIGURATION_ARGS = frozenset({"config", "arm", "dropout", "dropout_at"})


@dataclass
class RunRecord:
    """One <configuration>/seed<S>/ folder; a file absent or unreadable reads as empty."""
    configuration: str
    seed: int
    path: Path
    config: dict
    metrics: dict      # the last finished epoch's (metrics.json)
    history: list      # one dict per epoch (history.csv)
    per_class: dict    # {class: test accuracy} (per_class.csv)
    problem: str = None  # why a file is unreadable

    @property
    def label(self):
        return f"{self.configuration}/seed{self.seed}"

    @property
    def args(self):
        return self.config.get("args", {})

    @property
    def epochs_done(self):
        return self.metrics.get("epochs", 0)

    @property
    def finished(self):
        """Every planned epoch done: the one definition of a finished run."""
        planned = self.args.get("epochs")
        return not self.problem and planned is not None and self.epochs_done >= planned

    def status(self):
        if self.problem:
            return f"damaged: {self.problem}"
        if not self.metrics:  # files are written as an epoch ends: none has
            return "started, no finished epoch"
        if not self.config:
            return f"{self.epochs_done} epochs done, planned unknown (no config.json)"
        return "finished" if self.finished else f"unfinished: {self.epochs_cell()} epochs"

    def epochs_cell(self):
        """Epochs done / planned."""
        planned = self.args.get("epochs")
        return f"{self.epochs_done}/{planned}" if self.metrics and planned is not None else (
            str(self.metrics.get("epochs", "—")))

    def settings(self, ignoring=()):
        """Text equal for runs trained alike: its args less the seed, RESUME_FREE, `ignoring`."""
        return json.dumps({key: value for key, value in self.args.items()
                           if key != "seed" and key not in RESUME_FREE and key not in ignoring},
                          sort_keys=True, default=str) if self.config else None


def read_json(path, required_key):
    """(data, problem): the file's dict, or {} and why not (no problem if it is absent)."""
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, f"{path.name} is not readable JSON"
    if not isinstance(data, dict) or required_key not in data:
        return {}, f"{path.name} has no {required_key!r}"
    return data, None


def read_csv(path):
    """The rows of a CSV file as dicts; [] if it is absent or unreadable."""
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_history(path):
    """history.csv as a list of dicts of numbers (epoch as int; the warning as text)."""
    return [{key: int(value) if key == "epoch" else value if key == "warning" else float(value)
             for key, value in row.items()} for row in read_csv(path)]


def read_per_class(path):
    return {row["class"]: float(row["accuracy"]) for row in read_csv(path)}


def read_run(path, configuration=None, seed=None):
    """The run folder at `path` as a RunRecord."""
    path = Path(path)
    config, config_problem = read_json(path / "config.json", "args")
    metrics, metrics_problem = read_json(path / "metrics.json", "epochs")
    problem = metrics_problem or config_problem
    try:
        history, per_class = read_history(path / "history.csv"), read_per_class(path / "per_class.csv")
    except (KeyError, ValueError, TypeError):
        history, per_class, problem = [], {}, problem or "history.csv or per_class.csv is damaged"
    return RunRecord(configuration or path.parent.name,
                     folder_seed(path.name) if seed is None else seed, path, config, metrics,
                     history, per_class, problem)


def holds_run(path):
    return any((path / name).exists() for name in RUN_FILES)


def find_runs(study_dir):
    """Every <configuration>/seed<S>/ run folder of a study, by configuration and seed."""
    runs = [read_run(path) for path in Path(study_dir).glob("*/seed*")
            if folder_seed(path.name) is not None and not path.parent.name.startswith(".")
            and holds_run(path)]
    return sorted(runs, key=lambda run: (run.configuration, run.seed))


# --- a configuration's seeds ---------------------------------------------------------------------

@dataclass(eq=False)
class Group:
    """A table row: the seeds of one configuration trained alike. Its figures are the mean over
    its finished seeds (while none has finished, over those with an epoch done)."""
    name: str
    runs: list
    split: bool  # its configuration has seeds trained otherwise, in rows of their own

    def __post_init__(self):
        self.finished_runs = [run for run in self.runs if run.finished]
        self.counted = self.finished_runs or [run for run in self.runs if run.metrics]
        self.first = (self.counted or self.runs)[0]  # whose settings the row shows

    @property
    def label(self):
        """Its name; with its seeds where its configuration splits into several rows."""
        return (f"{self.name} ({', '.join(f'seed{run.seed}' for run in self.runs)})"
                if self.split else self.name)

    def status(self):
        others = [f"seed{run.seed} {run.status()}" for run in self.runs if not run.finished]
        return "; ".join([f"{len(self.finished_runs)}/{len(self.runs)} seeds finished", *others])

    def values(self, figure, runs=None):
        """`figure` (a metrics.json key or a function of a record) of the counted runs (or
        `runs`), numbers only."""
        get = figure if callable(figure) else lambda run: run.metrics.get(figure)
        return [value for value in map(get, self.counted if runs is None else runs)
                if is_number(value)]

    def spread(self, figure):
        """Mean, std and count of `figure` over the counted seeds (None without a value)."""
        values = self.values(figure)
        return spread(values) if values else None

    def final_test_accuracies(self):
        return self.values("test_accuracy", self.finished_runs)

    def histories(self):
        return [run.history for run in self.counted if run.history]


def group_runs(runs, order=()):
    """Records -> rows, names in `order` first. Seeds trained with other settings (say
    --epochs) make a row of their own: they are never averaged together."""
    groups = {}
    for run in runs:
        groups.setdefault((run.configuration, run.settings()), []).append(run)
    names = [name for name, _ in groups]
    rows = [Group(name, members, names.count(name) > 1) for (name, _), members in groups.items()]
    order = list(order)
    return sorted(rows, key=lambda row: (order.index(row.name) if row.name in order
                                         else len(order), row.name))
