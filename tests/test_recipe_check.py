"""benchmarks/recipe_check.py: one small cell on the real digits, figures as documented.

This checks the script (both trainers run, the table and JSON hold every figure, the plain
trainer's results are reused from --plain-cache), not the recipe: that is the benchmark's.
"""
import json

import pytest

from benchmarks import recipe_check

pytestmark = pytest.mark.slow  # both trainers on the digits, ~10 s: the second tier

CELL_KEYS = {"batch_size", "epochs", "steps", "ours", "plain", "plain_best_lr",
             "plain_best_accuracy", "ours_minus_plain_best"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    args = recipe_check.get_args_parser().parse_args(
        ["--quick", "--workers", "0", "--plain-cache", str(folder / "cache"),
         "--json", str(folder / "recipe.json")])
    recipe_check.main(args)
    return json.loads((folder / "recipe.json").read_text()), folder / "cache"


def test_one_cell_holds_ours_the_plain_grid_and_the_difference(report):
    written, _ = report
    (cell,) = written["cells"]
    assert CELL_KEYS <= cell.keys() and (cell["batch_size"], cell["epochs"]) == (128, 1)
    assert cell["ours"]["lr"] == pytest.approx(0.1)  # no --lr: 0.2 at 512, scaled to 128
    assert "--lr" not in cell["ours"]["command"]
    assert list(cell["plain"]) == ["0.05"] and cell["plain_best_lr"] == 0.05
    assert cell["ours_minus_plain_best"] == pytest.approx(
        cell["ours"]["test_accuracy"] - cell["plain"]["0.05"]["test_accuracy"])
    assert written["dataset"].startswith("sklearn digits") and written["width"] == 8


def test_plain_results_in_the_cache_are_reused_not_rerun(report):
    written, cache = report
    (stored,) = cache.iterdir()
    stored.write_text(json.dumps({"test_accuracy": 0.123, "seconds": 1.0}))
    args = recipe_check.get_args_parser().parse_args(["--width", "8", "--plain-cache", str(cache)])
    result = recipe_check.train_plain(None, 128, 1, 0.05, args, normalization=None)
    assert result["test_accuracy"] == 0.123 and result["cached"] == str(stored)
