"""Multi-run studies (transfer, augmentation, dropout): one run directory per configuration.

Rerunning a study's command continues it: a finished run is read back, not retrained; an
interrupted one resumes from its checkpoint; a new one starts. Stored results are reused
only if their flags, model and data match the run asked for (otherwise: a one-line refusal
that suggests --overwrite, which retrains every run of the study).

With --seeds S1 S2 ... every configuration runs once per seed, in <study>/<config>/seed<S>/,
seed by seed (all configurations of S1, then of S2, ...: an interrupted study has whole
seeds to show). Each is a normal run whose flags hold seed=S: its data split, model
initialisation, shuffling and augmentation follow that seed, exactly as --seed S would.
"""
import argparse
import json
from dataclasses import dataclass

from engine import distributed
from engine.errors import UserError
from engine.experiment import check_same_run, experiment_identity, load_data, print_on_main
from engine.experiment import run_training, split_data
from engine.rundir import RunDirectory, read_history
from engine.seeds import seed_folder, seeds_to_run


@dataclass
class RunResult:
    name: str
    experiment: object
    metrics: dict
    history: list
    config: dict

    @property
    def seed(self):
        return self.experiment.flags["seed"]


def run_flags(args, study_flags, **own):
    """A run's flags: the study's flags minus those that choose runs (--arms, --rates, ...,
    --seeds, --out), plus the run's own values; what is stored in its config and compared on
    resume, so adding an arm or a seed to a study does not invalidate the runs already
    finished."""
    flags = {key: value for key, value in vars(args).items()
             if key not in (*study_flags, "seeds", "out")}
    return {**flags, **own}


def args_per_seed(args):
    """The study's flags once per seed of --seeds, each with seed=S (refusing a bad --seeds
    before anything is loaded or written); without --seeds, [args] itself."""
    seeds = seeds_to_run(args)
    if seeds is None:
        return [args]
    return [argparse.Namespace(**{**vars(args), "seed": seed}) for seed in seeds]


def seeded_experiments(seed_args, make_experiments):
    """make_experiments(args, splits) -> one seed's experiments; called for each args of
    args_per_seed with the data split of its seed (the split and subset follow the seed).
    The dataset is loaded once; each seed keeps its own split of it (for CIFAR-10 about
    150 MB of host memory per seed, moved to the device only while its runs train)."""
    train, test = load_data(seed_args[0])
    experiments = []
    for args in seed_args:
        experiments += make_experiments(args, split_data(args, train, test))
    return experiments


def run_path(study_dir, name, args):
    """<study>/<name>, or <study>/<name>/seed<S> in a study run with --seeds."""
    path = study_dir / name
    return path / seed_folder(args.seed) if getattr(args, "seeds", None) is not None else path


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


def plan_run(experiment, args):
    """What to do with one run: "reuse" (finished earlier), "resume" or "train"."""
    run_dir = RunDirectory(experiment.out)
    if args.overwrite:
        return "train"
    if is_finished(run_dir, args.epochs):
        return "reuse"
    return "resume" if run_dir.checkpoint.is_file() else "train"


def decide(experiment, args):
    """plan_run, with a finished run's stored flags, model and data checked before reuse.

    Under torchrun rank 0 decides (it alone may see the files) and every rank follows.
    """
    action = plan_run(experiment, args)
    if action == "reuse":
        path = RunDirectory(experiment.out).path
        config = json.loads((path / "config.json").read_text())
        check_same_run(config, experiment_identity(experiment), path)
    return action


def run_header(number, experiments, experiment, args):
    """'[3/8] flip seed 1' (the seed only in a study run with --seeds)."""
    seed = (f" seed {experiment.flags['seed']}" if getattr(args, "seeds", None) is not None
            else "")
    return f"[{number}/{len(experiments)}] {experiment.name}{seed}"


def run_study(experiments, args):
    """Run (or continue) every experiment in order; return their RunResults (under
    torchrun, on rank 0: the other ranks train and get an empty list)."""
    keys = [(experiment.name, experiment.flags.get("seed")) for experiment in experiments]
    if len(set(keys)) != len(keys):
        names = [experiment.name for experiment in experiments]
        raise UserError(f"the study lists a configuration twice ({names}): list each once")
    results = []
    for number, experiment in enumerate(experiments, 1):
        run_dir = RunDirectory(experiment.out)
        header = run_header(number, experiments, experiment, args)
        action = distributed.on_main(lambda: decide(experiment, args))
        if action == "reuse":
            print_on_main(f"{header}: finished earlier, reusing {run_dir.path}")
        else:
            resume = action == "resume"
            print_on_main(f"{header}: {'resuming' if resume else 'training'} -> {run_dir.path}")
            # The run's own seed (with --seeds, not the study's --seed) drives its training.
            run_args = argparse.Namespace(**{**vars(args), "resume": resume,
                                             "seed": experiment.flags["seed"]})
            run_training(experiment, run_args)
        if distributed.is_main_process():  # the files are on rank 0's machine
            results.append(read_result(experiment))
    return results


def histories_by_name(results):
    """{configuration: [its history per seed]}, in the order the runs came."""
    histories = {}
    for result in results:
        histories.setdefault(result.name, []).append(result.history)
    return histories


def run_seeded_study(args, make_experiments, write_outputs, out):
    """A study command from start to end: make_experiments(args, splits) for each seed of
    --seeds (or once), every run trained or continued, then write_outputs(results,
    experiments) (summary and plots) on rank 0 alone, which writes out/summary.md."""
    experiments = seeded_experiments(args_per_seed(args), make_experiments)
    results = run_study(experiments, args)
    if distributed.is_main_process():
        write_outputs(results, experiments)
        print(f"summary: {out / 'summary.md'}")
    return results
