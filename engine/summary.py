"""A study's table, and its two renderings: summary.csv (raw numbers, with each column's
<key>_std, _difference, _p and _why beside it) and markdown (summary.md and REPORT.md:
"mean ± std" where a row has several seeds)."""
import math
import re
from dataclasses import dataclass, field

from engine import atomic

# Raw figures that travel with a column into summary.csv: the spread over seeds, a
# comparison's difference and p-value, and why a value is missing.
COMPANIONS = ("_std", "_difference", "_p", "_why")
UNIT = re.compile(r"[^\d.]*$")  # what follows a formatted number: "%", " pp", ""


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    style: object = None  # "{:.2%}", a function of the value (points(2)), or None: as it is


@dataclass
class Table:
    """One row per configuration (a results.Group, or None for one of the report's that did
    not run); every cell's value is in its row dict under its column's key."""
    title: str
    columns: list
    rows: list
    groups: list
    notes: list = field(default_factory=list)

    def cell(self, row, column):
        """The markdown cell: "mean ± std" over several seeds; a missing value as "—", with
        why in brackets where the row says."""
        value, key = row.get(column.key), column.key
        if is_missing(value) and row.get(f"{key}_why"):
            return f"— ({row[f'{key}_why']})"
        if (row.get("seeds") or 1) > 1 and f"{key}_std" in row:
            return format_mean_std(value, row[f"{key}_std"], column.style)
        return format_cell(value, column.style)

    def markdown(self, name_cell=None):
        """The table's lines; name_cell(group, row) may replace the first cell (a link)."""
        lines = []
        for group, row in zip(self.groups, self.rows):
            cells = [self.cell(row, column) for column in self.columns]
            if name_cell is not None and group is not None:
                cells[0] = name_cell(group)
            lines.append(cells)
        return table([column.header for column in self.columns], lines)

    def csv_fields(self):
        """Each column's key, followed by those of its companions that the rows carry."""
        fields = []
        for column in self.columns:
            fields.append(column.key)
            fields += [column.key + suffix for suffix in COMPANIONS
                       if any(column.key + suffix in row for row in self.rows)]
        return fields


def write_summary(directory, found):
    """summary.csv and summary.md of a study's Table, atomically."""
    atomic.write_csv(directory / "summary.csv", found.csv_fields(), found.rows)
    lines = [f"# {found.title}", "", *found.markdown()]
    if found.notes:
        lines += [""] + [f"- {note}" for note in found.notes]
    atomic.write_text(directory / "summary.md", "\n".join(lines) + "\n")
    print(f"summary: {directory / 'summary.md'}", flush=True)


def table(headers, rows):
    """A markdown table; a cell cannot hold a pipe or a line break."""
    def cells(row):
        return " | ".join(str(value).replace("|", "\\|").replace("\n", " ") for value in row)
    return [f"| {cells(headers)} |", "|" + "---|" * len(headers)] + [f"| {cells(row)} |"
                                                                     for row in rows]


def is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def points(digits):
    """A style for a difference of fractions, in percentage points: 0.0123 -> '+1.23 pp'."""
    return lambda value: f"{100 * value:+.{digits}f} pp"


def format_cell(value, style):
    if is_missing(value):
        return "—"
    return style(value) if callable(style) else style.format(value) if style else str(value)


def format_mean_std(mean, std, style):
    """'93.12 ± 0.21%' (the unit once, after the std: "%", " pp"); '93.12% ± —' where the
    std is undefined (one seed)."""
    if is_missing(mean):
        return "—"
    mean_text = format_cell(mean, style)
    if is_missing(std):
        return f"{mean_text} ± —"
    std_text = format_cell(abs(std), style).lstrip("+")  # a spread has no sign
    unit = UNIT.search(std_text).group()
    if unit and mean_text.endswith(unit):
        mean_text = mean_text[:-len(unit)]
    return f"{mean_text} ± {std_text}"
