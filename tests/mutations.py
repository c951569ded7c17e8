"""Mutation check: break the code on purpose, one way at a time, and see a test fail.

A green run proves something only if the tests fail when the code is wrong. Each mutation
below replaces one piece of text in one file of a copy of the tree (this checkout's files,
edits included: what git tracks or would track), then runs the tests meant to catch it. A
mutation they do not catch is a hole in the suite.

    python tests/mutations.py                # every mutation: about 13 minutes on 2 cores
    python tests/mutations.py --list         # their names and tests
    python tests/mutations.py rng-not-restored cutout-arm-8-pixels   # some of them

First the listed tests run on the unchanged copy (a test that fails anyway catches nothing).
Exit status 1 if any mutation is missed. Not run in CI (slow); tests/test_mutations.py checks
there that every mutation still applies to the tree, so a refactor cannot make one stale.
"""
import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELIABILITY = "tests/test_reliability.py::"
SCRATCH = "tests/test_train_scratch.py::"
AUGMENT = "tests/test_augment.py::"
LR_RULE = "tests/test_lr_rule.py::"
SIGNAL_RESUME = (RELIABILITY + "test_a_signal_saves_mid_epoch_and_resume_matches_an_"
                 "uninterrupted_run[2-130]")
WEIGHTS_ONLY_SCAN = RELIABILITY + "test_every_torch_load_in_the_project_is_weights_only"
DETERMINISTIC_RUNS = RELIABILITY + "test_deterministic_runs_repeat_exactly"
SCIENCE = "tests/test_science.py::"
REFERENCE_A = SCIENCE + "test_part_a_run_is_the_readme_recipe_retrained_by_hand"
REFERENCE_B = SCIENCE + "test_part_b_run_is_the_readme_recipe_retrained_by_hand"
REFUSED = SCIENCE + "test_a_finished_run_is_not_reused_under_another_recipe"
TRANSFER_REFUSED = SCIENCE + "test_a_finished_transfer_run_is_not_reused_under_another_recipe"
DISTRIBUTED = "tests/test_distributed.py::"
SEEDS = "tests/test_seeds.py::"
SHARDS = "tests/test_shards.py::"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str     # the file it changes, relative to the repository
    old: str      # text found exactly once in that file
    new: str      # what replaces it
    tests: tuple  # pytest node ids meant to catch it


