"""augment_study.py end to end: a few arms on synthetic data."""
import csv
import json

import pytest
import torch

import augment_study
from conftest import QUICK, run_script, write_image_tree
from engine import augment
from engine.training import load_data, split_data

ARMS = ["none", "standard", "center_crop", "mixup", "trivialaugment"]
STUDY = [*QUICK, "--subset", "200", "--val-size", "100", "--epochs", "1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("augment") / "study"
    result = run_script("augment_study.py", *STUDY, "--arms", *ARMS, "--out", out)
    return out, result


def test_the_subset_is_drawn_from_the_images_the_validation_split_left():
    # 400 and 90 of each class's 500 images: drawn from all 500, they would share ~70.
    args = augment_study.get_args_parser().parse_args(
        [*QUICK, "--subset", "4000", "--val-size", "900"])
    splits = split_data(args, *load_data(args))  # as main() draws each seed's splits
    assert (len(splits.train), len(splits.val)) == (4000, 900)
    assert not image_bytes(splits.train) & image_bytes(splits.val)


def image_bytes(data):
    """Each image's pixels (synthetic images are all distinct), to compare splits by."""
    return {image.numpy().tobytes() for image in data.images}


def test_every_run_the_table_and_the_plots_are_written(study):
    out, _ = study
    for arm in ARMS:
        run = out / arm / "seed0"
        assert (run / "metrics.json").is_file() and (run / "checkpoint.pt").is_file()
    for plot in ("test_accuracy.png", "curves.png", "gallery.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["arm"]: row for row in csv.DictReader(handle)}
    assert list(rows) == [arm for arm in augment.ARMS if arm in ARMS]  # the study's order
    metrics = json.loads((out / "mixup" / "seed0" / "metrics.json").read_text())
    assert float(rows["mixup"]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    assert float(rows["mixup"]["test_error"]) == pytest.approx(1 - metrics["test_accuracy"])
    assert rows["trivialaugment"]["execution"] == "per image"
    assert rows["standard"]["execution"] == "batched" and rows["center_crop"]["in_report"] == "yes"
    assert "(train and test)" in rows["center_crop"]["transform"]
    assert "| mixup |" in (out / "summary.md").read_text()


def test_deterministic_arms_apply_at_test_time_and_not_twice_in_training(study):
    out, _ = study
    config = json.loads((out / "center_crop" / "seed0" / "config.json").read_text())
    assert config["train_augment"] == "None" and config["eval_augment"] != "None"
    train, evaluate = augment.arm_transforms("center_crop", 10, 32)
    assert train is None and evaluate is not None
    train, evaluate = augment.arm_transforms("cutout", 10, 32)
    assert train is not None and evaluate is None


def test_every_arm_keeps_batch_shape_and_labels(study):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8)
    for name in augment.ARMS:
        train, evaluate = augment.arm_transforms(name, 10, 32)
        out, targets = (train or evaluate)(images.clone(), labels.clone(), torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == images.dtype, name
        hard = targets.argmax(1) if targets.dim() == 2 else targets
        assert len(hard) == 8, name


def test_a_run_of_another_dataset_is_refused_before_anything_changes(study, tmp_path, capsys):
    out, _ = study
    before = (out / "none" / "seed0" / "checkpoint.pt").read_bytes()
    # synthetic's class names and model: only the dataset differs.
    images = write_image_tree(tmp_path / "images", classes=[f"class{i}" for i in range(10)],
                              per_class=(6, 1), size=8)
    with pytest.raises(SystemExit) as stopped:
        augment_study.main(augment_study.get_args_parser().parse_args(
            [*QUICK[2:], "--dataset", "folder", "--data-dir", str(images), "--subset", "40",
             "--val-size", "10", "--epochs", "1", "--arms", "none", "--out", str(out)]))
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "holds a run of another dataset ('synthetic', not 'folder')" in err
    assert (out / "none" / "seed0" / "checkpoint.pt").read_bytes() == before


def test_rerunning_reuses_finished_arms(study):
    out, _ = study
    result = run_script("augment_study.py", *STUDY, "--arms", "none", "standard", "--out", out)
    assert result.stdout.count("finished earlier, reusing") == 2
    # The start-up block lists the study's runs, each with its own augmentation.
    assert "augment   per run, below\n" in result.stdout and "runs      2: 2 reuse\n" in result.stdout
    assert "  [1/2] none seed 0: reuse (Identity())\n  [2/2] standard seed 0: reuse (CropFlip(" in result.stdout


def test_a_small_folder_of_ones_own_trains_with_the_default_subset(tmp_path):
    """The default --subset 5000 on a folder of 30 training images: all of them are used and
    the start-up block says so (it used to stop and suggest a value that failed too)."""
    images = write_image_tree(tmp_path / "images", per_class=(10, 3), size=12)
    result = run_script("augment_study.py", *QUICK[2:], "--dataset", "folder", "--data-dir",
                        images, "--val-size", "6", "--epochs", "1", "--batch-size", "8",
                        "--arms", "none", "--out", tmp_path / "study")
    assert "24 train / 6 val / 9 test images (--subset 5000: there are only 24, all used)" in (
        result.stdout)
    assert (tmp_path / "study" / "none" / "seed0" / "metrics.json").is_file()
