"""report.py: REPORT.md from a results tree of real, tiny runs of every script.

One module-scoped fixture runs each script's main() in-process (no interpreter start per
script) on synthetic data, into the one layout <part>/<configuration>/seed<S>/: a scratch
run, two transfer configurations, two augmentation arms, two dropout rates and a
visualisation of the scratch run. The tests then read REPORT.md as a user would: its tables
against the runs' own files, its links against the disk.
"""
import csv
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
import torchvision

import augment_study
import dropout_sweep
import report
import train_scratch
import train_transfer
import visualize_activations
from engine import report as engine_report
from engine.configurations import OUR_CHOICES, TRANSFER as TRANSFER_CONFIGURATIONS
from engine.training import format_seconds

QUICK = ["--dataset", "synthetic", "--width", "8", "--batch-size", "64", "--subset", "200",
         "--val-size", "100", "--epochs", "1", "--no-progress"]
TRANSFER = ["--dataset", "synthetic", "--subset", "100", "--val-size", "50", "--batch-size", "50",
            "--epochs", "1", "--no-progress"]
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def run_main(script, *args):
    return script.main(script.get_args_parser().parse_args([str(arg) for arg in args]))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "results"
    weights = root.parent / "resnet18-random.pth"
    threads = torch.get_num_threads()
    # These models are tiny: on 2 shared, busy cores one thread runs them about 3x faster.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), weights)  # stands in for ImageNet's
        run_main(train_scratch, *QUICK, "--out", root / "scratch")
        run_main(train_transfer, *TRANSFER, "--configs", "scratch", "frozen-mlp",
                 "--weights", weights, "--out", root / "transfer")
        run_main(augment_study, *QUICK, "--arms", "none", "standard", "--out", root / "augment")
        run_main(dropout_sweep, *QUICK, "--rates", "0", "0.2", "--dropout-at", "classifier",
                 "--out", root / "dropout")
        run_main(visualize_activations, "--run", root / "scratch" / "synthetic" / "seed0",
                 "--out", root / "activations" / "x")
    finally:
        torch.set_num_threads(threads)
    return root


def write_report(results_dir):
    path = run_main(report, "--results", results_dir)
    assert path == Path(results_dir) / "REPORT.md"
    return path.read_text()


@pytest.fixture(scope="module")
def report_text(results):
    return write_report(results)


# --- reading REPORT.md -------------------------------------------------------------------------

def section(text, title):
    """The text under the "## <title>..." heading, up to the next "## " heading."""
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def tables(text):
    """Every markdown table in text, as lists of {header: cell} (cells stripped)."""
    found, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        header = lines[index].startswith("|") and index + 1 < len(lines)
        if header and lines[index + 1].startswith("|---"):
            headers = [cell.strip() for cell in lines[index].strip("|").split(" | ")]
            rows, index = [], index + 2
            while index < len(lines) and lines[index].startswith("|"):
                cells = [cell.strip() for cell in lines[index].strip().strip("|").split(" | ")]
                rows.append(dict(zip(headers, cells)))
                index += 1
            found.append(rows)
        else:
            index += 1
    return found


def row(table, name):
    """The row whose first cell is name, or a link named name."""
    matches = [r for r in table if next(iter(r.values())) in (name, f"**{name}**")
               or next(iter(r.values())).startswith(f"[{name}](")]
    assert len(matches) == 1, f"{name}: {matches}"
    return matches[0]


def metrics(configuration_dir, seed=0):
    return json.loads((configuration_dir / f"seed{seed}" / "metrics.json").read_text())


def config(configuration_dir, seed=0):
    return json.loads((configuration_dir / f"seed{seed}" / "config.json").read_text())


def pct(value, digits):
    return f"{value:.{digits}%}"


# --- the tables ----------------------------------------------------------------------------------

def test_part_a_sets_each_run_beside_the_reports_87_35(results, report_text):
    table = tables(section(report_text, "Part (a)"))[0]
    ours, measured = row(table, "synthetic"), metrics(results / "scratch" / "synthetic")
    # The report's training log after 50 epochs: "Acc: 89.290%", "Accuracy: 8735/10000".
    assert (ours["report train"], ours["report test"]) == ("89.29%", "87.35%")
    assert ours["status"] == "1/1 seeds finished" and ours["epochs"] == "1/1"
    assert ours["seeds"] == "1"
    assert ours["dataset"] == "synthetic"
    for key, header in (("train_accuracy", "train acc"), ("val_accuracy", "val acc"),
                        ("test_accuracy", "test acc")):
        assert ours[header] == pct(measured[key], 2)
    # Not the report's run (its data, size, epochs, width): no difference, and the cell says why.
    assert ours["test − report"] == (
        "— (dataset synthetic, report cifar10; training images 200, report 45,000; epochs 1, "
        "report 50; model resnet18_cifar width 8, report resnet18_cifar width 64)")
    assert ours["run"] == "[synthetic](scratch/synthetic)"  # the folder of its seed<S>/ runs
    assert "[scratch/summary.md](scratch/summary.md)" in section(report_text, "Part (a)")


def test_part_b_sets_train_transfer_configurations_beside_ours(results, report_text):
    part = section(report_text, "Part (b)")
    table = tables(part)[0]
    # The report's four configurations, run or not; ours (pretrained-cifar-stem) once run.
    reported = [name for name, found in TRANSFER_CONFIGURATIONS.items() if found.report]
    assert [next(iter(r.values())).split("](")[0].strip("[") for r in table] == reported
    for name in reported:
        configuration = TRANSFER_CONFIGURATIONS[name]
        cells = row(table, name)
        expected = [pct(value, 1) for value in configuration.report] or ["—"] * 3
        assert [cells["report train"], cells["report val"], cells["report test"]] == expected
    for name in ("scratch", "frozen-mlp"):
        cells, measured = row(table, name), metrics(results / "transfer" / name)
        assert cells["status"] == "1/1 seeds finished"
        assert [cells["train acc"], cells["val acc"], cells["test acc"]] == [
            pct(measured[key], 1) for key in ("train_accuracy", "val_accuracy", "test_accuracy")]
    assert row(table, "pretrained")["status"] == "not run"
    assert row(table, "pretrained")["report test"] == "80.4%"
    assert "--configs scratch frozen-mlp pretrained frozen-deep" in part  # the way to add them
    assert "[transfer/summary.md](transfer/summary.md)" in part


def test_part_c_augmentation_is_ours_only_and_says_why(results, report_text):
    part = section(report_text, "Part (c): data augmentation")
    assert "no numbers in its text" in part
    table = tables(part)[0]
    assert [next(iter(r.values())).split("]")[0].strip("[") for r in table] == ["none", "standard"]
    for arm in ("none", "standard"):
        cells, measured = row(table, arm), metrics(results / "augment" / arm)
        assert cells["status"] == "1/1 seeds finished" and cells["in the report"] == ""
        assert cells["train acc"] == pct(measured["train_accuracy"], 2)
        assert cells["test acc"] == pct(measured["test_accuracy"], 2)
        assert cells["test error"] == pct(1 - measured["test_accuracy"], 2)
    assert "Of the report's, not run here: rotation, flip," in part


def test_part_c_dropout_rows_and_the_reports_plots_only(results, report_text):
    part = section(report_text, "Part (c): dropout")
    assert "only as plots" in part
    table = tables(part)[0]
    for name, placement, rate in (("rate0.0", "none", "0.0"),
                                  ("classifier_rate0.2", "classifier", "0.2")):
        cells, measured = row(table, name), metrics(results / "dropout" / name)
        assert (cells["placement"], cells["rate"], cells["status"]) == (
            placement, rate, "1/1 seeds finished")
        assert cells["test acc"] == pct(measured["test_accuracy"], 2)
        assert cells["test loss"] == f"{measured['test_loss']:.3f}"


def test_part_d_shows_the_top_predictions_and_links_the_pictures(results, report_text):
    part = section(report_text, "Part (d)")
    predictions = json.loads((results / "activations" / "x" / "predictions.json").read_text())
    table = tables(part)[0]
    assert [(r["class"], r["probability"]) for r in table] == [
        (entry["class"], f"{entry['probability']:.3f}") for entry in predictions["top5"]]
    assert "![x: channels 0-7 of each layer, input to layer4](activations/x/overview.png)" in part
    assert "](activations/x/gradcam.png)" in part
    assert f"true class **{predictions['true_class']}**" in part


def test_each_part_names_its_worst_classes(results, report_text):
    tables = []
    for name in ("rate0.0", "classifier_rate0.2"):
        with open(results / "dropout" / name / "seed0" / "per_class.csv", newline="") as handle:
            tables.append({row["class"]: float(row["accuracy"]) for row in csv.DictReader(handle)})
    means = {name: (tables[0][name] + tables[1][name]) / 2 for name in tables[0]}
    worst = sorted(means, key=means.get)[0]
    line = next(line for line in section(report_text, "Part (c): dropout").splitlines()
                if line.startswith("**Worst classes**"))
    assert "mean over 2 runs): " in line and f"): {worst} {means[worst]:.1%}, " in line, line


def test_settings_come_from_each_runs_config_and_metrics(results, report_text):
    settings = tables(section(report_text, "Part (a)"))[1]
    cells = row(settings, "synthetic/seed0")
    assert cells["run"] == "[synthetic/seed0](scratch/synthetic/seed0/config.json)"
    run_dir = results / "scratch" / "synthetic"
    saved, measured = config(run_dir), metrics(run_dir)
    assert cells["batch"] == "64" and cells["epochs done / planned"] == "1/1"
    assert cells["image size"] == "32x32"
    assert cells["images train / val / test"] == "200 / 100 / 1,000"
    assert (cells["device"], cells["precision"], cells["torch"]) == (
        saved["device"], saved["precision"], saved["torch"])
    assert cells["wall time"] == format_seconds(measured["train_seconds"])
    transfer = row(tables(section(report_text, "Part (b)"))[1], "frozen-mlp/seed0")
    lr = config(results / "transfer" / "frozen-mlp")["args"]["lr"]  # resolved for the batch
    assert (transfer["batch"], transfer["peak lr"]) == ("50", f"{lr:g}")


def test_every_table_of_runs_names_its_source(report_text):
    for title in ("Part (a)", "Part (b)", "Part (c): data augmentation", "Part (c): dropout"):
        part = section(report_text, title)
        assert "Source:" in part and "`metrics.json`" in part and "`config.json`" in part
    assert "`engine/configurations.py` (TRANSFER)" in section(report_text, "Part (b)")
    assert "[predictions.json](activations/x/predictions.json)" in section(report_text, "Part (d)")


def test_what_the_report_does_not_state_is_said_to_be_our_choice(report_text):
    choices = section(report_text, "Our choices, not the report's")
    assert all(f"- {choice}" in choices for choice in OUR_CHOICES)
    assert "45,000" in choices and "5,000 class-balanced" in choices and "40 epochs" in choices
    # Choices a reader could not see before: each is in the list, and the docs show it (the
    # README links the list).
    for words in ("BatchNorm in eval mode", "ImageNet's channel statistics",
                  "pretrained-cifar-stem", "test images too", "label smoothing 0.1"):
        assert words in choices, words
    listed = " ".join((Path(__file__).parent.parent / "docs" / "original-report.md").read_text()
                      .split())
    assert all(f"- {choice}" in listed for choice in OUR_CHOICES)


def test_every_link_points_to_an_existing_file(results, report_text):
    links = LINK.findall(report_text)
    images = {target for bang, target in links if bang}
    expected = {"scratch/synthetic/seed0/curves.png", "transfer/compare_heads.png",
                "transfer/compare_all.png", "augment/test_accuracy.png", "augment/curves.png",
                "augment/gallery.png", "dropout/curves_classifier.png", "dropout/rate_summary.png",
                "activations/x/overview.png", "activations/x/gradcam.png"}
    assert expected <= images
    for _, target in links:
        if target.startswith("#"):
            continue  # the overview's links to sections
        assert (results / unquote(target)).exists(), target


def test_rerunning_gives_the_same_report_and_leaves_no_temporary_file(results, report_text):
    assert write_report(results) == report_text
    assert sorted(path.name for path in results.iterdir() if path.is_file()) == ["REPORT.md"]


# --- runs that did not finish, parts not run ----------------------------------------------------

def measured_metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def copy_run(source, destination, config_changes=None, arg_changes=None):
    """A copy of the run directory source as destination/seed0, its config.json changed."""
    shutil.copytree(source, destination / "seed0")
    saved = config(destination)
    saved.update(config_changes or {})
    saved["args"].update(arg_changes or {})
    (destination / "seed0" / "config.json").write_text(json.dumps(saved))
    return destination / "seed0"