MUTATIONS = [
    # The holes the first mutation check found: each had a green suite.
    Mutation("weights-only-false", "engine/checkpoint.py",
             'torch.load(path, map_location="cpu", weights_only=True)',
             'torch.load(path, map_location="cpu", weights_only=False)',
             (WEIGHTS_ONLY_SCAN,
              RELIABILITY + "test_a_checkpoint_that_would_run_code_is_refused_and_never_runs")),
    Mutation("weights-only-removed", "engine/checkpoint.py",  # torch's default now, not a promise
             'torch.load(path, map_location="cpu", weights_only=True)',
             'torch.load(path, map_location="cpu")',
             (WEIGHTS_ONLY_SCAN,)),
    Mutation("hub-weights-only-removed", "engine/pretrained.py",  # torch.hub's default is False
             'map_location="cpu", weights_only=True)', 'map_location="cpu")',
             (WEIGHTS_ONLY_SCAN,
              "tests/test_pretrained.py::test_imagenet_weights_load_from_hub_cache")),
    Mutation("deterministic-ignored", "engine/training.py",
             "    if args.deterministic:\n        use_deterministic_algorithms()",
             "    if False:\n        use_deterministic_algorithms()",
             (DETERMINISTIC_RUNS,)),
    Mutation("cudnn-not-deterministic", "engine/training.py",
             "    torch.backends.cudnn.deterministic = True\n", "",
             (RELIABILITY + "test_deterministic_mode_switches_torch_to_deterministic_algorithms",
              DETERMINISTIC_RUNS)),
    Mutation("subset-from-whole-set", "engine/training.py",
             "    val = None\n    if val_size > 0:\n        train, val = split_validation(",
             "    val = None\n    if val_size > 0:\n        _, val = split_validation(",
             ("tests/test_augment_study.py::"
              "test_the_subset_is_drawn_from_the_images_the_validation_split_left",)),
    Mutation("rng-not-restored", "engine/training.py",
             "    restore_this_ranks_rng(saved, training.run.args.seed, training.device)\n", "",
             (SIGNAL_RESUME, SCRATCH + "test_resume_after_a_kill_continues_the_same_trajectory")),
    Mutation("classes-not-compared", "engine/training.py",
             '"dataset": config["dataset"], "classes": config["classes"]}',
             '"dataset": config["dataset"]}',
             (SCRATCH + "test_a_run_on_images_of_another_class_set_is_refused_before_anything_"
                        "changes",)),
    Mutation("cutout-arm-8-pixels", "engine/augment.py",
             "RandomOp(random_cutout, size=size // 2)", "RandomOp(random_cutout, size=size // 4)",
             (AUGMENT + "test_cutout_arm_masks_a_16_pixel_square_clipped_at_the_border",)),
    Mutation("flip-one-draw-per-batch", "engine/augment.py",
             "    return torch.rand(batch_size, generator=generator, device=device) < p\n",
             "    return (torch.rand(1, generator=generator, device=device) < p)"
             ".expand(batch_size)\n",
             (AUGMENT + "test_every_parameter_varies_across_the_batch[flip]",)),
    Mutation("augment-benchmark-ratio-inverted", "benchmarks/augment_throughput.py",
             '"ratio": looped / batched,', '"ratio": batched / looped,',
             (AUGMENT + "test_benchmark_ratio_is_the_per_image_time_over_the_batched_time",
              AUGMENT + "test_benchmark_writes_one_json_entry_per_operation")),
    Mutation("train-benchmark-ratio-turns-inverted", "benchmarks/train_throughput.py",
             "[mine / theirs for mine, theirs in zip(", "[theirs / mine for mine, theirs in zip(",
             ("tests/test_train_throughput.py::test_alternating_single_steps",)),
    # Ours, where a slip would quietly spoil results: resuming mid-epoch, evaluation, the split.
    Mutation("resume-skips-augmentation-draws", "engine/loader.py",
             "            if self.augment is not None:\n"
             "                images, targets = self.augment(images, targets, generator)\n"
             "            if step >= start_step:\n"
             "                yield self.normalize(images), targets\n",
             "            if step < start_step:\n"
             "                continue\n"
             "            if self.augment is not None:\n"
             "                images, targets = self.augment(images, targets, generator)\n"
             "            yield self.normalize(images), targets\n",
             (SIGNAL_RESUME,)),
    Mutation("resume-drops-partial-epoch-sums", "engine/training.py",
             '        training.partial = EpochState(**saved["partial_epoch"])\n',
             '        training.partial = EpochState(**saved["partial_epoch"]).progress_only()\n',
             (SIGNAL_RESUME,)),
    Mutation("evaluate-in-training-mode", "engine/loop.py", "    model.eval()\n", "",
             (RELIABILITY + "test_evaluation_repeats_exactly_and_changes_nothing_in_the_model",)),
    Mutation("lr-rule-linear", "engine/cli.py", "lr * math.sqrt(batch_size / reference_batch)",
             "lr * batch_size / reference_batch",
             (LR_RULE + "test_batch_64_gets_the_batch_512_peak_over_root_8",)),
    Mutation("lr-not-scaled-to-the-batch", "engine/cli.py",
             "args.lr = scaled_lr(lr, reference_batch, args.batch_size)", "args.lr = lr",
             (LR_RULE + "test_a_short_folder_run_learns_without_lr[16-1-0-0.6]",)),
    Mutation("batchnorm-statistics-not-re-estimated", "engine/training.py",
             "    recompute_batchnorm_statistics(training.model,",
             "    (lambda *args, **kwargs: None)(training.model,",
             (LR_RULE + "test_a_short_folder_run_learns_without_lr[512-4-1-0.35]",)),
    Mutation("validation-left-in-training", "engine/sources.py",
             "    keep[val_index] = False\n", "",
             ("tests/test_data.py::test_validation_split_is_balanced_disjoint_and_seeded",)),
    Mutation("reproduce-retrains-finished-runs", "reproduce.py",
             '"--out", str(results / key)]', '"--out", str(results / key), "--overwrite"]',
             ("tests/test_reproduce.py::test_an_interrupted_study_continues_without_retraining",)),
    Mutation("reproduce-not-the-reports-arms", "reproduce.py",
             '(augment_study, ["--arms", "report"])', '(augment_study, [])',
             ("tests/test_reproduce.py::test_the_reports_choices_are_the_defaults",)),
    # Issue 29: the science. Someone else's breakages of the numbers a study reports, which
    # the suite let through; each caught by a computation written in the tests.
    Mutation("label-smoothing-dropped", "engine/loop.py",
             "F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)",
             "F.cross_entropy(logits.float(), targets)", (REFERENCE_A,)),
    Mutation("warm-up-50-percent", "engine/loop.py",
             "def make_scheduler(optimizer, total_steps, warmup_fraction=0.15):",
             "def make_scheduler(optimizer, total_steps, warmup_fraction=0.5):",
             (SCIENCE + "test_schedule_starts_at_a_tenth_of_the_peak_and_peaks_after_15_percent_"
                        "of_the_steps", REFERENCE_A, REFERENCE_B)),
    Mutation("normalisation-from-the-test-set", "engine/training.py",
             "channel_stats(run.splits.train.images)", "channel_stats(run.splits.test.images)",
             (SCIENCE + "test_normalisation_is_the_training_splits_own_channel_statistics",
              REFERENCE_A)),
    Mutation("per-class-from-confusion-columns", "engine/training.py",
             "confusion.sum(dim=1).tolist()", "confusion.sum(dim=0).tolist()",
             (SCIENCE + "test_per_class_csv_counts_each_true_class_and_its_correct_predictions",)),
    Mutation("lr-rule-fed-the-per-process-batch", "engine/cli.py",
             "args.lr = scaled_lr(lr, reference_batch, args.batch_size)",
             "args.lr = scaled_lr(lr, reference_batch, args.batch_size // int(__import__('os')"
             ".environ.get('WORLD_SIZE', '1')))",
             (DISTRIBUTED + "test_two_processes_use_the_lr_of_one_process_at_the_same_global_"
                            "batch",)),
    Mutation("subset-drawn-with-a-fixed-seed", "engine/sources.py",
             "torch.Generator().manual_seed(seed + 1)", "torch.Generator().manual_seed(1)",
             (SCIENCE + "test_the_subset_is_drawn_from_the_seed",)),
    Mutation("grad-cam-without-relu", "engine/activations.py",
             "cam = F.relu((weights[:, None, None] * activation[0]).sum(dim=0)).detach()",
             "cam = ((weights[:, None, None] * activation[0]).sum(dim=0)).detach()",
             (SCIENCE + "test_grad_cam_is_relu_of_the_channel_maps_weighted_by_their_mean_"
                        "gradient",)),
    Mutation("grad-cam-gradients-not-averaged", "engine/activations.py",
             "(weights[:, None, None] * activation[0])", "(gradient[0] * activation[0])",
             (SCIENCE + "test_grad_cam_is_relu_of_the_channel_maps_weighted_by_their_mean_"
                        "gradient",)),
    Mutation("transfer-test-minus-report-inverted", "engine/studies.py",
             'spread(ours).mean - row["report_test"]', 'row["report_test"] - spread(ours).mean',
             (SCIENCE + "test_part_b_summary_test_minus_report_is_ours_less_the_reports",)),
    Mutation("weight-decay-resume-free", "engine/results.py",
             '"compile", "data_dir", "precision",', '"compile", "data_dir", "weight_decay", '
             '"precision",', (REFUSED + "[--weight-decay]", TRANSFER_REFUSED + "[--weight-decay]")),
    Mutation("label-smoothing-resume-free", "engine/results.py",
             '"compile", "data_dir", "precision",', '"compile", "data_dir", "label_smoothing", '
             '"precision",', (REFUSED + "[--label-smoothing]",)),
    Mutation("device-refused-on-reuse", "engine/results.py", '"device", "compile",',
             '"compile",', (SCIENCE + "test_settings_that_leave_the_numbers_alone_reuse_"
                                          "the_finished_run",)),
    Mutation("ranks-draw-the-same-dropout", "engine/training.py",
             "torch.manual_seed(distributed.mixed_seed(args.seed, distributed.rank()))",
             "torch.manual_seed(args.seed)",
             (DISTRIBUTED + "test_each_rank_draws_its_own_dropout_masks",)),
    Mutation("test-set-augmented", "engine/training.py",
             "augment=run.eval_augment, seed=seed)",
             "augment=compose_optional(run.eval_augment, run.train_augment), seed=seed)",
             (SCIENCE + "test_test_and_validation_metrics_are_of_the_unaugmented_images",
              REFERENCE_A)),
    # Drifts of the recipe itself, which the reference runs catch whatever the test of each.
    Mutation("nesterov-off", "engine/loop.py", "momentum=momentum, nesterov=True,",
             "momentum=momentum, nesterov=False,", (REFERENCE_A, REFERENCE_B)),
    Mutation("part-a-recipe-without-label-smoothing", "engine/configurations.py",
             "label_smoothing=0.1,    # softens", "label_smoothing=0.0,    # softens",
             (REFERENCE_A,)),
    Mutation("part-b-peak-lr-doubled", "engine/configurations.py",
             "lr=0.05,                # at 256", "lr=0.1,                 # at 256",
             (REFERENCE_B,)),
    Mutation("batchnorm-statistics-from-fewer-images", "engine/training.py",
             "BATCHNORM_IMAGES = 2048", "BATCHNORM_IMAGES = 48", (REFERENCE_A,)),
    Mutation("training-labels-of-other-images", "engine/loader.py",
             "self.images[index], self.labels[index]",
             "self.images[index], self.labels[index.flip(0)]", (REFERENCE_A, REFERENCE_B)),
    # Issue 28: like with like; one table for the summary and REPORT.md.
    Mutation("report-difference-ignores-epochs", "engine/studies.py",
             '"epochs": REPORT_SCRATCH["epochs"], "model"', '"model"',
             ("tests/test_report.py::test_unfinished_started_and_damaged_runs_are_marked_not_"
              "compared",)),
    Mutation("summary-spread-from-the-population-std", "engine/seeds.py",
             "np.std(values, ddof=1)", "np.std(values, ddof=0)",
             (SEEDS + "test_a_studys_summary_and_its_report_section_show_the_same_numbers",)),
    # Issue 27: the first epoch's loss against an untrained network's.
    Mutation("first-epoch-loss-never-reported", "engine/training.py",
             "if not loss > math.log(num_classes):", "if not loss > 2 * math.log(num_classes):",
             (RELIABILITY + "test_a_first_epoch_above_an_untrained_networks_loss_is_reported_"
                            "with_a_hint",)),
    # Found by a reviewer's breakages written without seeing the tests (2026-12-06).
    Mutation("damaged-run-counted-as-finished", "engine/results.py",
             "return not self.problem and planned is not None", "return planned is not None",
             ("tests/test_report.py::test_a_run_with_a_damaged_history_is_not_finished",)),
    Mutation("progress-note-counts-started-runs", "engine/studies.py",
             "finished = {run.label for run in runs if run.finished}",
             "finished = {run.label for run in runs}",
             (SEEDS + "test_the_progress_note_counts_only_finished_runs_of_the_plan",)),
    Mutation("unitless-mean-dropped", "engine/summary.py", "if unit and mean_text.endswith(unit):",
             "if mean_text.endswith(unit):", (SEEDS + "test_mean_std_cells_keep_one_unit",)),
    # Issue 30: shards and run locks.
    Mutation("run-lock-not-exclusive", "engine/shards.py",
             "fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)",
             "fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB)",
             (SHARDS + "test_a_locked_run_is_skipped_naming_its_holder_and_a_killed_holder_"
                       "blocks_nothing",)),
    Mutation("shards-overlap", "engine/shards.py",
             "if position % share.count == share.index]",
             "if position % share.count <= share.index]",
             (SHARDS + "test_shards_deal_every_run_once",)),
]


