"""REPORT.md: the runs under a results folder, beside the original report (README.md: "The
whole study as one document", with the layout read). Every figure is read from a file named
beside it; only means and differences are computed here."""
import csv
import json
import re
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from engine import atomic
from engine.augment import ARMS
from engine.configurations import (OUR_CHOICES, REPORT_ARMS, REPORT_DATASET, REPORT_SCRATCH,
                                   TRANSFER, TRANSFER_COMPARISONS)
from engine.errors import UserError
from engine.seeds import compare, comparison_note, folder_seed, is_number, spread
from engine.summary import format_cell, format_mean_std, table
from engine.training import RESUME_FREE, format_seconds, holds_run

REPORT_NAME = "REPORT.md"
PARTS = {  # folder under the results root: (title, script)
    "scratch": ("Part (a): ResNet-18 from scratch", "train_scratch.py"),
    "transfer": ("Part (b): transfer learning from ImageNet", "train_transfer.py"),
    "augment": ("Part (c): data augmentation", "augment_study.py"),
    "dropout": ("Part (c): dropout", "dropout_sweep.py"),
    "activations": ("Part (d): activations", "visualize_activations.py"),
}
# Arguments that name a configuration within its study: configurations set against each
# other differ in them by design, so a comparison ignores them.
CHOOSING = {"config", "arm", "dropout", "dropout_at"}
ACCURACIES = ("train_accuracy", "val_accuracy", "test_accuracy")
SOURCE = "Source: ours, each seed's `metrics.json` (in the linked folder) and `config.json`"
COMPARABLE = ("A difference is given only for a finished CIFAR-10 run on the whole training "
              "set (over seeds: of the mean).")


# --- reading runs ------------------------------------------------------------------------------

@dataclass
class Run:
    """One <configuration>/seed<S>/ run: config and metrics are {} if absent or unreadable."""
    configuration: str
    seed: int
    path: Path
    config: dict
    metrics: dict
    problem: str  # why a file is unreadable, or None

    @property
    def label(self):
        return f"{self.configuration}/seed{self.seed}"

    @property
    def args(self):
        return self.config.get("args", {})

    @property
    def finished(self):
        planned = self.args.get("epochs")
        return not self.problem and planned is not None and self.metrics.get("epochs", 0) >= planned

    def status(self):
        if self.problem:
            return f"damaged: {self.problem}"
        if not self.metrics:  # files are written as an epoch ends: none has
            return "started, no finished epoch"
        if not self.config:
            return f"{self.metrics['epochs']} epochs done, planned unknown (no config.json)"
        return "finished" if self.finished else f"unfinished: {epochs_cell(self)} epochs"

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


def find_runs(part_dir):
    """Every <configuration>/seed<S>/ run directory of a part, by configuration and seed."""
    runs = []
    for path in part_dir.glob("*/seed*"):
        seed = folder_seed(path.name)
        if seed is not None and not path.parent.name.startswith(".") and holds_run(path):
            config, config_problem = read_json(path / "config.json", "args")
            metrics, metrics_problem = read_json(path / "metrics.json", "epochs")
            runs.append(Run(path.parent.name, seed, path, config, metrics,
                            metrics_problem or config_problem))
    return sorted(runs, key=lambda run: (run.configuration, run.seed))


@dataclass(eq=False)
class Configuration:
    """A table row: the seeds of one configuration trained alike. Figures: the mean over its
    finished seeds (while none has finished, over those with an epoch done)."""
    name: str
    runs: list
    split: bool  # its configuration has seeds trained otherwise, in rows of their own

    def __post_init__(self):
        self.finished_runs = [run for run in self.runs if run.finished]
        self.counted = self.finished_runs or [run for run in self.runs if run.metrics]
        self.first = (self.counted or self.runs)[0]  # whose settings the row shows

    def status(self):
        others = [f"seed{run.seed} {run.status()}" for run in self.runs if not run.finished]
        return "; ".join([f"{len(self.finished_runs)}/{len(self.runs)} seeds finished", *others])

    def values(self, figure, runs=None):
        """`figure` (a metrics.json key or a function of a run) of the counted runs (or `runs`),
        numbers only."""
        get = figure if callable(figure) else lambda run: run.metrics.get(figure)
        return [value for value in map(get, self.counted if runs is None else runs)
                if is_number(value)]

    def final_test_accuracies(self):
        return self.values("test_accuracy", self.finished_runs)


