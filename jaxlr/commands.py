"""What the `jaxlr` command does once its arguments are parsed (see `jaxlr.cli`).

    train    SGD on a table or on the lesson's synthetic data
    solve    the closed-form fit of a table
    predict  a saved model applied to a table

`train` imports JAX as it starts (while the table is read, see
`jaxlr.cli`). `solve` and `predict` work on the host with NumPy and import
no JAX on a table (the lesson's synthetic data is drawn with it).
"""

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from jaxlr import cli
from jaxlr._interrupts import end_at_once
from jaxlr.arrays import DataError, aligned_empty
from jaxlr.cli import (
    LESSON_DEFAULTS,
    RAW_TABLE_DEFAULTS,
    SEED_TRUE_B,
    SEED_TRUE_W,
    SOLVE_DEFAULTS,
    TABLE_DEFAULTS,
    UsageError,
    _courtesy,
    _note,
    _warn,
    table_request,
)
from jaxlr.metrics import RunningMetrics, host_metrics
from jaxlr.params import Params
from jaxlr.persist import Model, atomic_write, load_model, save_model
from jaxlr.preprocessing import ColumnTooLarge, Standardizer, least_squares
from jaxlr.tables import load_table, reader_for


def run(args):
    """Runs the parsed command; returns its exit status."""
    return {"train": _train, "solve": _solve, "predict": _predict}[args.command](args)


@contextlib.contextmanager
def _configured_jax(args):
    """JAX as --x64 and --no-cache set it, for this command only: a command
    run in a process that goes on (`jaxlr.cli.main` from Python) leaves that
    process's JAX settings as it found them."""
    import jax

    from jaxlr import compilation_cache

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    before = {name: getattr(jax.config, name) for name in names}
    try:
        # float64 in this thread, for the command: the process's own setting
        # (or a `jax.enable_x64` block around the call) stays as it was.
        with jax.enable_x64(True) if args.x64 else contextlib.nullcontext():
            if args.no_cache:  # importing jaxlr.train turned the cache on (see jaxlr.compilation_cache)
                compilation_cache.use_compilation_cache(None)
            yield
    finally:
        changed = {name: value for name, value in before.items() if getattr(jax.config, name) != value}
        for name, value in changed.items():
            jax.config.update(name, value)
        if changed:
            from jax.experimental.compilation_cache import compilation_cache as jax_cache

            jax_cache.reset_cache()  # the next compile opens the cache as it was


# ------------------------------------------------------------------ data


