"""Plots of training curves: one run's curves, and several runs on shared axes."""
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine import atomic

SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}
MARKERS = [None, "o", "s", "^", "D", "v", "x", "*", "P", "h"]  # one more set of 10 colours each


def run_style(index):
    """10 colours, then a new marker every 10 runs: up to 100 runs never share a look."""
    return {"color": f"C{index % 10}", "marker": MARKERS[index // 10 % len(MARKERS)],
            "markevery": 0.1}


def legend_below(figure, axes):
    """One legend for the figure, under its panels, where it covers no curve."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize="small",
                  ncols=min(4, len(labels)))


def subplots(*grid, squeeze=True, **options):
    """A figure and its axes as plt.subplots makes them, without pyplot: no backend to choose
    and no global list of open figures (a study draws hundreds); the PNG is drawn by Agg."""
    figure = Figure(**options)
    FigureCanvasAgg(figure)  # the figure's canvas: what draws it, to PNG
    return figure, figure.subplots(*grid, squeeze=squeeze)


def save_figure(figure, path):
    """Write the figure as a PNG atomically (epoch axes get whole-number ticks)."""
    for axes in figure.axes:
        if axes.get_xlabel() == "epoch":
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")


def plot_curves(history, path, title=None, label_smoothing=0.0):
    """Loss and accuracy per epoch for train / val / test of one run (the training loss is
    against the smoothed targets: label smoothing raises its floor above 0)."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = subplots(1, 2, figsize=(11, 4))
    smoothing = {"train": f" (label smoothing {label_smoothing:g})"} if label_smoothing else {}
    for split, style in SPLIT_STYLES.items():
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], style,
                       label=split + smoothing.get(split, ""))
        accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history], style,
                           label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def plot_confusion(confusion, classes, path, title=None):
    """Colour: the share of the true class's images (rows normalised); counts where they fit."""
    confusion = confusion.numpy()
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.45 * len(classes) + 2)
    figure, axes = subplots(figsize=(side + 1, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class's images")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right", fontsize="small")
    axes.set_yticks(ticks, classes, fontsize="small")
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    if len(classes) <= 20:  # beyond, the numbers would not fit their cells
        for (row, column), count in np.ndenumerate(confusion):
            axes.text(column, row, count, ha="center", va="center", fontsize="x-small",
                      color="white" if shares[row, column] > 0.5 else "black")
    save_figure(figure, path)


def seed_histories(value):
    """A run name's histories: one per seed. A single history (a list of epoch rows) is one."""
    return [value] if value and isinstance(value[0], dict) else list(value)


def _mean_and_band(histories, key, scale):
    """(epochs, mean, low, high) of a column over seeds, over the epochs all seeds have."""
    epochs = min(len(history) for history in histories)
    values = np.array([[scale * row[key] for row in history[:epochs]] for history in histories])
    return ([row["epoch"] for row in histories[0][:epochs]], values.mean(axis=0),
            values.min(axis=0), values.max(axis=0))


def _plot_over_seeds(axes, value, key, scale, style="-", **line):
    """One seed's curve as is; several seeds' mean with a shaded min-max band."""
    histories = seed_histories(value)
    epochs, mean, low, high = _mean_and_band(histories, key, scale)
    if len(histories) > 1:
        line["label"] = f"{line['label']} ({len(histories)} seeds: mean, min-max)"
        axes.fill_between(epochs, low, high, color=line.get("color"), alpha=0.15, linewidth=0)
    axes.plot(epochs, mean, style, **line)


def _label(key):
    """'test_accuracy' -> 'test accuracy (%)'."""
    text = key.replace("_", " ")
    return f"{text} (%)" if key.endswith("accuracy") else text


def plot_runs(histories, panels, path, title=None):
    """One panel per entry of `panels`: a history column (e.g. test_loss), or a tuple of them
    sharing axes, a line style per split; one colour per run. histories: {run name: history,
    or [history per seed]}; several seeds draw as their mean with a min-max band."""
    figure, axes_row = subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8),
                                    squeeze=False, layout="constrained")
    for axes, keys in zip(axes_row[0], panels):
        keys = (keys,) if isinstance(keys, str) else keys
        shared = len(keys) > 1  # splits share the panel: one line style and label each
        for index, (name, value) in enumerate(histories.items()):
            for key in keys:
                split = key.split("_")[0]
                _plot_over_seeds(axes, value, key, 100 if key.endswith("accuracy") else 1,
                                 SPLIT_STYLES[split] if shared else "-",
                                 label=f"{name} ({split})" if shared else name, **run_style(index))
        label = _label(keys[0].split("_", 1)[1] if shared else keys[0])
        axes.set(xlabel="epoch", ylabel=label, title=label)
        axes.grid(alpha=0.3)
    legend_below(figure, axes_row[0][0])
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def plot_lines(panels, x_label, path, title=None):
    """panels: [(y_label, {line name: (xs, ys) or (xs, ys, errors)})]; one panel each,
    markers on every point, error bars where errors are given (None: no bar at that point)."""
    figure, axes_row = subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8),
                                    squeeze=False, layout="constrained")
    for axes, (y_label, lines) in zip(axes_row[0], panels):
        for index, (name, (xs, ys, *errors)) in enumerate(lines.items()):
            bars = _error_bars(errors[0]) if errors else None
            style = {**run_style(index), "marker": run_style(index)["marker"] or "o",
                     "markevery": None}
            axes.errorbar(xs, ys, yerr=bars, capsize=3, label=name, **style)
        axes.set(xlabel=x_label, ylabel=y_label)
        axes.grid(alpha=0.3)
    legend_below(figure, axes_row[0][0])
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def _error_bars(errors):
    """Error bar half-lengths, with None (an undefined spread, one seed) as no bar."""
    if errors is None or all(error is None for error in errors):
        return None
    return [0.0 if error is None else error for error in errors]


def plot_bars(values, y_label, path, title=None, highlight=(), errors=None, chance=None):
    """One bar per name, value on top; errors: {name: half-length} (e.g. std over seeds);
    chance: the value of guessing, drawn dashed."""
    names = list(values)
    figure, axes = subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    colours = ["C1" if name in highlight else "C0" for name in names]
    bars = axes.bar(range(len(names)), [values[name] for name in names], color=colours,
                    yerr=_error_bars([errors.get(name) for name in names]) if errors else None,
                    capsize=3)
    axes.bar_label(bars, fmt="%.1f", fontsize="small")
    if chance is not None:
        axes.axhline(chance, color="grey", linestyle="--", label=f"chance ({chance:.3g})")
        axes.legend(loc="lower left", bbox_to_anchor=(1, 0), fontsize="small")  # beside the bars
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set(ylabel=y_label)
    axes.grid(axis="y", alpha=0.3)
    if title:
        axes.set_title(title)
    save_figure(figure, path)


def save_image_grid(rows, path, title=None):
    """rows: {row name: (N, 3, H, W) uint8 or [0, 1] float images}; one row each, named."""
    names = list(rows)
    columns = max(len(images) for images in rows.values())
    figure, axes_grid = subplots(len(names), columns, layout="constrained",
                                     figsize=(1.3 * columns + 1.5, 1.35 * len(names)),
                                     squeeze=False)
    for axes_row, name in zip(axes_grid, names):
        images = rows[name]
        if images.dtype != torch.uint8:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            if column < len(images):
                axes.imshow(images[column].permute(1, 2, 0).cpu().numpy())
            else:
                axes.axis("off")
        axes_row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
    if title:
        figure.suptitle(title)
    save_figure(figure, path)
