"""--help of every script: each flag's default, the examples, what --out is for that script."""
import argparse
import re

import pytest

import augment_study
import dropout_sweep
import report
import train_scratch
import train_transfer
import visualize_activations

SCRIPTS = {"train_scratch.py": train_scratch, "train_transfer.py": train_transfer,
           "augment_study.py": augment_study, "dropout_sweep.py": dropout_sweep,
           "visualize_activations.py": visualize_activations, "report.py": report}
UNSET = (None, False, argparse.SUPPRESS)


def flag_help(parser, action):
    """One flag's lines of --help, on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._format_action(action).split())


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_every_default_and_examples(name):
    parser = SCRIPTS[name].get_args_parser()
    for action in parser._actions:
        if action.option_strings and not any(action.default is unset for unset in UNSET):
            assert "default" in flag_help(parser, action), (name, action.option_strings)
    text = parser.format_help()
    examples = text.split("examples:\n")[1]
    assert re.search(rf"^\s+python {name}", examples, re.M), text


def test_each_default_is_the_scripts_own():
    shown = {name: flag_help(module.get_args_parser(), action)
             for name, module in SCRIPTS.items()
             for action in module.get_args_parser()._actions if "--epochs" in action.option_strings}
    assert "(default: 50)" in shown["train_scratch.py"] and "(default: 30)" in shown["train_transfer.py"]
    assert "(default: 40)" in shown["augment_study.py"] and "(default: 80)" in shown["dropout_sweep.py"]
    subset = [action for action in augment_study.get_args_parser()._actions
              if "--subset" in action.option_strings][0]
    assert "(default: 5000)" in flag_help(augment_study.get_args_parser(), subset)


def test_out_says_what_it_holds_for_each_script():
    outs = {}
    for name, module in SCRIPTS.items():
        parser = module.get_args_parser()
        outs[name] = [flag_help(parser, action) for action in parser._actions
                      if "--out" in action.option_strings]
    assert "results/scratch" in outs["train_scratch.py"][0]
    assert "<configuration>" in outs["train_transfer.py"][0]
    assert "<arm>" in outs["augment_study.py"][0]
    assert "results/dropout" in outs["dropout_sweep.py"][0]
    assert len({text for found in outs.values() for text in found}) == 5  # report.py has none
