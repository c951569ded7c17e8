"""The whole study as one document: REPORT.md, built from whatever runs exist under results/.

Every figure in the report is read from a file the report names beside it: a run's
metrics.json (accuracies, epochs done, train_seconds) and config.json (settings, epochs
planned), a visualisation's predictions.json and stats.csv. Nothing is computed but a
difference or a generalisation gap of two such figures.

The original report's figures come in as an `OriginalReport` (report.py takes part (b)'s
from train_transfer.CONFIGURATIONS, so they are written down once). They are set beside
ours, and a difference is given only where the two measure the same thing: a finished run on
the report's dataset (CIFAR-10) and its whole training set. A run that did not finish is
marked with the epochs it did out of those planned, and is never compared as final.

Layout read (see README.md, "Results layout"):
  scratch/<run>/  transfer/<configuration>/  augment/<arm>/  dropout/<run>/   run directories
  ... or, run with --seeds, <run or configuration>/seed<S>/: one run directory per seed
  transfer/, augment/, dropout/ also hold their study's plots and summary.md
  activations/<name>/  overview.png, gradcam.png, predictions.json, stats.csv, layers/

Runs of one configuration over seeds are one table row: the mean ± standard deviation over
its finished seeds, with the number of seeds; where a table sets configurations against each
other (transfer vs scratch, augmentation vs none and standard, dropout vs rate 0) it says
whether the difference exceeds run-to-run noise (engine.seeds: Welch's t-test with at least 3
seeds on both sides; otherwise it is a single run's, or too few seeds', difference).
"""
import csv
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from engine import atomic
from engine.errors import UserError
from engine.experiment import RESUME_FREE_FLAGS, format_seconds
from engine.rundir import RunDirectory
from engine.seeds import compare, folder_seed, is_number, seed_folder, spread
from engine.summary import format_cell, format_mean_std

REPORT_NAME = "REPORT.md"
REPORT_DATASET = "cifar10"  # the dataset of every figure in the original report


@dataclass(frozen=True)
class Part:
    folder: str     # under the results directory
    title: str
    script: str


PARTS = {
    "scratch": Part("scratch", "Part (a): ResNet-18 from scratch", "train_scratch.py"),
    "transfer": Part("transfer", "Part (b): transfer learning from ImageNet", "train_transfer.py"),
    "augment": Part("augment", "Part (c): data augmentation", "augment_study.py"),
    "dropout": Part("dropout", "Part (c): dropout", "dropout_sweep.py"),
    "activations": Part("activations", "Part (d): activations", "visualize_activations.py"),
}


@dataclass(frozen=True)
class OriginalReport:
    """The original report's figures (accuracies as fractions) and what it ran."""
    scratch: dict                 # {"epochs": 50, "train_accuracy": ..., "test_accuracy": ...}
    transfer: dict                # {configuration: (train, val, test) or () where it has none}
    transfer_plots: dict = field(default_factory=dict)  # {compare_*.png: title}, in order
    augment_arms: tuple = ()      # every arm augment_study.py knows, in its order
    report_arms: tuple = ()       # the arms the report tried


# --- reading runs ------------------------------------------------------------------------------

@dataclass
class Run:
    """One run directory as found on disk: its config and metrics, or why they are missing."""
    name: str                       # the run's folder; with --seeds, its configuration's
    path: Path
    config: Optional[dict]
    metrics: Optional[dict]
    problem: Optional[str] = None   # a file that exists but cannot be read
    seed: Optional[int] = None      # the seed of a seed<S>/ run of a study run with --seeds

    @property
    def label(self):
        """'flip' or, one seed of several, 'flip/seed1'."""
        return self.name if self.seed is None else f"{self.name}/{seed_folder(self.seed)}"

    @property
    def epochs_done(self):
        return self.metrics["epochs"] if self.metrics else 0

    @property
    def epochs_planned(self):
        return self.config["flags"].get("epochs") if self.config else None

    @property
    def finished(self):
        return (self.problem is None and self.metrics is not None
                and self.epochs_planned is not None and self.epochs_done >= self.epochs_planned)

    def status(self):
        if self.problem:
            return f"damaged: {self.problem}"
        if self.metrics is None:
            # Files are written when an epoch ends: only the checkpoint of an interrupted
            # first epoch (or nothing readable) is there.
            return "started, no finished epoch"
        if self.epochs_planned is None:
            return f"{self.epochs_done} epochs done, planned unknown (no config.json)"
        if not self.finished:
            return f"unfinished: {self.epochs_done}/{self.epochs_planned} epochs"
        return "finished"

    def metric(self, key):
        return self.metrics.get(key) if self.metrics else None

    def flag(self, key):
        return self.config["flags"].get(key) if self.config else None

    def setting(self, key):
        return self.config.get(key) if self.config else None


def read_json(path, required_key):
    """(data, problem): the file's dict, or None and why not (None, None if it is absent)."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"{path.name} is not readable JSON"
    if not isinstance(data, dict) or required_key not in data:
        return None, f"{path.name} has no {required_key!r}"
    return data, None


def read_run(path, name=None, seed=None):
    config, config_problem = read_json(path / "config.json", "flags")
    metrics, metrics_problem = read_json(path / "metrics.json", "epochs")
    return Run(name or path.name, path, config, metrics, problem=metrics_problem or config_problem,
               seed=seed)


def seed_runs(folder):
    """The seed<S>/ run directories in a configuration's folder, by seed."""
    found = [(folder_seed(child.name), child) for child in folder.iterdir() if child.is_dir()]
    return sorted((seed, child) for seed, child in found
                  if seed is not None and RunDirectory(child).holds_run())


def holds_runs(folder):
    """A run directory, or a configuration's folder of seed<S>/ run directories."""
    return RunDirectory(folder).holds_run() or bool(seed_runs(folder))


def find_runs(part_dir):
    """The runs inside a part's folder, by name: each child that is a run directory, and
    each seed<S>/ run directory of a child run with --seeds (by seed)."""
    if not part_dir.is_dir():
        return []
    runs = []
    for child in sorted(part_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if RunDirectory(child).holds_run():  # a study run without --seeds ...
            runs.append(read_run(child))
        # ... and, in the same folder, its runs with --seeds, if it was run again so
        runs += [read_run(path, child.name, seed) for seed, path in seed_runs(child)]
    return runs


# Flags that choose a run's configuration within its study, or its seed: runs that differ
# only in these were trained alike, so they may be averaged (seeds) or compared (the rest).
CHOOSING_FLAGS = {"seed", "config", "arm", "dropout", "dropout_at"}


def settings_of(run):
    """What a run was trained with, less what chooses its configuration and seed and what
    does not change the experiment (device, precision, ...): equal for runs that are alike."""
    if not run.config:
        return None
    flags = {key: value for key, value in run.config["flags"].items()
             if key not in CHOOSING_FLAGS and key not in RESUME_FREE_FLAGS}
    return json.dumps(flags, sort_keys=True, default=str)


def metric_of(key):
    """A figure of a run: its metrics.json value for key."""
    return lambda run: run.metric(key)


@dataclass
class Configuration:
    """The runs of one configuration: a single run, or one run per seed (seeded).

    It reads like a Run: figures are the mean over its finished seeds (a single run's own,
    finished or not: its status says which), settings those of its first finished run."""
    name: str
    runs: list

    @property
    def seeded(self):
        return self.runs[0].seed is not None

    @property
    def path(self):
        return self.runs[0].path.parent if self.seeded else self.runs[0].path

    @property
    def finished_runs(self):
        return [run for run in self.runs if run.finished]

    @property
    def counted_runs(self):
        """The runs whose figures the row gives."""
        return self.finished_runs if self.seeded else self.runs

    @property
    def representative(self):
        return (self.finished_runs or self.runs)[0]

    @property
    def finished(self):
        return bool(self.finished_runs)

    @property
    def config(self):
        return self.representative.config

    @property
    def metrics(self):
        return self.representative.metrics if self.counted_runs else None

    @property
    def epochs_done(self):
        return self.representative.epochs_done

    @property
    def epochs_planned(self):
        return self.representative.epochs_planned

    def status(self):
        if not self.seeded:
            return self.runs[0].status()
        done = f"{len(self.finished_runs)}/{len(self.runs)} seeds finished"
        others = [f"{seed_folder(run.seed)} {run.status()}" for run in self.runs
                  if not run.finished]
        return "; ".join([done, *others])

    def values(self, figure):
        """figure(run) of each counted run, where it is a number."""
        return [value for value in map(figure, self.counted_runs) if is_number(value)]

    def metric(self, key):
        values = self.values(metric_of(key))
        return spread(values).mean if values else None

    def flag(self, key):
        return self.representative.flag(key)

    @property
    def settings(self):
        return settings_of(self.representative)

    def setting(self, key):
        return self.representative.setting(key)


def group_runs(runs):
    """Runs -> Configurations, in the order their names first appear. Runs of one name are
    one configuration only if they were trained alike: a run made without --seeds, or with
    other settings (say --epochs), stands apart from the seeds it must not be averaged with."""
    groups = {}
    for run in runs:
        groups.setdefault((run.name, run.seed is not None, settings_of(run)), []).append(run)
    return [Configuration(name, members) for (name, _, _), members in groups.items()]


def preferred(configurations):
    """Of several configurations of one name, the one a one-row table shows: run over
    seeds rather than once, then the one with the most finished runs."""
    return max(configurations, key=lambda group: (group.seeded, len(group.finished_runs)))


def all_runs(configurations):
    return [run for configuration in configurations for run in configuration.runs]


@dataclass
class Visualisation:
    """One visualize_activations.py output folder."""
    name: str
    path: Path
    predictions: Optional[dict]
    problem: Optional[str] = None


def find_visualisations(part_dir):
    if not part_dir.is_dir():
        return []
    found = []
    for child in sorted(part_dir.iterdir()):
        known = ("predictions.json", "overview.png", "gradcam.png", "stats.csv")
        if not child.is_dir() or not any((child / name).exists() for name in known):
            continue
        predictions, problem = read_json(child / "predictions.json", "top5")
        if predictions is None and problem is None:
            problem = "no predictions.json (unfinished or from another tool)"
        found.append(Visualisation(child.name, child, predictions, problem))
    return found


# --- formatting ----------------------------------------------------------------------------------

def percent(value, digits):
    return format_cell(value, f"{{:.{digits}%}}")


def points(ours, theirs, digits):
    """ours - theirs in percentage points."""
    return f"{100 * (ours - theirs):+.{digits}f} pp"


def cell(text):
    """Table cells cannot hold a pipe or a line break."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def relative(path, results_dir):
    """A link target relative to REPORT.md (which lies in results_dir), URL-quoted."""
    return quote(Path(path).relative_to(results_dir).as_posix())


def link(text, path, results_dir):
    return f"[{text}]({relative(path, results_dir)})"


def image(caption, path, results_dir):
    return f"![{caption}]({relative(path, results_dir)})"


def code(text):
    return f"`{text}`"


def run_link(run, results_dir):
    """The run's name, linking to the file its numbers come from (a configuration over
    seeds: the folder of its seed<S>/ runs)."""
    metrics = run.path / "metrics.json"
    return link(run.name, metrics if metrics.is_file() else run.path, results_dir)


def run_label(run):
    """The run's name, with its status unless it finished (for captions)."""
    return run.label if run.finished else f"{run.label} ({run.status()})"


def figure_cell(configuration, figure, style):
    """A configuration's figure: the run's own, or over seeds "mean ± std"."""
    values = configuration.values(figure)
    if not values:
        return "—"
    if not configuration.seeded:
        return format_cell(values[0], style)
    found = spread(values)
    return format_mean_std(found.mean, found.std, style)


def percent_cell(configuration, key, digits):
    return figure_cell(configuration, metric_of(key), f"{{:.{digits}%}}")


def seeds_cell(configuration):
    """How many runs a row's figures average: the finished seeds (or the one run)."""
    return str(len(configuration.counted_runs)) if configuration.seeded else "1"


def comparison_cell(configuration, references, key="test_accuracy"):
    """The configuration's final test accuracy against its reference's (of `references`,
    the reference configurations found, the one trained with the same settings), and
    whether the difference is beyond noise (engine.seeds.compare); "—" for a reference."""
    if not references:
        return "— (not run)"
    if any(configuration is reference for reference in references):
        return "—"
    alike = [reference for reference in references if reference.settings == configuration.settings]
    if not alike:
        return "— (reference trained with other settings)"
    reference = max(alike, key=lambda group: (group.seeded == configuration.seeded,
                                              len(group.finished_runs)))
    ours, theirs = (finished_values(group, key) for group in (configuration, reference))
    if not ours or not theirs:
        return "— (not finished)"
    return compare(ours, theirs).text()


def finished_values(configuration, key):
    """A figure of each finished run (finished only: a comparison is of final figures)."""
    return [value for value in map(metric_of(key), configuration.finished_runs)
            if is_number(value)]


def epochs_cell(run):
    if run.metrics is None:
        return "—"
    planned = run.epochs_planned
    return f"{run.epochs_done}/{planned}" if planned is not None else str(run.epochs_done)


# --- what may be compared with the report --------------------------------------------------------

def not_comparable_because(run):
    """Why the run's figures cannot stand beside the report's as final (None: they can)."""
    if not run.finished:
        return "not finished"
    if run.setting("dataset") != REPORT_DATASET:
        return f"{run.setting('dataset')} data, the report: {REPORT_DATASET}"
    if run.flag("subset") is not None:
        return f"{run.flag('subset')}-image subset"
    return None


def difference_cell(run, key, theirs, digits):
    ours = run.metric(key)
    if theirs is None:
        return "— (not in the report)"
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return "—"
    reason = not_comparable_because(run)
    return f"— ({reason})" if reason else points(ours, theirs, digits)


# --- commands that produce a missing part ---------------------------------------------------------

def command(results_dir, script, out=None, *extra):
    """The command that writes into results_dir: --out only where it is not the default."""
    words = ["python", script, *extra]
    if out is not None and Path(results_dir) != Path("results"):
        words += ["--out", str(out)]
    return shlex.join(words)


def part_command(key, results_dir, scratch_runs=()):
    results_dir = Path(results_dir)
    if key == "scratch":
        return command(results_dir, "train_scratch.py", results_dir / "scratch" / "cifar10_seed0")
    if key == "activations":
        finished = [run for run in scratch_runs if run.finished]
        run = finished[0].path if finished else results_dir / "scratch" / "cifar10_seed0"
        return command(results_dir, "visualize_activations.py",
                       results_dir / "activations" / run.name, "--run", str(run))
    return command(results_dir, PARTS[key].script, results_dir / key)


# --- sections ------------------------------------------------------------------------------------

def settings_section(configurations, results_dir):
    """Each run's settings (each seed's, over seeds), from its config.json (epochs planned)
    and metrics.json (time)."""
    rows = []
    for run in all_runs(configurations):
        image_size = run.setting("image_size")
        seconds = run.metric("train_seconds")
        curves = run.path / "curves.png"
        rows.append([
            link(run.label, run.path / "config.json", results_dir) if run.config else run.label,
            run.setting("dataset") or "—", split_sizes(run), epochs_cell(run),
            run.flag("batch_size") or "—", format_cell(run.flag("lr"), "{:g}"),
            f"{image_size}x{image_size}" if image_size else "—",
            run.setting("device") or "—", run.setting("precision") or "—",
            format_seconds(seconds) if seconds is not None else "—",
            run.setting("torch") or "—",
            link("curves.png", curves, results_dir) if curves.is_file() else "—"])
    return (["**Settings** (each run's `config.json`; wall time: `metrics.json` train_seconds, "
             "training and evaluation summed over the finished epochs):", ""]
            + table(["run", "dataset", "images train / val / test", "epochs done / planned",
                     "batch", "peak lr", "image size", "device", "precision", "wall time",
                     "torch", "curves"], rows))


def split_sizes(run):
    """ "45,000 / 5,000 / 10,000": the images in each split, from config.json's sizes."""
    sizes = run.setting("sizes")
    if not isinstance(sizes, dict):
        return "—"
    return " / ".join(format_cell(sizes.get(split), "{:,}") for split in ("train", "val", "test"))


def missing_part_lines(key, results_dir, scratch_runs=()):
    return [f"**Not run yet**: nothing in `{PARTS[key].folder}/`. Run: "
            f"`{part_command(key, results_dir, scratch_runs)}`"]


def add_missing_line(script, flag, done, missing, part_dir, results_dir):
    """How to add the report's missing configurations: list the done ones too, since a study
    writes its summary and plots from the configurations of its latest command only."""
    if not missing:
        return []
    return ["", f"Of the report's, not run here: {', '.join(missing)}. Add them with `"
            + command(results_dir, script, part_dir, flag, *done, *missing)
            + "` and the other flags the runs above used (finished runs are reused)."]


def plots_section(results_dir, plots):
    """Embed the plots (file, caption) that exist: a study draws a plot only when it has
    the runs the plot compares, so an absent one is no fault."""
    lines = []
    for path, caption in plots:
        if path.is_file():
            lines += [f"*{caption}* (`{relative(path, results_dir)}`)", "",
                      image(caption, path, results_dir), ""]
    return lines