class _Split:
    """Training and validation rows, standardized with the training rows' statistics.

    The training rows are copied once, a block at a time, into a buffer of
    their own in the training dtype, and standardized there; on a CPU the
    device then uses that buffer as it is. With the table it came from, a
    table costs about twice its size in memory, at the peak. The training
    targets are kept in their own units too, for the metrics.

    With `standardized=False` (the closed form, which scales in float64 on
    its own) the training rows stay as the table holds them, with no copy
    when none are held out; the statistics are still taken, for the model.
    """

    def __init__(self, table, args, split_words, *, standardized=True):
        X, y, weight = table.X, table.y, table.weight
        if y is None:
            raise DataError("--target is required with --data.")
        if X.shape[0] == 0:
            raise DataError(f"{args.data} has no rows.")
        self.rows = X.shape[0]
        if weight is not None and not np.any(weight > 0):
            raise DataError(f"--sample-weight: every row has weight 0 ({X.shape[0]} rows): nothing to fit.")
        weight = _relative(weight)
        val_X = val_y = val_weight = unsplit = None
        if args.val_fraction:
            from jaxlr.callbacks import MIN_VALIDATION_ROWS, validation_rows

            num_val = validation_rows(X.shape[0], args.val_fraction)
            # Early stopping asked for by name keeps its split, however small.
            asked = "early_stopping" not in args.defaulted and getattr(args, "early_stopping", 0) > 0  # (solve has none)
            if not 1 <= num_val < X.shape[0]:
                if "val_fraction" not in args.defaulted:
                    raise DataError(f"--val-fraction {args.val_fraction} of {X.shape[0]} rows leaves an empty split.")
                if asked:
                    raise DataError(f"--early-stopping {args.early_stopping} judges a validation split, which the "
                                    f"default --val-fraction {args.val_fraction} leaves empty in {X.shape[0]} rows: "
                                    "give a larger --val-fraction, or leave --early-stopping out.")  # fmt: skip
            if num_val < MIN_VALIDATION_ROWS and "val_fraction" in args.defaulted and not asked:
                # A handful of held-out rows judges early stopping by noise: it
                # would stop at the first epochs and blame the learning rate.
                unsplit = (f"{X.shape[0]} rows are too few for the default validation split: a fraction of "
                           f"{args.val_fraction} holds out {num_val}, fewer than the {MIN_VALIDATION_ROWS} rows that "
                           f"judge early stopping; training on all of them for {args.epochs} epochs, without early "
                           "stopping (--val-fraction F holds out a split all the same).")  # fmt: skip
                args.val_fraction = 0.0
                if hasattr(args, "early_stopping"):
                    args.early_stopping = 0
        kept = None
        if args.val_fraction:
            from jaxlr.shuffle import permutation_from_words

            # The keyed permutation `jaxlr.data.permutation` draws, on the host, without JAX.
            held = np.sort(permutation_from_words(split_words, X.shape[0])[:num_val])
            val_X, val_y = X[held], y[held]
            if weight is not None:
                # The held-out rows are judged with their weights, as training weighs its rows.
                val_weight = weight[held]
                if not np.any(val_weight > 0):
                    raise DataError(f"--sample-weight: every validation row has weight 0 ({num_val} rows held out), "
                                    "so none would score the model: hold out more rows (--val-fraction) or use "
                                    "--val-fraction 0.")  # fmt: skip
            kept = np.ones(X.shape[0], bool)  # a mask, not indices: an eighth of the memory
            kept[held] = False
            y, weight = y[kept], None if weight is None else weight[kept]
        if weight is not None and not np.any(weight > 0):
            raise DataError(f"--sample-weight: every training row has weight 0 ({y.shape[0]} rows left after "
                            f"--val-fraction {args.val_fraction} held out the others): nothing to fit.")  # fmt: skip
        scaling = None if args.target_scaling == "none" else args.target_scaling
        # A table's features are centred at least, in float64: training casts
        # to float32 only after. The lesson's own data is used as it comes.
        features = True if args.standardize else ("center" if args.data is not None else False)
        dtype = np.float64 if args.x64 else np.float32
        self.standardized = standardized
        if not standardized:
            self.X = X if kept is None else X[kept]
            self.scaler = Standardizer.fit(self.X, y, features=features, target=scaling)
        elif X.dtype == dtype:
            # The training rows go straight into their own buffer, standardized there.
            train = _gather(X, kept, aligned_empty((y.shape[0], X.shape[1]), dtype))
            self.scaler = Standardizer.fit(train, y, features=features, target=scaling)
            self.X = self.scaler.transform(train, dtype=dtype, out=train)
        else:  # centred in the table's own precision (float64) before the cast
            train = X if kept is None else X[kept]
            self.scaler = Standardizer.fit(train, y, features=features, target=scaling)
            with np.errstate(over="ignore"):
                self.X = self.scaler.transform(train, dtype=dtype, out=aligned_empty(train.shape, dtype))
            if not np.isfinite(self.X).all():
                raise DataError(f"{args.data} has a feature value beyond the range of float32 even after "
                                "centring: use --standardize, or --x64.")  # fmt: skip
        if standardized:
            del train
        self.mean, self.scale = self.scaler.x_mean, self.scaler.x_scale
        self.y = self.scaler.transform_target(y).astype(dtype)
        self.y_original, self.weight = y, weight
        self.val_X = None if val_X is None else self.scaler.transform(val_X)
        self.val_y, self.val_weight = val_y, val_weight
        self.val_y_scaled = None if val_y is None else self.scaler.transform_target(val_y)
        # Training starts from the mean: zero weights, the intercept at the
        # (transformed) target's mean. The lesson's random start puts the
        # first predictions far off on correlated features.
        k = self.y.shape[1]
        self.start = Params(np.zeros((X.shape[1], k), dtype), self.y.mean(axis=0, dtype=np.float64).astype(dtype))
        if unsplit:  # said once the rows are known to be usable: an error is then the only line
            _note(unsplit)

    def placed(self, mesh, engine):
        """The training rows where `fit` takes them.

        Across processes (`mesh`), each process's equal share of the same
        split, as global arrays; rows that do not split evenly go whole to
        every process instead (the same model, for more memory). In one
        process, on the device, a piece at a time, the host copy let go; the
        loop engine steps through host rows, which stay.
        """
        import jax

        from jaxlr import parallel
        from jaxlr.train import rows_on_device

        if mesh is not None:
            if self.X.shape[0] % jax.process_count():
                return self.X, self.y
            rows = parallel.local_rows(self.X.shape[0])
            return parallel.global_rows(self.X[rows], mesh), parallel.global_rows(self.y[rows], mesh)
        if engine != "loop":
            # Both: `fit` checks a pair on the device in one pass; a host y would
            # have it read X back to the host. A large X goes whole (on a CPU, in
            # place: it is aligned for that); `fit` pads only small ones.
            self.X, self.y = rows_on_device(self.X), rows_on_device(self.y)
        return self.X, self.y

    def train_metrics(self, model, trained):
        """Training MSE and R², in the target's units.

        Args:
            model: the model, for rows on the host.
            trained: the params as trained (on the scaled target), for rows
                on the device: the predictions are made there, in one product.
        """
        running = RunningMetrics()
        predict = _on_standardized if self.standardized else _on_original
        if not isinstance(self.X, np.ndarray):  # on the device: predicted there, in one product
            import jax.numpy as jnp

            w, b = (jnp.asarray(p, self.X.dtype) for p in trained)
            scaled = np.asarray(self.X @ w + b[None, :])  # predictions of the scaled target

            def predict(model, predicted):
                return self.scaler.inverse_target(predicted)
        else:
            scaled = self.X
        # A block at a time: float64 copies of a large table's predictions stay a few MB.
        for start in range(0, self.rows_trained, _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            weight = None if self.weight is None else self.weight[start:stop]
            running.add(predict(model, scaled[start:stop]), self.y_original[start:stop], weight)
        return running.result("train_")

    @property
    def rows_trained(self):
        return self.X.shape[0]


_BLOCK_ROWS = 1 << 16


def _gather(array, kept, out):
    """The rows of `array` that the mask `kept` keeps (all when None), written into `out` a block at a time."""
    filled = 0
    for start in range(0, array.shape[0], _BLOCK_ROWS):
        block = array[start : start + _BLOCK_ROWS]
        if kept is not None:
            block = block[kept[start : start + _BLOCK_ROWS]]
        out[filled : filled + block.shape[0]] = block
        filled += block.shape[0]
    return out


def _on_standardized(model, X):
    """The model's predictions for rows already standardized with its statistics."""
    w, b = (np.asarray(p, np.float64) for p in model.params)
    return np.asarray(X, np.float64) @ w + b


def _on_original(model, X):
    """The model's predictions for rows in the table's own units."""
    w, b = model.coefficients()
    return np.asarray(X, np.float64) @ w + b


def _load(args):
    """The training table: from --data (read ahead when the command could), or the lesson's synthetic data."""
    request = table_request(args)
    if request is None:
        from jaxlr.data import synthetic_data

        X, y = synthetic_data(_keys(args)[0], true_w=SEED_TRUE_W, true_b=SEED_TRUE_B)
        from jaxlr.tables import Table

        return Table(np.asarray(X, np.float64), np.asarray(y, np.float64), ("x0", "x1"), "y"), True
    table = args.read_ahead.table(request) if getattr(args, "read_ahead", None) else None
    return _noted(load_table(**request) if table is None else table), False


def _noted(table):
    """Tells the user how the table was read (columns left out), one line each."""
    for note in table.notes:
        _note(note)
    return table




def _key_words(args):
    """The words of three keys from --seed: the synthetic data's, the validation split's, and training's.

    They come from NumPy's SeedSequence on the host: deriving them with eager
    jax.random calls would compile three small programs, a tenth of a second
    of a fresh process's start.
    """
    return np.random.SeedSequence(args.seed % 2**64).generate_state(6, np.uint32).reshape(3, 2)


def _keys(args):
    """The three keys of `_key_words`, as JAX keys."""
    import jax

    return tuple(jax.random.wrap_key_data(pair) for pair in _key_words(args))


# ------------------------------------------------------------------ commands


def _settle_defaults(args):
    """Fills the options left unset with the defaults of the job at hand (see LESSON_DEFAULTS)."""
    raw = getattr(args, "stream", False)
    defaults = LESSON_DEFAULTS if args.data is None else RAW_TABLE_DEFAULTS if raw else TABLE_DEFAULTS
    if args.command == "solve":
        defaults = dict(defaults, **SOLVE_DEFAULTS)
    args.defaulted = set()
    for name, value in defaults.items():
        if getattr(args, name, "absent") is None:
            setattr(args, name, value)
            args.defaulted.add(name)
    if "early_stopping" in args.defaulted and not args.val_fraction:
        args.early_stopping = 0


def _refuse_what_does_not_apply(args):
    """Options given that this run would not use, refused by name (they would be ignored)."""
    given = getattr(args, "given", set())
    unused = {
        "alpha": args.penalty == "none" and args.schedule != "optimal" and (
            "sets the penalty's strength, and --penalty is none (the default; scikit-learn's is l2): give "
            "--penalty l2, l1 or elasticnet"),
        "l1_ratio": args.penalty != "elasticnet" and (
            f"is the L1 share of --penalty elasticnet, and --penalty is {args.penalty}: give --penalty elasticnet"),
        "power_t": args.schedule != "invscaling" and (
            f"is the exponent of --schedule invscaling, and --schedule is {args.schedule}: give --schedule invscaling"),
        "epsilon": args.loss == "squared" and (
            "is the margin of the huber and epsilon-insensitive losses, and --loss is squared: give one of those"),
        "chunk_mb": not args.stream and "sets the size of the chunks --stream reads: give --stream",
        "peer_timeout": not args.coordinator and "is how long processes wait for each other: give --coordinator",
    }  # fmt: skip
    for name, why in unused.items():
        if why and name in given:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} {why}, or leave it out.")


