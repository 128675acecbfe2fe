"""The `jaxlr` command's launcher, importing nothing heavy before it can catch a Ctrl-C.

A console script imports its entry point's module before it calls anything,
and importing jaxlr imports JAX (a second or more). An interrupt then would
end in a long traceback; here it ends the command quietly, with status 130
as an interrupt does everywhere else in the command.
"""

import os
import sys


def main():
    try:
        from jaxlr.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("jaxlr: interrupted\n")
        sys.stderr.flush()
        os._exit(130)  # a half-imported JAX is not worth tearing down
    return run()
