"""The documentation against the code and the repository: the original report's figures in
docs/original-report.md agree with engine/configurations.py (and the heads, the dropout
rates); every relative link in README.md and docs/ points to a file; no tracked file points
outside the repository; the front page stays short; every choice of ours is listed."""
import re
import subprocess
from pathlib import Path

import pytest
import torch.nn as nn

import dropout_sweep
from engine.configurations import (OUR_CHOICES, RECIPES, REPORT_ARMS, REPORT_FROZEN_CHILDREN,
                                   REPORT_SCRATCH, REPORT_TRANSFER_EPOCHS, TRANSFER)
from models.transfer import make_head

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL = ROOT / "docs" / "original-report.md"
README_MAX_LINES = 160
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def docs():
    """README.md and every markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(text, title):
    """The text under the `## title` heading, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def table(text):
    """The first markdown table in text: a list of {header: cell} rows."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) > 2, "no table"
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row)) for row in rows]


def code_name(cell):
    """The first `name` in backticks in a cell."""
    return re.search(r"`([^`]+)`", cell).group(1)


def percent(cell):
    return None if cell == "—" else float(cell)


def as_percent(fraction):
    return round(fraction * 100, 4)


# --- (a) the report's figures: docs/original-report.md and the code agree -----------------------

@pytest.fixture(scope="module")
def original():
    return ORIGINAL.read_text()


def test_part_a_figures_match_the_code(original):
    rows = [row for row in table(section(original, "Accuracies")) if row["part"] == "(a)"]
    assert len(rows) == 1
    row = rows[0]
    assert int(row["epochs"]) == REPORT_SCRATCH["epochs"]
    assert percent(row["train %"]) == as_percent(REPORT_SCRATCH["train_accuracy"])
    assert percent(row["test %"]) == as_percent(REPORT_SCRATCH["test_accuracy"])
    assert percent(row["val %"]) is None  # the report has no validation figure for part (a)
    assert row["where in the report"]


def test_part_b_figures_match_each_configuration(original):
    rows = {code_name(row["configuration"]): row
            for row in table(section(original, "Accuracies")) if row["part"] == "(b)"}
    with_figures = {name for name, configuration in TRANSFER.items() if configuration.report}
    assert set(rows) == with_figures
    for name in with_figures:
        row = rows[name]
        written = tuple(percent(row[key]) for key in ("train %", "val %", "test %"))
        assert written == tuple(as_percent(figure) for figure in TRANSFER[name].report), name
        assert int(row["epochs"]) == REPORT_TRANSFER_EPOCHS, name
        assert row["where in the report"], name


def settings(original):
    return {row["setting"]: row["value"] for row in table(section(original, "Settings"))}


def test_settings_match_the_code(original):
    stated = settings(original)
    assert int(stated["part (a): epochs"]) == REPORT_SCRATCH["epochs"]
    assert int(stated["part (b): epochs"]) == REPORT_TRANSFER_EPOCHS
    assert int(stated["part (b): frozen children"]) == REPORT_FROZEN_CHILDREN
    rates = [float(rate) for rate in stated["part (c) dropout: rates"].split(",")]
    assert rates == dropout_sweep.DEFAULT_RATES
    assert int(stated["part (c) dropout: epochs"]) == RECIPES["dropout"]["epochs"]


def described(head):
    """A head as docs/original-report.md writes it: "Linear 512→128, ReLU, Dropout 0.3, ..."."""
    words = {nn.Linear: lambda m: f"Linear {m.in_features}→{m.out_features}",
             nn.ReLU: lambda m: "ReLU", nn.Dropout: lambda m: f"Dropout {m.p:g}"}
    return ", ".join(words[type(module)](module) for module in head)


@pytest.mark.parametrize("head, setting", [("mlp", "part (b): config 1 head"),
                                           ("deep", "part (b): config 2 head")])
def test_the_heads_match_the_code(original, head, setting):
    assert settings(original)[setting] == described(make_head(head, 10))


def test_the_nine_augmentations_match_the_code(original):
    rows = table(section(original, "Part (c): the nine augmentations"))
    assert [code_name(row["arm"]) for row in rows] == REPORT_ARMS
    assert [int(row["#"]) for row in rows] == list(range(1, len(REPORT_ARMS) + 1))


# --- (b) links -------------------------------------------------------------------------------

def relative_links(path):
    for target in LINK.findall(path.read_text()):
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: ...
            yield target


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def anchors(path):
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("path", docs(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path):
    links = list(relative_links(path))
    assert links or path.name != "README.md"
    for target in links:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.relative_to(ROOT)}: {target} does not exist"
        assert ROOT in linked.parents or linked == ROOT, f"{target} is outside the repository"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{path.relative_to(ROOT)}: no heading #{anchor}"


# --- (c) nothing points outside the repository -------------------------------------------------

def tracked_files():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed if name]


def test_no_tracked_file_refers_outside_the_repository():
    # Built from parts, so that this file does not name what it looks for.
    outside = ["seed" + "-report", "../" + "shared"]
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        found += [f"{path.relative_to(ROOT)}: {word}" for word in outside if word in text]
    assert not found


# --- (d) the front page stays a front page -----------------------------------------------------

def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    # The two commands a newcomer runs first, as they are.
    assert "pip install -r requirements.txt && python train_scratch.py" in text
    assert "pip install -r requirements.txt && python -m pytest -q" in text


# --- (e) every choice of ours is written down --------------------------------------------------

def test_every_choice_of_ours_is_in_the_documentation():
    texts = [" ".join(path.read_text().split()) for path in docs()]
    for choice in OUR_CHOICES:
        assert any(choice in text for text in texts), choice
    # The front page shows the list or links to it.
    readme = (ROOT / "README.md").read_text()
    assert ("docs/original-report.md#where-the-report-is-silent-our-choices" in readme
            or all(choice in " ".join(readme.split()) for choice in OUR_CHOICES))