def group_runs(runs, order=()):
    """Runs -> rows, names in `order` first. Seeds trained with other settings (say --epochs)
    make a row of their own: they are never averaged together."""
    groups = {}
    for run in runs:
        groups.setdefault((run.configuration, run.settings()), []).append(run)
    names = [name for name, _ in groups]
    rows = [Configuration(name, members, names.count(name) > 1)
            for (name, _), members in groups.items()]
    order = list(order)
    return sorted(rows, key=lambda row: (order.index(row.name) if row.name in order
                                         else len(order), row.name))


def named(configurations, name):
    return [configuration for configuration in configurations if configuration.name == name]


def find_visualisations(part_dir):
    """visualize_activations.py's folders: [(folder, predictions.json, why it is unusable)]."""
    found = []
    for path in sorted(part_dir.glob("*")):
        known = ("predictions.json", "overview.png", "gradcam.png", "stats.csv")
        if path.is_dir() and any((path / name).exists() for name in known):
            predictions, problem = read_json(path / "predictions.json", "top5")
            if not predictions and not problem:
                problem = "no predictions.json (unfinished or from another tool)"
            found.append((path, predictions, problem))
    return found


# --- cells ------------------------------------------------------------------------------------

def link(text, path, results_dir, bang=""):
    """A link (bang="!": an image) relative to REPORT.md, which lies in results_dir."""
    return f"{bang}[{text}]({quote(Path(path).relative_to(results_dir).as_posix())})"


def row_name(configuration, results_dir):
    """Its name, linking to its folder of seed<S>/ runs; with its seeds where it splits."""
    name = link(configuration.name, configuration.first.path.parent, results_dir)
    if not configuration.split:
        return name
    return f"{name} ({', '.join(f'seed{run.seed}' for run in configuration.runs)})"


def figure_cell(configuration, figure, style):
    """One seed's figure, or over seeds "mean ± std"."""
    values = configuration.values(figure)
    if not values:
        return "—"
    found = spread(values)
    return (format_mean_std(found.mean, found.std, style) if found.n > 1
            else format_cell(found.mean, style))


def percent_cells(configuration, keys, digits):
    return [figure_cell(configuration, key, f"{{:.{digits}%}}") for key in keys]


def epochs_cell(run):
    """Epochs done / planned."""
    done, planned = run.metrics.get("epochs", "—"), run.args.get("epochs")
    return f"{done}/{planned}" if run.metrics and planned is not None else str(done)


def image_size_cell(run):
    size = run.config.get("image_size")
    return f"{size}x{size}" if size else "—"


def comparison_cell(configuration, references):
    """Final test accuracy vs that of the `references` row trained alike, beyond noise or not."""
    if not references:
        return "— (not run)"
    if configuration in references:
        return "—"
    alike = [reference for reference in references
             if reference.first.settings(CHOOSING) == configuration.first.settings(CHOOSING)]
    if not alike:
        return "— (reference trained with other settings)"
    ours, theirs = configuration.final_test_accuracies(), alike[0].final_test_accuracies()
    return compare(ours, theirs).text() if ours and theirs else "— (not finished)"


def difference_cell(configuration, theirs, digits):
    """Ours − the report's test accuracy, only where both measure the same thing: finished
    runs on the report's dataset and its whole training set."""
    ours, run = configuration.final_test_accuracies(), configuration.first
    if theirs is None:
        return "— (not in the report)"
    if not ours:
        return "— (not finished)"
    if run.config.get("dataset") != REPORT_DATASET:
        return f"— ({run.config.get('dataset')} data, the report: {REPORT_DATASET})"
    if run.args.get("subset") is not None:
        return f"— ({run.args['subset']}-image subset)"
    return f"{100 * (spread(ours).mean - theirs):+.{digits}f} pp"


# --- what every part has ----------------------------------------------------------------------

def command(results_dir, script, out, *extra):
    """The command that writes into results_dir: --out only where it is not the default."""
    words = ["python", script, *extra]
    if Path(results_dir) != Path("results"):
        words += ["--out", str(out)]
    return shlex.join(words)


