"""Multi-run studies (transfer, augmentation, dropout): one run directory per configuration.

Rerunning a study's command continues it: a finished run is read back, not retrained; an
interrupted one resumes from its checkpoint; a new one starts. Stored results are reused
only if their flags, model and data match the run asked for (otherwise: a one-line refusal
that suggests --overwrite, which retrains every run of the study).
"""
import argparse
import json
from dataclasses import dataclass

from engine.errors import UserError
from engine.experiment import check_same_run, experiment_identity, run_training
from engine.rundir import RunDirectory, read_history


@dataclass
class RunResult:
    name: str
    experiment: object
    metrics: dict
    history: list
    config: dict


def run_flags(args, study_flags, **own):
    """A run's flags: the study's flags minus those that choose runs (--arms, --rates, ...,
    --out), plus the run's own values; what is stored in its config and compared on resume,
    so adding an arm to a study does not invalidate the runs already finished."""
    flags = {key: value for key, value in vars(args).items()
             if key not in (*study_flags, "out")}
    return {**flags, **own}


def read_result(experiment):
    path = experiment.out
    return RunResult(name=experiment.name, experiment=experiment,
                     metrics=json.loads((path / "metrics.json").read_text()),
                     history=read_history(path / "history.csv"),
                     config=json.loads((path / "config.json").read_text()))


def is_finished(run_dir, epochs):
    metrics_file = run_dir.path / "metrics.json"
    if not (metrics_file.is_file() and run_dir.checkpoint.is_file()):
        return False
    try:
        return json.loads(metrics_file.read_text()).get("epochs") == epochs
    except json.JSONDecodeError:
        return False  # a damaged summary: let the checkpoint decide (resume re-writes it)


def run_study(experiments, args):
    """Run (or continue) every experiment in order; return their RunResults."""
    names = [experiment.name for experiment in experiments]
    if len(set(names)) != len(names):
        raise UserError(f"the study lists a configuration twice ({names}): list each once")
    results = []
    for number, experiment in enumerate(experiments, 1):
        run_dir = RunDirectory(experiment.out)
        header = f"[{number}/{len(experiments)}] {experiment.name}"
        if not args.overwrite and is_finished(run_dir, args.epochs):
            config = json.loads((run_dir.path / "config.json").read_text())
            check_same_run(config, experiment_identity(experiment), run_dir.path)
            print(f"{header}: finished earlier, reusing {run_dir.path}", flush=True)
        else:
            resume = not args.overwrite and run_dir.checkpoint.is_file()
            print(f"{header}: {'resuming' if resume else 'training'} -> {run_dir.path}", flush=True)
            run_args = argparse.Namespace(**{**vars(args), "resume": resume})
            run_training(experiment, run_args)
        results.append(read_result(experiment))
    return results
