"""The names a user picks from, each list in one place.

The library's checks, the command's choices and the estimator's parameter
constraints all read these. Nothing here imports JAX, so the command can
parse its arguments while JAX loads. The modules that give the names
their meaning (`jaxlr.losses`, `jaxlr.penalties`, `jaxlr.schedules`,
`jaxlr.optim`, `jaxlr.engines`) take their lists from here.
"""

import os

LOSSES = ("squared", "huber", "epsilon_insensitive", "squared_epsilon_insensitive")
PENALTIES = (None, "l2", "l1", "elasticnet")  # None: no penalty ("none" on the command line)
SCHEDULES = ("constant", "optimal", "invscaling", "adaptive")
RULES = ("sgd", "momentum", "nesterov", "adam")  # the named update rules; an optax one is the other kind
ENGINES = ("fused", "loop", "scan", "auto")


def switched_on(variable: str) -> bool:
    """Whether the environment switch `variable` (JAXLR_NO_CACHE,
    JAXLR_KEEP_XLA_FLAGS) is on: set, and not to "", "0", "false", "no" or
    "off" (in any case), which a user writes to mean off."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no", "off")