# --- checks that need no test run (tests/test_mutations.py runs them in CI) -----------------

def mutated(mutation, text):
    """The file's text with the mutation applied; ValueError unless `old` occurs exactly once."""
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"its text occurs {count} times in {mutation.path}, not once: "
                         f"update the mutation to the code")
    return text.replace(mutation.old, mutation.new)


def defined_tests(path):
    """Names of the test functions defined at the top level of a test file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def problems(mutation, root=REPO):
    """Why the mutation would not run as written against the tree at `root` (empty: it would)."""
    found = []
    try:
        ast.parse(mutated(mutation, (root / mutation.path).read_text()))  # still Python
    except (ValueError, OSError, SyntaxError) as error:
        found.append(f"{mutation.name}: {error}")
    for test in mutation.tests:
        file, function = test.split("[")[0].split("::")
        if not (root / file).is_file() or function not in defined_tests(root / file):
            found.append(f"{mutation.name}: no test {test}")
    return found


# --- running them ---------------------------------------------------------------------------

def tree_files():
    """This checkout's files, edits included: tracked, and untracked but not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def copy_of_tree(destination, mutation=None):
    for name in tree_files():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination / name)
    if mutation is not None:
        path = destination / mutation.path
        path.write_text(mutated(mutation, path.read_text()))


