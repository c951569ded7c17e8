"""Each training part's study, built from its run folders alone: one table per part, which
renders both the study's summary.csv / summary.md and its REPORT.md section (the same numbers
from the same code); the study's comparison plots; and whether a run may stand beside one of
the original report's figures."""
from pathlib import Path

from engine import atomic, plots
from engine.augment import ARMS, CropFlip
from engine.configurations import (REPORT_ARMS, REPORT_DATASET, REPORT_SCRATCH,
                                   REPORT_TRANSFER_EPOCHS, TRANSFER, TRANSFER_COMPARISONS)
from engine.results import CONFIGURATION_ARGS, find_runs, group_runs, read_json
from engine.seeds import ALPHA, MIN_SEEDS_TO_TEST, compare, in_points, spread
from engine.shards import locked
from engine.summary import Column, Table, points, write_summary
from models import build_model
from models.transfer import count_parameters

# Part key (its folder under a results root): (title, script).
PARTS = {
    "scratch": ("Part (a): ResNet-18 from scratch", "train_scratch.py"),
    "transfer": ("Part (b): transfer learning from ImageNet", "train_transfer.py"),
    "augment": ("Part (c): data augmentation", "augment_study.py"),
    "dropout": ("Part (c): dropout", "dropout_sweep.py"),
    "activations": ("Part (d): activations", "visualize_activations.py"),
}
STUDIES = ("scratch", "transfer", "augment", "dropout")  # the parts that train runs
PLAN_FILE = "plan.json"  # the runs a study's latest command planned, in its folder

# What a run must be to stand beside the report's figure: the report's run, or our stated
# choice where it is silent (configurations.OUR_CHOICES): 45,000 training images (5,000 held
# out for validation), part (a)'s crop + flip, part (b) without augmentation.
REPORT_RUNS = {
    "scratch": {"dataset": REPORT_DATASET, "training images": 45000,
                "epochs": REPORT_SCRATCH["epochs"], "model": "resnet18_cifar width 64",
                "image size": 32, "augmentation": repr(CropFlip())},
    "transfer": {"dataset": REPORT_DATASET, "training images": 45000,
                 "epochs": REPORT_TRANSFER_EPOCHS, "model": "torchvision_resnet18",
                 "image size": 32, "augmentation": "none"},
}

# Figures computed from a run's metrics.json.
DERIVED = {
    "train_error": lambda metrics: 1 - metrics["train_accuracy"],
    "test_error": lambda metrics: 1 - metrics["test_accuracy"],
    "gap": lambda metrics: metrics["train_accuracy"] - metrics["test_accuracy"],
    "seconds_per_epoch": lambda metrics: metrics["train_seconds"] / metrics["epochs"],
}


# --- cells of a row ------------------------------------------------------------------------------

def figure_of(key):
    """A metrics.json key, or a function of a record for a DERIVED figure."""
    if key not in DERIVED:
        return key

    def get(run):
        try:
            return DERIVED[key](run.metrics)
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    return get


def figures(group, keys):
    """Each figure's mean over the group's seeds, with <key>_std (None with one seed)."""
    row = {}
    for key in keys:
        found = group.spread(figure_of(key))
        row[key], row[f"{key}_std"] = (found.mean, found.std) if found else (None, None)
    return row


def head(group, name_key):
    return {name_key: group.label, "status": group.status(), "seeds": len(group.counted),
            "epochs": group.first.epochs_cell()}


def versus(group, references, column):
    """{column: text, _difference, _p}: the final test accuracy against that of the
    `references` row trained alike, beyond noise or not (engine.seeds.compare)."""
    found, text = None, None
    alike = [reference for reference in references if reference.first.settings(
        CONFIGURATION_ARGS) == group.first.settings(CONFIGURATION_ARGS)]
    if not references:
        text = "— (not run)"
    elif group in references:
        text = "—"
    elif not alike:
        text = "— (reference trained with other settings)"
    elif group.final_test_accuracies() and alike[0].final_test_accuracies():
        found = compare(group.final_test_accuracies(), alike[0].final_test_accuracies())
        text = found.text()
    else:
        text = "— (not finished)"
    return {column: text, f"{column}_difference": found and found.difference,
            f"{column}_p": found and found.p_value}


