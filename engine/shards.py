"""A study spread over processes: --shard K/N deals the plan's runs round-robin to N processes
(K = 0..N-1 cover it exactly once), and an OS lock per run folder keeps two processes off one
run (a second one skips it, naming the holder)."""
import argparse
import contextlib
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path



@dataclass(frozen=True)
class Shard:
    index: int   # K
    count: int   # N

    def __str__(self):
        return f"{self.index}/{self.count}"

    def shifted(self, offset):
        """This share of a plan whose first `offset` runs were dealt before it (reproduce.py
        deals its parts as one plan: part after part, the round continues)."""
        return Shard((self.index - offset) % self.count, self.count)


def shard(text):
    """argparse type: 'K/N' with 0 <= K < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 0/4)") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text}: K must be 0 to N-1 (e.g. 0/{max(count, 1)})")
    return Shard(index, count)


def deal(items, share):
    """The items of this process: item i goes to shard i mod N (all of them without --shard)."""
    if share is None:
        return list(items)
    return [item for position, item in enumerate(items) if position % share.count == share.index]


def lock_file(folder):
    """Beside the folder, hidden (a run folder's listing stays the run's files)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def locked(folder, wait=False):
    """Hold folder's lock while the block runs and yield None; where another process holds it,
    wait for it (wait=True) or yield who holds it ("pid 123 on host") and hold nothing.
    flock: the OS releases it when its process ends, killed or not: no stale lock."""
    folder, path = Path(folder), lock_file(folder)
    created = [parent for parent in (path.parent, *path.parent.parents) if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            yield handle.read().strip() or "another process"
            return
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield None
        finally:
            handle.truncate(0)
            if not folder.exists():  # stopped before its first file: leave nothing behind
                path.unlink(missing_ok=True)
                for directory in created:
                    with contextlib.suppress(OSError):  # not empty: another run's
                        directory.rmdir()
            fcntl.flock(handle, fcntl.LOCK_UN)
