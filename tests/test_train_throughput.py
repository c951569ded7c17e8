"""benchmarks/train_throughput.py runs on the CPU and writes the figures it documents.

A few steps of a narrow network on a small synthetic set: this checks the script, not speed.
"""
import json
import statistics

import pytest

from conftest import run_script

SCRIPT = "benchmarks.train_throughput"
TINY = ["--device", "cpu", "--width", "8", "--batch-size", "16", "--steps", "2", "--warmup", "1",
        "--workers", "1", "--dataset-size", "256"]
PATH_KEYS = {"path", "precision", "images_per_second", "images_per_second_turns",
             "epoch_seconds", "tflops", "peak_memory_bytes"}
REPORT_KEYS = {"command", "date", "device", "device_name", "torch", "model", "width",
               "image_size", "batch_size", "steps", "warmup", "turns", "repeats", "workers",
               "compile", "flops_per_image", "peak_memory_measure", "project", "baseline",
               "ratio", "ratio_turns"}


def run_benchmark(tmp_path, *flags):
    path = tmp_path / "train.json"
    result = run_script(SCRIPT, *TINY, *flags, "--json", path, timeout=300)
    assert "ratio project / baseline" in result.stdout
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_benchmark(tmp_path_factory.mktemp("bench"), "--repeats", "2")


def test_writes_both_throughputs_and_their_ratio(report):
    assert REPORT_KEYS <= report.keys()
    for path in ("project", "baseline"):
        figures = report[path]
        assert PATH_KEYS <= figures.keys()
        assert len(figures["images_per_second_turns"]) == 2  # --repeats 2
        assert figures["images_per_second"] == pytest.approx(
            statistics.median(figures["images_per_second_turns"]))
        assert figures["images_per_second"] > 0
        assert figures["epoch_seconds"] == pytest.approx(50_000 / figures["images_per_second"])
        assert figures["peak_memory_bytes"] > 0
        assert figures["precision"] == "fp32"  # what "auto" and the baseline use on a CPU
    assert_ratios(report)


def assert_ratios(report):
    """The ratios are the project's throughput over the baseline's, overall and per turn."""
    project, baseline = report["project"], report["baseline"]
    assert report["ratio"] == pytest.approx(project["images_per_second"]
                                            / baseline["images_per_second"])
    assert report["ratio_turns"] == pytest.approx(
        [mine / theirs for mine, theirs in zip(project["images_per_second_turns"],
                                               baseline["images_per_second_turns"])])


def test_counts_flops_and_records_the_setting(report):
    # Width-8 ResNet-18 at 32px: about 53 MFLOP per image for forward + backward.
    assert 3e7 < report["flops_per_image"] < 1e8
    assert report["project"]["tflops"] == pytest.approx(
        report["flops_per_image"] * report["project"]["images_per_second"] / 1e12)
    assert report["device"] == "cpu" and report["batch_size"] == 16 and report["steps"] == 2
    assert report["command"].startswith("python ") and "--dataset-size 256" in report["command"]


def test_alternating_single_steps(tmp_path):
    report = run_benchmark(tmp_path, "--turns", "steps")
    assert report["turns"] == "steps"
    assert len(report["project"]["images_per_second_turns"]) == 2  # one turn per timed step
    assert report["project"]["peak_memory_bytes"] is None  # both paths alive: not their own
    assert_ratios(report)


def test_bad_flag_gets_one_line_error():
    result = run_script(SCRIPT, "--model", "torchvision_resnet18", "--width", "8", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--width" in result.stderr