def part_command(key, results_dir, scratch_runs=()):
    results_dir = Path(results_dir)
    if key != "activations":  # a study's --out is its part's folder
        return command(results_dir, PARTS[key][1], results_dir / key)
    finished = [run.path for run in scratch_runs if run.finished]
    run = finished[0] if finished else results_dir / "scratch" / REPORT_DATASET / "seed0"
    out = results_dir / "activations" / f"scratch_{run.parent.name}_{run.name}"
    return command(results_dir, "visualize_activations.py", out, "--run", str(run))


def not_run_lines(key, results_dir, scratch_runs=()):
    return [f"**Not run yet**: nothing in `{key}/`. Run: "
            f"`{part_command(key, results_dir, scratch_runs)}`", ""]


def add_missing_notes(key, flag, done, missing, results_dir):
    """The command adding the report's missing configurations, repeating those done: a study's
    summary and plots cover only its latest command's configurations."""
    if not missing or not done:
        return []
    return [f"Of the report's, not run here: {', '.join(missing)}. Add them with `"
            + command(results_dir, PARTS[key][1], results_dir / key, flag, *done, *missing)
            + "` and the other flags the runs above used (finished runs are reused)."]


def settings_lines(configurations, results_dir):
    """Each run's settings, from its config.json (and its wall time from metrics.json)."""
    rows = []
    for run in (run for configuration in configurations for run in configuration.runs):
        sizes, seconds = run.config.get("sizes"), run.metrics.get("train_seconds")
        curves = run.path / "curves.png"
        rows.append([
            link(run.label, run.path / "config.json", results_dir) if run.config else run.label,
            run.config.get("dataset", "—"),
            " / ".join(format_cell(sizes.get(split), "{:,}") for split in ("train", "val", "test"))
            if isinstance(sizes, dict) else "—",
            epochs_cell(run), run.args.get("batch_size", "—"),
            format_cell(run.args.get("lr"), "{:g}"), image_size_cell(run),
            run.config.get("device", "—"), run.config.get("precision", "—"),
            format_seconds(seconds) if is_number(seconds) else "—",
            run.config.get("torch", "—"),
            link("curves.png", curves, results_dir) if curves.is_file() else "—"])
    return (["**Settings** (each run's `config.json`; wall time: `metrics.json` train_seconds, "
             "training and evaluation summed over the finished epochs):", ""]
            + table(["run", "dataset", "images train / val / test", "epochs done / planned",
                     "batch", "peak lr", "image size", "device", "precision", "wall time",
                     "torch", "curves"], rows) + [""])


WORST_CLASSES = 3


def read_per_class(path):
    """{class: test accuracy} from a run's per_class.csv ({} if absent or unreadable)."""
    try:
        with open(path, newline="") as handle:
            return {row["class"]: float(row["accuracy"]) for row in csv.DictReader(handle)}
    except (OSError, KeyError, ValueError):
        return {}


def worst_classes_lines(configurations):
    """The part's hardest classes: per-class test accuracy, the mean over its runs."""
    tables = [read_per_class(run.path / "per_class.csv")
              for configuration in configurations for run in configuration.runs]
    tables = [found for found in tables if found]
    if not tables:
        return []
    means = {name: statistics.mean(found[name] for found in tables if name in found)
             for name in dict.fromkeys(name for found in tables for name in found)}
    worst = sorted(means, key=means.get)[:WORST_CLASSES]
    return [f"**Worst classes** (test accuracy per class, each run's `per_class.csv`, mean over "
            f"{len(tables)} runs): " + ", ".join(f"{name} {means[name]:.1%}" for name in worst), ""]


def plot_lines(plots, results_dir):
    """Embed the (file, caption) plots that exist: a study draws only plots it has runs for."""
    lines = []
    for path, caption in plots:
        if path.is_file():
            lines += [f"*{caption}* (`{path.relative_to(results_dir).as_posix()}`)", "",
                      link(caption, path, results_dir, bang="!"), ""]
    return lines


def study_lines(key, intro, configurations, results_dir, *, headers, rows, notes, plots):
    """A training part: table (shown without runs when it has the report's rows), notes,
    the study's summary.md, settings and plots."""
    lines = [intro, ""] + ([] if configurations else not_run_lines(key, results_dir))
    if not rows:
        return lines
    if any(configuration.split for configuration in configurations):
        notes.append("A configuration whose seeds were trained with other settings (say "
                     "--epochs) has a row per set of settings, its seeds named.")
    summary = results_dir / key / "summary.md"
    if summary.is_file():
        notes.append(f"The study's own table: {link(f'{key}/summary.md', summary, results_dir)}.")
    lines += table(headers, rows) + [""]
    for note in notes:
        lines += [note, ""]
    if configurations:
        lines += (worst_classes_lines(configurations) + settings_lines(configurations, results_dir)
                  + plot_lines(plots, results_dir))
    return lines


