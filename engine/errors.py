"""How scripts end: bad input gets one line and exit status 2, never a traceback; a run stopped
by SIGINT/SIGTERM has saved its checkpoint, says how to continue, exits 128 + signal (130, 143)."""
import functools
import os
import shlex
import signal
import sys


class UserError(Exception):
    """A problem with the user's input (path, flag, file); one line naming problem and fix."""


class Interrupted(Exception):
    """A run stopped by a signal after saving its checkpoint."""

    def __init__(self, signum, where):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; continue with: "
                         f"{resume_command()}")


def resume_command():
    """This command line with --resume (studies take it too), without --overwrite (it would
    start over); under torchrun, torchrun with the same number of processes."""
    argv = [arg for arg in sys.argv if arg != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    words, note = launcher()
    return f"{words} {shlex.join(argv)}{note}"


def is_rank_zero():
    """torchrun's RANK, read here: engine.distributed imports this module, not the reverse."""
    return os.environ.get("RANK", "0") == "0"


def launcher():
    """(what starts the script, a note after the command), from torchrun's variables."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes == 1:
        return "python", ""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    machines = processes // per_machine
    if machines == 1:
        return f"torchrun --standalone --nproc_per_node={per_machine}", ""
    return (f"torchrun --nnodes={machines} --nproc_per_node={per_machine}",
            " — on every machine, with the rendezvous flags it was started with")


EXIT_USAGE = 2


def exits_cleanly_on_user_error(main):
    """Wrap main(): UserError -> `error: ...` on stderr, exit 2; Interrupted -> how to resume,
    exit 128 + signal. Every rank exits; rank 0 alone prints (all hold the same message)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            if is_rank_zero():
                print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except Interrupted as stop:
            if is_rank_zero():
                print(str(stop), file=sys.stderr)
            sys.exit(128 + stop.signum)

    return wrapper
