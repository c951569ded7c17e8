"""Study summaries, one row per configuration: summary.csv (raw numbers, with each column's
<key>_std, _difference and _p beside it) and summary.md ("mean ± std" where any row has
several seeds)."""
import csv
import io
import math
import re

from engine import atomic

# Raw numbers that travel with a column into summary.csv (see engine.seeds).
COMPANIONS = ("_std", "_difference", "_p")
UNIT = re.compile(r"[^\d.]*$")  # what follows a formatted number: "%", " pp", ""


def write_summary(directory, rows, columns, title, notes=()):
    """rows: dicts; columns: (key, header, format) triples, format like "{:.2%}", points(2)
    or None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_fields(rows, columns),
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(directory / "summary.csv", buffer.getvalue())

    spread = any((row.get("seeds") or 1) > 1 for row in rows)
    lines = [f"# {title}", ""] + table(
        [header for _, header, _ in columns],
        [[summary_cell(row, key, style, spread) for key, _, style in columns] for row in rows])
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    atomic.write_text(directory / "summary.md", "\n".join(lines) + "\n")
    print(f"summary: {directory / 'summary.md'}", flush=True)


def table(headers, rows):
    """A markdown table; a cell cannot hold a pipe or a line break."""
    def cells(row):
        return " | ".join(str(value).replace("|", "\\|").replace("\n", " ") for value in row)
    return [f"| {cells(headers)} |", "|" + "---|" * len(headers)] + [f"| {cells(row)} |"
                                                                     for row in rows]


def csv_fields(rows, columns):
    """Each column's key, followed by those of its companions that the rows carry."""
    fields = []
    for key, _, _ in columns:
        fields.append(key)
        fields += [key + suffix for suffix in COMPANIONS
                   if any(key + suffix in row for row in rows)]
    return fields


def summary_cell(row, key, style, spread):
    """The markdown cell: "mean ± std" where the row has a spread and the table shows it."""
    if spread and f"{key}_std" in row:
        return format_mean_std(row.get(key), row[f"{key}_std"], style)
    return format_cell(row.get(key), style)


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