# --- the parts --------------------------------------------------------------------------------

def scratch_section(found, results_dir):
    report, configurations = REPORT_SCRATCH, group_runs(found["scratch"])
    train, test = f"{report['train_accuracy']:.2%}", f"{report['test_accuracy']:.2%}"
    rows = [["**the report**", "—", "—", REPORT_DATASET, report["epochs"], train, "—", test,
             ""]]
    rows += [[row_name(group, results_dir), group.status(), len(group.counted),
              group.first.config.get("dataset", "—"), epochs_cell(group.first),
              *percent_cells(group, ACCURACIES, 2),
              difference_cell(group, report["test_accuracy"], 2)] for group in configurations]
    return study_lines(
        "scratch", f"The report trained its hand-written ResNet-18 on CIFAR-10 for "
        f"{report['epochs']} epochs: {train} train and {test} test accuracy (its training log, "
        f"last epoch).",
        configurations, results_dir,
        headers=["run", "status", "seeds", "dataset", "epochs", "train acc", "val acc",
                 "test acc", "test − report"], rows=rows,
        notes=[f"{SOURCE}; the report's, its part (a) training log (\"Acc: 89.290%\", "
               f"\"Accuracy: 8735/10000\"). {COMPARABLE}"],
        plots=[(run.path / "curves.png", f"{run.label} ({run.status()}): loss and accuracy per "
                "epoch, train / val / test") for group in configurations for run in group.runs])


def transfer_section(found, results_dir):
    configurations = group_runs(found["transfer"], order=TRANSFER)
    done = list(dict.fromkeys(group.name for group in configurations))
    rows = []
    for name in list(TRANSFER) + [name for name in done if name not in TRANSFER]:
        figures = TRANSFER[name].report if name in TRANSFER else ()
        theirs = [f"{value:.1%}" for value in figures] or ["—"] * 3
        if name not in done:
            rows.append([name, "not run", *["—"] * 7, *theirs, "—"])
        rows += [[row_name(group, results_dir), group.status(), len(group.counted),
                  epochs_cell(group.first), image_size_cell(group.first),
                  *percent_cells(group, ACCURACIES, 1),
                  comparison_cell(group, named(configurations, "scratch")), *theirs,
                  difference_cell(group, figures[2] if figures else None, 1)]
                 for group in named(configurations, name)]
    missing = [name for name, configuration in TRANSFER.items()
               if configuration.report and name not in done]
    return study_lines(
        "transfer", "The report's four configurations of torchvision's ResNet-18 (30 epochs at "
        "32x32), with its train / validation / test accuracy beside ours.",
        configurations, results_dir,
        headers=["configuration", "status", "seeds", "epochs", "image size", "train acc",
                 "val acc", "test acc", "test acc vs scratch", "report train", "report val",
                 "report test", "test − report"], rows=rows,
        notes=[f"{SOURCE}; the report's, its text (\"Training Accuracy: 0.986 ...\"), as "
               f"recorded in `engine/configurations.py` (TRANSFER). {COMPARABLE}",
               comparison_note("test acc vs scratch"),
               *add_missing_notes("transfer", "--configs", done, missing, results_dir)],
        plots=[(results_dir / "transfer" / name, title)
               for name, title, _ in TRANSFER_COMPARISONS])


