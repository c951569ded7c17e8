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


def lock_beside(folder):
    """The lock of a folder that may not exist yet: hidden beside it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def locked(path, wait=False):
    """Hold the lock file `path` while the block runs and yield None; where another process
    holds it, wait (wait=True) or yield who holds it ("pid 123 on host") and hold nothing.
    flock: the OS releases it when its process ends, killed or not. The file and the folders
    made for it go when it is released: nothing is left behind."""
    path = Path(path)
    created = [parent for parent in (path.parent, *path.parent.parents) if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            yield holder
            return
        if is_same_file(path, handle):
            break
        handle.close()  # its holder removed it while this one waited: lock the new one
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield None
    finally:
        path.unlink(missing_ok=True)  # before the lock is released, so no one locks it after
        for directory in created:  # the run's folder was never made: stop where one is left
            with contextlib.suppress(OSError):
                directory.rmdir()
        handle.close()


def is_same_file(path, handle):
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
