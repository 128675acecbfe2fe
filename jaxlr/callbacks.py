"""Things to do after each epoch of `fit`: stop early, save a checkpoint, show progress.

A callback is any function ``callback(epoch, result) -> bool`` (True stops
training), given the epoch just finished and a `FitResult` for it; `fit`
takes one or a list. The classes here are the library's own.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

Callback = Callable[[int, Any], bool]

MIN_VALIDATION_ROWS = 20
"""The fewest held-out rows a default validation split may have: with fewer, the
validation MSE is mostly noise, and early stopping keeps an early epoch for it."""


def validation_rows(rows: int, fraction: float) -> int:
    """How many of `rows` a validation `fraction` holds out: rounded up, as
    scikit-learn's split does (so 0.1 of 5 rows is 1, not none)."""
    return math.ceil(fraction * rows)


class EarlyStopping:
    """Stops after `patience` epochs without a lower validation MSE, keeping the best params.

    Args:
        patience: epochs to wait for an improvement.
        X_val: array of shape (m, d), in the units the model trains on.
        y_val: array of shape (m, k).
        weight: None, or each validation row's weight (m,): the MSE is then
            weighted as training weighs its rows.

    Attributes:
        best_params: the params of the best epoch so far (None before the first).
        best_epoch, best: that epoch and its validation MSE.
        epochs_seen: epochs judged so far.
        stopped: whether it stopped training.
    """

    def __init__(self, patience: int, X_val, y_val, weight=None):
        self.patience = patience
        self.X_val, self.y_val = np.asarray(X_val, np.float64), np.asarray(y_val, np.float64)
        # Each validation row's share of the MSE, as training weighs it.
        self.weight = None if weight is None else np.asarray(weight, np.float64).reshape(-1, 1)
        self.best: Optional[float] = None
        self.best_params: Any = None
        self.best_epoch: Optional[int] = None
        self.waited = 0
        self.epochs_seen = 0
        self.stopped = False

    def checkpoint_settings(self) -> dict:
        """What a checkpoint records of this rule: a run resumes only under the same."""
        return {"early_stopping": self.patience}

    def checkpoint_state(self) -> dict:
        """The rule's memory as arrays, for a checkpoint: a resumed run then
        stops where, and keeps what, an uninterrupted one would."""
        state = {
            "best": np.array(np.nan if self.best is None else self.best),
            "best_epoch": np.array(-1 if self.best_epoch is None else self.best_epoch),
            "waited": np.array(self.waited), "epochs_seen": np.array(self.epochs_seen), "stopped": np.array(self.stopped),
        }  # fmt: skip
        if self.best_params is not None:
            from jaxlr import parallel

            state["best_w"], state["best_b"] = (parallel.host_value(p) for p in self.best_params)
        return state

    def restore_checkpoint_state(self, state: dict) -> None:
        from jaxlr.model import Params

        self.best = None if np.isnan(state["best"]) else float(state["best"])
        self.best_epoch = None if int(state["best_epoch"]) < 0 else int(state["best_epoch"])
        self.waited, self.epochs_seen = int(state["waited"]), int(state["epochs_seen"])
        self.stopped = bool(state["stopped"])
        self.best_params = Params(state["best_w"], state["best_b"]) if "best_w" in state else None

    def __call__(self, epoch: int, result: Any) -> bool:
        from jaxlr import parallel
        from jaxlr.metrics import host_metrics

        self.epochs_seen += 1
        w, b = (parallel.host_value(p).astype(np.float64) for p in result.params)
        error = host_metrics(self.X_val @ w + b, self.y_val, weight=self.weight)["mse"]  # the report's own MSE
        if self.best is None or error < self.best:
            self.best, self.best_params, self.best_epoch, self.waited = error, result.params, epoch, 0
            return False
        self.waited += 1
        self.stopped = self.waited >= self.patience
        return self.stopped


class Progress:
    """A tqdm bar of epochs on stderr, shown only on a terminal and after `delay` seconds.

    Without tqdm (the `progress` extra) or a terminal, it does nothing.
    """

    def __init__(self, total: int, *, enabled: bool = True, delay: float = 1.0):
        self.bar = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        # A terminal that reports no size (a fresh pseudo-terminal, some containers)
        # has 0 rows to tqdm, which then hides the bar as off screen: nothing is drawn.
        try:
            size = os.get_terminal_size(sys.stderr.fileno())
        except OSError:
            size = os.terminal_size((0, 0))
        unknown = dict(ncols=80, nrows=24) if not (size.columns and size.lines) else {}
        self.bar = tqdm(total=total, unit="epoch", file=sys.stderr, delay=delay, leave=False, **unknown)

    def __call__(self, epoch: int, result: Any) -> bool:
        if self.bar is not None:
            self.bar.update(1)
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def combine(callbacks: Union[None, Callback, Sequence[Optional[Callback]]]) -> Optional[Callback]:
    """One callback that runs each of `callbacks` in turn; any one may stop training."""
    if callbacks is None:
        return None
    if callable(callbacks):
        return callbacks
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"`callback` (={callbacks!r}) must be a function (epoch, result) -> bool, or a list of them.")
    chosen = [cb for cb in callbacks if cb is not None]
    for cb in chosen:
        if not callable(cb):
            raise TypeError(f"`callback` entries must be functions (epoch, result) -> bool, got {cb!r}.")
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def every(epoch: int, result: Any) -> bool:
        return any([bool(cb(epoch, result)) for cb in chosen])  # a list: every one runs

    return every