def scratch_section(runs, results_dir, original):
    report = original.scratch
    configurations = group_runs(runs)
    lines = [f"The report trained its hand-written ResNet-18 on CIFAR-10 for {report['epochs']} "
             f"epochs: {percent(report['train_accuracy'], 2)} train and "
             f"{percent(report['test_accuracy'], 2)} test accuracy (its training log, last epoch). "
             "Ours: the last finished epoch of each run (mean ± std over seeds where a run was "
             "repeated with --seeds).", ""]
    if not runs:
        lines += missing_part_lines("scratch", results_dir) + [""]
    rows = [["**the report**", "—", "—", REPORT_DATASET, str(report["epochs"]),
             percent(report["train_accuracy"], 2), "—", percent(report["test_accuracy"], 2), ""]]
    for configuration in configurations:
        rows.append([run_link(configuration, results_dir), configuration.status(),
                     seeds_cell(configuration), configuration.setting("dataset") or "—",
                     epochs_cell(configuration),
                     *(percent_cell(configuration, key, 2)
                       for key in ("train_accuracy", "val_accuracy", "test_accuracy")),
                     difference_cell(configuration, "test_accuracy", report["test_accuracy"], 2)])
    lines += table(["run", "status", "seeds", "dataset", "epochs", "train acc", "val acc",
                    "test acc", "test − report"], rows)
    lines += ["", "Source: ours, each run's `metrics.json` (linked); the report's, its part (a) "
              "training log (\"Acc: 89.290%\", \"Accuracy: 8735/10000\"). A difference is given "
              "only for a finished CIFAR-10 run on the whole training set (over seeds: of the "
              "mean)."]
    lines += own_summary_lines(configurations, results_dir) + [""]
    if runs:
        lines += settings_section(configurations, results_dir) + [""]
        lines += plots_section(results_dir, [(run.path / "curves.png", f"{run_label(run)}: loss "
                                              f"and accuracy per epoch, train / val / test")
                                             for run in runs])
    return lines


def own_summary_lines(configurations, results_dir):
    """Links to the summary.md that train_scratch.py --seeds writes beside its seeds."""
    found = [configuration.path / "summary.md" for configuration in configurations
             if configuration.seeded and (configuration.path / "summary.md").is_file()]
    if not found:
        return []
    return ["", "Over seeds, each folder's own table: " + ", ".join(
        link(relative(path, results_dir), path, results_dir) for path in found) + "."]


def noise_note(references):
    return (f"{references}: the difference of final test accuracy (mean over finished seeds), "
            f"in points, and whether it is beyond run-to-run noise: Welch's t-test with at "
            f"least 3 finished seeds on both sides (p < 0.05: beyond noise); with fewer, the "
            f"difference of a single run (or of too few seeds), which may be noise.")


def transfer_section(runs, results_dir, original):
    part_dir = results_dir / "transfer"
    lines = ["The report's four configurations of torchvision's ResNet-18 (30 epochs at 32x32), "
             "with its train / validation / test accuracy beside ours (the last finished epoch; "
             "mean ± std over seeds where the study ran with --seeds).", ""]
    if not runs:
        lines += missing_part_lines("transfer", results_dir) + [""]
    # train_transfer.py names each configuration's folder after it.
    groups = group_runs(runs)
    by_name = {name: preferred([group for group in groups if group.name == name])
               for name in dict.fromkeys(group.name for group in groups)}
    scratch = [group for group in groups if group.name == "scratch"]
    names = list(original.transfer) + [name for name in by_name if name not in original.transfer]
    rows = []
    for name in names:
        figures = original.transfer.get(name, ())
        theirs = [percent(value, 1) for value in figures] if figures else ["—"] * 3
        configuration = by_name.get(name)
        if configuration is None:
            rows.append([name, "not run", *["—"] * 7, *theirs, "—"])
            continue
        image_size = configuration.setting("image_size")
        rows.append([run_link(configuration, results_dir), configuration.status(),
                     seeds_cell(configuration), epochs_cell(configuration),
                     f"{image_size}x{image_size}" if image_size else "—",
                     *(percent_cell(configuration, key, 1) for key in
                       ("train_accuracy", "val_accuracy", "test_accuracy")),
                     comparison_cell(configuration, scratch),
                     *theirs,
                     difference_cell(configuration, "test_accuracy",
                                     figures[2] if figures else None, 1)])
    lines += table(["configuration", "status", "seeds", "epochs", "image size", "train acc",
                    "val acc", "test acc", "test acc vs scratch", "report train", "report val",
                    "report test", "test − report"], rows)
    lines += ["", "Source: ours, each run's `metrics.json` (linked); the report's, its text "
              "(\"Training Accuracy: 0.986 ...\"), as recorded in `train_transfer.py` "
              "(CONFIGURATIONS). A difference is given only for a finished CIFAR-10 run on the "
              "whole training set (over seeds: of the mean).", "",
              noise_note("test acc vs scratch")]
    others = [group for group in groups if group is not by_name[group.name]]
    if others:
        lines += ["", f"Also found, not in this table: {len(others)} other run(s) of these "
                  "configurations (made without --seeds beside runs with them, or with other "
                  "settings); see the settings below."]
    if runs:
        lines += add_missing_line("train_transfer.py", "--configs",
                                  [name for name in names if name in by_name],
                                  [name for name in original.transfer
                                   if original.transfer[name] and name not in by_name],
                                  part_dir, results_dir)
    if (part_dir / "summary.md").is_file():
        lines += ["", "The study's own table, with parameter counts and seconds per epoch: "
                  + link("transfer/summary.md", part_dir / "summary.md", results_dir) + "."]
    lines += [""]
    if runs:
        lines += settings_section([by_name[name] for name in names if name in by_name] + others,
                                  results_dir) + [""]
        lines += plots_section(results_dir, [(part_dir / name, title)
                                             for name, title in original.transfer_plots.items()])
    return lines


