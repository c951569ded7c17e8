"""Defaults that survive a change of batch size or budget: the peak learning rate follows
the batch, BatchNorm statistics are re-estimated for evaluation, short runs learn."""
import pytest
import torch

import augment_study
import dropout_sweep
import train_scratch
import train_transfer
from engine.experiment import check_same_run, run_identity
from engine.loop import recompute_batchnorm_statistics
from engine.study import run_flags
from models.transfer import EvalModeBatchNorm2d

SCRIPTS = [train_scratch, train_transfer, augment_study, dropout_sweep]


def parsed(script, *flags):
    return script.get_args_parser().parse_args([str(flag) for flag in flags])


def test_batch_64_gets_the_batch_512_peak_over_root_8():
    assert parsed(train_scratch, "--batch-size", 512).lr == pytest.approx(0.2)
    args = parsed(train_scratch, "--batch-size", 64)
    assert args.lr == pytest.approx(0.2 / 8 ** 0.5)
    assert (args.lr_base, args.lr_reference_batch, args.lr_rule) == (0.2, 512, "sqrt")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.__name__)
def test_every_script_scales_its_recipe_to_the_batch_and_keeps_an_explicit_lr(script):
    base, reference = script.get_args_parser().lr_recipe
    default_batch = script.RECIPE["batch_size"]
    assert parsed(script).lr == pytest.approx(base * (default_batch / reference) ** 0.5)
    assert parsed(script, "--batch-size", reference * 4).lr == pytest.approx(2 * base)
    assert parsed(script, "--batch-size", reference // 4).lr == pytest.approx(base / 2)
    given = parsed(script, "--batch-size", reference // 4, "--lr", 0.3)
    assert given.lr == 0.3 and given.lr_rule == "given"  # used as is, never scaled


def test_a_study_run_records_the_rule_and_compares_only_the_resolved_lr():
    args = parsed(augment_study, "--batch-size", 32)
    flags = run_flags(args, augment_study.STUDY_FLAGS, arm="none")
    assert flags["lr"] == pytest.approx(0.025) and flags["lr_rule"] == "sqrt"  # 0.05 at 128
    config = {"flags": flags, "model": {}, "dataset": "synthetic", "classes": []}
    # The same lr given explicitly is the same run (resume or reuse it) ...
    explicit = dict(config, flags=dict(flags, lr_rule="given"))
    check_same_run(explicit, run_identity(config), "run")
    # ... another batch resolves to another lr: another run.
    other = vars(parsed(augment_study, "--batch-size", 64))
    assert run_identity(dict(config, flags=other)) != run_identity(config)


class Batches(list):
    """Batches of (inputs, targets), as a loader yields them."""
    batch_size = 8


def test_batchnorm_statistics_are_re_estimated_for_the_current_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                EvalModeBatchNorm2d(4))  # a frozen layer, as in transfer
    frozen = {key: value.clone() for key, value in model[2].state_dict().items()}
    batches = Batches((torch.randn(8, 3, 6, 6) * 3 + 1, None) for _ in range(4))
    model.eval()
    recompute_batchnorm_statistics(model, batches, device=torch.device("cpu"), precision="fp32",
                                   images=16)  # the first two batches
    with torch.no_grad():
        features = [model[0](inputs) for inputs, _ in batches[:2]]
    mean = torch.stack([feature.mean(dim=(0, 2, 3)) for feature in features]).mean(0)
    variance = torch.stack([feature.var(dim=(0, 2, 3)) for feature in features]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, variance, atol=1e-4)
    assert model[1].momentum == 0.1 and model.training  # the running average resumes after
    assert all(torch.equal(model[2].state_dict()[key], value) for key, value in frozen.items())


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's handwritten digits (real scans) as an ImageFolder tree of PNGs."""
    from benchmarks.folder_vs_reference import write_digits_tree
    return write_digits_tree(tmp_path_factory.mktemp("digits") / "tree")


def test_a_short_folder_run_at_a_small_batch_learns_without_lr(digits, tmp_path):
    # 80 steps of batch 16: with the batch-512 peak (0.2) as before, 35% test accuracy
    # (measured); scaled to the batch (0.035) and with re-estimated BatchNorm statistics, 83%.
    args = parsed(train_scratch, "--dataset", "folder", "--data-dir", digits, "--width", 16,
                  "--batch-size", 16, "--epochs", 1, "--no-progress", "--out", tmp_path / "run")
    metrics = train_scratch.main(args)
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
