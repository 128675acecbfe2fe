"""`python -m jaxlr`: the same as the `jaxlr` command."""

from jaxlr.cli import run

run()
