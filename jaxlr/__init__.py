"""jaxlr: linear regression from scratch, as a JIT-compiled functional trainer in JAX.

The path of the lesson, one module each: `data` (key -> data -> batches),
`model` (Params, net, square_loss), `optim` (sgd, the jitted step, update
rules), `train` (fit and sweep). What grew around it: `losses`, `penalties`
and `schedules` (what a practitioner tunes), `engines` (the one training
program and the loop, fused and streamed ways to drive it), `callbacks`
(early stopping, progress), `tables` (CSV, Parquet and NumPy files, and
their columns turned into features), `preprocessing` (standardization), `metrics`,
`solve` (the closed form), `checkpoint` (resumable runs), `compilation_cache`
(compiled programs kept between processes), `loop_kernels` (the XLA option
that compiles a training loop as one kernel on a CPU), `parallel`
(devices and processes), `persist` (model files), `arrays` (host
buffers and `.npy` files), `cli` and `commands` (the `jaxlr` command: its
arguments, then its work) and `estimator` (`SGDRegressor`, for scikit-learn).
"""

import sys
import types
from importlib import import_module
from typing import Any

__version__ = "0.2.0"

from jaxlr import loop_kernels as _loop_kernels  # noqa: E402 (imports no JAX)

# Before JAX starts a backend, which reads XLA's flags once (see jaxlr.loop_kernels).
_loop_kernels.apply()

# Importing jaxlr imports nothing else: each name loads its module on first
# use. JAX takes a second or more to import, and the command reads its table
# meanwhile (see jaxlr.cli); `jaxlr.fit` and the like load it when first used.
_SUBMODULES = ("arrays", "callbacks", "checkpoint", "cli", "commands", "compilation_cache", "data", "engines",
               "estimator", "loop_kernels", "losses", "metrics", "model", "optim", "parallel", "params", "penalties",
               "persist", "preprocessing", "schedules", "shuffle", "tables", "train", "validate")  # and solve
_NAMES = {
    "jaxlr.callbacks": ("EarlyStopping",),
    "jaxlr.data": ("NpyStream", "aligned_empty", "batches", "permutation", "synthetic_data", "to_device"),
    "jaxlr.engines.core": ("FitState",),
    "jaxlr.metrics": ("mse", "r2"),
    "jaxlr.model": ("init_params", "net", "square_loss"),
    "jaxlr.params": ("Params",),
    "jaxlr.optim": ("TrainState", "init_state", "make_step", "sgd"),
    "jaxlr.preprocessing": ("Standardizer",),
    "jaxlr.solve": ("solve",),
    "jaxlr.train": ("FitResult", "SweepResult", "TrainingDiverged", "clear_caches", "fit", "moving_average", "sweep"),
    "jaxlr.estimator": ("SGDRegressor", "LinearRegressor"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"jaxlr.{name}")
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'jaxlr' has no attribute {name!r}")
    try:
        module = import_module(_MODULE_OF[name])
    except ModuleNotFoundError as err:
        # The estimators import scikit-learn, which jaxlr itself does not need.
        if _MODULE_OF[name] == "jaxlr.estimator" and err.name is not None and err.name.startswith("sklearn"):
            raise ModuleNotFoundError(
                f"jaxlr.{name} needs scikit-learn: pip install 'jaxlr[sklearn]'.", name=err.name
            ) from None
        raise
    if "jax" in sys.modules:  # before anything compiles (see jaxlr.compilation_cache)
        import_module("jaxlr.compilation_cache").turn_on_once()
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*__all__, *_SUBMODULES, "__version__"})


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule jaxlr.solve sets the package's attribute
        # `solve` to it; the name stays the function's, as it always was.
        if name == "solve" and isinstance(value, types.ModuleType):
            value = value.solve
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "EarlyStopping",
    "FitResult",
    "FitState",
    "LinearRegressor",
    "NpyStream",
    "Params",
    "SGDRegressor",
    "Standardizer",
    "SweepResult",
    "TrainState",
    "TrainingDiverged",
    "aligned_empty",
    "batches",
    "checkpoint",
    "clear_caches",
    "compilation_cache",
    "fit",
    "init_params",
    "init_state",
    "losses",
    "make_step",
    "moving_average",
    "mse",
    "net",
    "parallel",
    "penalties",
    "permutation",
    "r2",
    "schedules",
    "sgd",
    "shuffle",
    "solve",
    "square_loss",
    "sweep",
    "synthetic_data",
    "to_device",
]