def augment_section(found, results_dir):
    configurations = group_runs(found["augment"], order=ARMS)
    done = list(dict.fromkeys(group.name for group in configurations))

    def error(key):
        return lambda run: 1 - run.metrics[key] if is_number(run.metrics.get(key)) else None
    rows = [[row_name(group, results_dir), "yes" if group.name in REPORT_ARMS else "",
             group.status(), len(group.counted), epochs_cell(group.first),
             *percent_cells(group, ("train_accuracy", "test_accuracy"), 2),
             figure_cell(group, error("train_accuracy"), "{:.2%}"),
             figure_cell(group, error("test_accuracy"), "{:.2%}"),
             *percent_cells(group, ("val_accuracy",), 2),
             comparison_cell(group, named(configurations, "none")),
             comparison_cell(group, named(configurations, "standard"))]
            for group in configurations]
    part_dir = results_dir / "augment"
    return study_lines(
        "augment", "The report trained one network per augmentation on a tiny CIFAR-10 and "
        "gave train and test accuracy and error in a table that is an image, **with no numbers "
        "in its text**: there is nothing to set beside ours, so this table is ours only.",
        configurations, results_dir,
        headers=["arm", "in the report", "status", "seeds", "epochs", "train acc", "test acc",
                 "train error", "test error", "val acc", "test acc vs none",
                 "test acc vs standard"], rows=rows,
        notes=[f"{SOURCE}; error = 1 − accuracy.",
               comparison_note("test acc vs none, vs standard"),
               *add_missing_notes("augment", "--arms", done,
                                  [arm for arm in REPORT_ARMS if arm not in done], results_dir)],
        plots=[(part_dir / "test_accuracy.png", "test accuracy per augmentation"),
               (part_dir / "curves.png", "per-arm curves on shared axes"),
               (part_dir / "gallery.png", "each augmentation applied to the same training images")])


def dropout_section(found, results_dir):
    def rate(group):
        return group.first.args.get("dropout")

    def gap(run):  # train − test accuracy, in points
        train, test = run.metrics.get("train_accuracy"), run.metrics.get("test_accuracy")
        return 100 * (train - test) if is_number(train) and is_number(test) else None
    configurations = sorted(group_runs(found["dropout"]), key=lambda group: (
        bool(rate(group)), str(group.first.args.get("dropout_at")), rate(group) or 0, group.name))
    rate_zero = [group for group in configurations if rate(group) == 0]
    rows = [[row_name(group, results_dir), group.first.args.get("dropout_at", "—"),
             format_cell(rate(group), "{:.1f}"), group.status(), len(group.counted),
             epochs_cell(group.first),
             *percent_cells(group, ("train_accuracy", "test_accuracy"), 2),
             comparison_cell(group, rate_zero), figure_cell(group, gap, "{:+.2f} pp"),
             figure_cell(group, "test_loss", "{:.3f}")] for group in configurations]
    part_dir = results_dir / "dropout"
    return study_lines(
        "dropout", "The report varied the dropout rate from 0 to 0.5 in steps of 0.1 for 80 "
        "epochs, \"after different layers\", and showed the result **only as plots** (test "
        "accuracy and loss per epoch): there are no numbers to set beside ours, so this table "
        "is ours only.", configurations, results_dir,
        headers=["run", "placement", "rate", "status", "seeds", "epochs", "train acc",
                 "test acc", "test acc vs rate 0", "train − test", "test loss"], rows=rows,
        notes=[f"{SOURCE}; rate 0 is one run shared by every placement.",
               comparison_note("test acc vs rate 0")],
        plots=[*((path, f"test accuracy and loss per epoch, dropout at "
                        f"{path.stem.removeprefix('curves_')}: the report's plots")
                 for path in sorted(part_dir.glob("curves_*.png"))),
               (part_dir / "rate_summary.png",
                "final test accuracy, and train − test, against the rate")])


def visualisation_lines(path, predictions, problem, results_dir):
    lines = [f"### {path.name}", ""]
    if problem:
        lines += [f"**Incomplete**: {problem}.", ""]
    else:
        lines += [f"From {link('predictions.json', path / 'predictions.json', results_dir)}: "
                  f"model `{predictions.get('model', '—')}`, image "
                  f"`{predictions.get('image', '—')}`, true class "
                  f"**{predictions.get('true_class') or '—'}**; Grad-CAM from "
                  f"`{predictions.get('gradcam_layer', '—')}`.", ""]
        lines += table(["rank", "class", "probability"],
                       [[rank, entry.get("class", "—"),
                         format_cell(entry.get("probability"), "{:.3f}")]
                        for rank, entry in enumerate(predictions["top5"], 1)]) + [""]
    try:  # a stats.csv that cannot be read is left out
        with open(path / "stats.csv", newline="") as handle:
            stats = list(csv.DictReader(handle))
        lines += [f"{link('stats.csv', path / 'stats.csv', results_dir)}: {len(stats)} layers, "
                  f"{sum(int(row['dead_channels']) for row in stats)} dead channels in all "
                  f"(all-zero for this image).", ""]
    except (OSError, KeyError, ValueError, TypeError):
        pass
    if (path / "layers").is_dir():
        lines += [f"Every layer's channels: "
                  f"{link(f'{path.name}/layers/', path / 'layers', results_dir)}.", ""]
    return lines + plot_lines([
        (path / "overview.png", f"{path.name}: channels 0-7 of each layer, input to layer4"),
        (path / "gradcam.png", f"{path.name}: Grad-CAM")], results_dir)


