"""The run directory: everything a user reads after a run, written atomically every epoch.

  config.json    every resolved flag, model, dataset, classes, versions, device, git commit
  history.csv    one row per epoch (HISTORY_COLUMNS)
  metrics.json   the final epoch's metrics, best validation accuracy, epochs, train seconds
  curves.png     loss and accuracy per epoch, train / val / test
  checkpoint.pt  everything needed to resume exactly (see engine.checkpoint)

Nothing is written before the first epoch ends, so a run that fails while loading data or
building the model leaves no directory behind, and --overwrite replaces an old run only
once the new one has something to show.
"""
import csv
import io
import tempfile
from pathlib import Path

from engine import atomic
from engine.errors import UserError

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "test_loss", "test_accuracy", "seconds", "images_per_second")
METRIC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy",
               "train_loss", "val_loss", "test_loss")
RUN_FILES = ("config.json", "history.csv", "metrics.json", "curves.png", "checkpoint.pt")


class RunDirectory:
    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.pt"

    def holds_run(self):
        return any((self.path / name).exists() for name in RUN_FILES)

    def check_can_start(self, resume, overwrite):
        """Refuse, before any work, to clobber a run or to write where we cannot."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a directory: choose another --out")
        if resume and overwrite:
            raise UserError("--resume continues the run in --out and --overwrite replaces it: "
                            "pass one of them")
        if resume:
            if not self.checkpoint.is_file():
                raise UserError(f"--resume: no checkpoint.pt in {self.path}: start the run without "
                                f"--resume, or point --out at the run to continue")
        elif self.holds_run() and not overwrite:
            raise UserError(f"{self.path} already holds a run: pass --resume to continue it, "
                            f"--overwrite to replace it, or choose another --out")
        self._check_writable()

    def _check_writable(self):
        """Try it: permissions alone say nothing for root or on a read-only filesystem."""
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"cannot write to {self.path}: {existing} is a file; choose another --out")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise UserError(f"cannot write to {existing} ({error.strerror}): choose another "
                            f"--out") from None

    def clear_previous_run(self):
        """--overwrite: remove the old run's files (only those: --out may hold other things)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def write_history(self, history):
        buffer = io.StringIO()
        # Rows may carry more than the file's columns (e.g. evaluated image counts).
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        atomic.write_text(self.path / "history.csv", buffer.getvalue())

    def write_config(self, config):
        atomic.write_json(self.path / "config.json", config)

    def write_metrics(self, metrics):
        atomic.write_json(self.path / "metrics.json", metrics)


def final_metrics(history, best_val_accuracy):
    last = history[-1]
    metrics = {key: last[key] for key in METRIC_KEYS}
    metrics.update(best_val_accuracy=best_val_accuracy, epochs=last["epoch"],
                   train_seconds=sum(row["seconds"] for row in history))
    # How many images the last evaluation counted (summed over ranks under torchrun).
    metrics.update({key: last[key] for key in ("val_images", "test_images") if key in last})
    return metrics


def read_history(path):
    """history.csv as a list of dicts with numbers (epoch as int)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
            for row in rows]