def run_setting(run):
    """A run in the terms of REPORT_RUNS, from its config.json."""
    config, model = run.config, run.config.get("model", {})
    augment = config.get("train_augment")
    return {"dataset": config.get("dataset"),
            "training images": config.get("sizes", {}).get("train"),
            "epochs": run.args.get("epochs"),
            "model": " ".join(filter(None, [model.get("name"), model.get("width") and
                                            f"width {model['width']}", model.get("dropout") and
                                            f"dropout {model['dropout']}"])),
            "image size": config.get("image_size"),
            "augmentation": "none" if augment in (None, "None") else augment}


def not_comparable(run, part):
    """Why a run does not stand beside the report's figure ("epochs 15, report 50"), or None."""
    ours, theirs = run_setting(run), REPORT_RUNS[part]
    return "; ".join(
        f"{key} {ours[key]:,}, report {theirs[key]:,}"
        if isinstance(ours[key], int) else f"{key} {ours[key]}, report {theirs[key]}"
        for key in theirs if ours[key] != theirs[key]) or None


def versus_report(group, part, figures_of_report):
    """The report's (train, val, test) accuracy and ours − the report's test accuracy, where
    the run is comparable (else why not)."""
    row = dict(zip(("report_train", "report_val", "report_test"), figures_of_report))
    ours = group.final_test_accuracies()
    why = ("not in the report" if not figures_of_report else "not finished" if not ours
           else not_comparable(group.first, part))
    row["test_minus_report"] = None if why else spread(ours).mean - row["report_test"]
    row["test_minus_report_why"] = why
    return row


def seeds_note(groups):
    """How many seeds each row averages."""
    seeds = sorted({run.seed for group in groups for run in group.runs})
    if all(len(group.runs) == 1 for group in groups) and len(seeds) <= 1:
        return (f"One run per configuration (seed {seeds[0] if seeds else 0}): no spread; run "
                f"with --seeds to measure it.")
    return (f"Seeds {' '.join(map(str, seeds))}: each figure is the mean ± sample standard "
            f"deviation over the finished seeds of its configuration (column seeds).")


def comparison_note(references):
    """The note under a table that compares: what is compared and how it is judged."""
    return (f"{references}: difference of the mean final-epoch test accuracy, in points (pp). "
            f"With at least {MIN_SEEDS_TO_TEST} seeds on both sides, Welch's t-test on the "
            f"per-seed values (scipy.stats.ttest_ind, equal_var=False): beyond noise when "
            f"p < {ALPHA}; with fewer, the difference is that of a single run (or of too few "
            f"seeds) and may be noise. — where the row is the reference or the reference did "
            f"not run.")


def report_note(part):
    wanted = ", ".join(f"{key} {value:,}" if isinstance(value, int) else f"{key} {value}"
                       for key, value in REPORT_RUNS[part].items())
    return (f"test − report: the mean final test accuracy of the finished seeds minus the "
            f"report's, only for runs trained as the report's ({wanted}; 45,000 training "
            f"images is ours: the report trained on all 50,000 and did not say how it "
            f"validated); otherwise the cell says what differs.")


def split_note(groups):
    return (["A configuration whose seeds were trained with other settings (say --epochs) has "
             "a row per set of settings, its seeds named."]
            if any(group.split for group in groups) else [])


ACCURACY = "{:.2%}"
SECONDS = Column("seconds_per_epoch", "s/epoch", "{:.1f}")


# --- the four tables ----------------------------------------------------------------------------

