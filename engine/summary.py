"""Study summaries: summary.csv (raw numbers) and summary.md (a readable table)."""
import csv
import io
import math

from engine import atomic


def write_summary(directory, rows, columns, title, notes=()):
    """rows: dicts; columns: (key, header, format) triples, format like "{:.2%}" or None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[key for key, _, _ in columns],
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(directory / "summary.csv", buffer.getvalue())

    lines = [f"# {title}", "", "| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format_cell(row.get(key), style) for key, _, style in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    atomic.write_text(directory / "summary.md", "\n".join(lines) + "\n")


def format_cell(value, style):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return style.format(value) if style else str(value)
