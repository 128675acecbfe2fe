"""Ctrl-C while the `jaxlr` command loads its modules ends it at once, in one line.

Interrupted while it imports NumPy, pyarrow or JAX, an import ends in a long
traceback, or worse: a KeyboardInterrupt raised while a compiled extension
initializes can be swallowed (the command then runs on) or leave the process
to crash later. While the command loads, Ctrl-C ends it with the one line and
the status 130 that an interrupt gets everywhere else in the command.
"""

import contextlib
import os
import signal
import sys
import threading


def _interrupted(signum, frame):
    sys.stderr.write("jaxlr: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


@contextlib.contextmanager
def end_at_once():
    """Within it, Ctrl-C ends the process at once (status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a signal's handler
        return
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