# --schedule adaptive divides the rate by 5 after this many epochs in a row
# whose training loss fell by less than the tol (scikit-learn's defaults).
ADAPTIVE_TOL, ADAPTIVE_PATIENCE = 1e-3, 5


def _train(args):
    # JAX and the training code load here (a second or more), while the table is read (see jaxlr.cli).
    with end_at_once():
        import jaxlr.train  # noqa: F401

    with _configured_jax(args):
        return _trained(args)


def _trained(args):
    import jax

    from jaxlr.callbacks import EarlyStopping, Progress
    from jaxlr.losses import MARGIN_FRACTION, default_margin, margin_warning
    from jaxlr.train import fit

    _settle_defaults(args)
    _refuse_what_does_not_apply(args)
    if args.schedule == "optimal":
        if "lr" not in args.defaulted:
            raise UsageError(f"--lr {args.lr} would set no rate: --schedule optimal takes its rates from --alpha. "
                             "Leave --lr out.")  # fmt: skip
        args.lr = None  # and the model file records none
    for option in ("resume", "resume_if_present", "overwrite", "checkpoint_every"):
        if getattr(args, option) and not args.checkpoint:
            raise UsageError(f"--{option.replace('_', '-')} needs --checkpoint DIR.")
    if sum(map(bool, (args.resume, args.resume_if_present, args.overwrite))) > 1:
        raise UsageError("give one of --resume, --resume-if-present and --overwrite.")
    if args.early_stopping and not args.val_fraction:
        raise UsageError("--early-stopping needs --val-fraction to measure improvement.")
    plot_ready = _check_plotting(args.plot)
    mesh = _scale_out(args)
    fit_key = _keys(args)[2]
    split_words = _key_words(args)[1]
    if args.stream:
        table, is_seed_job, split = _streamed(args)
        rows = split.X, split.y
    else:
        # One process or many, the same split, scaling and start: every
        # process reads the whole table and makes the same choices.
        failure = None
        try:
            table, is_seed_job = _load(args)
            read = None if mesh is None else _what_was_read(table)  # before the split, which may scale X in place
            with _naming_columns(table):
                split = _Split(table, args, split_words)
        except _COMMAND_ERRORS as err:
            if mesh is None:
                raise
            failure = err  # told to the other processes first, which would wait for this one forever
        if mesh is not None:
            _agree_across_processes(args, None if failure else read, None if failure else split, failure)
        table = table._replace(X=None, y=None, weight=None)  # the split holds what training needs
        rows = split.placed(mesh, args.engine)
    if "batch_size" in args.defaulted:
        args.batch_size = min(args.batch_size, split.rows_trained)
    show_lines = not (args.quiet or args.json)
    stopper = None
    if args.early_stopping:
        stopper = EarlyStopping(args.early_stopping, split.val_X, split.val_y_scaled, split.val_weight)
    bar = Progress(args.epochs, enabled=not args.quiet)
    lines = None
    if show_lines and not is_seed_job and bar.bar is None:
        lines = _EpochLines(args.epochs)
    y_scale = split.scaler.y_scale[0] if hasattr(split, "scaler") else 1.0
    if args.epsilon is None:
        on_table = not is_seed_job and getattr(split, "y_original", None) is not None
        args.epsilon = default_margin(split.y_original) if on_table else MARGIN_FRACTION

    start = time.perf_counter()
    try:
        result = fit(
            *rows, key=fit_key, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, optimizer=args.optimizer, engine=args.engine,
            loss=args.loss, epsilon=args.epsilon / y_scale,
            penalty=args.penalty,
            alpha=args.alpha, l1_ratio=args.l1_ratio, schedule=args.schedule, power_t=args.power_t,
            average=args.average, sample_weight=split.weight,
            # The adaptive rate is cut by fit's own rule on the training loss, with scikit-learn's defaults.
            **(dict(tol=ADAPTIVE_TOL, n_iter_no_change=ADAPTIVE_PATIENCE) if args.schedule == "adaptive" else {}),
            verbose=show_lines and is_seed_job,
            callback=[stopper, bar if bar.bar is not None else None, lines],
            checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, overwrite=args.overwrite,
            resume="if_present" if args.resume_if_present else args.resume, devices=mesh,
            init=None if is_seed_job else split.start,
        )  # fmt: skip
        jax.block_until_ready(result)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    params = result.params if stopper is None or stopper.best is None else stopper.best_params
    model = _model(
        params, split, table,
        {
            "command": "train", "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
            "optimizer": args.optimizer, "engine": args.engine, "seed": args.seed,
            "loss": args.loss, "epsilon": args.epsilon, "penalty": args.penalty, "alpha": args.alpha,
            "l1_ratio": args.l1_ratio, "schedule": args.schedule, "power_t": args.power_t,
            "average": args.average, "sample_weight": args.sample_weight,
            "standardize": args.standardize, "target_scaling": args.target_scaling,
            "val_fraction": args.val_fraction, "early_stopping": args.early_stopping,
            "x64": args.x64, "checkpoint": args.checkpoint,
        },
    )  # fmt: skip
    report = _report(model, split, args, elapsed, params, table)
    moving = np.asarray(result.moving_losses)
    # A resumed run that had nothing left to train reports where its checkpoint stood.
    last_moving = float(moving[-1]) if moving.size else float(np.asarray(result.state.moving))
    report["final_moving_loss"] = None if math.isnan(last_moving) else last_moving
    report["loss_units"] = "standardized target" if args.target_scaling == "scale" else "target"
    report["epochs_run"] = args.epochs if stopper is None else stopper.epochs_seen
    # The epoch this command started training at: 0, or where a resumed checkpoint stood.
    report["first_epoch"] = int(np.asarray(result.state.epoch)) - len(np.asarray(result.epoch_losses))
    if stopper is not None:
        report["best_epoch"] = stopper.best_epoch
        report["early_stopped"] = stopper.stopped
    if is_seed_job:
        report["true_w"], report["true_b"] = list(SEED_TRUE_W), [SEED_TRUE_B]
    plot = plot_ready(result, model, split, args.plot) if args.plot else None
    if jax.process_index() == 0:  # every process holds the same model; one writes it
        _write_outputs(args, model, plot)
        _print_report(report, args)
        _warn_if_worse_than_the_mean(report, args)
        margin = margin_warning(args.loss, args.epsilon, math.sqrt(report["train_mse"]))
        if margin:
            _warn(margin)
    return 0


