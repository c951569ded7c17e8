"""train_transfer.py end to end on synthetic data, with weights saved by the test."""
import csv
import json

import pytest
import torch
import torchvision

from conftest import run_script

TINY = ["--dataset", "synthetic", "--subset", "100", "--val-size", "50", "--epochs", "1",
        "--batch-size", "50", "--no-progress"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A resnet18 state dict standing in for ImageNet's (random, saved like a hub file)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, weights_file):
    out = tmp_path_factory.mktemp("transfer") / "study"
    run_script("train_transfer.py", *TINY, "--configs", "scratch", "pretrained", "frozen-mlp",
               "frozen-deep", "--weights", weights_file, "--out", out)
    return out


def test_every_run_the_plots_and_the_summary_are_written(study):
    names = ["scratch", "pretrained", "frozen-mlp", "frozen-deep"]
    for name in names:
        assert sorted(p.name for p in (study / name / "seed0").iterdir()) == [
            "checkpoint.pt", "config.json", "confusion.png", "curves.png", "history.csv", "metrics.json",
        "per_class.csv"]
    for plot in ("compare_pretrained_vs_scratch.png", "compare_heads.png", "compare_all.png"):
        assert (study / plot).read_bytes()[:4] == b"\x89PNG"
    with open(study / "summary.csv", newline="") as handle:
        rows = {row["config"]: row for row in csv.DictReader(handle)}
    assert list(rows) == names
    assert float(rows["pretrained"]["report_test"]) == 0.804
    assert int(rows["frozen-mlp"]["trainable_parameters"]) < int(rows["frozen-mlp"]["total_parameters"])
    assert rows["scratch"]["trainable_parameters"] == rows["scratch"]["total_parameters"]
    metrics = json.loads((study / "frozen-deep" / "seed0" / "metrics.json").read_text())
    assert float(rows["frozen-deep"]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    markdown = (study / "summary.md").read_text()
    assert "| frozen-mlp |" in markdown and "79.0%" in markdown
    # Synthetic data is not the report's CIFAR-10: its figures stand beside ours, no difference.
    assert rows["pretrained"]["test_minus_report"] == "" and " pp |" not in markdown


def test_configs_record_their_model_and_normalisation(study, weights_file):
    config = json.loads((study / "frozen-mlp" / "seed0" / "config.json").read_text())
    assert config["model"] == {"name": "torchvision_resnet18", "num_classes": 10,
                               "weights": str(weights_file), "head": "mlp",
                               "freeze_children": 7, "cifar_stem": False}
    assert config["normalization"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, for its weights
    scratch = json.loads((study / "scratch" / "seed0" / "config.json").read_text())
    assert scratch["model"]["weights"] == "none"
    assert scratch["normalization"]["mean"] != [0.485, 0.456, 0.406]


def test_frozen_layers_did_not_change_and_the_rest_did(study, weights_file):
    initial = torch.load(weights_file, weights_only=True)
    trained = torch.load(study / "frozen-mlp" / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    frozen_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    frozen = [key for key in initial if key.startswith(frozen_prefixes)]
    assert frozen and all(torch.equal(trained[key], initial[key]) for key in frozen)
    # Every trainable tensor moved (weights, and layer4's BatchNorm statistics).
    layer4 = [key for key in initial if key.startswith("layer4.") and "num_batches" not in key]
    assert all(not torch.equal(trained[key], initial[key]) for key in layer4)


def test_rerunning_reuses_finished_configurations(study, weights_file):
    result = run_script("train_transfer.py", *TINY, "--configs", "scratch", "pretrained",
                        "--weights", weights_file, "--out", study)
    assert result.stdout.count("finished earlier, reusing") == 2
    # scratch uses no weights: other --weights leave it finished.
    result = run_script("train_transfer.py", *TINY, "--configs", "scratch", "--weights",
                        "elsewhere.pth", "--out", study)
    assert "scratch seed 0: finished earlier, reusing" in result.stdout


def test_missing_imagenet_weights_stop_before_training(tmp_path):
    out = tmp_path / "study"
    result = run_script("train_transfer.py", *TINY, "--configs", "pretrained", "--out", out,
                        env={"TORCH_HOME": str(tmp_path / "torch")}, check=False)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in error[0]
    assert "--weights" in error[0]
    assert not out.exists()


def test_a_weights_file_of_another_model_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    # Checked before any configuration trains: scratch, listed first, uses no weights.
    result = run_script("train_transfer.py", *TINY, "--configs", "scratch", "pretrained",
                        "--weights", wrong, "--out", tmp_path / "study", check=False)
    assert result.returncode == 2 and "conv1.weight" in result.stderr and "does not fit" in result.stderr
    assert not (tmp_path / "study").exists()