def activations_section(found, results_dir):
    lines = ["The report showed a few channels of a few layers of its transfer-learned network "
             "for one CIFAR-10 car (figures only, no numbers). Ours: every layer, layer "
             "statistics and Grad-CAM, for each visualisation below.", ""]
    if not found["activations"]:
        return lines + not_run_lines("activations", results_dir, found["scratch"])
    return lines + [line for item in found["activations"]
                    for line in visualisation_lines(*item, results_dir)]


# --- the document -----------------------------------------------------------------------------

def overview_lines(found):
    rows = []
    for key, (title, script) in PARTS.items():
        items, noun = found[key], "visualisation" if key == "activations" else "run"
        if not items:
            state = "not run"
        elif key == "activations":
            state = f"{sum(problem is None for *_, problem in items)} complete"
        else:
            finished = sum(run.finished for run in items)
            state = f"{finished} finished, {len(items) - finished} not finished"
        # GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens
        anchor = "".join(char for char in title.lower() if char.isalnum() or char in " -_")
        rows.append([f"[{title}](#{anchor.replace(' ', '-')})", f"`{script}`",
                     f"{len(items)} {noun}{'' if len(items) == 1 else 's'}", state])
    return table(["part", "script", "found", "state"], rows)


def build_report(results_dir, found):
    """REPORT.md's text for what was found under results_dir."""
    lines = ["# ResNet-18 on CIFAR-10: the whole study", "",
             "Written by `report.py` from what it found in this folder, set beside the original "
             "report (ELL 793 Assignment 3, S. Garg and V. Gupta). Every figure is read from the "
             "file named beside its table; accuracies are those of the last finished epoch "
             "(over seeds, the mean ± std of the finished seeds); differences are ours − the "
             "report's, in percentage points (pp). A run that did not finish says so (epochs "
             "done / planned) and is not compared as final.", ""]
    lines += overview_lines(found) + [""]
    lines += ["## Our choices, not the report's", "",
              "What the report does not state, chosen by us (a run's own settings are listed in "
              "its part):", "", *[f"- {choice}" for choice in OUR_CHOICES], ""]
    sections = {"scratch": scratch_section, "transfer": transfer_section,
                "augment": augment_section, "dropout": dropout_section,
                "activations": activations_section}
    for key, (title, script) in PARTS.items():
        lines += [f"## {title}", "", f"`{script}`, results in `{key}/`.", "",
                  *sections[key](found, results_dir), ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def results_root_above(folder):
    """The nearest folder up to 3 levels above that holds runs (None: none does): the likely
    slip of passing a part's, a configuration's or a run's folder as --results."""
    for root in folder.absolute().parents[:3]:
        if any(find_runs(root / key) for key in PARTS):
            return root
    return None


def write_report(results_dir):
    """Write results_dir/REPORT.md atomically; return (path, {part: runs or visualisations}).
    A folder missing or without runs is refused, naming the fix."""
    results_dir = Path(results_dir)
    found = {key: find_visualisations(results_dir / key) if key == "activations"
             else find_runs(results_dir / key) for key in PARTS} if results_dir.is_dir() else {}
    if not any(found.values()):
        root = results_root_above(results_dir) if results_dir.is_dir() else None
        what = ("does not exist" if not results_dir.exists() else
                "is a file, not a folder" if not results_dir.is_dir() else
                "lies inside a results folder, not at its root" if root else
                "holds no runs (in <part>/<configuration>/seed<S>/ or activations/<name>/)")
        raise UserError(f"--results {results_dir} {what}: pass the folder that holds scratch/, "
                        f"transfer/, augment/, dropout/ and activations/ ("
                        + (f"here: --results {root})" if root else
                           "run a part first, e.g. python train_scratch.py)"))
    path = results_dir / REPORT_NAME
    try:
        atomic.write_text(path, build_report(results_dir, found))
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}): check the folder's "
                        f"permissions") from None
    return path, found
