"""The `jaxlr` command's launcher, importing nothing heavy before it can handle a Ctrl-C.

A console script imports its entry point's module before it calls anything:
`jaxlr.cli` imports NumPy and pyarrow. Importing the package `jaxlr` itself
imports nothing, so the guard of `jaxlr._interrupts` is in place first.
"""


def main():
    from jaxlr._interrupts import end_at_once

    with end_at_once():
        from jaxlr.cli import run
    return run()