def complement_of(key):
    """1 - a run's metric (error from accuracy)."""
    return lambda run: 1 - run.metric(key) if is_number(run.metric(key)) else None


def augment_section(runs, results_dir, original):
    part_dir = results_dir / "augment"
    lines = ["The report trained one network per augmentation on a tiny CIFAR-10 and gave train "
             "and test accuracy and error in a table that is an image, **with no numbers in its "
             "text**: there is nothing to set beside ours, so this table is ours only "
             "(the last finished epoch; mean ± std over seeds where the study ran with "
             "--seeds).", ""]
    if not runs:
        return lines + missing_part_lines("augment", results_dir) + [""]
    order = {arm: index for index, arm in enumerate(original.augment_arms)}
    configurations = sorted(group_runs(runs), key=lambda group: (
        order.get(group.setting("arm") or group.name, len(order)), group.name))
    def arm(group):
        return group.setting("arm") or group.name

    def runs_of(name):
        return [group for group in configurations if arm(group) == name]
    rows = []
    for group in configurations:
        rows.append([run_link(group, results_dir),
                     "yes" if arm(group) in original.report_arms else "",
                     group.status(), seeds_cell(group), epochs_cell(group),
                     percent_cell(group, "train_accuracy", 2),
                     percent_cell(group, "test_accuracy", 2),
                     figure_cell(group, complement_of("train_accuracy"), "{:.2%}"),
                     figure_cell(group, complement_of("test_accuracy"), "{:.2%}"),
                     percent_cell(group, "val_accuracy", 2),
                     comparison_cell(group, runs_of("none")),
                     comparison_cell(group, runs_of("standard"))])
    lines += table(["arm", "in the report", "status", "seeds", "epochs", "train acc", "test acc",
                    "train error", "test error", "val acc", "test acc vs none",
                    "test acc vs standard"], rows)
    lines += ["", "Source: each run's `metrics.json` (linked), its arm from its `config.json`; "
              "error = 1 − accuracy.", "", noise_note("test acc vs none, vs standard")]
    done = list(dict.fromkeys(map(arm, configurations)))
    lines += add_missing_line("augment_study.py", "--arms", done,
                              [arm for arm in original.report_arms if arm not in done],
                              part_dir, results_dir)
    if (part_dir / "summary.md").is_file():
        lines += ["", "The study's own table: "
                  + link("augment/summary.md", part_dir / "summary.md", results_dir) + "."]
    lines += [""] + settings_section(configurations, results_dir) + [""]
    lines += plots_section(results_dir, [
        (part_dir / "test_accuracy.png", "test accuracy per augmentation"),
        (part_dir / "curves.png", "per-arm curves on shared axes"),
        (part_dir / "gallery.png", "each augmentation applied to the same training images")])
    return lines


def dropout_key(run):
    rate = run.flag("dropout")
    return (rate != 0, str(run.flag("dropout_at") or ""), rate if rate is not None else 0, run.name)


def gap_points(run):
    """train − test accuracy of a run, in points."""
    train, test = run.metric("train_accuracy"), run.metric("test_accuracy")
    return 100 * (train - test) if is_number(train) and is_number(test) else None


