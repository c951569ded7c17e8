"""Defaults that survive a change of batch size: the peak learning rate follows the batch."""
import pytest

import augment_study
import dropout_sweep
import train_scratch
import train_transfer
from engine.experiment import check_same_run, run_identity
from engine.study import run_flags

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
