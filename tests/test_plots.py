"""Plots a reader can trust: any number of runs tell apart, legends beside the data, the
chance level, label smoothing named, Grad-CAM's scale. Figures are checked before saving."""
from types import SimpleNamespace

import pytest
import torch

from engine import activations, plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept instead of saved."""
    kept = []
    for module in (plots, activations):
        monkeypatch.setattr(module, "save_figure", lambda figure, path: kept.append(figure))
    yield kept


def history(offset):
    return [{"epoch": epoch, **{f"{split}_{key}": offset + epoch / 10 for split in ("train", "val", "test")
                                for key in ("loss", "accuracy")}} for epoch in (1, 2, 3)]


def test_eighteen_runs_look_different_and_the_legend_covers_no_panel(figures, tmp_path):
    plots.plot_runs({f"arm{index}": history(index / 100) for index in range(18)},
                    ["test_accuracy", "test_loss"], tmp_path / "curves.png")
    figure, = figures
    panels = [axes for axes in figure.axes]
    for axes in panels:
        looks = {(line.get_color(), line.get_marker()) for line in axes.get_lines()}
        assert len(looks) == 18 and axes.get_legend() is None
    legend, = figure.legends
    figure.canvas.draw()
    box = legend.get_window_extent()
    assert not any(box.overlaps(axes.get_window_extent()) for axes in panels)


def test_bars_show_chance_and_the_training_loss_names_label_smoothing(figures, tmp_path):
    plots.plot_bars({"none": 50.0, "flip": 60.0}, "test accuracy (%)", tmp_path / "bars.png",
                    chance=10.0)
    plots.plot_curves(history(0), tmp_path / "curves.png", label_smoothing=0.1)
    bars, curves = figures
    assert [list(line.get_ydata()) for line in bars.axes[0].get_lines()] == [[10.0, 10.0]]
    assert "chance" in bars.axes[0].get_legend().get_texts()[0].get_text()
    labels = [line.get_label() for line in curves.axes[0].get_lines()]
    assert labels == ["train (label smoothing 0.1)", "val", "test"]


def test_gradcam_has_a_colour_bar_per_map(figures, tmp_path):
    picture = SimpleNamespace(pixels=torch.rand(3, 8, 8), description="an image")
    cams = [("predicted: cat", 3, torch.rand(2, 2)), ("target: dog", 5, torch.rand(2, 2))]
    findings = SimpleNamespace(cams=cams, cam_layer=SimpleNamespace(name="layer4", aliases=[]))
    activations.plot_gradcam(tmp_path / "gradcam.png", picture, findings)
    figure, = figures
    colour_bars = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    assert len(colour_bars) == 2 and "Grad-CAM" in colour_bars[0].get_ylabel()
