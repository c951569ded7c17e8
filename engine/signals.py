"""Graceful stop on SIGINT / SIGTERM: the handler raises a flag the loop reads between steps
(then it saves and exits); a second signal of the same kind kills at once."""
import contextlib
import signal
import threading

from engine.distributed import is_distributed, over_ranks

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signum = None

    def __call__(self):
        """True once a stop signal has arrived."""
        return self.signum is not None

    def handle(self, signum, frame):
        if self.signum == signum:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = signum


class AgreedStop:
    """A StopRequest all ranks answer alike (one stopping alone would hang the others); every
    rank must call it equally often. Ranks agree every `poll_every` calls and on force=True
    (an epoch's end): a blocking all_reduce each step would stall the GPU queue."""

    def __init__(self, request, poll_every=25):
        self.request = request
        self.poll_every = poll_every
        self.calls = 0

    def __call__(self, force=False):
        self.calls += 1
        if is_distributed() and not force and self.calls % self.poll_every:
            return False
        return bool(over_ranks(float(self.request()), op="max")[0])

    @property
    def signum(self):
        # A rank stopped by another's signal reports SIGTERM, what torchrun forwards.
        return self.request.signum or signal.SIGTERM


@contextlib.contextmanager
def stop_on_signals():
    """Yield a StopRequest that turns true on SIGINT/SIGTERM while the block runs."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signals are delivered to the main thread only
        return
    previous = {signum: signal.signal(signum, request.handle) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
