"""Repeated runs over seeds: the statistics, the summaries, and --seeds through real scripts."""
import csv
import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
from scipy import stats

import report
import train_scratch
from conftest import QUICK, run_script, start_script
from engine import plots, seeds, studies
from engine.errors import UserError
from engine.results import RunRecord
from engine.summary import format_mean_std, write_summary

SWEEP = [*QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


# --- statistics ----------------------------------------------------------------------------------

def test_spread_is_the_mean_the_sample_std_and_the_count():
    found = seeds.spread([0.90, 0.92, 0.97])
    assert found.mean == pytest.approx(0.93)
    # ddof=1: sqrt(((-.03)^2 + (-.01)^2 + .04^2) / 2)
    assert found.std == pytest.approx(math.sqrt((0.0009 + 0.0001 + 0.0016) / 2))
    assert found.n == 3
    one = seeds.spread([0.5])
    assert (one.mean, one.std, one.n) == (0.5, None, 1)


def test_welch_p_value_matches_the_formula():
    a, b = np.array([0.91, 0.93, 0.92, 0.95]), np.array([0.88, 0.90, 0.85])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    expected = 2 * stats.t.sf(abs(t), df)
    found = seeds.compare(a, b)
    assert found.p_value == pytest.approx(expected, rel=1e-9)
    assert found.difference == pytest.approx(a.mean() - b.mean())
    assert found.p_value < 0.05 and found.verdict == "beyond noise"
    points = 100 * (a.mean() - b.mean())
    assert found.text() == f"+{points:.2f} pp, p = {expected:.2g} (beyond noise)"


def test_verdicts_depend_on_the_number_of_seeds():
    assert seeds.compare([0.92], [0.90]).text() == "+2.00 pp (single run)"
    assert seeds.compare([0.92, 0.93, 0.94], [0.90]).text() == "+3.00 pp (single run)"
    two = seeds.compare([0.92, 0.93], [0.90, 0.91, 0.95])
    assert two.p_value is None
    assert two.text() == "+0.50 pp (2 seeds: too few to test, need 3)"
    within = seeds.compare([0.90, 0.95, 0.92], [0.91, 0.94, 0.93])
    assert within.verdict == "within noise" and within.p_value > 0.05
    assert within.text().startswith("-0.33 pp, p = ") and within.text().endswith("(within noise)")
    clear = seeds.compare([0.80, 0.81, 0.80], [0.90, 0.91, 0.905])
    assert clear.verdict == "beyond noise" and clear.p_value < 0.05


def test_zero_variance_on_both_sides_is_said_not_tested():
    same = seeds.compare([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
    assert same.p_value is None and same.text() == "+0.00 pp (no difference: identical values)"
    apart = seeds.compare([0.9, 0.9, 0.9], [0.8, 0.8, 0.8])
    assert apart.p_value is None and apart.text() == "+10.00 pp (cannot test: no variance)"


def test_seeds_flags_are_checked(tmp_path):
    def args(seed=0, seeds_=None):
        return train_scratch.get_args_parser().parse_args(
            ["--seed", str(seed), *(["--seeds", *map(str, seeds_)] if seeds_ else [])])
    assert seeds.seeds_to_run(args()) == [0] and seeds.seeds_to_run(args(seed=4)) == [4]
    assert seeds.seeds_to_run(args(seeds_=[2, 0])) == [2, 0]
    with pytest.raises(UserError, match="list each seed once"):
        seeds.seeds_to_run(args(seeds_=[0, 1, 1]))
    with pytest.raises(UserError, match="--seed 3 and --seeds 0 1"):
        seeds.seeds_to_run(args(seed=3, seeds_=[0, 1]))


# --- summaries -----------------------------------------------------------------------------------

def record(arm, seed, test_accuracy, train_seconds, epochs=1):
    """A run folder as read back (engine.results), with its figures given."""
    return RunRecord(arm, seed, Path("augment") / arm / f"seed{seed}",
                     config={"args": {"arm": arm, "seed": seed, "epochs": epochs},
                             "sizes": {"train": 200}},
                     metrics={"epochs": epochs, "test_accuracy": test_accuracy,
                              "train_accuracy": 1.0, "val_accuracy": 0.5,
                              "train_seconds": train_seconds},
                     history=[], per_class={})


RUNS = [record("none", 0, 0.90, 2.0), record("flip", 0, 0.92, 1.0), record("none", 1, 0.91, 4.0),
        record("flip", 1, 0.95, 3.0), record("none", 2, 0.92, 3.0), record("once", 0, 0.80, 1.0)]


def test_runs_over_seeds_become_one_row_per_configuration_with_comparisons():
    table = studies.augment_table(RUNS)
    rows = {row["arm"]: row for row in table.rows}
    assert [(name, row["seeds"]) for name, row in rows.items()] == [
        ("none", 3), ("flip", 2), ("once", 1)]  # the study's arm order, then others
    none = rows["none"]
    assert none["test_accuracy"] == pytest.approx(0.91)
    assert none["test_accuracy_std"] == pytest.approx(0.01)  # sample std of .90 .91 .92
    # seconds per epoch: 2, 4, 3 over one epoch each
    assert none["seconds_per_epoch"] == pytest.approx(3.0)
    assert none["seconds_per_epoch_std"] == pytest.approx(1.0)
    assert none["test_error"] == pytest.approx(0.09)
    assert rows["once"]["test_accuracy_std"] is None
    assert none["vs_none"] == "—" and none["vs_none_p"] is None  # the reference itself
    assert rows["flip"]["vs_none"] == "+2.50 pp (2 seeds: too few to test, need 3)"
    assert rows["flip"]["vs_none_difference"] == pytest.approx(0.025)
    assert rows["once"]["vs_none"] == "-11.00 pp (single run)"
    assert all(row["vs_standard"] == "— (not run)" for row in rows.values())


def test_summary_shows_mean_std_and_writes_std_and_seeds_to_csv(tmp_path, capsys):
    write_summary(tmp_path, studies.augment_table(RUNS))
    markdown = (tmp_path / "summary.md").read_text()
    none = next(line for line in markdown.splitlines() if line.startswith("| none |"))
    assert "| 3/3 seeds finished | 3 | 1/1 | 100.00 ± 0.00% | 91.00 ± 1.00% |" in none
    once = next(line for line in markdown.splitlines() if line.startswith("| once |"))
    assert "| 80.00% |" in once and "-11.00 pp (single run)" in once  # one seed: no spread
    assert f"summary: {tmp_path / 'summary.md'}" in capsys.readouterr().out
    table = read_csv(tmp_path / "summary.csv")
    assert list(table[0])[:8] == ["arm", "in_report", "status", "seeds", "epochs",
                                  "train_accuracy", "train_accuracy_std", "test_accuracy"]
    assert {"vs_none", "vs_none_difference", "vs_none_p"} <= set(table[0])
    assert float(table[0]["test_accuracy_std"]) == pytest.approx(0.01)
    assert table[2]["test_accuracy_std"] == "" and table[2]["seeds"] == "1"


def test_mean_std_cells_keep_one_unit():
    assert format_mean_std(0.5, 0.01, "{:.3f}") == "0.500 ± 0.010"  # no unit: both whole
    assert format_mean_std(12.34, 0.5, "{:.1f}") == "12.3 ± 0.5"
    assert format_mean_std(0.9312, 0.0021, "{:.2%}") == "93.12 ± 0.21%"
    assert format_mean_std(3.15, 4.04, "{:+.2f} pp") == "+3.15 ± 4.04 pp"
    assert format_mean_std(0.9312, None, "{:.2%}") == "93.12% ± —"
    assert format_mean_std(None, None, "{:.2%}") == "—"


def test_curves_over_seeds_are_a_mean_and_a_min_max_band(tmp_path, monkeypatch):
    def history(values):
        return [{"epoch": epoch, "test_accuracy": value, "test_loss": 1 - value}
                for epoch, value in enumerate(values, 1)]
    runs = [history([0.1, 0.5]), history([0.3, 0.7]), history([0.2, 0.9])]
    epochs, mean, low, high = plots._mean_and_band(runs, "test_accuracy", 100)
    assert epochs == [1, 2]
    assert list(mean) == pytest.approx([20, 70]) and list(low) == pytest.approx([10, 50])
    assert list(high) == pytest.approx([30, 90])
    bands = []
    original = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, *a, **k: bands.append(a) or original(self, *a, **k))
    plots.plot_runs({"three": runs, "one": runs[0]}, ["test_accuracy"], tmp_path / "c.png")
    assert len(bands) == 1  # the band of the three seeds; one seed draws a plain line
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# --- through the scripts -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """augment_study.py with two arms over two seeds, as a user runs it."""
    out = tmp_path_factory.mktemp("seeds") / "augment"
    result = run_script("augment_study.py", *SWEEP, "--arms", "none", "flip", "--seeds", "0", "1",
                        "--out", out)
    return out, result


def test_a_two_seed_sweep_writes_every_seed_and_a_mean_std_summary(sweep):
    out, result = sweep
    for arm in ("none", "flip"):
        for seed in (0, 1):
            run = out / arm / f"seed{seed}"
            assert sorted(path.name for path in run.iterdir()) == [
                "checkpoint.pt", "config.json", "confusion.png", "curves.png", "history.csv", "metrics.json",
        "per_class.csv"]
            settings = json.loads((run / "config.json").read_text())["args"]
            assert settings["seed"] == seed and settings["arm"] == arm
            assert "seeds" not in settings and "arms" not in settings
    assert "[1/4] none seed 0: training" in result.stdout  # seed by seed
    assert "[2/4] flip seed 0: training" in result.stdout
    assert "[4/4] flip seed 1: training" in result.stdout
    rows = {row["arm"]: row for row in read_csv(out / "summary.csv")}
    assert list(rows) == ["none", "flip"]
    for arm, row in rows.items():
        values = [metrics(out / arm / f"seed{seed}")["test_accuracy"] for seed in (0, 1)]
        assert row["seeds"] == "2"
        assert float(row["test_accuracy"]) == pytest.approx(np.mean(values))
        assert float(row["test_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
    markdown = (out / "summary.md").read_text()
    flip = next(line for line in markdown.splitlines() if line.startswith("| flip |"))
    assert "±" in flip and "(2 seeds: too few to test, need 3)" in flip
    assert "Seeds 0 1" in markdown and "Welch" in markdown
    for plot in ("test_accuracy.png", "curves.png", "gallery.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # over the CI budget (README: run with -m slow)
def test_an_interrupted_multi_seed_sweep_continues(tmp_path):
    study = tmp_path / "dropout"
    args = [*QUICK, "--subset", "200", "--val-size", "100", "--epochs", "2", "--rates", "0",
            "--seeds", "0", "1", "--out", str(study)]
    process = start_script("dropout_sweep.py", *args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    second = study / "rate0.0" / "seed1" / "history.csv"
    deadline = time.monotonic() + 300
    while not (second.exists() and len(second.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "sweep ended too soon"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # seed 0 finished, seed 1 in its second epoch
    process.wait()
    finished = study / "rate0.0" / "seed0" / "checkpoint.pt"
    stamp = finished.stat().st_mtime_ns

    result = run_script("dropout_sweep.py", *args)
    assert "[1/2] rate0.0 seed 0: finished earlier, reusing" in result.stdout
    assert "[2/2] rate0.0 seed 1: resuming" in result.stdout
    assert "after epoch 1 of 2" in result.stdout
    assert finished.stat().st_mtime_ns == stamp  # not retrained
    rows = read_csv(study / "summary.csv")
    assert [(row["run"], row["seeds"], row["epochs"]) for row in rows] == [("rate0.0", "2", "2/2")]

    # A seed added later: the finished seeds stay valid ("seeds" is not a run's flag).
    more = run_script("dropout_sweep.py", *args[:-2], "2", "--out", study)
    assert more.stdout.count("finished earlier, reusing") == 2
    assert "[3/3] rate0.0 seed 2: training" in more.stdout
    assert finished.stat().st_mtime_ns == stamp
    assert [row["seeds"] for row in read_csv(study / "summary.csv")] == ["3"]


def test_train_scratch_over_seeds_writes_a_folder_of_seeds_and_a_summary(tmp_path):
    out = tmp_path / "scratch"
    result = run_script("train_scratch.py", *SWEEP, "--seeds", "0", "1", "--out", out)
    for seed in (0, 1):
        settings = json.loads((out / "synthetic" / f"seed{seed}" / "config.json").read_text())["args"]
        assert settings["seed"] == seed and "seeds" not in settings
    assert "[2/2] synthetic seed 1: training" in result.stdout
    row = read_csv(out / "summary.csv")[0]
    values = [metrics(out / "synthetic" / f"seed{seed}")["test_accuracy"] for seed in (0, 1)]
    assert row["seeds"] == "2" and float(row["test_accuracy"]) == pytest.approx(np.mean(values))
    assert "±" in (out / "summary.md").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--seed", "3", "--seeds", "0", "1"], "--seed 3 and --seeds 0 1 both choose the seed"),
    (["--seeds", "0", "0"], "list each seed once")])
def test_contradicting_seed_flags_are_one_line_exit_2(flags, message, tmp_path, capsys):
    out = tmp_path / "scratch"
    with pytest.raises(SystemExit) as stop:
        train_scratch.main(train_scratch.get_args_parser().parse_args(
            [*SWEEP, *flags, "--out", str(out)]))
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error
    assert not out.exists()


def test_the_report_gives_mean_std_seeds_and_a_verdict_over_seed_folders(sweep, tmp_path):
    """Seed folders copied from the sweep, with known test accuracies written in."""
    results = tmp_path / "results"
    known = {"none": [0.80, 0.81, 0.82], "flip": [0.90, 0.91, 0.92], "standard": [0.81]}
    for arm, values in known.items():
        for seed, value in enumerate(values):
            run = results / "augment" / arm / f"seed{seed}"
            shutil.copytree(sweep[0] / "flip" / "seed0", run)
            saved = {**metrics(run), "test_accuracy": value}
            (run / "metrics.json").write_text(json.dumps(saved))
            config = json.loads((run / "config.json").read_text())
            config["args"].update(arm=arm, seed=seed)
            (run / "config.json").write_text(json.dumps(config))
    text = report.main(report.get_args_parser().parse_args(["--results", str(results)]))
    text = text.read_text()
    lines = {line.split(" | ")[0].strip("| ").split("](")[0].strip("["): line
             for line in text.splitlines() if line.startswith("| [")}
    p_value = seeds.compare(known["flip"], known["none"]).p_value
    flip = lines["flip"]
    assert flip.startswith("| [flip](augment/flip) |")  # its folder of seeds
    assert "| 3/3 seeds finished | 3 |" in flip
    assert "| 91.00 ± 1.00% |" in flip  # test accuracy over the three seeds
    assert f"+10.00 pp, {seeds.format_p(p_value)} (beyond noise)" in flip
    assert "| 81.00 ± 1.00% |" in lines["none"]
    assert "| 1/1 seeds finished | 1 |" in lines["standard"]
    assert "| 81.00% |" in lines["standard"]  # one seed: its own figure, no spread
    assert "(single run)" in lines["standard"]
    assert "[flip/seed2](augment/flip/seed2/config.json)" in text  # each seed's settings
    assert "| `augment_study.py` | 7 runs | 7 finished, 0 not finished |" in text


def test_the_report_leaves_an_unfinished_seed_out_of_the_mean_and_names_it(sweep, tmp_path):
    """Both arms planned for 2 epochs: flip's seed 1 stopped after its first, none's seed 1
    in its first (no metrics.json yet); seed 0 of each finished."""
    results = tmp_path / "results"
    shutil.copytree(sweep[0], results / "augment")
    for run in (results / "augment").glob("*/seed*"):
        config = json.loads((run / "config.json").read_text())
        config["args"]["epochs"] = 2
        (run / "config.json").write_text(json.dumps(config))
        if run.name == "seed0":  # finished: its metrics say 2 epochs
            (run / "metrics.json").write_text(json.dumps({**metrics(run), "epochs": 2}))
    (results / "augment" / "none" / "seed1" / "metrics.json").unlink()
    text = report.main(report.get_args_parser().parse_args(["--results", str(results)]))
    lines = text.read_text().splitlines()
    flip = next(line for line in lines if line.startswith("| [flip]"))
    assert "| 1/2 seeds finished; seed1 unfinished: 1/2 epochs | 1 |" in flip
    measured = metrics(sweep[0] / "flip" / "seed0")["test_accuracy"]
    assert f"| {measured:.2%} |" in flip  # seed 0's alone, not seed 1's epoch-1 figure
    assert "(single run)" in flip
    none = next(line for line in lines if line.startswith("| [none]"))
    assert "| 1/2 seeds finished; seed1 started, no finished epoch | 1 |" in none


def test_the_report_neither_averages_nor_compares_seeds_trained_otherwise(sweep, tmp_path):
    """augment/flip/ holds the sweep's seeds 0 and 1 and a seed 5 trained with another
    learning rate: two rows, each naming its seeds, the mean of 0 and 1 untouched by 5."""
    results = tmp_path / "results"
    shutil.copytree(sweep[0], results / "augment")
    flip = results / "augment" / "flip"
    shutil.copytree(flip / "seed0", flip / "seed5")
    config = json.loads((flip / "seed5" / "config.json").read_text())
    config["args"]["lr"] *= 2  # another learning rate: not the same experiment
    (flip / "seed5" / "config.json").write_text(json.dumps(config))

    text = report.main(report.get_args_parser().parse_args(["--results", str(results)]))
    table = text.read_text().split("## Part (c): data augmentation")[1].split("**Settings**")[0]
    rows = [line for line in table.splitlines() if line.startswith("| [flip")]
    assert len(rows) == 2, rows
    seeded = next(row for row in rows if row.startswith("| [flip](augment/flip) (seed0, seed1) |"))
    assert "| 2/2 seeds finished | 2 |" in seeded
    values = [metrics(flip / f"seed{seed}")["test_accuracy"] for seed in (0, 1)]
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert f"| {format_mean_std(mean, std, '{:.2%}')} |" in seeded
    assert "(2 seeds: too few to test, need 3)" in seeded
    other = next(row for row in rows if row.startswith("| [flip](augment/flip) (seed5) |"))
    assert "| 1/1 seeds finished | 1 |" in other
    assert "— (reference trained with other settings)" in other
    assert "a row per set of settings" in table


def table_cells(lines, first):
    """The cells after the name of each table row of `lines` whose name starts with `first`."""
    return [line.split(" | ")[1:] for line in lines if line.startswith(first)]


def test_a_studys_summary_and_its_report_section_show_the_same_numbers(sweep, tmp_path):
    """One code path: the two-seed sweep's summary.md and REPORT.md's part (c) table agree
    cell for cell (REPORT.md links the names), and their means are those of the seeds."""
    results = tmp_path / "results"
    shutil.copytree(sweep[0], results / "augment")
    text = report.main(report.get_args_parser().parse_args(["--results", str(results)]))
    part = text.read_text().split("## Part (c): data augmentation")[1].split("**Settings**")[0]
    summary = (results / "augment" / "summary.md").read_text()
    for arm in ("none", "flip"):
        ours = table_cells(summary.splitlines(), f"| {arm} |")
        theirs = table_cells(part.splitlines(), f"| [{arm}](augment/{arm}) |")
        assert ours == theirs and len(ours) == 1, (ours, theirs)
        values = [metrics(sweep[0] / arm / f"seed{seed}")["test_accuracy"] for seed in (0, 1)]
        expected = format_mean_std(np.mean(values), np.std(values, ddof=1), "{:.2%}")
        assert f" {expected} " in " | ".join(ours[0])


def test_the_progress_note_counts_only_finished_runs_of_the_plan(tmp_path):
    """plan.json lists a/seed0 and b/seed0; a finished both epochs, b stopped after 1 of 2:
    "1 of 2", naming b (a started run is not a finished one)."""
    study = tmp_path / "augment"
    for arm, done in (("a", 2), ("b", 1)):
        run = study / arm / "seed0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"args": {"arm": arm, "seed": 0, "epochs": 2}}))
        (run / "metrics.json").write_text(json.dumps({"epochs": done, "test_accuracy": 0.5}))
    (study / "plan.json").write_text(json.dumps({"runs": ["a/seed0", "b/seed0"]}))
    notes = studies.study_table("augment", study).notes
    assert "1 of 2 planned runs finished; not yet: b/seed0" in notes[0]
