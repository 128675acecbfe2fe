"""`python -m jaxlr`: the same as the `jaxlr` command."""

import sys

from jaxlr.cli import main

sys.exit(main())
