"""jaxlr: linear regression from scratch, as a JIT-compiled functional trainer in JAX.

The path of the lesson, one module each: `data` (key -> data -> batches),
`model` (Params, net, square_loss), `optim` (sgd and the jitted step),
`train` (fit: loop and fused engines), `solve` (closed form and metrics).
Beyond it: `checkpoint` (resumable runs), `parallel` (devices and processes),
`persist` (model files), `cli` (the `jaxlr` command) and `estimator`
(`LinearRegressor`, for scikit-learn).
"""

from jaxlr import checkpoint, parallel
from jaxlr.data import NpyStream, batches, permutation, synthetic_data, to_device
from jaxlr.model import Params, init_params, net, square_loss
from jaxlr.optim import TrainState, init_state, make_step, sgd
from jaxlr.solve import mse, r2, solve
from jaxlr.train import FitResult, SweepResult, TrainingDiverged, fit, moving_average, sweep

__version__ = "0.1.0"


def __getattr__(name):
    # The estimator imports scikit-learn, which jaxlr itself does not need:
    # load it only when asked for.
    if name == "LinearRegressor":
        from jaxlr.estimator import LinearRegressor

        return LinearRegressor
    raise AttributeError(f"module 'jaxlr' has no attribute {name!r}")


__all__ = [
    "FitResult",
    "NpyStream",
    "LinearRegressor",
    "Params",
    "TrainState",
    "TrainingDiverged",
    "batches",
    "checkpoint",
    "fit",
    "init_params",
    "init_state",
    "make_step",
    "moving_average",
    "mse",
    "net",
    "parallel",
    "permutation",
    "r2",
    "sgd",
    "solve",
    "square_loss",
    "sweep",
    "SweepResult",
    "synthetic_data",
    "to_device",
]