def scratch_table(runs):
    groups = group_runs(runs)
    rows = [{**head(group, "run"), "dataset": group.first.config.get("dataset"),
             **figures(group, ("train_accuracy", "val_accuracy", "test_accuracy",
                               "best_val_accuracy", "train_seconds")),
             **versus_report(group, "scratch", (REPORT_SCRATCH["train_accuracy"], None,
                                                REPORT_SCRATCH["test_accuracy"]))}
            for group in groups]
    columns = [Column("run", "run"), Column("status", "status"), Column("seeds", "seeds"),
               Column("dataset", "dataset"), Column("epochs", "epochs"),
               Column("train_accuracy", "train acc", ACCURACY),
               Column("val_accuracy", "val acc", ACCURACY),
               Column("test_accuracy", "test acc", ACCURACY),
               Column("best_val_accuracy", "best val acc", ACCURACY),
               Column("report_train", "report train", ACCURACY),
               Column("report_test", "report test", ACCURACY),
               Column("test_minus_report", "test − report", points(2)),
               Column("train_seconds", "train seconds", "{:.0f}")]
    notes = [f"The report: {REPORT_SCRATCH['epochs']} epochs on CIFAR-10, its training log's "
             f"last epoch (\"Acc: 89.290%\", \"Accuracy: 8735/10000\").", report_note("scratch"),
             seeds_note(groups), *split_note(groups)]
    return Table("ResNet-18 from scratch (part (a))", columns, rows, groups, notes)


def transfer_table(runs):
    groups = group_runs(runs, order=TRANSFER)
    done = {group.name for group in groups}
    scratch = [group for group in groups if group.name == "scratch"]
    rows, row_groups = [], []
    for name in [*TRANSFER, *sorted(done - set(TRANSFER))]:
        report = TRANSFER[name].report if name in TRANSFER else ()
        if name not in done and report:  # the report's figures, to compare with later
            rows.append({"config": name, "status": "not run",
                         **dict(zip(("report_train", "report_val", "report_test"), report))})
            row_groups.append(None)
        for group in (group for group in groups if group.name == name):
            trainable, total = count_parameters(build_model(group.first.config["model"]))
            rows.append({**head(group, "config"),
                         "image_size": group.first.config.get("image_size"),
                         **figures(group, ("train_accuracy", "val_accuracy", "test_accuracy",
                                           "seconds_per_epoch")),
                         **versus(group, scratch, "vs_scratch"),
                         **versus_report(group, "transfer", report),
                         "trainable_parameters": trainable, "total_parameters": total})
            row_groups.append(group)
    columns = [Column("config", "configuration"), Column("status", "status"),
               Column("seeds", "seeds"), Column("epochs", "epochs"),
               Column("image_size", "image size", "{0}x{0}"),
               Column("train_accuracy", "train acc", "{:.1%}"),
               Column("val_accuracy", "val acc", "{:.1%}"),
               Column("test_accuracy", "test acc", "{:.1%}"),
               Column("vs_scratch", "test acc vs scratch"),
               Column("report_train", "report train", "{:.1%}"),
               Column("report_val", "report val", "{:.1%}"),
               Column("report_test", "report test", "{:.1%}"),
               Column("test_minus_report", "test − report", points(1)),
               Column("trainable_parameters", "trainable params", "{:,}"),
               Column("total_parameters", "total params", "{:,}"), SECONDS]
    notes = [f"The report: {REPORT_TRANSFER_EPOCHS} epochs at 32x32; its accuracies are read off "
             "its text (\"Training Accuracy: 0.986 ...\"), as recorded in "
             "`engine/configurations.py` (TRANSFER).", report_note("transfer"),
             "Frozen = requires_grad off and BatchNorm kept in eval mode (ImageNet statistics "
             "fixed); the report only turned requires_grad off, so its frozen BatchNorm "
             "statistics drifted.",
             "At 32x32 ImageNet's stem leaves layer4 a 1x1 map; pretrained-cifar-stem (ours, "
             "not the report's: 3x3 stride-1 conv1, no max-pool) keeps 4x4.",
             seeds_note(groups), comparison_note("test acc vs scratch"), *split_note(groups)]
    return Table("Transfer learning (part (b))", columns, rows, row_groups, notes)


