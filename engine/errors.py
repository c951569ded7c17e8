"""Bad input is answered with one line and exit status 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with what the user gave us (a path, a flag, a file).

    The message is one line that names the problem and the fix.
    """


EXIT_USAGE = 2


def exits_cleanly_on_user_error(main):
    """Wrap a script's main(): a UserError becomes `error: ...` on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapper
