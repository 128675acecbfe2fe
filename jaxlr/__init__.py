"""jaxlr: linear regression from scratch, as a JIT-compiled functional trainer in JAX.

The path of the lesson, one module each: `data` (key -> data -> batches),
`model` (Params, net, square_loss), `optim` (sgd, the jitted step, update
rules), `train` (fit and sweep). What grew around it: `losses`, `penalties`
and `schedules` (what a practitioner tunes), `engines` (the one training
program and the loop, fused and streamed ways to drive it), `callbacks`
(early stopping, progress), `tables` (CSV, Parquet and NumPy files, and
their columns turned into features), `preprocessing` (standardization), `metrics`,
`solve` (the closed form), `checkpoint` (resumable runs), `compilation_cache`
(compiled programs kept between processes), `parallel`
(devices and processes), `persist` (model files), `cli` (the `jaxlr`
command) and `estimator` (`SGDRegressor`, for scikit-learn).
"""

from typing import Any

from jaxlr import checkpoint, compilation_cache, losses, parallel, penalties, schedules, shuffle
from jaxlr.callbacks import EarlyStopping
from jaxlr.data import NpyStream, aligned_empty, batches, permutation, synthetic_data, to_device
from jaxlr.engines.core import FitState, clear_caches
from jaxlr.metrics import mse, r2
from jaxlr.model import Params, init_params, net, square_loss
from jaxlr.optim import TrainState, init_state, make_step, sgd
from jaxlr.preprocessing import Standardizer
from jaxlr.solve import solve
from jaxlr.train import FitResult, SweepResult, TrainingDiverged, fit, moving_average, sweep

__version__ = "0.2.0"

compilation_cache._on_import()


def __getattr__(name: str) -> Any:
    # The estimators import scikit-learn, which jaxlr itself does not need:
    # load them only when asked for.
    if name in ("SGDRegressor", "LinearRegressor"):
        try:
            from jaxlr import estimator
        except ModuleNotFoundError as err:
            if err.name is not None and err.name.startswith("sklearn"):
                raise ModuleNotFoundError(
                    f"jaxlr.{name} needs scikit-learn: pip install 'jaxlr[sklearn]'.", name=err.name
                ) from None
            raise
        return getattr(estimator, name)
    raise AttributeError(f"module 'jaxlr' has no attribute {name!r}")


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