def augment_table(runs):
    groups = group_runs(runs, order=ARMS)
    references = {arm: [group for group in groups if group.name == arm]
                  for arm in ("none", "standard")}
    rows = []
    for group in groups:
        config = group.first.config
        rows.append({**head(group, "arm"), "in_report": "yes" if group.name in REPORT_ARMS else "",
                     **figures(group, ("train_accuracy", "test_accuracy", "train_error",
                                       "test_error", "val_accuracy", "seconds_per_epoch")),
                     **versus(group, references["none"], "vs_none"),
                     **versus(group, references["standard"], "vs_standard"),
                     "execution": "per image" if config.get("per_image") else "batched",
                     "transform": config.get("train_augment") if config.get("train_augment")
                     not in (None, "None") else f"{config.get('eval_augment')} (train and test)"})
    columns = [Column("arm", "arm"), Column("in_report", "in the report"),
               Column("status", "status"), Column("seeds", "seeds"), Column("epochs", "epochs"),
               Column("train_accuracy", "train acc", ACCURACY),
               Column("test_accuracy", "test acc", ACCURACY),
               Column("train_error", "train error", ACCURACY),
               Column("test_error", "test error", ACCURACY),
               Column("val_accuracy", "val acc", ACCURACY),
               Column("vs_none", "test acc vs none"), Column("vs_standard", "test acc vs standard"),
               SECONDS, Column("execution", "execution"), Column("transform", "transform")]
    sizes = sorted({group.first.config.get("sizes", {}).get("train") for group in groups} - {None})
    notes = [f"{' or '.join(f'{size:,}' for size in sizes) or 'No'} class-balanced training "
             f"images; final epoch. Error = 1 − accuracy.",
             "The report's own table is an image, with no numbers in its text to set beside "
             "ours.",
             "Deterministic arms (resize, center_crop) are applied to the test images too (ours; "
             "the report applied no augmentation at test time): their test accuracy measures "
             "the model on images prepared as in training.",
             seeds_note(groups), comparison_note("test acc vs none, vs standard"),
             "execution: batched = parameters drawn per image, whole batch augmented on the "
             "device at once; per image = torchvision.transforms.v2 in a loop (AutoAugment "
             "family).", *split_note(groups)]
    return Table("Augmentation study (tiny CIFAR-10)", columns, rows, groups, notes)


def rate(group):
    return group.first.args.get("dropout")


def dropout_table(runs):
    groups = sorted(group_runs(runs), key=lambda group: (
        bool(rate(group)), str(group.first.args.get("dropout_at")), rate(group) or 0, group.name))
    zero = [group for group in groups if rate(group) == 0]
    rows = [{**head(group, "run"), "placement": group.first.args.get("dropout_at"),
             "rate": rate(group),
             **figures(group, ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
                               "gap", "best_val_accuracy", "seconds_per_epoch")),
             **versus(group, zero, "vs_rate0")} for group in groups]
    columns = [Column("run", "run"), Column("placement", "placement"),
               Column("rate", "rate", "{:.1f}"), Column("status", "status"),
               Column("seeds", "seeds"), Column("epochs", "epochs"),
               Column("train_accuracy", "train acc", ACCURACY),
               Column("val_accuracy", "val acc", ACCURACY),
               Column("test_accuracy", "test acc", ACCURACY),
               Column("vs_rate0", "test acc vs rate 0"), Column("test_loss", "test loss", "{:.3f}"),
               Column("gap", "train − test", points(2)),
               Column("best_val_accuracy", "best val acc", ACCURACY), SECONDS]
    notes = ["The report shows this sweep only as plots (80 epochs, placement unstated); it "
             "gives no numbers to compare with.",
             "Accuracies are the final epoch's; the test set is never used to choose anything.",
             seeds_note(groups),
             comparison_note("test acc vs rate 0 (the one rate-0 run, shared by every placement)"),
             *split_note(groups)]
    return Table("Dropout sweep", columns, rows, groups, notes)


TABLES = {"scratch": scratch_table, "transfer": transfer_table, "augment": augment_table,
          "dropout": dropout_table}


# --- plots -----------------------------------------------------------------------------------------

def described(groups):
    """'cifar10, 30 epochs': what the plotted runs trained on."""
    datasets = sorted({str(group.first.config.get("dataset")) for group in groups})
    epochs = sorted({group.first.args.get("epochs") for group in groups} - {None})
    return f"{'/'.join(datasets)}, {'/'.join(map(str, epochs))} epochs"


def with_seeds(title, groups):
    """A plot title, saying what its points are when they average several seeds."""
    most = max((len(group.counted) for group in groups), default=1)
    return f"{title} (mean ± std of up to {most} seeds)" if most > 1 else title


def histories(groups):
    """{row label: [its history per seed]} of the groups with an epoch done."""
    return {group.label: group.histories() for group in groups if group.histories()}


