"""REPORT.md: the runs under a results folder, beside the original report (docs/reproduce.md:
REPORT.md). Each part's table is its study's own (engine.studies: the same
code writes its summary.md); every figure is read from a file named beside it."""
import csv
import re
import shlex
import statistics
from pathlib import Path
from urllib.parse import quote

from engine import atomic
from engine.configurations import OUR_CHOICES, REPORT_ARMS, TRANSFER, TRANSFER_COMPARISONS
from engine.errors import UserError
from engine.results import find_runs, read_json
from engine.seeds import is_number
from engine.studies import PARTS, STUDIES, study_table, write_study
from engine.summary import format_cell, table
from engine.training import format_seconds

REPORT_NAME = "REPORT.md"
SOURCE = "Source: ours, each seed's `metrics.json` (in the linked folder) and `config.json`."


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


def row_name(group, results_dir):
    """Its name, linking to its folder of seed<S>/ runs; with its seeds where it splits."""
    name = link(group.name, group.first.path.parent, results_dir)
    if not group.split:
        return name
    return f"{name} ({', '.join(f'seed{run.seed}' for run in group.runs)})"


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
    run = finished[0] if finished else results_dir / "scratch" / "cifar10" / "seed0"
    out = results_dir / "activations" / f"scratch_{run.parent.name}_{run.name}"
    return command(results_dir, "visualize_activations.py", out, "--run", str(run))


def not_run_lines(key, results_dir, scratch_runs=()):
    return [f"**Not run yet**: nothing in `{key}/`. Run: "
            f"`{part_command(key, results_dir, scratch_runs)}`", ""]


# The report's configurations a study may lack: (the flag that adds them, their names).
REPORT_CONFIGURATIONS = {
    "transfer": ("--configs", [name for name, configuration in TRANSFER.items()
                               if configuration.report]),
    "augment": ("--arms", REPORT_ARMS),
}


def missing_notes(key, groups, results_dir):
    """The command adding the report's configurations not run yet, repeating those done."""
    if key not in REPORT_CONFIGURATIONS or not groups:
        return []
    flag, wanted = REPORT_CONFIGURATIONS[key]
    done = list(dict.fromkeys(group.name for group in groups))
    missing = [name for name in wanted if name not in done]
    if not missing:
        return []
    return [f"Of the report's, not run here: {', '.join(missing)}. Add them with `"
            + command(results_dir, PARTS[key][1], results_dir / key, flag, *done, *missing)
            + "` and the other flags the runs above used (finished runs are reused)."]


def settings_lines(groups, results_dir):
    """Each run's settings, from its config.json (and its wall time from metrics.json)."""
    rows = []
    for run in (run for group in groups for run in group.runs):
        sizes, seconds = run.config.get("sizes"), run.metrics.get("train_seconds")
        size = run.config.get("image_size")
        curves = run.path / "curves.png"
        rows.append([
            link(run.label, run.path / "config.json", results_dir) if run.config else run.label,
            run.config.get("dataset", "—"),
            " / ".join(format_cell(sizes.get(split), "{:,}") for split in ("train", "val", "test"))
            if isinstance(sizes, dict) else "—",
            run.epochs_cell(), run.args.get("batch_size", "—"),
            format_cell(run.args.get("lr"), "{:g}"), f"{size}x{size}" if size else "—",
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


def worst_classes_lines(groups):
    """The part's hardest classes: per-class test accuracy, the mean over its runs."""
    tables = [run.per_class for group in groups for run in group.runs if run.per_class]
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


# --- the training parts -----------------------------------------------------------------------

INTROS = {
    "scratch": "The report trained its hand-written ResNet-18 on CIFAR-10 for 50 epochs: 89.29% "
               "train and 87.35% test accuracy (its training log, last epoch).",
    "transfer": "The report's four configurations of torchvision's ResNet-18 (30 epochs at "
                "32x32), with its train / validation / test accuracy beside ours.",
    "augment": "The report trained one network per augmentation on a tiny CIFAR-10 and gave "
               "train and test accuracy and error in a table that is an image, **with no numbers "
               "in its text**: there is nothing to set beside ours, so this table is ours only.",
    "dropout": "The report varied the dropout rate from 0 to 0.5 in steps of 0.1 for 80 epochs, "
               "\"after different layers\", and showed the result **only as plots** (test "
               "accuracy and loss per epoch): there are no numbers to set beside ours, so this "
               "table is ours only.",
}


def study_plots(key, part_dir, groups):
    """(file, caption) of a study's plots."""
    if key == "scratch":
        return [(run.path / "curves.png", f"{run.label} ({run.status()}): loss and accuracy per "
                 "epoch, train / val / test") for group in groups for run in group.runs]
    if key == "transfer":
        return [(part_dir / name, title) for name, title, _ in TRANSFER_COMPARISONS]
    if key == "augment":
        return [(part_dir / "test_accuracy.png", "test accuracy per augmentation"),
                (part_dir / "curves.png", "per-arm curves on shared axes"),
                (part_dir / "gallery.png", "each augmentation applied to the same training images")]
    return [*((path, f"test accuracy and loss per epoch, dropout at "
                     f"{path.stem.removeprefix('curves_')}: the report's plots")
              for path in sorted(part_dir.glob("curves_*.png"))),
            (part_dir / "rate_summary.png", "final test accuracy, and train − test, against the rate")]


def study_section(key, runs, results_dir):
    """A training part: its study's table (shown without runs where it has the report's
    rows), its notes, settings and plots."""
    lines = [INTROS[key], ""] + ([] if runs else not_run_lines(key, results_dir))
    found = study_table(key, results_dir / key, runs)
    if not found.rows:
        return lines
    groups = [group for group in found.groups if group is not None]
    summary = results_dir / key / "summary.md"
    notes = [SOURCE, *found.notes, *missing_notes(key, groups, results_dir)]
    if summary.is_file():
        notes.append(f"The study's own summary: {link(f'{key}/summary.md', summary, results_dir)} "
                     f"(the same table, from the same code).")
    lines += found.markdown(name_cell=lambda group: row_name(group, results_dir)) + [""]
    lines += [line for note in notes for line in (note, "")]
    if groups:
        lines += (worst_classes_lines(groups) + settings_lines(groups, results_dir)
                  + plot_lines(study_plots(key, results_dir / key, groups), results_dir))
    return lines


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
    for key, (title, script) in PARTS.items():
        section = (activations_section(found, results_dir) if key == "activations"
                   else study_section(key, found[key], results_dir))
        lines += [f"## {title}", "", f"`{script}`, results in `{key}/`.", "", *section, ""]
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
        for key in STUDIES:  # each study's summary and plots, from the same runs
            if found[key]:
                write_study(key, results_dir / key)
        atomic.write_text(path, build_report(results_dir, found))
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}): check the folder's "
                        f"permissions") from None
    return path, found