def test_unfinished_started_and_damaged_runs_are_marked_not_compared(results, tmp_path):
    scratch = tmp_path / "results" / "scratch"
    source = results / "scratch" / "synthetic" / "seed0"
    copy_run(source, scratch / "long", arg_changes={"epochs": 5})
    started = scratch / "started" / "seed0"
    started.mkdir(parents=True)
    shutil.copy(source / "checkpoint.pt", started)  # interrupted in its first epoch
    damaged = copy_run(source, scratch / "damaged")
    (damaged / "metrics.json").write_text('{"epochs": 1, "train_acc')
    # Trained as the report's run (CIFAR-10, 45,000 images, 50 epochs, full width): compared
    # with 87.35%. The same with 15 epochs (a --quick run) is set beside it, with the reason.
    like_the_report = {"dataset": "cifar10", "sizes": {"train": 45000, "val": 5000, "test": 10000},
                       "model": {**config(source.parent)["model"], "width": 64}}
    for name, epochs in (("cifar", 50), ("quick", 15)):
        copied = copy_run(source, scratch / name, config_changes=like_the_report,
                          arg_changes={"subset": None, "dataset": "cifar10", "epochs": epochs})
        (copied / "metrics.json").write_text(json.dumps({**measured_metrics(source), "epochs": epochs}))

    text = write_report(tmp_path / "results")
    assert "| `train_scratch.py` | 5 runs | 2 finished, 3 not finished |" in text
    table = tables(section(text, "Part (a)"))[0]
    measured = metrics(source.parent)
    long = row(table, "long")
    assert long["status"] == "0/1 seeds finished; seed0 unfinished: 1/5 epochs"
    assert long["epochs"] == "1/5" and long["test acc"] == pct(measured["test_accuracy"], 2)
    assert long["test − report"] == "— (not finished)"
    started = row(table, "started")
    assert started["status"] == "0/1 seeds finished; seed0 started, no finished epoch"
    assert started["test acc"] == "—"
    damaged = row(table, "damaged")
    assert damaged["status"] == ("0/1 seeds finished; seed0 damaged: metrics.json is not "
                                 "readable JSON")
    assert damaged["test acc"] == "—"
    assert "![long/seed0 (unfinished: 1/5 epochs): loss and accuracy" in text
    assert row(table, "cifar")["status"] == "1/1 seeds finished"
    difference = 100 * (measured["test_accuracy"] - 0.8735)
    assert row(table, "cifar")["test − report"] == f"{difference:+.2f} pp"
    assert row(table, "quick")["status"] == "1/1 seeds finished"
    assert row(table, "quick")["test − report"] == "— (epochs 15, report 50)"


def test_a_run_with_a_damaged_history_is_not_finished(results, tmp_path):
    """metrics.json and config.json intact, history.csv damaged: not finished (its status
    says why), so its figure is shown as an unfinished one's and never compared."""
    run = copy_run(results / "scratch" / "synthetic" / "seed0", tmp_path / "scratch" / "x")
    (run / "history.csv").write_text("epoch,lr\n1,abc\n")
    text = write_report(tmp_path)
    cells = row(tables(section(text, "Part (a)"))[0], "x")
    assert cells["status"] == ("0/1 seeds finished; seed0 damaged: history.csv or "
                               "per_class.csv is damaged")
    assert cells["test − report"] == "— (not finished)"


def test_parts_without_runs_list_the_command_that_runs_them(results, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(results / "scratch", root / "scratch")
    text = write_report(root)
    assert text.count("**Not run yet**") == 4
    commands = {
        "Part (b)": f"python train_transfer.py --out {root / 'transfer'}",
        "Part (c): data augmentation": f"python augment_study.py --out {root / 'augment'}",
        "Part (c): dropout": f"python dropout_sweep.py --out {root / 'dropout'}",
        "Part (d)": "python visualize_activations.py --run "
                    f"{root / 'scratch' / 'synthetic' / 'seed0'}"}
    for title, command in commands.items():
        assert command in section(text, title), title
    overview = row(tables(text)[0], "Part (b): transfer learning from ImageNet")
    assert (overview["found"], overview["state"]) == ("0 runs", "not run")
    # Without runs, the report's own figures are still there to compare with later.
    assert "| 80.4% |" in section(text, "Part (b)")


def test_commands_omit_out_for_the_default_results_folder():
    assert engine_report.part_command("transfer", "results") == "python train_transfer.py"
    assert engine_report.part_command("scratch", Path("results")) == "python train_scratch.py"
    assert engine_report.part_command("activations", "results") == (
        "python visualize_activations.py --run results/scratch/cifar10/seed0")


@pytest.mark.parametrize("case", ["missing", "empty", "file", "part folder",
                                  "configuration folder", "run folder"])
def test_a_results_folder_without_runs_is_one_line_exit_2(case, results, tmp_path, capsys):
    target = {"missing": tmp_path / "nowhere", "empty": tmp_path, "file": tmp_path / "notes.txt",
              "part folder": results / "scratch",
              "configuration folder": results / "scratch" / "synthetic",
              "run folder": results / "scratch" / "synthetic" / "seed0"}[case]
    if case == "file":
        target.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        run_main(report, "--results", target)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    if case.endswith("folder"):
        assert f"(here: --results {results})" in error  # names the folder to pass instead
    assert not (target / "REPORT.md").exists()