def dropout_section(runs, results_dir):
    part_dir = results_dir / "dropout"
    lines = ["The report varied the dropout rate from 0 to 0.5 in steps of 0.1 for 80 epochs, "
             "\"after different layers\", and showed the result **only as plots** (test accuracy "
             "and loss per epoch): there are no numbers to set beside ours, so this table is "
             "ours only (the last finished epoch; mean ± std over seeds where the sweep ran "
             "with --seeds).", ""]
    if not runs:
        return lines + missing_part_lines("dropout", results_dir) + [""]
    configurations = sorted(group_runs(runs), key=dropout_key)
    rate_zero = [group for group in configurations if group.flag("dropout") == 0]
    rows = []
    for group in configurations:
        rows.append([run_link(group, results_dir), group.flag("dropout_at") or "—",
                     format_cell(group.flag("dropout"), "{:.1f}"), group.status(),
                     seeds_cell(group), epochs_cell(group),
                     percent_cell(group, "train_accuracy", 2),
                     percent_cell(group, "test_accuracy", 2),
                     comparison_cell(group, rate_zero),
                     figure_cell(group, gap_points, "{:+.2f} pp"),
                     figure_cell(group, metric_of("test_loss"), "{:.3f}")])
    lines += table(["run", "placement", "rate", "status", "seeds", "epochs", "train acc",
                    "test acc", "test acc vs rate 0", "train − test", "test loss"], rows)
    lines += ["", "Source: each run's `metrics.json` (linked), placement and rate from its "
              "`config.json`; rate 0 is one run shared by every placement.", "",
              noise_note("test acc vs rate 0")]
    if (part_dir / "summary.md").is_file():
        lines += ["", "The study's own table: "
                  + link("dropout/summary.md", part_dir / "summary.md", results_dir) + "."]
    lines += [""] + settings_section(configurations, results_dir) + [""]
    curves = sorted(part_dir.glob("curves_*.png"))
    lines += plots_section(results_dir, [
        *((path, f"test accuracy and loss per epoch, dropout at "
                 f"{path.stem.removeprefix('curves_')}: the report's plots") for path in curves),
        (part_dir / "rate_summary.png",
         "final test accuracy, and train − test, against the rate")])
    return lines