def transfer_plots(table, study_dir):
    groups = [group for group in table.groups if group is not None]
    for file_name, title, names in TRANSFER_COMPARISONS:
        chosen = histories([group for group in groups if group.name in names])
        if len(chosen) >= 2:
            plots.plot_runs(chosen, [("train_accuracy", "val_accuracy"), ("train_loss", "val_loss")],
                            study_dir / file_name, title=f"{title}: {described(groups)}")


def augment_plots(table, study_dir):
    rows = [row for row in table.rows if row["test_accuracy"] is not None]
    if not rows:
        return
    groups, classes = table.groups, len(table.groups[0].first.config.get("classes") or [0] * 10)
    plots.plot_bars({row["arm"]: 100 * row["test_accuracy"] for row in rows}, "test accuracy (%)",
                    study_dir / "test_accuracy.png", highlight=("none", "standard"),
                    errors={row["arm"]: in_points(row["test_accuracy_std"]) for row in rows},
                    chance=100 / classes,
                    title=with_seeds(f"test accuracy per augmentation ({described(groups)})", groups))
    plots.plot_runs(histories(groups), ["train_accuracy", "test_accuracy", "test_loss"],
                    study_dir / "curves.png", title=f"per-arm curves: {described(groups)}")


def dropout_plots(table, study_dir):
    done = [(group, row) for group, row in zip(table.groups, table.rows)
            if row["test_accuracy"] is not None]
    if not done:
        return
    zero = [(group, row) for group, row in done if row["rate"] == 0]
    placements = dict.fromkeys(row["placement"] for _, row in done if row["rate"])
    lines = {"test_accuracy": {}, "gap": {}}
    for place in placements or ["none"]:
        own = zero + [(group, row) for group, row in done if row["rate"] and row["placement"] == place]
        plots.plot_runs(histories([group for group, _ in own]), ["test_accuracy", "test_loss"],
                        study_dir / f"curves_{place}.png",
                        title=f"dropout at {place}: {described([group for group, _ in own])}")
        for key, line in lines.items():
            line[place] = ([row["rate"] for _, row in own], [in_points(row[key]) for _, row in own],
                           [in_points(row[f"{key}_std"]) for _, row in own])
    groups = [group for group, _ in done]
    plots.plot_lines([("final test accuracy (%)", lines["test_accuracy"]),
                      ("train − test accuracy (points)", lines["gap"])],
                     "dropout rate", study_dir / "rate_summary.png",
                     title=with_seeds(f"dropout sweep: final epoch ({described(groups)})", groups))


PLOTS = {"transfer": transfer_plots, "augment": augment_plots, "dropout": dropout_plots}


def progress_note(study_dir, runs):
    """'3 of 4 planned runs finished; not yet: flip/seed1', against the plan of the study's
    latest command (plan.json); none where every planned run finished."""
    plan, _ = read_json(Path(study_dir) / PLAN_FILE, "runs")
    finished = {run.label for run in runs if run.finished}
    waiting = [label for label in plan.get("runs", []) if label not in finished]
    if not waiting:
        return []
    return [f"{len(plan['runs']) - len(waiting)} of {len(plan['runs'])} planned runs finished; "
            f"not yet: {', '.join(waiting)} (the latest command's plan, {PLAN_FILE})."]


def study_table(part, study_dir, runs=None):
    """The part's table of the runs in study_dir, with how far its latest plan has come."""
    runs = find_runs(study_dir) if runs is None else runs
    table = TABLES[part](runs)
    table.notes[:0] = progress_note(study_dir, runs)
    return table


def write_study(part, study_dir, planned=()):
    """The study's summary.csv, summary.md and comparison plots, from its run folders, and
    plan.json from the runs `planned` (whoever calls it: each shard of the part's script as it
    ends, or report.py). Under the study's lock: of shards ending together, the last reads all."""
    study_dir = Path(study_dir)
    with locked(study_dir / ".summary.lock", wait=True):
        if planned:
            atomic.write_json(study_dir / PLAN_FILE, {"runs": [
                f"{run.name}/seed{run.args.seed}" for run in planned]})
        table = study_table(part, study_dir)
        if part in PLOTS:
            PLOTS[part](table, study_dir)
        write_summary(study_dir, table)
    return table
