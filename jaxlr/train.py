"""`fit` and `sweep`: check the settings, pick an engine, drive it, and assemble the result.

The path reads in one direction: key -> data -> batches -> step -> params ->
result. `fit` turns its keywords into a static `Spec` (what the program does)
and traced `Numbers` (every value it uses), prepares the rows, and runs the
engine block by block. The driver below is the one place that reports
divergence, prints the lesson's progress lines, calls callbacks and saves
checkpoints, whatever the engine.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import inspect
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlr import callbacks as callbacks_lib
from jaxlr import checkpoint as checkpoint_lib
from jaxlr import compilation_cache, engines, losses, optim, parallel, penalties, schedules, validate
from jaxlr import shuffle as shuffle_lib
from jaxlr.arrays import KeptWhileAlive, padded
from jaxlr.data import NpyStream, is_aligned, key_words, to_device
from jaxlr.engines import core
from jaxlr.engines import plan as engine_plan
from jaxlr.engines.core import FitState, init_fit_state
from jaxlr.model import Params, init_params
from jaxlr.optim import Rule, RuleNumbers, check_rule, rule_value

compilation_cache.turn_on_once()  # before the first fit compiles: see jaxlr.compilation_cache

__all__ = ["FitResult", "FitState", "SweepResult", "TrainingDiverged", "clear_caches", "fit", "moving_average", "sweep"]


class FitResult(NamedTuple):
    """What `fit` returns (and what a callback sees after each epoch).

    Attributes:
        params: the learned Params (the averaged ones with `average`).
        opt_state: the update rule's state at the end (None for plain SGD).
        losses: array of shape (steps,), each batch's loss before its update.
        moving_losses: array of shape (steps,), their exponential moving average.
        state: the run's whole position, to continue it with ``fit(..., state=)``.
        epoch_losses: array of shape (epochs run,), each epoch's mean loss.
    """

    params: Params
    opt_state: Any
    losses: jax.Array
    moving_losses: jax.Array
    state: Optional[FitState] = None
    epoch_losses: Any = None


# A loss this many times above the run's reference (the largest of its first
# loss and, over every row, the losses of predicting zero and of the starting
# params) counts as diverged: a run that is learning never gets there, and one
# that diverges can climb for many steps in float32 before anything overflows.
LOSS_GROWTH = 1e6


class TrainingDiverged(FloatingPointError):
    """Training stopped because it diverged: a loss or the params stopped being
    finite, the params outgrew the square root of their dtype's largest number,
    or a loss grew past `LOSS_GROWTH` times the run's reference.

    Attributes:
        epoch, batch: where it happened (batch counts from 0 within the epoch).
        last_finite_loss: the loss of the last good step (None if there was none).
        params: the last good parameters, from just before that step.
        opt_state: the optimizer state that goes with them.
        state: the whole FitState of the last good step.
    """

    def __init__(self, epoch, batch, last_finite_loss, state, lr, limit=None, dtype=np.float32, lower=None):
        self.epoch, self.batch = epoch, batch
        self.last_finite_loss = last_finite_loss
        self.params, self.opt_state = state.params, state.opt_state
        # The last good state, to continue from (with a lower rate, say): it is sound, so it says so.
        self.state = state._replace(ok=jnp.asarray(True))
        last = "none" if last_finite_loss is None else f"{last_finite_loss:.3g}"
        # `lower`: what to change for smaller steps, when `lr` does not set them.
        lower = lower or ("Lower " + (f"`lr` (={lr})" if lr is not None else "the optimizer's learning rate"))
        advice = f"{lower}, or standardize the features so that they share one scale."
        precision = np.dtype(dtype).name
        if last_finite_loss is None or last_finite_loss > 1e-6 * float(np.finfo(dtype).max):
            # The loss of the starting params (or one near the dtype's limit) is
            # about the data alone: no learning rate brings it back in range.
            wider = ", or compute in float64" if np.dtype(dtype).itemsize < 8 else ""
            advice = (
                f"The data's values are too large for the loss to be computed in {precision}, whatever "
                "the learning rate: centre and scale the target and the features (jaxlr.Standardizer; "
                f"--standardize on the command line){wider}."
            )
        what = "the loss or the parameters stopped being finite"
        if limit is not None:
            what = (f"the loss grew past {limit:.3g}, {LOSS_GROWTH:.0e} times the largest of its first value and "
                    "those of predicting zero and of the starting params over every row")  # fmt: skip
        super().__init__(
            f"training diverged at epoch {epoch}, batch {batch}: {what} (last good loss: {last}). {advice}"
        )


_DEPRECATED = {
    "params": "init= for starting params, or state= to continue a run",
    "opt_state": "state=",
    "initial_epoch": "state=",
    "device": "devices=",
    "chunk_bytes": "NpyStream(..., chunk_bytes=)",
}


def fit(
    X: Any,
    y: Optional[ArrayLike] = None,
    *,
    key: Any,
    epochs: int = 2,
    lr: Optional[float] = None,
    batch_size: int = 4,
    optimizer: Rule = None,
    loss: Union[str, Callable] = "squared",
    epsilon: float = 0.1,
    penalty: Optional[str] = None,
    alpha: float = 0.0001,
    l1_ratio: float = 0.15,
    schedule: schedules.Schedule = "constant",
    power_t: float = 0.25,
    average: Union[bool, int] = False,
    sample_weight: Optional[ArrayLike] = None,
    tol: Optional[float] = None,
    n_iter_no_change: int = 5,
    validation: Optional[tuple] = None,
    shuffle: Union[bool, str] = True,
    fit_intercept: bool = True,
    record_steps: bool = True,
    max_slope: Optional[float] = None,
    loss_growth: bool = True,
    init: Optional[Params] = None,
    state: Optional[FitState] = None,
    engine: str = "fused",
    devices: Any = None,
    log_every: int = 500,
    smoothing: float = 0.01,
    verbose: bool = False,
    callback: Union[None, Callable, Sequence[Callable]] = None,
    checkpoint: Union[None, str, Path] = None,
    checkpoint_every: Optional[int] = None,
    resume: Union[bool, str] = False,
    overwrite: bool = False,
    **deprecated: Any,
) -> FitResult:
    """Trains a linear model by mini-batch SGD (or momentum, Nesterov, Adam, or optax).

    Each step takes a batch's mean loss (weighted by `sample_weight`), adds
    the penalty, and moves the params by the learning rate of the schedule.
    Both engines run the same step on the same batches in the same order:
    ``"loop"`` feeds the jitted step from the `batches` generator in a Python
    loop, as the lesson does; ``"fused"`` runs the whole training as one
    compiled program. The program depends on the settings' kinds (loss,
    optimizer, batch size, features, outputs), not on their values nor on the
    number of rows: a new learning rate, alpha, tolerance or fold reuses it.

    Args:
        X: array of shape (n, d); bool and int are cast to float. Or an
            `NpyStream` / `numpy.memmap` for data read from disk in chunks.
        y: array of shape (n, k), or (n,) for one output.
        key: PRNG key. It is split into an initialisation key and a shuffle
            key; epoch e shuffles with ``fold_in(shuffle_key, e)``, so the order
            of any epoch does not depend on the epochs before it.
        epochs: passes over the data (the most, with `tol`).
        lr: learning rate, eta0 of a named schedule; None for 0.001. Refused
            where it would set nothing: an optax optimizer carries its own
            rate, "optimal" takes its rates from alpha, and a function
            schedule is the rate itself.
        batch_size: rows per step, between 1 and n; the last batch of an
            epoch is short when it does not divide n.
        optimizer: None or "sgd" for the lesson's hand-written `sgd`,
            "momentum" (0.9), "nesterov", "adam", or an optax transformation.
        loss: "squared" (the lesson's), "huber", "epsilon_insensitive",
            "squared_epsilon_insensitive" (see `jaxlr.losses`), or a function
            ``(yhat, y) -> per-entry losses``. A function (loss or schedule)
            that reads a global number, array or tuple of them that changed
            since an earlier fit is traced again, not reused. Functions it
            calls and other objects it reads are known by name and type only,
            as `jax.jit` knows them: after changing one, pass a new function.
        epsilon: the margin of the Huber and epsilon-insensitive losses.
        penalty: None, "l2", "l1" or "elasticnet", on the weights only.
        alpha: the penalty's strength (and the "optimal" schedule's).
        l1_ratio: the L1 share of "elasticnet".
        schedule: "constant", "optimal", "invscaling", "adaptive" (see
            `jaxlr.schedules`), or an optax schedule of the step count; a
            function of two arguments gets ``(count, total)``, total being
            the updates this run makes in all (those of a given `state` too).
        power_t: the exponent of "invscaling".
        average: True (or an int t0) returns the average of the params over
            all updates (from update t0 on): averaged SGD.
        sample_weight: array of shape (n,): each row's weight in the loss.
        tol: stop once `n_iter_no_change` epochs in a row failed to lower the
            epoch's mean loss by `tol` (or raise the validation R² by it);
            at least 0, as scikit-learn's, and None for no such rule.
            With `tol`, each epoch's order is drawn on the device.
        n_iter_no_change: the patience of that rule.
        validation: (X_val, y_val), or (X_val, y_val, sample_weight_val), for
            the rule to score (their weighted R²) instead of the
            training loss; it needs `tol`.
        shuffle: True shuffles every epoch; False keeps the rows in their
            stored order. Each epoch's order is a function of the key and the
            epoch alone (`jaxlr.shuffle`), the same wherever it is drawn: on
            the host ("host": the default on a CPU, and what the loop engine
            and `batches` use) or inside the program on the device
            ("device": the default on an accelerator, and with `tol`, which
            may end the run at any epoch).
        fit_intercept: False keeps b at its starting value: zero for fresh
            params, the given one for `init` or `state`.
        max_slope: caps the slope of the loss at each prediction, before
            the row's weight scales it (scikit-learn caps it at 1e12): a step
            far too large then stays finite instead of diverging. None (the default) leaves it alone.
        loss_growth: True (the default) also counts a loss that grew past
            `LOSS_GROWTH` times the run's reference as diverged; False counts
            only a loss or params that stop being finite, as scikit-learn
            does, so a run may pass through a large transient (its
            `SGDRegressor` does).
        record_steps: False returns no per-step losses nor their moving
            average (which it then does not keep either), only each epoch's
            mean loss: for long runs, and for estimators.
        init: starting Params; None draws them with `init_params`.
        state: a `FitState` to continue a run from (``result.state``): its
            params, optimizer state, epoch, step count, moving average and
            averaged params all carry on; with the same key and settings the
            result is that of one uninterrupted run (a run its stopping rule
            ended stays ended, unless continued without `tol`). A state from
            a run that did not average, continued with `average`, averages
            the updates made from there on. The update rule's state carries on as it is:
            momentum and Nesterov keep the same trace, so either may continue
            the other, as a run may continue with another `lr`.
        engine: "fused" (every step in sequence, one compiled program),
            "loop" (the lesson's Python loop over jitted steps), "scan" (the
            same steps in parallel time: the squared loss with sgd, momentum
            or nesterov; see `jaxlr.engines.scan`) or "auto" (the one measured
            fastest for the backend, features and batch size; `verbose` says
            which ran and why).
        devices: where to train. None for JAX's default device; a
            `jax.Device` or a platform name such as "cpu" or "gpu"; or for data
            parallelism a number of devices, a list of them, or a one-axis
            `jax.sharding.Mesh`: each batch is split by rows over them
            (`batch_size` must divide evenly), the params are replicated, and
            XLA sums the gradients. X and y may be global arrays built across
            processes (see `jaxlr.parallel`).
        log_every: with `verbose`, print a line every this many batches.
        smoothing: weight of the newest loss in the moving average, in (0, 1].
        verbose: print the lesson's progress lines (the fused engine prints
            them when its program returns).
        callback: a function ``callback(epoch, result) -> bool`` or a list of
            them, called after each epoch with that epoch's FitResult;
            returning True stops training. The fused engine then runs one
            epoch per program (as it always does across processes).
        checkpoint: a directory to save the run in, atomically, keeping its
            previous checkpoint. A directory that already holds checkpoints
            is refused unless `resume` or `overwrite` says what to do with them.
        checkpoint_every: epochs between checkpoints; None (the default)
            saves when at least `CHECKPOINT_SECONDS` have passed since the
            last save, which keeps saving a small share of the run. Always
            after the last epoch, and when training stops early.
        resume: True continues this run (same key and settings) from its
            newest good checkpoint in `checkpoint`, which must exist: the run
            then trains only the epochs still missing and ends with the params
            an uninterrupted run would have. "if_present" does so when there
            is one, and starts afresh when there is none.
        overwrite: start afresh even though `checkpoint` holds checkpoints of
            this run (they are deleted; other runs' files are kept).

    Returns:
        FitResult.

    Raises:
        TrainingDiverged: training diverged (see `TrainingDiverged`); the error
            carries the last good params.
        jaxlr.checkpoint.CheckpointError: `checkpoint` holds nothing to resume
            (with resume=True), another run's or this run's checkpoints
            (without `resume` or `overwrite`), or a checkpoint of other settings.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> result = fit(X, y, key=jax.random.key(1))
        >>> result.params.w.ravel()  # close to [2, -3.4]
    """
    settings = dict(locals())
    return _drive(*_prepare(**settings.pop("deprecated"), **settings))


def _prepare(  # fmt: skip
    X, y, *,
    key, epochs, lr, batch_size, optimizer, loss, epsilon, penalty, alpha, l1_ratio, schedule, power_t,
    average, sample_weight, tol, n_iter_no_change, validation, shuffle, fit_intercept, record_steps, max_slope,
    loss_growth, init, state, engine, devices, log_every, smoothing, verbose, callback, checkpoint,
    checkpoint_every, resume, overwrite, **deprecated
):
    """Checks `fit`'s arguments and gathers what its driver needs (see `fit`)."""
    deprecated = _take_deprecated(deprecated)
    key = validate.check_key(key)
    if deprecated.get("device") is not None and devices is not None:
        raise ValueError(f"give `devices` (={devices!r}) or the old `device` (={deprecated['device']!r}), not both.")
    devices = devices if deprecated.get("device") is None else deprecated["device"]
    if validation is not None and tol is None:
        raise ValueError("`validation` is scored by the stopping rule, which `tol` (=None) turns off: give a `tol` "
                         "(the least gain in validation R² that counts), or leave out `validation`.")  # fmt: skip
    if state is not None and init is not None:
        raise ValueError("give `init` (starting params) or `state` (a run to continue, params included), not both.")
    if isinstance(X, np.memmap):
        X = NpyStream.from_memmap(X, y)
    stream = X if isinstance(X, NpyStream) else None
    if stream is not None:
        if "chunk_bytes" in deprecated:
            stream.chunk_bytes = validate.check_int("chunk_bytes", deprecated["chunk_bytes"], low=1)
        n, d, k, dtype = stream.num_rows, stream.num_features, stream.num_outputs, stream.dtype
    else:
        if "chunk_bytes" in deprecated:
            raise ValueError("`chunk_bytes` sets how a table streamed from disk is read; X here is in memory.")
        X, y = validate.training_arrays(X, y)
        (n, d), k, dtype = X.shape, y.shape[1], X.dtype
    settings = _check_settings(
        n, k, dtype, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, loss=loss, epsilon=epsilon,
        penalty=penalty, alpha=alpha, l1_ratio=l1_ratio, schedule=schedule, power_t=power_t, average=average, tol=tol,
        n_iter_no_change=n_iter_no_change, shuffle=shuffle, fit_intercept=fit_intercept, max_slope=max_slope,
        smoothing=smoothing,
    )  # fmt: skip
    epochs, batch_size, rule, lr, shuffle = (settings.epochs, settings.batch_size, settings.rule, settings.lr,
                                             settings.shuffle)  # fmt: skip
    log_every = validate.check_int("log_every", log_every, low=1)
    record_steps = validate.check_flag("record_steps", record_steps)
    loss_growth = validate.check_flag("loss_growth", loss_growth)
    overwrite = validate.check_flag("overwrite", overwrite)
    # An int as scikit-learn's verbosity levels: any above 0 prints the lesson's lines.
    verbose = verbose if isinstance(verbose, bool) else validate.check_int("verbose", verbose, low=0) > 0
    if verbose and not record_steps:
        raise ValueError("`verbose` prints the steps' moving loss, which `record_steps` (=False) does not keep: "
                         "leave one of them out, or follow the epochs with a `callback`.")  # fmt: skip
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError(f"`checkpoint_every` (={checkpoint_every!r}) sets how often checkpoints are written, "
                         "which needs `checkpoint`, the directory to write them to.")  # fmt: skip
    engine = validate.check_choice("engine", engine, engines.ENGINES)
    weight = None if sample_weight is None else _sample_weights(sample_weight, n, dtype)
    # Callbacks with a state of their own (early stopping) have it saved in checkpoints.
    keepers = tuple(cb for cb in (callback if isinstance(callback, (list, tuple)) else [callback])
                    if hasattr(cb, "checkpoint_state"))  # fmt: skip
    callback = callbacks_lib.combine(callback)
    device, mesh = _placement(devices)
    if mesh is not None:
        if batch_size % mesh.size:
            raise ValueError(
                f"`batch_size` (={batch_size}) must be divisible by the number of devices (={mesh.size})."
            )
    resume = validate.check_choice("resume", resume, (False, True, "if_present"))
    if resume and checkpoint is None:
        raise ValueError("`resume` needs `checkpoint`, the directory to resume from.")
    if overwrite and checkpoint is None:
        raise ValueError("`overwrite` needs `checkpoint`, the directory whose checkpoints it replaces.")
    if state is not None and any(name in deprecated for name in ("params", "opt_state", "initial_epoch")):
        raise ValueError("give `state` or the old `params`/`opt_state`/`initial_epoch`, not both.")

    spec = settings.spec(
        sharding=None if mesh is None else parallel.by_rows(mesh), weighted=weight is not None,
        stops=settings.tol > -math.inf or validation is not None, smooth=bool(record_steps),
    )  # fmt: skip
    setup = engine_plan.Setup(spec=spec, streamed=stream is not None, placed=mesh is not None or device is not None,
                              processes=1 if mesh is None else jax.process_count(), shuffle=shuffle)  # fmt: skip
    chosen = engine_plan.plan(engine, setup, backend=parallel.platform(device, mesh), features=d,
                              X=None if stream is not None else X, y=y)  # fmt: skip
    if engine == "auto" and verbose:
        print(f"engine: {'scan' if chosen.spec.parallel else 'fused'} ({chosen.reason})")
    engine, spec = chosen.driver, chosen.spec
    if shuffle is True:
        # Host and device draw the same orders (`jaxlr.shuffle`): the device
        # when the epochs' count is open (`tol`), the rows sit on an
        # accelerator, or they are few; the host where it is cheaper, for
        # many rows on a CPU.
        on_device = spec.stops or parallel.platform(device, mesh) != "cpu" or n < HOST_DRAW_ROWS
        shuffle = "device" if engine == "fused" and on_device else "host"
    draw = shuffle or "none"

    # The starting state: given, from the old keywords, or fresh (a checkpoint may replace it below).
    given_state = state
    averaging = settings.average_start is not None
    start = _start(key, state, init, deprecated, rule, d, k, dtype, epochs=epochs, draw=draw, average=averaging,
                   fit_intercept=settings.fit_intercept)  # fmt: skip
    state, shuffle_key, known_words, params, first_epoch = start
    if given_state is not None:
        goes_on = isinstance(average, (bool, np.bool_)) and bool(average)  # True continues the state's average
        state, settings, given_at = _continued(state, settings, stops=spec.stops, goes_on=goes_on)
    # The state records where its average runs from, for a run that continues it.
    state = state._replace(average_start=core.on_device(np.int32(settings.average_start or 0)))
    end_epoch = (first_epoch if given_state is None else given_at[0]) + epochs

    # Built before the identity, which holds its rows' digest.
    validation_data = None if validation is None else _validation_data(validation, d, k, dtype, device)
    saving, found = None, None
    if checkpoint is not None:
        every = None if checkpoint_every is None else validate.check_int("checkpoint_every", checkpoint_every, low=1)
        saving = _Saving(
            directory=Path(checkpoint), every=every, key_words=key_words(key), keepers=keepers,
            settings={"examples": n, "features": d, "outputs": k, **settings.identity(),
                      "data": data_digest(stream if stream is not None else (X, y), weight),
                      "init": None if init is None and "params" not in deprecated else _digest_arrays(params),
                      # (only when given: the names of runs started afresh stay those they were)
                      **({} if given_state is None else {"state": _digest_arrays(state)}),
                      "sample_weight": weight is not None,
                      "validation": None if validation_data is None else _digest_arrays(validation_data[:3]),
                      "callbacks": [cb.checkpoint_settings() for cb in keepers]},
        )  # fmt: skip
        found = saving.start(resume, overwrite, jax.tree.map(np.asarray, state))
    finished = False
    if found is not None:
        if found.epoch > end_epoch:
            raise checkpoint_lib.CheckpointError(
                f"`epochs` (={epochs}) is fewer than the {found.epoch} epochs the checkpoint in "
                f"{str(checkpoint)!r} holds: ask for at least {found.epoch} to resume this run."
            )
        state = jax.tree.map(jnp.asarray, found.state)
        finished = saving.restore(found)
    if given_state is None and found is None:
        initial_epoch, initial_step = first_epoch, 0
    else:
        at = given_at if found is None else parallel.host_values((state.epoch, state.step, state.stop.done))
        initial_epoch, initial_step, done = (int(v) for v in at)
        if done or finished:
            end_epoch = initial_epoch  # a run its stopping rule ended is finished
    epochs = max(0, end_epoch - initial_epoch)
    epochs, capped = _check_counts(n, initial_step, -(-n // batch_size), epochs, stops=spec.stops)

    # Across processes every process runs one epoch per program: the programs
    # of all processes must match, and callbacks are each process's own (a
    # progress line on process 0 only); ones that differ would wait for each
    # other's collectives forever.
    across_processes = mesh is not None and jax.process_count() > 1
    per_call = None if callback is None and not across_processes else 1
    if saving is not None:
        per_call = per_call or saving.every or "auto"
        saving.directory.mkdir(parents=True, exist_ok=True)
    callback = callbacks_lib.combine([callback, saving and saving.callback(initial_epoch, end_epoch)])
    run = _Run(
        spec=spec, numbers=None, epochs=epochs, initial_epoch=initial_epoch, initial_step=initial_step,
        steps_per_epoch=-(-n // batch_size), rows=n, draw=draw, shuffle_key=shuffle_key, mesh=mesh,
        keep_steps=bool(record_steps), epochs_per_call=per_call, lr=lr, lower=settings.lower(), known_words=known_words,
        capped=capped,
        loss_growth=bool(loss_growth),
    )  # fmt: skip
    run = run._replace(validation_data=core.Data(None, None, None, None, validation_data))
    if engine == "streamed":
        run = run._replace(stream=stream, steps_per_epoch=stream.steps_per_epoch(batch_size))
    elif engine == "loop":
        run = run._replace(host_rows=(np.asarray(X), np.asarray(y), weight))
    else:
        run = run._replace(data=_device_data(X, y, weight, batch_size, device, mesh, validation_data))
    # The run's end is known only now (a checkpoint may have moved its start).
    total_steps = min(initial_step + epochs * run.steps_per_epoch, _MOST_COUNT)
    run = run._replace(numbers=core.pack(settings.numbers(total_steps), dtype))
    stored = (lambda part: None if part is None else part.X.shape[0])  # noqa: E731
    run = run._replace(spec=run.spec._replace(shapes=(d, k, np.dtype(dtype).name, stored(run.data),
                                                      stored(validation_data))))  # fmt: skip
    if engine != "streamed":
        run = run._replace(reference_loss=functools.partial(_reference_loss, settings.loss, X, y, weight,
                                                                settings.epsilon))
    if device is not None:
        state = jax.device_put(state, device)
    if mesh is not None:
        state = parallel.put_replicated(state, mesh)
    return engines.get(engine), run, state, log_every if verbose else None, callback, dtype, settings.average_start


def _continued(state: FitState, settings: "_Settings", *, stops: bool, goes_on: bool):
    """A given state as this call's settings continue it, the settings as it
    leaves them, and where it stands (epoch, step, whether its rule ended it),
    read in one go. `goes_on`: `average` was True, which continues an
    average the state holds from where it started."""
    start = settings.average_start
    # (The average and its start are read only where this call averages.)
    averaging = () if start is None else (state.average.b, state.average_start)
    epoch, step, done, *kept = parallel.host_values((state.epoch, state.step, state.stop.done, *averaging))
    epoch, step, done = int(epoch), int(step), int(done)
    average_b: Any = kept[0] if kept else None
    kept_start = int(kept[1]) if kept else None
    if done and not stops:
        # A run its stopping rule ended, continued without one: the rule no
        # longer holds it, so the epochs asked for run.
        state, done = state._replace(stop=state.stop._replace(done=jnp.asarray(False))), 0
    if start is None:
        # Updates made without averaging end any average the state held: one
        # switched on again starts afresh, as from a run that never averaged.
        d, k = state.params.w.shape
        state = state._replace(average=_unkept_average(d, k, np.dtype(state.params.w.dtype)))
    elif np.isnan(average_b).any():
        # A run that did not average continues with averaging: the mean runs
        # over the updates from here on, not over those before.
        settings = settings._replace(average_start=max(start, step + 1))
        state = state._replace(average=state.params)
    elif start != kept_start and start <= step:
        # The mean over updates from `start` on was never kept: only the one
        # from the state's own start goes on. (A start after `step` is a fresh
        # average, which begins there.)
        if not goes_on:
            raise ValueError(
                f"`average` (={start}) asks for the mean of the params from update {start} on, but `state` has "
                f"made {step} updates and averages from update {kept_start}: that mean was not kept. Continue "
                f"with average=True (or ={kept_start}), or with a start after update {step}."
            )
        settings = settings._replace(average_start=kept_start)
    return state, settings, (epoch, step, done)


def _start(key, state, init, deprecated, rule, d, k, dtype, *, epochs, draw, average, fit_intercept):
    """A run's starting state: `state` (checked), the params of `init` (or the
    old `params`/`opt_state`/`initial_epoch` keywords), or fresh ones drawn
    from `key`. Returns (state, shuffle key, the first epochs' shuffle words
    when they came with fresh params, the starting params given, first epoch)."""
    params, known_words = deprecated.get("params", init), None
    first_epoch = validate.check_int("initial_epoch", deprecated.get("initial_epoch", 0), low=0)
    if state is not None:
        state = _check_state(state, rule, d, k, dtype)
        shuffle_key = _shuffle_key(key)
    elif params is None:
        # The epochs' shuffle words come with the initial params when the host shuffles.
        # (a block's worth at most: later ones are drawn when needed, so memory does not follow `epochs`)
        count = core.bucket(min(max(epochs, 1), _WORDS_AHEAD)) if draw == "host" else 1
        epoch_ids = np.arange(first_epoch, first_epoch + count, dtype=np.int32)
        state, shuffle_key, words = _begin(rule, d, k, dtype, average, fit_intercept)(key, epoch_ids)
        known_words = (first_epoch, words)
    else:
        name = "params" if "params" in deprecated else "init"
        # Cast on the host: a cast on the device is a dispatch per array.
        params = Params(*(np.asarray(p, dtype) for p in validate.check_params(params, d, k, name=name)))
        if not bool(_sound(params)):
            raise ValueError(f"`{name}` holds NaN, inf, or values too large for {np.dtype(dtype).name}: start from finite params.")
        state = init_fit_state(params, rule, epoch=first_epoch, average=average)
        shuffle_key = _shuffle_key(key)
    if deprecated.get("opt_state") is not None:
        if rule == "sgd":
            raise ValueError("`opt_state` was given without the `optimizer` it belongs to.")
        _check_opt_state(deprecated["opt_state"], state.opt_state, d, k, "opt_state")
        state = state._replace(opt_state=deprecated["opt_state"])
    return state, shuffle_key, known_words, params, first_epoch


class _Settings(NamedTuple):
    """What a run does, checked once: its compiled program's key (`spec`),
    its traced numbers (`numbers`), and the part of its identity that
    checkpoints compare (`identity`). Data, start and placement are apart."""

    epochs: int
    batch_size: int
    rule: Rule
    lr: Optional[float]  # None with an optax transformation, which carries its own
    schedule: schedules.Schedule
    power_t: float
    loss: losses.Loss
    epsilon: float
    penalty: penalties.Penalty
    alpha: float
    average_start: Optional[int]
    tol: float  # -inf: no stopping rule
    n_iter_no_change: int
    shuffle: Any  # True, False, "host" or "device"
    fit_intercept: bool
    max_slope: Optional[float]
    smoothing: float

    def spec(self, *, sharding, weighted: bool, stops: bool, smooth: bool) -> core.Spec:
        return core.Spec(
            loss=self.loss, rule=self.rule, schedule=self.schedule, l1=self.penalty.l1 > 0, l2=self.penalty.l2 > 0,
            average=self.average_start is not None, batch_size=self.batch_size, sharding=sharding, stops=stops,
            fit_intercept=self.fit_intercept, weighted=weighted, smooth=smooth, max_slope=self.max_slope,
            values_read=_values_read(self.loss.function, self.schedule),
        )  # fmt: skip

    def numbers(self, total_steps: int) -> core.Numbers:
        rate = schedules.Rate(
            eta0=self.lr if self.lr is not None else 0.0, power_t=self.power_t,
            t0=schedules.optimal_t0(self.alpha) if self.alpha > 0 else 1.0, alpha=self.alpha,
            # Zero where no schedule reads it: continuing a run then copies no new numbers to the device.
            total_steps=total_steps if schedules.reads_total(self.schedule) else 0,
        )  # fmt: skip
        return core.Numbers(
            rate=rate, rule=RuleNumbers(), penalty=self.penalty, epsilon=self.epsilon, smoothing=self.smoothing,
            average_start=self.average_start or 1, stop=core.StopNumbers(tol=self.tol, patience=self.n_iter_no_change),
        )  # fmt: skip

    def lower(self) -> Optional[str]:
        """What a diverged run should change for smaller steps, where it is not `lr`."""
        if self.lr is None or not schedules.ignores_lr(self.schedule):
            return None
        if self.schedule == "optimal":
            return f"Raise `alpha` (={self.alpha}), whose inverse sets the 'optimal' schedule's rates"
        return "Lower the rates of the `schedule`"

    def identity(self) -> dict:
        """The settings as a checkpoint records them: functions by digest, and
        whether the run shuffles rather than where (host and device draw the same orders)."""
        schedule = self.schedule
        return {
            "batch_size": self.batch_size, "lr": self.lr, "optimizer": _rule_name(self.rule),
            "loss": _function_name("loss", self.loss.name, self.loss.function), "penalty": list(self.penalty),
            # A loss that never reads epsilon records the default: no part of the run (and the names of runs stay).
            "alpha": self.alpha, "epsilon": self.epsilon if losses.reads_epsilon(self.loss) else _FIT_DEFAULTS["epsilon"],
            "schedule": schedule if isinstance(schedule, str) else _function_name("schedule", "custom", schedule),
            "power_t": self.power_t, "average": self.average_start, "tol": self.tol,
            "n_iter_no_change": self.n_iter_no_change, "shuffle": bool(self.shuffle),
            "fit_intercept": self.fit_intercept, "max_slope": self.max_slope, "smoothing": self.smoothing,
        }  # fmt: skip


# The settings checked alone, each by its own rule (the others are checked together in `_check_settings`).
_SETTING_CHECKS: dict[str, Callable[..., Any]] = {
    "epochs": functools.partial(validate.check_int, low=0),
    "power_t": functools.partial(validate.check_real, low=-math.inf, low_open=True),
    "epsilon": functools.partial(validate.check_real, low=0.0, low_open=False),
    "n_iter_no_change": functools.partial(validate.check_int, low=1),
    "smoothing": functools.partial(validate.check_real, low=0.0, high=1.0),
    "shuffle": functools.partial(validate.check_choice, choices=(True, False, "host", "device")),
    "fit_intercept": validate.check_flag,
}


def _check_settings(n: int, k: int, dtype, **given) -> _Settings:
    """`fit`'s settings for n rows of k outputs in `dtype`, checked, or a ValueError naming the one at fault."""
    try:
        # The same settings again (each `partial_fit`, a refit) are checked once. Types are
        # part of the key: 1, 1.0 and True are equal, and not the same setting.
        key = (n, k, np.dtype(dtype), *((name, type(value), value) for name, value in given.items()))
        hash(key)
    except TypeError:  # a setting that cannot be a key (an array): checked every time
        return _checked_settings(n, k, dtype, given)
    return _remembered_settings(key)


@functools.lru_cache(maxsize=64)
def _remembered_settings(key) -> _Settings:
    n, k, dtype, *given = key
    return _checked_settings(n, k, dtype, {name: value for name, _, value in given})


def _checked_settings(n: int, k: int, dtype, given: dict) -> _Settings:
    alone = {name: check(name, given[name]) for name, check in _SETTING_CHECKS.items()}
    batch_size = validate.check_int("batch_size", given["batch_size"], low=1, high=n, high_name="the number of examples")
    rule = check_rule(given["optimizer"])
    # An optax transformation carries its own learning rate.
    schedule = schedules.check(given["schedule"])
    sets_rate = isinstance(rule, str) and not schedules.ignores_lr(schedule)
    if given["lr"] is not None and not sets_rate:
        sets = ("the optax `optimizer` carries its own" if not isinstance(rule, str) else
                "schedule='optimal' takes its rates from `alpha`" if schedule == "optimal" else
                f"the `schedule` (={_shown(schedule)}) is the rate itself")  # fmt: skip
        raise ValueError(f"`lr` (={given['lr']!r}) would set no rate: {sets}. Leave `lr` out.")
    lr = validate.check_real("lr", _DEFAULT_LR if given["lr"] is None else given["lr"], low=0.0) if isinstance(rule, str) else None
    loss = losses.resolve(given["loss"])
    losses.check_entries(loss, batch_size, k, dtype)
    penalty = penalties.make(given["penalty"], given["alpha"], given["l1_ratio"])
    alpha = float(given["alpha"])
    if not isinstance(rule, str):
        # The schedule's rate scales the named rules' steps and the L1 step; an
        # optax transformation keeps its rate to itself, so neither could apply.
        if schedule != "constant":
            raise ValueError(
                f"`schedule` (={_shown(schedule)}) cannot apply to an optax `optimizer`, which carries its own "
                "learning rate: give the schedule to the optimizer (optax.sgd(optax.exponential_decay(...)))."
            )
        if penalty.l1 > 0:
            raise ValueError(
                f"`penalty` (={given['penalty']!r}) takes an L1 step scaled by the learning rate, which an optax "
                "`optimizer` keeps to itself: use optimizer='sgd', 'momentum', 'nesterov' or 'adam' for L1."
            )
    if schedule == "adaptive" and given["tol"] is None:
        raise ValueError("`schedule` (='adaptive') cuts the rate when the stopping rule sees an epoch without gain, "
                         "which `tol` (=None) turns off, leaving a constant rate: give a `tol`, or use 'constant'.")  # fmt: skip
    if schedule == "optimal" and alpha <= 0:
        raise ValueError(f"`alpha` (={alpha}) must be > 0 with schedule='optimal', which divides by it.")
    tol = given["tol"]
    # (A tol below 0 would let the score fall and still count as a gain: refused, as scikit-learn does.)
    tol = -math.inf if tol is None else validate.check_real("tol", tol, low=0.0, low_open=False)
    max_slope = given["max_slope"]
    max_slope = None if max_slope is None else validate.check_real("max_slope", max_slope, low=0.0)
    settings = _Settings(
        batch_size=batch_size, rule=rule, lr=lr, schedule=schedule, loss=loss, penalty=penalty, alpha=alpha,
        average_start=_average_start(given["average"]), tol=tol,
        max_slope=max_slope, **alone,
    )  # fmt: skip
    for name, value in (("lr", lr), ("alpha", alpha), ("epsilon", settings.epsilon), ("power_t", settings.power_t)):
        if value is not None and not _finite_in(value, dtype):
            raise ValueError(f"`{name}` (={value}) must be finite in {np.dtype(dtype).name}, the data's precision.")
    return settings


_WORDS_AHEAD = 1024
_DEFAULT_LR = 0.001  # the lesson's

# From this many rows, a CPU run of a known number of epochs draws its orders
# on the host: measured at batch 1 and 20 features, the host took 1.3 ms an
# epoch at 20 000 rows and the device 1.5; at 1 000 rows the host 77 µs and
# the device 57 (the crossing near 3 000).
HOST_DRAW_ROWS = 2048

_FIT_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(fit).parameters.items()
    if parameter.default is not inspect.Parameter.empty and parameter.kind == inspect.Parameter.KEYWORD_ONLY
}


class _Run(NamedTuple):
    """What an engine needs to run, gathered once by `fit`."""

    spec: core.Spec
    numbers: tuple  # core.pack(Numbers)
    epochs: int
    initial_epoch: int
    initial_step: int
    steps_per_epoch: int
    rows: int
    draw: str  # "host", "device" or "none"
    shuffle_key: Any
    mesh: Any
    keep_steps: bool
    epochs_per_call: Any  # None: as many as fit; "auto": as many as take about CHECKPOINT_SECONDS
    lr: Any
    lower: Optional[str] = None  # the advice for smaller steps where `lr` does not set them (`_Settings.lower`)
    data: Any = None  # core.Data on the device (fused)
    host_rows: Any = None  # (X, y, weight) in host memory (loop)
    stream: Any = None  # an NpyStream (streamed)
    validation_data: Any = None
    known_words: Any = None  # (first epoch, words of the epochs from it), drawn with the initial params
    capped: bool = False  # `epochs` was cut to what the step count holds
    # The larger of the mean losses of predicting zero and of the given params, over every row.
    reference_loss: Callable[[Params], float] = lambda params: 0.0
    loss_growth: bool = True  # a loss past LOSS_GROWTH times the reference counts as diverged

    def epoch_words(self, epoch: int) -> np.ndarray:
        return self.words_of(epoch, 1)[0]

    def words_of(self, first_epoch: int, count: int) -> np.ndarray:
        """The raw words of epochs' shuffle keys, ``fold_in(shuffle_key, e)``."""
        if self.known_words is not None:
            start, words = self.known_words
            if start <= first_epoch and first_epoch + count <= start + words.shape[0]:
                return np.asarray(words)[first_epoch - start : first_epoch - start + count]
        return _epoch_words(self.shuffle_key, np.arange(first_epoch, first_epoch + count))

    def orders(self, first_epoch: int, count: int, N: int, rows: Optional[int] = None) -> np.ndarray:
        """Epochs' row orders, shape (rows or count, N): the n real rows shuffled,
        padding last; rows past `count` (left unshuffled) only fill a bucket."""
        n = self.rows
        orders = np.empty((rows or count, N), np.int32)
        orders[:, n:] = np.arange(n, N, dtype=np.int32)
        orders[count:, :n] = np.arange(n, dtype=np.int32)
        orders[:count, :n] = shuffle_lib.permutations(self.words_of(first_epoch, count), n)
        return orders


def _drive(engine, run: _Run, state: FitState, log_every, callback, dtype, average_start) -> FitResult:
    """Runs `engine` block by block: the one place for divergence, logs and callbacks."""
    loss_parts, moving_parts, epoch_parts = [], [], []
    first_loss, start = None, state.params
    for block in engine(run, state):
        state = block.state
        if first_loss is None and run.loss_growth:
            first_loss = _first_loss(block)
        if not bool(parallel.host_value(state.ok)):
            limit = None if first_loss is None else _loss_limit(run, first_loss, start)
            _raise_diverged(engine, run, block, limit, grew=False)
        if first_loss is not None:
            limit, grew = _growth(run, first_loss, start, lambda limit: not _within(block, limit))
            if grew:
                _raise_diverged(engine, run, block, limit, grew=True)
        loss_parts.append(block.losses)
        moving_parts.append(block.moving)
        epoch_parts.append(block.epoch_losses)
        if log_every is not None:
            shown = parallel.host_value(block.moving).reshape(-1, run.steps_per_epoch)
            for epoch, row in enumerate(shown, start=block.first_epoch):
                for i in range(log_every - 1, run.steps_per_epoch, log_every):
                    _print_log_line(epoch, i, row[i])
        if callback is not None:
            epoch_result = _result(state, [block.losses], [block.moving], [block.epoch_losses], dtype, average_start)
            last_epoch = block.first_epoch + max(1, np.shape(block.epoch_losses)[0]) - 1
            if callback(last_epoch, epoch_result):
                break
    if run.capped and int(parallel.host_value(state.epoch)) - run.initial_epoch >= run.epochs:
        warnings.warn(
            f"training stopped after {run.epochs} epochs, where the step count ends ({_MOST_COUNT} updates), "
            "before the stopping rule ended it.",
            stacklevel=3,
        )
    return _result(state, loss_parts, moving_parts, epoch_parts, dtype, average_start)


def _seen_losses(block) -> np.ndarray:
    """The block's losses: every step's, or when those are not kept, each
    epoch's first and largest (all the divergence rule needs)."""
    if np.shape(block.losses)[0]:
        return parallel.host_value(block.losses)
    return parallel.host_value(block.peaks).reshape(-1)


def _first_loss(block) -> Optional[float]:
    losses = _seen_losses(block)
    finite = losses[np.isfinite(losses)]
    return float(finite[0]) if finite.size else None


def _loss_limit(run: _Run, first_loss: float, start: Params) -> float:
    """`LOSS_GROWTH` times the run's reference: the largest of its first loss,
    the loss of predicting zero for every row, and that of the starting params
    over every row (a first batch can be far from typical: all zero rows, or
    zero weights)."""
    return LOSS_GROWTH * max(first_loss, run.reference_loss(start))


def _growth(run: _Run, first_loss: float, start: Params, grew_past: Callable[[float], bool]) -> tuple[float, bool]:
    """The growth rule, for `fit` and `sweep`: (the loss limit, whether
    `grew_past` it). The reference over every row is worked out only when the
    first loss alone would not do."""
    limit = LOSS_GROWTH * first_loss
    if not grew_past(limit):
        return limit, False
    limit = _loss_limit(run, first_loss, start)
    return limit, grew_past(limit)


def _within(block, limit: float) -> bool:
    losses = _seen_losses(block)
    return bool(np.all(core.loss_ok(losses[~np.isnan(losses)], limit)))


def _raise_diverged(engine, run: _Run, block, limit, *, grew: bool):
    """Replays `block` with the guard on (and the loss limit), to find the last good state."""
    numbers = run.numbers
    if limit is not None:
        settings = core.unpack(jax.device_get(run.numbers))._replace(loss_limit=limit)
        numbers = core.pack(settings, np.asarray(run.numbers[0]).dtype)
    # The replay keeps its steps' losses even where the run did not
    # (`record_steps=False`): the failing step's own loss tells the growth
    # rule from a loss or params that stopped being finite.
    guarded = run._replace(
        spec=run.spec._replace(guard=True), numbers=numbers, epochs=run.epochs - (block.first_epoch - run.initial_epoch),
        initial_epoch=block.first_epoch, initial_step=block.first_step, keep_steps=True,
    )  # fmt: skip
    replayed = next(iter(engine(guarded, block.start)))
    state = replayed.state
    done = int(parallel.host_value(state.step)) - block.first_step
    epoch, batch = divmod(done, run.steps_per_epoch)
    last = float(parallel.host_value(state.last_loss))
    seen = parallel.host_value(replayed.losses)
    if limit is not None and done < np.shape(seen)[0] and math.isfinite(seen[done]) and seen[done] > limit:
        grew = True  # the step that failed had a finite loss: it was the growth rule that stopped it
    raise TrainingDiverged(block.first_epoch + epoch, batch, None if math.isnan(last) else last, state, run.lr,
                           limit=limit if grew else None, dtype=np.asarray(run.numbers[0]).dtype,
                           lower=run.lower)  # fmt: skip


def _result(state, loss_parts, moving_parts, epoch_parts, dtype, average_start) -> FitResult:
    def join(parts):
        parts = [parallel.host_value(p) for p in parts if p is not None and np.shape(p)[0]]
        if not parts:
            return np.zeros(0, dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return FitResult(answer(state, average_start), state.opt_state, join(loss_parts), join(moving_parts), state,
                     join(epoch_parts))  # fmt: skip


def answer(state: FitState, average_start: Optional[int]) -> Params:
    """The params a run answers with: with averaging, the averaged params once
    averaging has started (scikit-learn's rule), else the params themselves.
    `state` may hold many runs along a leading axis (a sweep)."""
    if average_start is None:
        return state.params
    started = np.asarray(parallel.host_value(state.step)) >= average_start
    if started.ndim == 0:
        return state.average if started else state.params
    pick = lambda a, p: jnp.where(started.reshape(-1, *[1] * (p.ndim - 1)), a, p)  # noqa: E731
    return jax.tree.map(pick, state.average, state.params)


# ------------------------------------------------------------------ preparing a run


def _take_deprecated(given: dict) -> dict:
    unknown = sorted(set(given) - set(_DEPRECATED))
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    for name in given:
        warnings.warn(
            f"fit's `{name}` is deprecated and will be removed in the next release; use {_DEPRECATED[name]}.",
            DeprecationWarning,
            stacklevel=3,
        )
    return given


# Step counts, epochs and row indices are int32 inside the programs.
_MOST_COUNT = np.iinfo(np.int32).max


def _check_counts(rows: int, first_step: int, steps_per_epoch: int, epochs: int, *, stops: bool):
    """(epochs, capped): refuses a run whose rows or update count an int32
    cannot hold (the count would wrap, and with it the schedule, the average
    and the order). A run that a stopping rule may end early is only capped
    at the last epoch the count holds (scikit-learn's max_iter is often huge)."""
    if rows > _MOST_COUNT:
        raise ValueError(f"X has {rows} rows; at most {_MOST_COUNT} train in one run: split the table.")
    most = (_MOST_COUNT - first_step) // steps_per_epoch
    if epochs <= most:
        return epochs, False
    if stops:
        return most, True
    raise ValueError(
        f"`epochs` (={epochs}) would take the run to update {first_step + epochs * steps_per_epoch}, past the "
        f"{_MOST_COUNT} a step count holds: ask for at most {most} epochs, or larger batches."
    )


def _average_start(average) -> Optional[int]:
    if isinstance(average, (bool, np.bool_)):
        return 1 if average else None
    average = validate.check_int("average", average, low=0)
    return average or None


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else getattr(value, "__name__", type(value).__name__)


def _finite_in(value, dtype) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(np.asarray(value, dtype))))


def _reference_loss(loss, X, y, weight, epsilon, params: Params) -> float:
    """The larger of the mean losses of predicting zero and of `params`, over
    every row (weighted as training weighs them), in float64 and in blocks.
    Rows spread over other processes are judged by predicting zero alone."""
    n = y.shape[0]
    total_zero = total_start = 0.0
    readable = not isinstance(X, jax.Array) or X.is_fully_addressable
    w, b = (np.asarray(parallel.host_value(p), np.float64) for p in params)
    for start in range(0, n, _REFERENCE_ROWS):
        rows = slice(start, min(n, start + _REFERENCE_ROWS))
        y_b = np.asarray(parallel.host_value(y[rows]), np.float64)
        weight_b = 1.0 if weight is None else np.asarray(weight[rows], np.float64)[:, None]
        total_zero += float(np.sum(weight_b * np.asarray(loss.function(np.zeros_like(y_b), y_b, epsilon))))
        if readable:
            yhat = np.asarray(X[rows], np.float64) @ w + b
            with np.errstate(over="ignore", invalid="ignore"):
                entries = np.asarray(loss.function(yhat, y_b, epsilon), np.float64)
            total_start += float(np.sum(weight_b * entries))
    reference = max(total_zero, total_start if math.isfinite(total_start) else 0.0)
    return reference / (n * y.shape[1])


_REFERENCE_ROWS = 1 << 16


def _sample_weights(sample_weight, n, dtype, name="`sample_weight`") -> np.ndarray:
    weight = np.asarray(validate.as_array("sample_weight", sample_weight), dtype)
    if weight.shape != (n,):
        raise ValueError(f"{name} has shape {weight.shape}; it needs one weight per row, ({n},).")
    bad = np.flatnonzero(~(weight >= 0) | ~np.isfinite(weight))  # (NaN fails both)
    if bad.size:
        raise ValueError(f"{name} must be finite and >= 0: {bad.size} weight(s) are not, the first "
                         f"{float(weight[bad[0]]):g} at row {bad[0]} (counting from 0).")  # fmt: skip
    if n and not np.any(weight > 0):
        raise ValueError(f"{name} is 0 for every one of the {n} rows: no row counts, so there is nothing to fit.")
    return weight


def _placement(devices):
    """(device, mesh): one device to hold everything, or a mesh to split batches over."""
    if devices is None:
        return None, None
    if isinstance(devices, jax.Device):
        return devices, None
    if isinstance(devices, str):
        try:
            return jax.devices(devices)[0], None
        except RuntimeError:
            raise ValueError(f"`devices` (={devices!r}) names no available JAX platform.") from None
    if isinstance(devices, (bool, float)):
        raise TypeError(f"`devices` (={devices!r}) must be a device, a platform name, a count, a list or a Mesh.")
    if isinstance(devices, int) and devices > jax.device_count():
        raise ValueError(
            f"`devices` (={devices}) is more than the {jax.device_count()} device(s) JAX sees. On a CPU, "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before importing jax."
        )
    return None, parallel.data_mesh(devices)


def _device_data(X, y, weight, batch_size, device, mesh, validation) -> core.Data:
    """The rows where the program reads them, padded with zero-weight rows to a bucketed count.

    A large table is not padded (that would copy it): the program then
    compiles for its exact number of rows. A large 64-byte-aligned NumPy
    table on a CPU is not even copied: JAX uses its memory in place. A small
    NumPy table on a CPU stays NumPy, handed to each call of the program.
    """
    n = X.shape[0]
    global_rows = isinstance(X, jax.Array) and not X.is_fully_addressable
    N = core.padded_rows(n, batch_size)
    if isinstance(X, np.ndarray) and not _pads(X):
        X, y = _unpadded(X, device), _unpadded(y, device)
    elif (isinstance(X, np.ndarray) and X.nbytes <= _TRAVELLING_BYTES and device is None and mesh is None
          and parallel.platform() == "cpu"):  # fmt: skip
        # A small table on a CPU goes to the program with each call, in
        # NumPy: that costs 2-12 µs a call, a device_put 50-70 µs once.
        X, y = padded(X, N), padded(y, N)
    elif not global_rows:  # rows spread over processes are used as they are
        X, y = _padded(X, device, N), _padded(y, device, N)
    # Copies, padded or not: NumPy rows go to the program with each call, and
    # the caller's arrays may change between calls.
    w = None if weight is None else padded(weight, N)
    data = core.Data(X, y, w, core.on_device(np.int32(n)), validation)
    if mesh is not None:
        data = data._replace(X=X if global_rows else parallel.put_replicated(X, mesh),
                             y=y if global_rows else parallel.put_replicated(y, mesh))  # fmt: skip
        data = data._replace(weight=parallel.put_replicated(data.weight, mesh), n=parallel.put_replicated(data.n, mesh))
    elif device is not None:
        data = data._replace(weight=jax.device_put(data.weight, device), n=jax.device_put(data.n, device))
    else:
        data = data._replace(n=jnp.asarray(data.n) if global_rows else data.n)
    return data


def _padded(array, device, rows):
    """`array` on the device with zero rows up to `rows`.

    A host array is copied to the device padded, at no extra cost. A large
    jax.Array is used as it is (padding would copy it; the program then
    compiles for its exact number of rows). The padded copy of a small one is
    kept while the array lives: refitting the same data (a sweep by hand, the
    notebook) then costs no copy.
    """
    if isinstance(array, jax.Array) and not _pads(array):
        return array if device is None else jax.device_put(array, device)
    if not isinstance(array, jax.Array) or device is not None:
        return to_device(array, device, rows=rows)
    found = _padded_copies.get(array)
    if found is not None and found.shape[0] == rows:
        return found
    return _padded_copies.put(array, value=to_device(array, None, rows=rows))


def rows_on_device(array: np.ndarray, device=None):
    """Host rows on the device as `fit` keeps them: a large table as it is
    (in place where JAX can), a small one copied in pieces."""
    return to_device(array, device) if _pads(array) else _unpadded(array, device)


def _unpadded(array: np.ndarray, device):
    """A host array on the device as it is: in place where JAX can (a CPU
    device and 64-byte-aligned, C-ordered memory), else one copy."""
    if parallel.platform(device) == "cpu" and is_aligned(array):
        return jax.device_put(array, device)
    return to_device(array, device)


def _pads(array) -> bool:
    """Whether `fit` pads `array`'s rows to a bucketed count, in a copy: a small
    table, so that other row counts reuse its program; a large one is used as
    it is, in place where JAX can, and compiles for its exact count."""
    return array.nbytes <= _KEEP_PADDED_BYTES


_KEEP_PADDED_BYTES = 16 << 20
_TRAVELLING_BYTES = 1 << 20


_padded_copies = KeptWhileAlive()  # small jax Arrays -> their padded copies
_shuffle_keys = KeptWhileAlive()  # keys -> the shuffle keys split from them


def _validation_data(validation, d, k, dtype, device) -> core.Data:
    try:
        items = tuple(validation)
    except TypeError:
        items = ()
    if len(items) not in (2, 3):
        raise TypeError("`validation` must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight_val).")
    X_val, y_val, weight_val = (*items, None)[:3]
    try:
        X_val, y_val = validate.training_arrays(X_val, y_val)
    except (TypeError, ValueError) as err:  # its messages name X and y: say they are the validation rows'
        raise type(err)(f"`validation` (X_val, y_val): {err}") from None
    if X_val.shape[1] != d or y_val.shape[1] != k:
        raise ValueError(
            f"`validation` has {X_val.shape[1]} features and {y_val.shape[1]} outputs; the data has {d} and {k}."
        )
    m = X_val.shape[0]
    M = core.bucket(m)
    weight = None
    if weight_val is not None:
        weight = core.pad_rows(_sample_weights(weight_val, m, dtype, name="the validation rows' `sample_weight`"), M)
        weight = weight if device is None else jax.device_put(weight, device)
    return core.Data(to_device(X_val.astype(dtype), device, rows=M), to_device(y_val.astype(dtype), device, rows=M),
                     weight, np.int32(m))  # fmt: skip


def _check_state(state, rule, d, k, dtype) -> FitState:
    if not isinstance(state, FitState):
        raise TypeError(f"`state` (={validate._describe(state)}) must be a jaxlr.FitState, e.g. a FitResult's .state.")
    leaves, structure = jax.tree.flatten(state)
    want_structure, want_leaves = _state_leaves(rule, d, k, np.dtype(dtype))
    if structure == want_structure and all(isinstance(a, jax.Array) and (a.shape, a.dtype) == b for a, b in zip(leaves, want_leaves)):  # fmt: skip
        return state  # a state fit returned, kept as it is: what the checks below would find
    validate.check_params(state.params, d, k, name="state")
    like = _state_like(rule, d, k, np.dtype(dtype))
    _check_opt_state(state.opt_state, like.opt_state, d, k, "state")
    # A state fit returned (partial_fit's) is on the device in its dtypes already: kept as it is.
    keep = lambda a, b: a if isinstance(a, jax.Array) and a.dtype == b.dtype else jnp.asarray(a, b.dtype)  # noqa: E731
    return jax.tree.map(keep, state, like)


@functools.lru_cache(maxsize=32)
def _unkept_average(d, k, dtype) -> Params:
    """The average of a run that keeps none (NaN), made once for its shapes."""
    return Params(jnp.full((d, k), jnp.nan, dtype), jnp.full((k,), jnp.nan, dtype))


@functools.lru_cache(maxsize=32)
def _state_like(rule, d, k, dtype):
    """The shapes and dtypes of a fresh state of `rule` for d features and k outputs (nothing computed)."""
    return jax.eval_shape(lambda: init_fit_state(Params(jnp.zeros((d, k), dtype), jnp.zeros(k, dtype)), rule))


@functools.lru_cache(maxsize=32)
def _state_leaves(rule, d, k, dtype):
    """`_state_like`'s structure, and its leaves' shapes and dtypes."""
    leaves, structure = jax.tree.flatten(_state_like(rule, d, k, dtype))
    return structure, tuple((a.shape, a.dtype) for a in leaves)


def _check_opt_state(opt_state, like, d, k, name):
    """`opt_state` of the structure of `like` (a fresh state of the rule for d features and k outputs), each
    array of its shape."""
    if str(jax.tree.structure(like)) != str(jax.tree.structure(opt_state)):
        raise ValueError(f"`{name}` holds the state of another optimizer than `optimizer`.")
    for want, got in zip(jax.tree.leaves(like), jax.tree.leaves(opt_state)):
        if np.shape(got) != np.shape(want):
            raise ValueError(
                f"`{name}` holds an optimizer state of shape {np.shape(got)} where {d} feature(s) and {k} "
                f"output(s) need {np.shape(want)}."
            )


def _values_read(*functions) -> tuple:
    """What the user's functions among `functions` (a loss, a schedule) do
    and read, as `rule_value` gives it; jaxlr's own losses and the named
    schedules are keyed by themselves. A function whose values cannot be
    compared (a large array among them) is keyed by itself alone."""
    values = []
    for function, _ in map(_unwrapped, functions):
        if callable(function) and function not in losses.LOSSES.values():
            values.append(rule_value(function))
    return tuple(values)


def _unwrapped(function) -> tuple[Any, list]:
    """A loss or schedule under the wrappers of jaxlr.losses (a factor, an
    epsilon-less call), and the wrappers' factors (None where there is none)."""
    factors = []
    while hasattr(function, "function"):
        factors.append(getattr(function, "factor", None))
        function = function.function
    return function, factors


def _function_name(setting: str, name: str, function) -> str:
    """A loss or schedule as checkpoints record it: its name, and for a user's
    function a digest of what it does (its code and constants, the values it
    closes over and the plain values of the globals it reads). One whose
    values cannot be compared is refused: a checkpoint could not tell whether
    it resumes the same run."""
    if function in losses.LOSSES.values():
        return name
    function, parts = _unwrapped(function)
    value = rule_value(function)
    if value is None:
        raise ValueError(
            f"`{setting}` (={name!r}) closes over values that cannot be compared between runs, so a checkpoint "
            "could not tell whether it resumes the same run: use a function of plain numbers, or no `checkpoint`."
        )
    return f"{name} " + hashlib.sha256(repr((parts, value)).encode()).hexdigest()[:16]


def _digest_arrays(arrays) -> str:
    """A digest of arrays' shapes, dtypes and every byte, read a block of rows at a time."""
    digest = hashlib.blake2b(digest_size=16)
    for array in jax.tree.leaves(arrays):
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            # Rows spread over processes: each holds only its own, so only their shape is common.
            digest.update(repr(("global", array.shape, array.dtype.str)).encode())
            continue
        digest.update(repr((np.shape(array), np.dtype(array.dtype).str)).encode())
        rows = max(1, _DIGEST_BLOCK_BYTES // max(1, np.dtype(array.dtype).itemsize * int(np.prod(np.shape(array)[1:]))))
        for start in range(0, max(np.shape(array)[0] if np.ndim(array) else 1, 1), rows):
            block = array[start : start + rows] if np.ndim(array) else array
            digest.update(np.ascontiguousarray(parallel.host_value(block)).tobytes())
    return digest.hexdigest()


def data_digest(data, weight) -> str:
    """What identifies the rows a run trains on: a digest of every byte of X, y
    and the weights; for a stream, of its file's size and 64 blocks spread
    over it (any change to a sampled block, the size or the targets is seen)."""
    if isinstance(data, NpyStream):
        path, digest = data.path, hashlib.blake2b(digest_size=16)
        size = path.stat().st_size
        digest.update(repr((size, data.num_rows, data.x_columns, data.y_columns)).encode())
        if data._y is not None:  # targets held in memory
            digest.update(_digest_arrays([data._y]).encode())
        with open(path, "rb") as file:
            for start in sorted({size * i // 64 for i in range(64)}):
                file.seek(start)
                digest.update(file.read(_DIGEST_SAMPLE_BYTES))
        return digest.hexdigest() + _digest_arrays([] if weight is None else [weight])[:8]
    return _digest_arrays([*data, *([] if weight is None else [weight])])


_DIGEST_BLOCK_BYTES = 16 << 20
_DIGEST_SAMPLE_BYTES = 1 << 16


def _rule_name(rule) -> str:
    """The rule as checkpoints record it: its name, or for an optax
    transformation a digest of what it does (functions and hyperparameters)."""
    if isinstance(rule, str):
        return rule
    value = rule_value(rule)
    if value is None:  # closes over something without a value: its state's structure at least
        return repr(jax.tree.structure(rule.init(Params(jnp.zeros((1, 1)), jnp.zeros(1)))))
    return "optax " + hashlib.sha256(repr(value).encode()).hexdigest()[:16]


_sound = jax.jit(core.sound)  # one dispatch, where the function alone is one per array


def _shuffle_key(key):
    """The key of a run's orders where its params do not come from `key`: the
    second of its split, kept while `key` lives (`validate.check_key` gives
    one key object for the same words)."""
    found = _shuffle_keys.get(key)
    return found if found is not None else _shuffle_keys.put(key, value=_split(key)[1])


@jax.jit
def _split(key):
    return tuple(jax.random.split(key))


@functools.lru_cache(maxsize=16)
def _begin(rule, num_inputs, num_outputs, dtype, average, fit_intercept):
    """``(key, epochs) -> (fresh FitState, shuffle key, the epochs' key words)``
    as one compiled call: at the lesson's size, separate small dispatches cost
    as much as training."""

    def begin(key, epochs):
        init_key, shuffle_key = jax.random.split(key)
        params = init_params(init_key, num_inputs, num_outputs, dtype=dtype)
        if not fit_intercept:  # a model without an intercept has b = 0, which training then keeps
            params = params._replace(b=jnp.zeros_like(params.b))
        state = core._init_fit_state(rule, average).__wrapped__(params, epochs[0], jnp.int32(0))
        return state, shuffle_key, _fold_words.__wrapped__(shuffle_key, epochs)

    return jax.jit(begin)


def _epoch_words(shuffle_key, epochs: np.ndarray) -> np.ndarray:
    """The raw key words of each epoch's shuffle key, ``fold_in(shuffle_key, e)``, on the host."""
    # fold_in, not split: an epoch's key must not depend on how many epochs
    # ran before it, so that a run can resume at any epoch. The epochs are
    # padded to a bucketed count so that few programs compile.
    count = len(epochs)
    padded = np.zeros(core.bucket(max(count, 1)), np.int32)
    padded[:count] = epochs
    return np.asarray(_fold_words(shuffle_key, padded))[:count]


@jax.jit
def _fold_words(shuffle_key, epochs):
    return jax.random.key_data(jax.vmap(jax.random.fold_in, (None, 0))(shuffle_key, epochs))


# ------------------------------------------------------------------ checkpoints


# With `checkpoint_every=None`, the least time between two checkpoints: a
# save (write, fsync, rename) costs milliseconds, so a few percent at most.
CHECKPOINT_SECONDS = 1.0


class _Saving(NamedTuple):
    """What `fit` needs to write and to check checkpoints."""

    directory: Path
    every: Optional[int]
    key_words: np.ndarray
    settings: dict
    keepers: tuple = ()  # callbacks whose state is saved too

    @property
    def run(self) -> str:
        return checkpoint_lib.run_name(self.key_words, _as_saved(self.settings))

    def start(self, resume, overwrite, state_like):
        """The checkpoint to resume from, or None to start afresh; refuses
        what would quietly redo or discard work."""
        shown = str(self.directory)
        own = checkpoint_lib.files(self.directory, self.run)
        if resume:
            found = checkpoint_lib.latest(self.directory, state_like, self.run) if own else None
            if found is not None:
                self.check_matches(found, self.directory)
                return found
            if overwrite:
                return None
            if resume == "if_present" and not own:
                return None
            if not self.directory.is_dir():
                raise checkpoint_lib.CheckpointError(
                    f"`checkpoint` (={shown!r}) does not exist, so there is nothing to resume; "
                    "pass resume='if_present' to start afresh when there is nothing to resume."
                )
            others = checkpoint_lib.files(self.directory)
            if own:
                raise checkpoint_lib.CheckpointError(
                    f"`checkpoint` (={shown!r}) holds checkpoints of this run, but none is readable: pass "
                    "overwrite=True to replace them and start afresh."
                )
            if not others:
                raise checkpoint_lib.CheckpointError(
                    f"`checkpoint` (={shown!r}) holds no checkpoint, so there is nothing to resume; "
                    "pass resume='if_present' to start afresh when there is nothing to resume."
                )
            raise checkpoint_lib.CheckpointError(
                f"`checkpoint` (={shown!r}) holds no checkpoint of this run, only of {self._whose(others[0])}."
            )
        others = checkpoint_lib.files(self.directory)
        if others and not overwrite:
            whose = "this run" if own else self._whose(others[0])
            raise checkpoint_lib.CheckpointError(
                f"`checkpoint` (={shown!r}) already holds checkpoints of {whose}: pass resume=True to continue "
                "this run, or overwrite=True to start it afresh (other runs' checkpoints are kept)."
            )
        if overwrite:
            checkpoint_lib.discard(self.directory, self.run)
        return None

    def _whose(self, path) -> str:
        """Which other run wrote the checkpoint at `path`, told by how it differs from this one."""
        words, settings = checkpoint_lib.describe(path)
        if settings is None:
            return f"a run of another format ({path.name})"
        ours = _as_saved(self.settings)
        differ = sorted(name for name in set(ours) | set(settings) if settings.get(name) != ours.get(name))
        if differ:
            return f"a run with other settings ({_differences(differ, settings, ours)})"
        if not np.array_equal(words, self.key_words):
            return "a run with another `key`"
        return "this run"

    def check_matches(self, found, directory):
        if not np.array_equal(found.key_words, self.key_words):
            raise checkpoint_lib.CheckpointError(
                f"the checkpoint in {str(directory)!r} was written by a run with another `key`."
            )
        settings = _as_saved(self.settings)
        differ = sorted(name for name in set(settings) | set(found.settings) if found.settings.get(name) != settings.get(name))
        if differ:
            raise checkpoint_lib.CheckpointError(
                f"the checkpoint in {str(directory)!r} was written with other settings "
                f"({_differences(differ, found.settings, settings)})."
            )

    def restore(self, found) -> bool:
        """Gives the keepers their saved state; True when one of them had stopped the run."""
        for i, keeper in enumerate(self.keepers):
            prefix = f"{i}_"
            keeper.restore_checkpoint_state(
                {name[len(prefix):]: value for name, value in found.extras.items() if name.startswith(prefix)}
            )
        return any(bool(getattr(keeper, "stopped", False)) for keeper in self.keepers)

    def callback(self, first_epoch: int, end_epoch: int):
        """A fit callback that saves every `every` epochs (or `CHECKPOINT_SECONDS`),
        after the last, and when training stops."""
        last_save = [time.monotonic()]

        def save(epoch, result):
            done = epoch + 1
            stopped = bool(result.state.stop.done) or any(bool(getattr(k, "stopped", False)) for k in self.keepers)
            if self.every is None:
                due = time.monotonic() - last_save[0] >= CHECKPOINT_SECONDS
            else:
                due = (done - first_epoch) % self.every == 0
            if due or done >= end_epoch or stopped:
                extras = {f"{i}_{name}": value for i, keeper in enumerate(self.keepers)
                          for name, value in keeper.checkpoint_state().items()}  # fmt: skip
                saved = checkpoint_lib.Checkpoint(
                    epoch=done, state=jax.tree.map(parallel.host_value, result.state),
                    key_words=self.key_words, settings=self.settings, extras=extras,
                )  # fmt: skip
                checkpoint_lib.save(self.directory, saved)
                last_save[0] = time.monotonic()
            return False

        return save


def _differences(names, theirs: dict, ours: dict) -> str:
    parts = []
    for name in names:
        was, now = theirs.get(name), ours.get(name)
        if name in ("data", "init", "state", "validation") or len(repr(was)) + len(repr(now)) > 80:  # digests say nothing to a reader
            parts.append(f"{name} differs")
        else:
            parts.append(f"{name}={was!r}, now {now!r}")
    return "; ".join(parts)


def _as_saved(settings: dict) -> dict:
    """`settings` as they read back from a checkpoint's JSON (lists for tuples)."""
    return json.loads(json.dumps(settings, sort_keys=True))


# ------------------------------------------------------------------ sweep


class SweepResult(NamedTuple):
    """What `sweep` returns: one leading axis of size m, one entry per learning rate.

    Attributes:
        lrs: array of shape (m,).
        params: Params with w of shape (m, d, k) and b of shape (m, k).
        losses: array of shape (m, steps).
        moving_losses: array of shape (m, steps).
        diverged: bool array of shape (m,): True where a loss or the params
            stopped being finite (that run's params are then its last finite
            ones, not their average, as `TrainingDiverged.params`; its later
            losses are NaN).
    """

    lrs: jax.Array
    params: Params
    losses: jax.Array
    moving_losses: jax.Array
    diverged: jax.Array


def _renamed(old_name: str, name: str, old_value, value):
    """The value given under sweep's deprecated `old_name`, now `name`."""
    if value is not None:
        raise ValueError(f"give `{name}` or the old `{old_name}`, not both.")
    warnings.warn(f"sweep's `{old_name}` is deprecated and will be removed in the next release; use `{name}`.",
                  DeprecationWarning, stacklevel=3)  # fmt: skip
    return old_value


def sweep(X, y, *, key, lrs, epochs=2, batch_size=4, init=None, smoothing=0.01, devices=None, **settings) -> SweepResult:
    """Trains one model per learning rate, all at once, as one compiled program.

    The runs share the key, so they see the same initial params and the same
    batches in the same order; `jax.vmap` turns the m runs into one batched
    program. Run i equals ``fit(X, y, key=key, lr=lrs[i], ...)`` with the
    fused engine, and `settings` are any other of `fit`'s settings that do
    not end runs at different times (loss, epsilon, penalty, alpha,
    l1_ratio, schedule, power_t, average, sample_weight, shuffle,
    fit_intercept). Plain SGD only: an optax optimizer fixes its learning
    rate when it is built.

    Args:
        X, y, key, epochs, batch_size, init, smoothing, devices: as for
            `fit` (the old names `params` and `device` are deprecated, as
            they are for `fit`).
        lrs: 1-D sequence of m learning rates, each finite and > 0.

    Returns:
        SweepResult. A run that diverges does not stop the others: see `diverged`.

    Example:
        >>> lrs = jnp.logspace(-4, -1, 64)
        >>> result = sweep(X, y, key=jax.random.key(0), lrs=lrs)
        >>> best = jnp.argmin(result.moving_losses[:, -1])
    """
    rates = np.asarray(lrs, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"`lrs` must be a non-empty 1-D sequence, got shape {rates.shape}.")
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0)):
        raise ValueError(f"`lrs` must all be finite and > 0; got {rates[~(np.isfinite(rates) & (rates > 0))][:3]}.")
    if "params" in settings:
        init = _renamed("params", "init", settings.pop("params"), init)
    if "device" in settings:
        devices = _renamed("device", "devices", settings.pop("device"), devices)
    allowed = {"loss", "epsilon", "penalty", "alpha", "l1_ratio", "schedule", "power_t", "average", "sample_weight",
               "shuffle", "fit_intercept"}  # fmt: skip
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise TypeError(f"sweep() got an unexpected keyword argument {unknown[0]!r}")
    epochs = validate.check_int("epochs", epochs, low=1)
    schedule = settings.get("schedule", "constant")
    if schedule == "adaptive":
        raise ValueError("`schedule` (='adaptive') cuts the rate when a stopping rule sees an epoch without gain, "
                         "and a sweep runs none (its runs end together): sweep 'constant' or 'invscaling'.")  # fmt: skip
    if schedules.ignores_lr(schedule):  # `lrs` would change nothing
        raise ValueError(
            f"`schedule` (={_shown(schedule)}) sets the rates without `lr`, so the runs of `lrs` would all be one: "
            "sweep a schedule that scales `lr` (constant, invscaling)."
        )
    if isinstance(X, (np.memmap, NpyStream)):
        raise TypeError(f"`X` (={validate._describe(X)}) is read from disk in chunks, and a sweep trains on rows in "
                        "memory: load it with np.asarray(X) (or train each rate with fit).")  # fmt: skip
    # `fit` checks and prepares everything (the rates are set below); the sweep then vmaps its program.
    given = dict(key=key, epochs=epochs, lr=1.0, batch_size=batch_size, init=init,
                 smoothing=smoothing, devices=devices, **settings)  # fmt: skip
    _, run, state, *_ = _prepare(X, y, **{**_FIT_DEFAULTS, **given})
    dtype = run.data.X.dtype
    if not _finite_in(rates, dtype):
        raise ValueError(f"`lrs` must be finite in {np.dtype(dtype).name}, the data's precision; got {rates.max():.3g}.")
    m = rates.size
    floats, ints = run.numbers
    floats = np.repeat(np.asarray(floats)[None], m, axis=0)
    floats[:, core.packed_at("rate.eta0")] = rates  # the rate of each run
    states = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (m, *jnp.shape(leaf))), state)
    N = core.order_length(run.data, batch_size)
    if run.draw == "none":
        orders = np.broadcast_to(np.arange(N, dtype=np.int32), (epochs, N))
    else:
        orders = run.orders(0, epochs, N)
    final, (losses, moving, *_) = _sweep_program(run.spec)(states, run.data, (floats, ints), orders, np.int32(epochs))
    steps = run.steps_per_epoch
    losses = np.asarray(losses[:, :, :steps].reshape(m, -1))
    first = losses[:, 0]
    limit = math.inf
    if np.isfinite(first).any():

        def grew_past(limit):  # for each run
            return ~np.all(core.loss_ok(losses, limit) | np.isnan(losses), axis=1)

        first_loss = float(np.nanmax(np.where(np.isfinite(first), first, np.nan)))
        limit, _ = _growth(run, first_loss, state.params, lambda limit: bool(grew_past(limit).any()))
    grew = grew_past(limit) if math.isfinite(limit) else np.zeros(m, bool)
    if grew.any() or not bool(jnp.all(final.ok)):
        # Rare: the runs again with the guard on (and the loss limit), so that
        # each diverged run keeps its last good params.
        floats[:, core.packed_at("loss_limit")] = limit
        guarded = _sweep_program(run.spec._replace(guard=True))
        final, (losses, moving, *_) = guarded(states, run.data, (floats, ints), orders, np.int32(epochs))
        losses = np.asarray(losses[:, :, :steps].reshape(m, -1))
    moving = moving[:, :, :steps].reshape(m, -1)
    # A diverged run answers with its last good params, as `TrainingDiverged.params` does, not their average.
    diverged = ~final.ok
    last_good = lambda given, kept: jnp.where(diverged.reshape(-1, *[1] * (kept.ndim - 1)), given, kept)  # noqa: E731
    params = jax.tree.map(last_good, final.params, answer(final, _average_start(settings.get("average", False))))
    return SweepResult(jnp.asarray(rates.astype(dtype)), params, jnp.asarray(losses), moving, diverged)


@functools.lru_cache(maxsize=8)
def _sweep_program(spec):
    def one(state, data, packed, orders, num_epochs):
        return core.run_epochs(spec, core.unpack(packed), state, data, orders, num_epochs, keep_steps=True)

    # Each run has its own state and rate; data and orders are shared.
    return jax.jit(jax.vmap(one, in_axes=(0, None, (0, None), None, None)))


def clear_caches() -> None:
    """Frees every compiled program jaxlr keeps, and JAX's own caches.

    jaxlr keeps a bounded number of programs (by settings and shapes) so
    that refits compile nothing; a long-lived process that has trained many
    kinds of model can release them all here.
    """
    core.clear_caches()
    for cached in (optim._jitted_step, _begin, _sweep_program):
        cached.cache_clear()
    for kept in (_padded_copies, _shuffle_keys):
        kept.clear()
    for cached in (_remembered_settings, _state_leaves, _state_like):
        cached.cache_clear()
    jax.clear_caches()
    gc.collect()
    try:  # glibc keeps freed memory for reuse; hand it back to the system
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------ moving average


@jax.jit
def moving_average(losses, smoothing=0.01, initial=None):
    """The lesson's smoothed loss: ``m_t = (1 - s) m_{t-1} + s * loss_t``.

    The first value is the first loss itself (unless `initial`, the average
    carried over from earlier steps, is given), so the curve starts on the
    data rather than at zero.

    Args:
        losses: array of shape (steps,).
        smoothing: s, the weight of the newest loss.
        initial: optional moving average before the first of `losses`.

    Returns:
        Array of shape (steps,).
    """
    if losses.shape[0] == 0:
        return losses
    start = losses[0] if initial is None else jnp.asarray(initial, losses.dtype)
    return core.smooth(losses, smoothing, start)


def _print_log_line(epoch, batch, value):
    # str() of a NumPy scalar prints the digits its precision holds, no more.
    print(f"Epoch {epoch}, batch {batch}. Moving avg of loss: {value!s}")