def run_tests(tests, mutation=None):
    """(pytest's exit status, the node ids that failed, seconds) in a fresh copy of the tree."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
        copy_of_tree(Path(folder), mutation)
        # "slow or not slow": a named test runs whatever its tier (pyproject deselects slow)
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "-rf", "-m", "slow or not slow", *tests], cwd=folder,
                                capture_output=True, text=True)
    failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("FAILED ")]
    return result.returncode, failed, time.monotonic() - started


def verdict(status):
    """pytest's exit status after a mutation: 1 (tests failed) is the only catch; 0 passed;
    anything else (an import or collection error, no test found) says nothing."""
    return {0: "MISSED", 1: "caught"}.get(status, f"error (pytest exit {status})")


def main(args):
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    stale = [problem for m in chosen for problem in problems(m)]
    if unknown or stale:
        sys.exit("\n".join([*(f"no mutation named {name}" for name in sorted(unknown)), *stale]))
    if args.list:
        for m in chosen:
            print(f"{m.name:<38} {m.path:<32} {' '.join(m.tests)}")
        return 0
    tests = list(dict.fromkeys(test for m in chosen for test in m.tests))
    if not args.no_baseline:
        status, failed, seconds = run_tests(tests)
        print(f"unchanged tree: {len(tests)} tests, exit {status} in {seconds:.0f} s", flush=True)
        if status != 0:
            sys.exit(f"the tests fail without any mutation, so no catch would mean anything: "
                     f"{failed}")
    print(f"{'mutation':<38} {'result':<8} {'seconds':>7}  failing tests", flush=True)
    missed = 0
    for m in chosen:
        status, failed, seconds = run_tests(m.tests, m)
        missed += status != 1
        names = ", ".join(test.split("::")[-1] for test in failed) or "-"
        print(f"{m.name:<38} {verdict(status):<8} {seconds:>7.0f}  {names}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} mutations caught")
    return 1 if missed else 0


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the tests on the unchanged tree")
    return parser


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
