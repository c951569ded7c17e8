"""Plots of training curves: one run's curves, and several runs on shared axes."""
import matplotlib

matplotlib.use("Agg")  # files only: runs happen on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from engine import atomic  # noqa: E402

SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def _save(figure, path):
    with atomic.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)


def plot_curves(history, path, title=None):
    """Loss and accuracy per epoch for train / val / test of one run."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in SPLIT_STYLES.items():
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split)
        accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history], style,
                           label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    _save(figure, path)


def plot_comparison(histories, path, splits=("train", "val"), title=None):
    """Several runs on shared axes: accuracy and loss per epoch, one colour per run."""
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index % 10}"
        epochs = [row["epoch"] for row in history]
        for split in splits:
            style = SPLIT_STYLES[split]
            accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history], style,
                               color=colour, label=f"{name} ({split})")
            loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], style, color=colour,
                           label=f"{name} ({split})")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    _save(figure, path)