def dead_channels(stats_path):
    """(layers, dead channels in all) from stats.csv, or None if it cannot be read."""
    try:
        with open(stats_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return len(rows), sum(int(row["dead_channels"]) for row in rows)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def visualisation_lines(item, results_dir):
    lines = [f"### {item.name}", ""]
    if item.problem:
        lines += [f"**Incomplete**: {item.problem}.", ""]
    else:
        predictions = item.predictions
        lines += [f"From {link('predictions.json', item.path / 'predictions.json', results_dir)}: "
                  f"model {code(predictions.get('model', '—'))}, image "
                  f"{code(predictions.get('image', '—'))}, true class "
                  f"**{predictions.get('true_class') or '—'}**; Grad-CAM from "
                  f"`{predictions.get('gradcam_layer', '—')}`.", ""]
        lines += table(["rank", "class", "probability"],
                       [[rank, entry.get("class", "—"),
                         format_cell(entry.get("probability"), "{:.3f}")]
                        for rank, entry in enumerate(predictions["top5"], 1)])
        lines += [""]
    stats_path = item.path / "stats.csv"
    counted = dead_channels(stats_path) if stats_path.is_file() else None
    if counted:
        lines += [f"{link('stats.csv', stats_path, results_dir)}: {counted[0]} layers, "
                  f"{counted[1]} dead channels in all (all-zero for this image).", ""]
    if (item.path / "layers").is_dir():
        lines += ["Every layer's channels: " + link(f"{item.name}/layers/",
                                                    item.path / "layers", results_dir) + ".", ""]
    return lines + plots_section(results_dir, [
        (item.path / "overview.png", f"{item.name}: channels 0-7 of each layer, input to layer4"),
        (item.path / "gradcam.png", f"{item.name}: Grad-CAM")])


def activations_section(items, results_dir, scratch_runs):
    lines = ["The report showed a few channels of a few layers of its transfer-learned network "
             "for one CIFAR-10 car (figures only, no numbers). Ours: every layer, layer "
             "statistics and Grad-CAM, for each visualisation below.", ""]
    if not items:
        return lines + missing_part_lines("activations", results_dir, scratch_runs) + [""]
    for item in items:
        lines += visualisation_lines(item, results_dir)
    return lines


# --- the document ---------------------------------------------------------------------------------

@dataclass
class Found:
    """Everything found under the results directory, per part."""
    runs: dict            # {part key: [Run]} for the four training parts
    visualisations: list

    def count(self, key):
        return len(self.visualisations) if key == "activations" else len(self.runs[key])

    def is_empty(self):
        return not self.visualisations and not any(self.runs.values())


def find_everything(results_dir):
    runs = {key: find_runs(results_dir / key)
            for key in ("scratch", "transfer", "augment", "dropout")}
    return Found(runs, find_visualisations(results_dir / "activations"))


def anchor(title):
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(char for char in title.lower() if char.isalnum() or char in " -_")
    return "#" + kept.replace(" ", "-")


def overview_lines(found):
    rows = []
    for key, part in PARTS.items():
        if key == "activations":
            count = found.count(key)
            state = (f"{sum(item.problem is None for item in found.visualisations)} complete"
                     if count else "not run")
        else:
            runs = found.runs[key]
            finished = sum(run.finished for run in runs)
            state = (f"{finished} finished, {len(runs) - finished} not finished" if runs
                     else "not run")
        rows.append([f"[{part.title}]({anchor(part.title)})", f"`{part.script}`",
                     count_text(found, key), state])
    return table(["part", "script", "found", "state"], rows)


def count_text(found, key):
    count = found.count(key)
    noun = "visualisation" if key == "activations" else "run"
    return f"{count} {noun}{'s' if count != 1 else ''}"


def build_report(results_dir, original, found=None):
    """REPORT.md's text for the runs under results_dir."""
    results_dir = Path(results_dir)
    found = found or find_everything(results_dir)
    lines = ["# ResNet-18 on CIFAR-10: the whole study", "",
             "Written by `report.py` from what it found in this folder, set beside the original "
             "report (ELL 793 Assignment 3, S. Garg and V. Gupta). Every figure is read from the "
             "file named beside its table; accuracies are those of the last finished epoch; "
             "differences are ours − the report's, in percentage points (pp). A run that did not "
             "finish says so (epochs done / planned) and is not compared as final.", ""]
    lines += overview_lines(found) + [""]
    sections = [
        ("scratch", scratch_section(found.runs["scratch"], results_dir, original)),
        ("transfer", transfer_section(found.runs["transfer"], results_dir, original)),
        ("augment", augment_section(found.runs["augment"], results_dir, original)),
        ("dropout", dropout_section(found.runs["dropout"], results_dir)),
        ("activations", activations_section(found.visualisations, results_dir,
                                            found.runs["scratch"])),
    ]
    for key, body in sections:
        lines += [f"## {PARTS[key].title}", "", f"`{PARTS[key].script}`, results in "
                  f"`{PARTS[key].folder}/`.", ""] + body
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def check_results_dir(results_dir, found):
    """Refuse a folder that is not a results root, with the fix, before writing anything."""
    if not found.is_empty():
        return
    # A likely slip: the folder of one part, or one run, instead of the folder above them.
    if RunDirectory(results_dir).holds_run():
        root = results_dir.parent.parent
        if folder_seed(results_dir.name) is not None:  # <part>/<configuration>/seed<S>
            root = root.parent
    elif seed_runs(results_dir):
        root = results_dir.parent.parent
    elif results_dir.name in PARTS or any(child.is_dir() and holds_runs(child)
                                          for child in results_dir.iterdir()):
        root = results_dir.parent
    else:
        root = None
    if root is not None:
        raise UserError(f"--results {results_dir} is a part's folder or a run, not the results "
                        f"root: pass the folder that holds scratch/, transfer/, augment/, "
                        f"dropout/ and activations/ (here: --results {root})")
    raise UserError(f"no runs under {results_dir} (nothing in scratch/, transfer/, augment/, "
                    f"dropout/ or activations/): run a part first, e.g. python train_scratch.py")


def write_report(results_dir, original):
    """Write results_dir/REPORT.md atomically; return (its path, what was found)."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise UserError(f"--results {results_dir} does not exist: run a part first (e.g. python "
                        f"train_scratch.py writes results/scratch/...) or pass the folder that "
                        f"holds the runs")
    if not results_dir.is_dir():
        raise UserError(f"--results {results_dir} is a file, not a directory: pass the folder "
                        f"that holds scratch/, transfer/, augment/, dropout/ and activations/")
    found = find_everything(results_dir)
    check_results_dir(results_dir, found)
    path = results_dir / REPORT_NAME
    try:
        atomic.write_text(path, build_report(results_dir, original, found))
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}): check the folder's "
                        f"permissions") from None
    return path, found


def summary_line(path, found):
    """What the script prints: where the report is and what it holds."""
    counts = ", ".join(f"{key} {found.count(key)}" for key in PARTS)
    return f"wrote {path} ({counts})"
