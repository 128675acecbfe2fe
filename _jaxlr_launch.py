"""The `jaxlr` command's launcher, importing nothing heavy before it can handle a Ctrl-C.

A console script imports its entry point's module before it calls anything,
and importing jaxlr imports JAX (a second or more). Interrupted there, the
import ends in a long traceback, or worse: a KeyboardInterrupt raised while
a compiled extension initializes can leave the process to crash later.
While jaxlr is imported, Ctrl-C ends the command at once, with the one line
and the status 130 that an interrupt gets everywhere else in the command.
"""

import os
import signal
import sys


def _interrupted(signum, frame):
    sys.stderr.write("jaxlr: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main():
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        from jaxlr.cli import run
    finally:
        signal.signal(signal.SIGINT, previous)
    return run()