class _EpochLines:
    """Progress without a terminal: a line for the first epoch and at most 20 more."""

    def __init__(self, epochs, most=20):
        self.every = max(1, -(-epochs // most))
        self.epochs = epochs

    def __call__(self, epoch, result):
        if epoch == 0 or (epoch + 1) % self.every == 0:
            losses = np.asarray(result.epoch_losses)
            if losses.size:
                print(f"Epoch {epoch + 1}/{self.epochs}. Mean loss: {float(losses[-1]):.4g}", flush=True)
        return False


def _scale_out(args):
    """Joins a multi-process run when asked to; returns its mesh, or None."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT.")
        return None
    if args.num_processes is None or args.process_id is None:
        raise UsageError("--coordinator needs --num-processes and --process-id.")
    for option in ("plot", "stream", "checkpoint"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} is not available across processes.")
    from jaxlr import parallel
    from jaxlr.engines import plan

    refused = plan.across_processes(args.engine, args.num_processes)
    if refused is not None:
        raise UsageError(f"--engine {args.engine} cannot run {refused}.")

    # The collectives library prints connection notes on the process's
    # standard output; send them to stderr, and keep stdout for the results.
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), 1)
    parallel.initialize(args.coordinator, args.num_processes, args.process_id, timeout=args.peer_timeout,
                        settings=_shared_settings(args))  # fmt: skip
    if args.process_id != 0:  # process 0 speaks for the run; the others say only their errors
        cli._speaks, args.quiet = False, True
    import jax

    return parallel.data_mesh(jax.devices())


# What each process may set its own way: where it finds the table, its
# output, and how it reaches process 0. The columns are compared once read,
# by what they hold (--target 3 and --target y may name the same one).
_OWN_SETTINGS = {"data", "save", "quiet", "json", "no_cache", "plot", "coordinator", "process_id", "peer_timeout",
                 "given", "defaulted", "read_ahead", "target", "features", "drop", "categorical", "max_categories"}  # fmt: skip
_COMMAND_ERRORS = (cli.UsageError, DataError, ValueError, TypeError, OSError)  # what `cli.main` reports in a line


def _shared_settings(args):
    """The options every process of a run must share, as `--name: value`; first, whether it reads a table."""
    return {"--data": bool(args.data), **{f"--{name.replace('_', '-')}": value for name, value in vars(args).items()
                                           if name not in _OWN_SETTINGS}}  # fmt: skip


def _what_was_read(table):
    """Digests of the table's numbers and of its columns' names, as 16 numbers each (bytes), one after the other."""
    from jaxlr.train import data_digest

    columns = json.dumps([list(table.feature_names), table.target_name]).encode()
    return np.concatenate([np.frombuffer(bytes.fromhex(data_digest((table.X, table.y), table.weight)), np.uint8)[:16],
                           np.frombuffer(hashlib.blake2b(columns, digest_size=16).digest(), np.uint8)])  # fmt: skip


def _agree_across_processes(args, read, split, failure):
    """Refuses, in every process alike, a run whose processes read different
    tables or columns (`read`, from `_what_was_read`), or settled an option
    by the table differently (one given --batch-size 32, one defaulting to
    the table's rows); and tells the others when one failed to read or split
    its table (raising its own error here), where they would otherwise wait
    for it forever."""
    from jaxlr import parallel

    # What each process tells the others, in this order: whether it read its
    # table (1) or failed (0), the table's digest, the columns', what it settled.
    table, columns, settled = slice(1, 17), slice(17, 33), ("--batch-size", "--val-fraction", "--early-stopping",
                                                            "training rows")  # fmt: skip
    if failure is not None:
        mine = np.zeros(columns.stop + len(settled))
    else:
        batch_size = min(args.batch_size, split.rows_trained) if "batch_size" in args.defaulted else args.batch_size
        mine = np.concatenate([[1.0], read, [batch_size, args.val_fraction or 0.0, args.early_stopping or 0,
                                             split.rows_trained]])  # fmt: skip
    every = parallel.every_process(mine)
    if failure is not None:
        raise failure
    failed = [i for i in range(len(every)) if every[i, 0] == 0]
    if failed:
        raise DataError(f"{_processes(failed)} stopped on an error reading or splitting --data (see its message).")
    ours = every[0]
    for i, theirs in enumerate(every[1:], start=1):
        if not np.array_equal(theirs[columns], ours[columns]):
            raise DataError(f"process {i} chose other columns than process 0 (its --target, --features, --drop, "
                            "--categorical, --max-categories, or its table's header): give every process the same.")  # fmt: skip
        if not np.array_equal(theirs[table], ours[table]):
            raise DataError(f"process {i} read another table from --data than process 0 (its rows, targets or "
                            "weights differ): give every process the same table.")  # fmt: skip
        for name, their, our in zip(settled, theirs[columns.stop :], ours[columns.stop :]):
            if their != our:
                raise UsageError(
                    f"process {i} settled {name} at {their:g}, process 0 at {our:g}: one was given it, the other "
                    f"took its default for this table. Give {name} to every process, or to none."
                )


def _processes(ids):
    return f"process{'es' * (len(ids) > 1)} {', '.join(map(str, ids))}"


class _Whole:
    """Training rows used as they come: no validation split, no scaling."""

    def __init__(self, X, y, rows, num_features, chunks):
        self.X, self.y, self.rows, self.weight = X, y, rows, None
        self.scaler = Standardizer(np.zeros(num_features), np.ones(num_features), np.zeros(1), np.ones(1))
        self.mean, self.scale = self.scaler.x_mean, self.scaler.x_scale
        self.val_X = self.val_y = self.val_y_scaled = self.val_weight = self.start = None
        self.rows_trained = rows
        self.host_chunks = chunks

    def train_metrics(self, model, trained=None):
        """Training MSE and R² over rows that arrive in chunks, in one pass."""
        running = RunningMetrics()
        for X, y in self.host_chunks():
            for start in range(0, X.shape[0], _BLOCK_ROWS):  # float64 temporaries of a few MB
                stop = start + _BLOCK_ROWS
                running.add(model.predict(X[start:stop]), y[start:stop])
        return running.result("train_")


def _streamed(args):
    """A .npy table read from disk in chunks, never whole."""
    from jaxlr.data import NpyStream
    from jaxlr.tables import Table

    for option in ("val_fraction", "standardize", "early_stopping", "plot", "sample_weight", "drop", "categorical"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs the data in memory; it cannot go with --stream.")
    if args.target_scaling != "none":
        raise UsageError("--target-scaling needs the data in memory; it cannot go with --stream.")
    if args.data is None or not reader_for(args.data).streams:
        raise UsageError("--stream reads a .npy matrix: give --data FILE.npy.")
    if args.target is None or not args.target.strip().isdigit():
        raise UsageError("--stream needs --target as a 0-based column index.")
    features = None
    if args.features is not None:
        features = cli.column_list(args.features)
        if not all(f.isdigit() for f in features):
            raise UsageError(f"--stream needs --features as 0-based column indices, got {args.features!r}.")
        features = [int(f) for f in features]
    stream = NpyStream(args.data, target=int(args.target), features=features, chunk_bytes=args.chunk_mb << 20)
    if args.x64 and np.dtype(stream.dtype).itemsize < 8:
        raise UsageError(f"--x64 computes in float64, but a stream trains in its file's precision, and {args.data} holds "
                         f"{np.dtype(stream.dtype).name}: save it as float64, or leave --x64 out.")  # fmt: skip
    chunk_rows = max(1, (args.chunk_mb << 20) // stream.row_bytes)

    def chunks():
        for start in range(0, stream.num_rows, chunk_rows):
            yield stream.read(start, min(start + chunk_rows, stream.num_rows))

    names = tuple(str(c) for c in stream.x_columns)
    table = Table(X=None, y=None, feature_names=names, target_name=args.target.strip())
    return table, False, _Whole(stream, None, stream.num_rows, stream.num_features, chunks)


def _relative(weight):
    """The rows' weights scaled to a mean of 1: a table's weights are relative
    (counts, populations). In `fit` their size would scale each step, so
    that weights of 100 diverged where weights of 1 trained; least squares
    and the weighted metrics do not depend on it."""
    if weight is None:
        return None
    weight = weight / np.max(weight)  # first: the mean of weights near float64's largest would overflow
    return weight / np.mean(weight)


@contextlib.contextmanager
def _naming_columns(table):
    """A column too large for float64's statistics, named as the table names it."""
    try:
        yield
    except ColumnTooLarge as err:
        names = table.feature_names if err.array == "X" else (table.target_name,)
        if err.column >= len(names):
            raise
        raise DataError(str(ColumnTooLarge(err.array, err.column, f"column {names[err.column]!r}"))) from None


def _solve(args):
    _settle_defaults(args)
    table, is_seed_job = _load(args)
    with _naming_columns(table):
        split = _Split(table, args, _key_words(args)[1], standardized=False)
        table = table._replace(X=None, y=None, weight=None)
        start = time.perf_counter()
        # In float64 on the table as it is, then as the params of the standardized
        # rows on the scaled target that the model file holds (see _model).
        params = split.scaler.to_standardized(Params(*least_squares(split.X, split.y_original, split.weight)))
    elapsed = time.perf_counter() - start
    model = _model(
        params, split, table,
        {"command": "solve", "seed": args.seed, "standardize": args.standardize,
         "target_scaling": args.target_scaling, "val_fraction": args.val_fraction, "x64": args.x64},
    )  # fmt: skip
    report = _report(model, split, args, elapsed, params, table)
    if is_seed_job:
        report["true_w"], report["true_b"] = list(SEED_TRUE_W), [SEED_TRUE_B]
    _write_outputs(args, model, None)
    _print_report(report, args)
    _warn_if_worse_than_the_mean(report, args)
    return 0


def _predict(args):
    args.target = cli.column_name(args.target)
    model = load_model(args.model)
    path = Path(args.data)
    if args.target is not None and args.target in model.feature_names:
        raise UsageError(f"--target {args.target!r} is one of the model's features, not a target to score against.")
    if model.encoding is not None and reader_for(path).read is not None:
        # The model's own columns, encoded as in training; the table's others are not read.
        # Rows to score often leave the model's target blank: they are
        # predicted all the same. A --target asked for must hold numbers.
        table = _noted(load_table(path, target=_predict_target(args, model, path), encoding=model.encoding,
                                  target_optional=args.target is None))  # fmt: skip
        X = table.X
    else:
        table = _noted(load_table(path, target=args.target))
        table = _held_target(table, model, path) if args.target is None else table
        X = _match_features(table, model, path)
    predictions = model.predict(X)
    report = {"command": "predict", "rows": int(X.shape[0]), "output": args.output}
    if table.y is not None:
        report["target"] = table.target_name
        report.update(host_metrics(predictions, table.y))
    if args.json and not args.output:
        report["predictions"] = predictions.tolist()
    if args.output:
        atomic_write(args.output, lambda file: file.write(_predictions_csv(model, predictions).encode()))
    elif not args.json:
        _courtesy.product = True  # the predictions on stdout are what was asked for
        sys.stdout.write(_predictions_csv(model, predictions))
    if args.json:
        print(json.dumps(report))
    else:
        if args.output:
            print(f"{report['rows']} predictions written to {args.output}")
        if "mse" in report:
            print(f"against {report['target']}: MSE = {report['mse']:.4g}, R^2 = {_r2_shown(report)}", file=sys.stderr)
    return 0


def _predict_target(args, model, path):
    """--target, or else the model's target when the table has that column (to report the error)."""
    if args.target is not None or len(model.target_names) != 1:
        return args.target
    from jaxlr.tables import column_names

    return model.target_names[0] if model.target_names[0] in column_names(path) else None


def _predictions_csv(model, predictions):
    buffer = io.StringIO()
    # The csv module quotes a name such as "price,usd"; a plain join would split it.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(model.target_names)
    writer.writerows([repr(float(v)) for v in row] for row in predictions)
    return buffer.getvalue()


def _held_target(table, model, path):
    """The table with the model's target column taken out of its features, when it holds one.

    Predicting on the table a model was trained on then works as it is, and
    reports the error against the target it holds.
    """
    target = model.target_names[0] if len(model.target_names) == 1 else None
    names = list(table.feature_names)
    if target is None or target not in names or target in model.feature_names:
        return table
    if reader_for(path).positional and not set(model.feature_names) <= set(names):
        return table  # columns named by position, not from the model's own table: nothing to match
    j = names.index(target)
    keep = [i for i in range(len(names)) if i != j]
    return table._replace(X=table.X[:, keep], y=table.X[:, j : j + 1], feature_names=tuple(names[i] for i in keep),
                          target_name=target)  # fmt: skip


def _model(params, split, table, settings):
    """The model file's contents: params on the host, the standardization, the names.

    Params trained on a scaled target are turned back into the target's own
    units, so that the model file predicts it directly; in float64, for an
    intercept near a target's mean of 1e9 would be rounded to 64 in float32.
    """
    if all(isinstance(p, np.ndarray) for p in params):
        w, b = params
    else:
        from jaxlr.parallel import host_value

        w, b = (np.asarray(host_value(p)) for p in params)
    params = Params(w, b)
    if np.any(split.scaler.y_mean != 0) or np.any(split.scaler.y_scale != 1):
        params = split.scaler.target_part().to_original(params)
    return Model(
        params=params,
        x_mean=split.mean,
        x_scale=split.scale,
        feature_names=table.feature_names,
        target_names=(table.target_name,),
        settings=settings,
        encoding=getattr(table, "encoding", None),
    )


def _match_features(table, model, path):
    """The table's features in the model's order; refuses any difference.

    A table whose columns are named by position (.npy, .npz) gives the
    model's columns by those positions when the model was trained on such a
    table (its other columns are not read, as a CSV's are not); for a model
    of a named table, it holds just the model's features, in order.
    """
    d = len(model.feature_names)
    have, need = list(table.feature_names), list(model.feature_names)
    positional = reader_for(path).positional
    if positional and not all(str(name).isdigit() for name in need):
        if table.X.shape[1] != d:
            raise DataError(f"{path.name} has {table.X.shape[1]} feature columns; the model needs {d}.")
        return table.X
    missing = [name for name in need if name not in have]
    extra = [] if positional else [name for name in have if name not in need]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks the model's feature column(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"has column(s) the model was not trained on: {', '.join(map(repr, extra))}")
        raise DataError(f"{path.name} does not match the model: it {'; and it '.join(parts)}.")
    return table.X[:, [have.index(name) for name in need]]


# ------------------------------------------------------------------ reports


def _report(model, split, args, elapsed, trained, table=None):
    w, b = model.coefficients()
    report = {
        "command": model.settings["command"],
        "rows": split.rows,
        "features": list(model.feature_names),
        "target": model.target_names[0],
        "w": w[:, 0].tolist(),
        "b": float(b[0]),
        "elapsed_s": round(elapsed, 4),
        "model": args.save,
    }
    if getattr(table, "columns", ()):
        report["columns"] = list(table.columns)  # every column left out or transformed, and why
    if getattr(args, "sample_weight", None) is not None:
        report["metrics_weighted_by"] = args.sample_weight  # the MSE and R² below weigh rows by this column
    report.update(split.train_metrics(model, trained))
    if split.val_X is not None:
        report["val_rows"] = int(split.val_X.shape[0])
        report.update(host_metrics(_on_standardized(model, split.val_X), split.val_y, "val_", split.val_weight))
    return report


def _print_report(report, args):
    if args.json:
        print(json.dumps(report))
        return
    if "w" in report:
        w = np.array(report["w"])
        line = f"learned w = {np.array2string(w, precision=4)}"
        print(line + (f"   true w = {report['true_w']}" if "true_w" in report else ""))
        line = f"learned b = {report['b']:.4f}"
        print(line + (f"   true b = {report['true_b'][0]}" if "true_b" in report else ""))
    if report.get("final_moving_loss") is not None:
        units = " (on the standardized target)" if report.get("loss_units") == "standardized target" else ""
        print(f"final moving loss = {report['final_moving_loss']:.3g}{units}")
    for split in ("train", "val"):
        if f"{split}_mse" in report:
            name = "training" if split == "train" else "validation"
            weighted = f" (rows weighted by {report['metrics_weighted_by']!r})" if "metrics_weighted_by" in report else ""
            print(f"{name} MSE = {report[f'{split}_mse']:.4g}, R^2 = {_r2_shown(report, f'{split}_')}{weighted}")
    if report.get("best_epoch") is not None:
        if report["early_stopped"]:
            print(f"early stopping: stopped after {report['epochs_run']} epochs, {args.early_stopping} without a "
                  f"lower validation MSE; kept epoch {report['best_epoch'] + 1}")  # fmt: skip
        else:
            print(f"early stopping: did not stop, all {report['epochs_run']} epochs ran; kept epoch "
                  f"{report['best_epoch'] + 1}, the best on validation")  # fmt: skip
    if "elapsed_s" in report:
        print(f"elapsed = {report['elapsed_s']:.2f} s (compilation included)")
    if report.get("model"):
        print(f"model saved to {report['model']}")


def _r2_shown(report, prefix=""):
    """The R² of a report as a line shows it: undefined where the target is constant."""
    if f"{prefix}r2_undefined" in report:
        return "undefined (the target is constant)"
    return f"{report[f'{prefix}r2']:.4f}"


def _warn_if_worse_than_the_mean(report, args):
    """One warning line when the model predicts worse than the target's mean."""
    worse = [name for key, name in (("train_r2", "training"), ("val_r2", "validation")) if report.get(key, 0) < 0]
    if not worse:
        return
    tries = []
    streamed = getattr(args, "stream", False)  # a stream is trained as it is stored: neither option goes with it
    if not args.standardize and not streamed:
        tries.append("--standardize")
    if args.target_scaling != "scale" and not streamed:
        tries.append("--target-scaling scale")
    if args.command == "train":
        if report.get("early_stopped") and report.get("best_epoch") == 0:
            # Not the learning rate's fault: the held-out rows never saw an improvement.
            tries.append(f"--early-stopping 0 (it kept the first epoch: the validation MSE on {report['val_rows']} "
                         "rows never fell)")  # fmt: skip
        elif report.get("early_stopped") is False or "early_stopped" not in report:
            tries.append(f"more --epochs (ran {report['epochs_run']})")
        from jaxlr.callbacks import MIN_VALIDATION_ROWS

        if report.get("val_rows", MIN_VALIDATION_ROWS) < MIN_VALIDATION_ROWS:
            tries.append(f"a larger --val-fraction (validation R^2 on {report['val_rows']} rows is mostly noise)")
        if args.lr is None:
            tries.append(f"another --alpha (was {args.alpha}), which sets the 'optimal' schedule's rates")
        elif not (report.get("early_stopped") and report.get("best_epoch") == 0):
            tries.append(f"another --lr (was {args.lr})")
    scores = ", ".join(f"{name} R^2 = {report[key]:.3g}" for key, name in (("train_r2", "training"), ("val_r2", "validation")) if key in report)
    advice = f"; try {', '.join(tries)}" if tries else ""
    _warn(f"the model predicts worse than the target's mean ({scores}){advice}.")


# ------------------------------------------------------------------ plots and files

PLOT_FORMATS = ("png", "pdf", "svg")


def _check_plotting(path):
    """Fails before training, not after it, when a plot cannot be made."""
    if path is None:
        return None
    extension = Path(path).suffix.lower().lstrip(".")
    if extension not in PLOT_FORMATS:
        raise UsageError(f"--plot {path!r}: the file name must end in .png, .pdf or .svg (the format to write).")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'jaxlr[plot]'.") from None
    return _plot


def _plot(result, model, split, path):
    """The loss curve and predicted against actual, as the bytes of the file's format."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    losses, moving = np.asarray(result.losses), np.asarray(result.moving_losses)
    steps = np.arange(1, losses.shape[0] + 1)
    left.semilogy(steps, losses, lw=0.3, alpha=0.4, label="batch loss")
    left.semilogy(steps, moving, lw=1.5, label="moving average")
    left.set_xlabel("step")
    left.set_ylabel("loss" + (" (standardized target)" if np.any(split.scaler.y_scale != 1) else ""))
    left.legend()
    if split.val_X is not None:
        X, y, title = split.val_X, split.val_y, "validation"
    else:
        X, y, title = split.X[:_BLOCK_ROWS], split.y_original[:_BLOCK_ROWS], "training"
    predicted = _on_standardized(model, X)[:, 0]
    right.scatter(y[:, 0], predicted, s=3, alpha=0.4)
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    right.plot([low, high], [low, high], "k--", lw=1)
    right.set_xlabel(f"actual {model.target_names[0]}")
    right.set_ylabel("predicted")
    right.set_title(f"{title} rows")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lower().lstrip("."), dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _write_outputs(args, model, plot):
    """Writes the files last, each atomically: an error before here writes nothing."""
    if args.save:
        save_model(args.save, model)
    if plot is not None:
        atomic_write(args.plot, lambda file: file.write(plot))
