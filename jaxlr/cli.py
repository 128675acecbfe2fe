"""The `jaxlr` command: train, solve and predict on tables, from the shell.

    jaxlr train                              the lesson's job on its synthetic data
    jaxlr train --data t.csv --target price  SGD on a table, with --save, --plot, ...
    jaxlr solve --data t.csv --target price  the closed-form fit
    jaxlr predict --model m.npz --data new.csv --output preds.csv

Errors a user can cause print one line, ``jaxlr: error: ...``, and exit with
status 2, writing no file; a diverging run exits with status 1.
"""

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import compilation_cache
from jaxlr.callbacks import MIN_VALIDATION_ROWS, EarlyStopping, Progress
from jaxlr.losses import MARGIN_FRACTION, default_margin, margin_warning
from jaxlr.data import DataError, aligned_empty, synthetic_data
from jaxlr.tables import MAX_CATEGORIES, load_table, reader_for
from jaxlr.metrics import RunningMetrics, host_metrics
from jaxlr.model import Params
from jaxlr.persist import Model, ModelFileError, atomic_write, load_model, save_model
from jaxlr.preprocessing import Standardizer
from jaxlr.solve import solve
from jaxlr.train import TrainingDiverged, fit

SEED_TRUE_W = (2.0, -3.4)
SEED_TRUE_B = 4.2
DEFAULT_PEER_TIMEOUT = 60.0  # seconds a process of a multi-process run waits for the others


class UsageError(Exception):
    """Bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print the usage and a second line; we print one.
        raise UsageError(message)


def run():
    """The `jaxlr` command: runs `main` and ends the process with its status.

    A finished run leaves with `os._exit`, skipping the interpreter's
    teardown: unloading JAX takes about 0.2 s, a fifth of the lesson's whole
    job from a fresh process. Every file is closed by then and the output is
    flushed here. A process of a multi-process run exits normally instead, so
    that JAX can take it out of the cluster.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # the reader went away; nothing more can be said
        pass
    if jax.distributed.is_initialized():
        sys.exit(status)
    os._exit(status)


# The status of a command whose standard output is its product (predictions)
# when the reader goes away, as for a process killed by SIGPIPE.
BROKEN_PIPE_STATUS = 141


class _Courtesy:
    """Standard output that a reader may stop reading (`jaxlr train ... | head -1`).

    The files a command writes are its product and its report on stdout a
    courtesy: once the reader has gone, what is printed goes nowhere and the
    work carries on to its end.
    """

    def __init__(self):
        self.broken = False
        self.product = False  # whether stdout carries the command's product

    def write(self, stream, method, *args):
        if self.broken:
            return None
        try:
            return getattr(stream, method)(*args)
        except BrokenPipeError:
            self.broken = True
            # Later writes and the final flush then find a sink, not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            return None


_courtesy = _Courtesy()


class _CourteousStream:
    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return _courtesy.write(self._stream, "write", text)

    def flush(self):
        return _courtesy.write(self._stream, "flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    global _speaks
    _speaks = True  # until this run joins a multi-process run as a process other than 0
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train", *argv]  # `jaxlr` alone runs the lesson's job
    args = None
    stdout = sys.stdout
    sys.stdout = _CourteousStream(stdout)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = _parser().parse_args(argv)
            _check_destinations(args)
            _configure_jax(args)
            status = args.command(args)
    except TrainingDiverged as err:
        print(f"jaxlr: error: {_diverged(err, args)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout is guarded; this is another pipe, e.g. stderr
        return BROKEN_PIPE_STATUS
    except (UsageError, DataError, ModelFileError, ValueError, TypeError, OSError) as err:
        print(f"jaxlr: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxlr: interrupted", file=sys.stderr)
        return 130
    finally:
        if sys.stdout.__class__ is _CourteousStream:
            sys.stdout = stdout
    return BROKEN_PIPE_STATUS if _courtesy.broken and _courtesy.product else status


def _diverged(err, args):
    """The divergence message, without advice the run already follows."""
    text = _one_line(err)
    if args is not None and getattr(args, "standardize", False):
        text = re.sub(r",? or standardize the features[^.]*", "", text)
    return text.replace("`lr`", "--lr")


def _one_line(err):
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror}: {err.filename!r}"
    return " ".join(text.split())


# ------------------------------------------------------------------ arguments


def _typed(convert, check, what):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_count = _typed(int, lambda v: v >= 0, "a whole number >= 0")
_positive_int = _typed(int, lambda v: v >= 1, "a whole number >= 1")
_positive = _typed(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_holdout = _typed(float, lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
_nonnegative = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_unit = _typed(float, lambda v: 0 <= v <= 1, "a number between 0 and 1")
_finite = _typed(float, math.isfinite, "a finite number")


# The lesson's job keeps the lesson's settings; a table of one's own gets
# settings that converge on typical tables without tuning (measured on
# scikit-learn's diabetes data, clean and ill-conditioned synthetic tables and
# a target far from zero): standardized features and target, SGD at 0.01 on
# batches of 32, and up to 200 epochs ended by early stopping on a tenth of the
# rows. A streamed run cannot standardize nor hold rows out yet; it uses its
# rows as they are, for 10 epochs.
LESSON_DEFAULTS = dict(epochs=2, lr=0.001, batch_size=4, standardize=False, target_scaling="none",
                       val_fraction=0.0, early_stopping=0)  # fmt: skip
TABLE_DEFAULTS = dict(epochs=200, lr=0.01, batch_size=32, standardize=True, target_scaling="scale",
                      val_fraction=0.1, early_stopping=5)  # fmt: skip
RAW_TABLE_DEFAULTS = dict(TABLE_DEFAULTS, epochs=10, standardize=False, target_scaling="none",
                          val_fraction=0.0, early_stopping=0)  # fmt: skip


# What `solve` changes of the table defaults: the closed form needs no held-out rows to stop.
SOLVE_DEFAULTS = dict(val_fraction=0.0)


def _default(name, lesson=None, table=None, raw=None, command="train"):
    """Help text for an option whose default depends on the job (and on the command)."""
    lesson = LESSON_DEFAULTS[name] if lesson is None else lesson
    table = TABLE_DEFAULTS[name] if table is None else table
    raw = RAW_TABLE_DEFAULTS[name] if raw is None else raw
    if command == "solve":
        table = SOLVE_DEFAULTS.get(name, table)
        lesson = SOLVE_DEFAULTS.get(name, lesson)
        if lesson == table:
            return f"default: {table}"
        return f"default: {table} with --data, {lesson} for the lesson's job"
    text = f"default: {table} with --data, {lesson} for the lesson's job"
    return text + (f", {raw} with --stream" if raw != table else "")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one; the job-dependent ones say theirs in words."""

    def _get_help_string(self, action):
        # `is`, not `in`: a default of 0 (--seed, --average) equals False and must still show.
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _data_options(command):
    """The options that read a table, with the defaults of `command` ("train" or "solve") in their help."""
    data = _Parser(add_help=False)
    data.add_argument("--data", metavar="FILE", help="a CSV with a header row (also .csv.gz, .csv.bz2, ...) or a "
                      "Parquet file (both with the tables extra: pip install 'jaxlr[tables]'), a .npy matrix, or a .npz "
                      "with X and y (default: the lesson's synthetic data)")  # fmt: skip
    data.add_argument("--target", metavar="COL", help="target column: a name, or a 0-based index")
    data.add_argument("--features", metavar="COLS", help="comma-separated feature columns (default: every other column "
                      "that can be one: numbers, dates as days since 1970-01-01, text of few values one-hot encoded)")  # fmt: skip
    data.add_argument("--categorical", metavar="COLS", help="comma-separated columns to one-hot encode whatever they hold "
                      "(default: text columns of at most --max-categories values)")  # fmt: skip
    data.add_argument("--drop", metavar="COLS", help="comma-separated columns to leave out (default: none)")
    data.add_argument("--max-categories", type=_positive_int, default=MAX_CATEGORIES, metavar="N",
                      help="the most values a text column may hold to be one-hot encoded without --categorical")
    data.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                      help="scale the features to mean 0, sd 1 with the training split's statistics ("
                      + _default("standardize", "off", "on", "off", command=command) + ")")  # fmt: skip
    data.add_argument("--target-scaling", choices=("none", "center", "scale"), default=None,
                      help="train on the target minus its mean ('center'), also divided by its sd ('scale'), or as it "
                      "is; the model file predicts in the target's own units (" + _default("target_scaling", command=command) + ")")  # fmt: skip
    data.add_argument("--val-fraction", type=_holdout, metavar="F",
                      help="hold out this fraction of rows for validation, 0 for none (" + _default("val_fraction", command=command) + ")")
    data.add_argument("--seed", type=int, default=0, help="seed for the data split, initialisation and shuffling")
    data.add_argument("--save", metavar="MODEL.npz", help="write the model file here")
    return data


def _parser():
    parser = _Parser(
        prog="jaxlr", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Linear regression from scratch, in JAX.",
        epilog="With no command, jaxlr runs `jaxlr train`: alone, the lesson's job (SGD on its synthetic data);\n"
               "options given without a command are train's (`jaxlr --epochs 5` is `jaxlr train --epochs 5`).\n"
               "`jaxlr COMMAND --help` shows a command's options and their defaults.",
    )  # fmt: skip
    from jaxlr import __version__

    parser.add_argument("--version", action="version", version=f"jaxlr {__version__}")
    sub = parser.add_subparsers(title="commands", parser_class=_Parser)
    Formatter = _Help

    common = _Parser(add_help=False)
    common.add_argument("--x64", action="store_true", help="compute in float64")
    common.add_argument("--quiet", action="store_true", help="no progress lines or bar")
    common.add_argument("--json", action="store_true", help="print one JSON object with the results")
    common.add_argument("--no-cache", action="store_true", help="do not use the persistent compilation cache")

    train = sub.add_parser("train", parents=[_data_options("train"), common], formatter_class=Formatter,
                           help="train by SGD (the lesson's job without --data; what jaxlr runs with no command)")  # fmt: skip
    train.add_argument("--epochs", type=_count, help="passes over the training rows, the most with early stopping ("
                       + _default("epochs") + ")")  # fmt: skip
    train.add_argument("--lr", type=_positive, help="learning rate (" + _default("lr") + ")")
    train.add_argument("--batch-size", type=_positive_int, help="rows per step (" + _default("batch_size") + "; "
                       "the default never exceeds the number of training rows)")  # fmt: skip
    train.add_argument("--engine", choices=("fused", "loop", "scan", "auto"), default="fused",
                       help="fused: the whole run as one compiled program; loop: a jitted step in a Python loop; "
                            "scan: the fused run with each epoch's steps in parallel time (squared loss, sgd, "
                            "momentum or nesterov); auto: fused or scan, whichever was measured faster")  # fmt: skip
    train.add_argument("--optimizer", choices=("sgd", "momentum", "nesterov", "adam"), default="sgd",
                       help="the update rule")
    train.add_argument("--loss", choices=("squared", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"),
                       default="squared", help="the loss per example (see jaxlr.losses)")
    train.add_argument("--epsilon", type=_nonnegative,
                       help="margin of the huber and epsilon-insensitive losses, in the target's units (default: "
                       f"{MARGIN_FRACTION} x the training target's standard deviation with --data, {MARGIN_FRACTION} "
                       "for the lesson's job)")  # fmt: skip
    train.add_argument("--penalty", choices=("none", "l2", "l1", "elasticnet"), default="none",
                       help="penalty on the weights")
    train.add_argument("--alpha", type=_nonnegative, default=0.0001, help="strength of the penalty")
    train.add_argument("--l1-ratio", type=_unit, default=0.15, help="L1 share of the elastic net")
    train.add_argument("--schedule", choices=("constant", "optimal", "invscaling", "adaptive"), default="constant",
                       help="learning-rate schedule (see jaxlr.schedules)")
    train.add_argument("--power-t", type=_finite, default=0.25, help="exponent of the invscaling schedule")
    train.add_argument("--average", type=_count, nargs="?", const=1, default=0, metavar="T0",
                       help="return the average of the params over the updates (from update T0, 1 if T0 is left out; "
                       "0: no averaging)")  # fmt: skip
    train.add_argument("--sample-weight", metavar="COL", help="a column of per-row weights (not used as a feature)")
    train.add_argument("--early-stopping", type=_count, metavar="N",
                       help="stop after N epochs without a lower validation MSE and keep the best params; 0 never "
                       "stops early (" + _default("early_stopping") + ")")  # fmt: skip
    train.add_argument("--plot", metavar="FILE", help="write the loss curve and predicted against actual here, "
                       "as PNG, PDF or SVG by the file's extension")  # fmt: skip
    train.add_argument("--checkpoint", metavar="DIR",
                       help="save the run here (atomically); a directory holding checkpoints needs --resume, "
                            "--resume-if-present or --overwrite")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                       help="save every N epochs (default: at most once a second, and after the last epoch)")
    train.add_argument("--stream", action="store_true", help="read a .npy table from disk in chunks (data larger than memory)")
    train.add_argument("--chunk-mb", type=_positive_int, default=64, help="chunk size for --stream, in MB")
    train.add_argument("--coordinator", metavar="HOST:PORT", help="train across processes: the address of process 0")
    train.add_argument("--num-processes", type=_positive_int, metavar="P",
                       help="how many processes take part (with --coordinator)")
    train.add_argument("--process-id", type=_count, metavar="I",
                       help="this process's index, 0 to P-1; process 0 reports and writes the files (with --coordinator)")
    train.add_argument("--peer-timeout", type=_positive, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
                       help="how long a process waits for the others to start (with --coordinator)")
    train.add_argument("--resume", action="store_true",
                       help="continue this run from its newest good checkpoint in --checkpoint (which must hold one)")
    train.add_argument("--resume-if-present", action="store_true",
                       help="like --resume, but start afresh when --checkpoint holds no checkpoint of this run")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh, deleting this run's checkpoints in --checkpoint (other runs' are kept)")
    train.set_defaults(command=_train)

    closed = sub.add_parser("solve", parents=[_data_options("solve"), common], formatter_class=Formatter,
                            help="fit in closed form (least squares)")  # fmt: skip
    closed.set_defaults(command=_solve)

    predict = sub.add_parser("predict", parents=[common], formatter_class=Formatter,
                             help="apply a saved model to a table")  # fmt: skip
    predict.add_argument("--model", required=True, metavar="MODEL.npz", help="a model file written by --save")
    predict.add_argument("--data", required=True, metavar="FILE", help="the table to predict for")
    predict.add_argument("--target", metavar="COL", help="the table's target column, to report the error "
                         "(default: the model's target, when the table has that column)")  # fmt: skip
    predict.add_argument("--output", metavar="CSV", help="write predictions here (default: standard output)")
    predict.set_defaults(command=_predict)
    return parser


def _configure_jax(args):
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.no_cache:  # `import jaxlr` turned the cache on (see jaxlr.compilation_cache)
        compilation_cache.use_compilation_cache(None)


# ------------------------------------------------------------------ data


class _Split:
    """Training and validation rows, standardized with the training rows' statistics.

    The training rows are copied once, a block at a time, into a buffer of
    their own in the training dtype, and standardized there; on a CPU the
    device then uses that buffer as it is. With the table it came from, a
    table costs about twice its size in memory, at the peak. The training
    targets are kept in their own units too, for the metrics.
    """

    def __init__(self, table, args, key):
        X, y, weight = table.X, table.y, table.weight
        if y is None:
            raise DataError("--target is required with --data.")
        if X.shape[0] == 0:
            raise DataError(f"{args.data} has no rows.")
        self.rows = X.shape[0]
        val_X = val_y = unsplit = None
        if args.val_fraction:
            num_val = int(round(args.val_fraction * X.shape[0]))
            if not 1 <= num_val < X.shape[0]:
                if "val_fraction" not in args.defaulted:
                    raise DataError(f"--val-fraction {args.val_fraction} of {X.shape[0]} rows leaves an empty split.")
            if num_val < MIN_VALIDATION_ROWS and "val_fraction" in args.defaulted:
                # A handful of held-out rows judges early stopping by noise: it
                # would stop at the first epochs and blame the learning rate.
                unsplit = (f"{X.shape[0]} rows are too few to hold out a validation split of {MIN_VALIDATION_ROWS} "
                           f"rows: training on all of them for {args.epochs} epochs, without early stopping.")  # fmt: skip
                args.val_fraction = 0.0
                if "early_stopping" in args.defaulted:
                    args.early_stopping = 0
        kept = None
        if args.val_fraction:
            from jaxlr.data import permutation

            held = np.sort(np.asarray(permutation(key, X.shape[0]))[:num_val])
            val_X, val_y = X[held], y[held]
            kept = np.ones(X.shape[0], bool)  # a mask, not indices: an eighth of the memory
            kept[held] = False
            y, weight = y[kept], None if weight is None else weight[kept]
        scaling = None if args.target_scaling == "none" else args.target_scaling
        # A table's features are centred at least, in float64: training casts
        # to float32 only after. The lesson's own data is used as it comes.
        features = True if args.standardize else ("center" if args.data is not None else False)
        dtype = np.float64 if args.x64 else np.float32
        if X.dtype == dtype:
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
        del train
        self.mean, self.scale = self.scaler.x_mean, self.scaler.x_scale
        self.y = self.scaler.transform_target(y).astype(dtype)
        self.y_original, self.weight = y, weight
        self.val_X = None if val_X is None else self.scaler.transform(val_X)
        self.val_y = val_y
        self.val_y_scaled = None if val_y is None else self.scaler.transform_target(val_y)
        # Training starts from the mean: zero weights, the intercept at the
        # (transformed) target's mean. The lesson's random start puts the
        # first predictions far off on correlated features.
        k = self.y.shape[1]
        self.start = Params(np.zeros((X.shape[1], k), dtype), self.y.mean(axis=0, dtype=np.float64).astype(dtype))
        if unsplit:  # said once the rows are known to be usable: an error is then the only line
            _note(unsplit)

    def to_device(self):
        """Moves the training rows to the device, a piece at a time, and lets the host copy go."""
        from jaxlr.train import rows_on_device

        # Both: `fit` checks a pair on the device in one pass; a host y would
        # have it read X back to the host. A large X goes whole (on a CPU, in
        # place: it is aligned for that); `fit` pads only small ones.
        self.X, self.y = rows_on_device(self.X), rows_on_device(self.y)

    def train_metrics(self, model, trained):
        """Training MSE and R², in the target's units.

        Args:
            model: the model, for rows on the host.
            trained: the params as trained (on the scaled target), for rows
                on the device: the predictions are made there, in one product.
        """
        running = RunningMetrics()
        if isinstance(self.X, jax.Array):
            w, b = (jnp.asarray(p, self.X.dtype) for p in trained)
            scaled = np.asarray(self.X @ w + b, np.float64)
            running.add(scaled * self.scaler.y_scale + self.scaler.y_mean, self.y_original)
            return running.result("train_")
        for start in range(0, self.rows_trained, _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            running.add(_on_standardized(model, self.X[start:stop]), self.y_original[start:stop])
        return running.result("train_")

    def process_share(self, mesh):
        """The training rows for a run across processes, as global arrays:
        each process gives its equal share of the same split. Rows that do
        not split evenly go whole to every process instead: the same model,
        for more memory."""
        from jaxlr import parallel

        if self.X.shape[0] % jax.process_count():
            return self.X, self.y
        rows = parallel.local_rows(self.X.shape[0])
        return parallel.global_rows(self.X[rows], mesh), parallel.global_rows(self.y[rows], mesh)

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


def _load(args):
    """The training table: from --data, or the lesson's synthetic data."""
    features = None if args.features is None else _names(args.features)
    if args.data is None:
        given = [f"--{name.replace('_', '-')}" for name in ("target", "features", "sample_weight", "categorical", "drop")
                 if getattr(args, name, None) is not None]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --data.")
        X, y = synthetic_data(_keys(args)[0], true_w=SEED_TRUE_W, true_b=SEED_TRUE_B)
        from jaxlr.tables import Table

        return Table(np.asarray(X, np.float64), np.asarray(y, np.float64), ("x0", "x1"), "y"), True
    target = args.target
    if target is None:
        if not args.data.lower().endswith(".npz"):
            raise UsageError("--data needs --target (a column name or 0-based index).")
        target = "y"  # a .npz table's target is its array y
    weight = getattr(args, "sample_weight", None)
    table = load_table(args.data, target=target, features=features, weight=weight, categorical=_names(args.categorical),
                       drop=_names(args.drop), max_categories=args.max_categories)  # fmt: skip
    return _noted(table), False


def _names(text):
    """A comma-separated list of column names, as a list (empty for None)."""
    return [] if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _noted(table):
    """Tells the user how the table was read (columns left out), one line each."""
    for note in table.notes:
        _note(note)
    return table


# False in the processes of a multi-process run other than process 0.
_speaks = True


def _note(text):
    """A remark for the user (not a problem): one line on stderr."""
    if _speaks:
        print(f"jaxlr: note: {' '.join(str(text).split())}", file=sys.stderr)


def _keys(args):
    """Three keys from --seed: the synthetic data's, the validation split's, and training's.

    Their words come from NumPy's SeedSequence on the host: deriving them with
    eager jax.random calls would compile three small programs, a tenth of a
    second of a fresh process's start.
    """
    words = np.random.SeedSequence(args.seed % 2**64).generate_state(6, np.uint32)
    return tuple(jax.random.wrap_key_data(pair) for pair in words.reshape(3, 2))


# ------------------------------------------------------------------ commands


def _settle_defaults(args):
    """Fills the options left unset with the defaults of the job at hand (see LESSON_DEFAULTS)."""
    raw = getattr(args, "stream", False)
    defaults = LESSON_DEFAULTS if args.data is None else RAW_TABLE_DEFAULTS if raw else TABLE_DEFAULTS
    if args.command is _solve:
        defaults = dict(defaults, **SOLVE_DEFAULTS)
    args.defaulted = set()
    for name, value in defaults.items():
        if getattr(args, name, "absent") is None:
            setattr(args, name, value)
            args.defaulted.add(name)
    if "early_stopping" in args.defaulted and not args.val_fraction:
        args.early_stopping = 0


def _train(args):
    _settle_defaults(args)
    for option in ("resume", "resume_if_present", "overwrite", "checkpoint_every"):
        if getattr(args, option) and not args.checkpoint:
            raise UsageError(f"--{option.replace('_', '-')} needs --checkpoint DIR.")
    if sum(map(bool, (args.resume, args.resume_if_present, args.overwrite))) > 1:
        raise UsageError("give one of --resume, --resume-if-present and --overwrite.")
    if args.early_stopping and not args.val_fraction:
        raise UsageError("--early-stopping needs --val-fraction to measure improvement.")
    plot_ready = _check_plotting(args.plot)
    mesh = _scale_out(args)
    _, split_key, fit_key = _keys(args)
    if args.stream:
        table, is_seed_job, split = _streamed(args)
        rows = split.X, split.y
    else:
        # One process or many, the same split, scaling and start: every
        # process reads the whole table and makes the same choices.
        table, is_seed_job = _load(args)
        split = _Split(table, args, split_key)
        table = table._replace(X=None, y=None, weight=None)  # the split holds what training needs
        if mesh is not None:
            rows = split.process_share(mesh)
        else:
            if args.engine != "loop":
                split.to_device()
            rows = split.X, split.y
    if "batch_size" in args.defaulted:
        args.batch_size = min(args.batch_size, split.rows_trained)
    show_lines = not (args.quiet or args.json)
    stopper = None
    if args.early_stopping:
        stopper = EarlyStopping(args.early_stopping, split.val_X, split.val_y_scaled)
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
            penalty=None if args.penalty == "none" else args.penalty,
            alpha=args.alpha, l1_ratio=args.l1_ratio, schedule=args.schedule, power_t=args.power_t,
            average=args.average, sample_weight=split.weight,
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
    global _speaks
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT.")
        return None
    if args.num_processes is None or args.process_id is None:
        raise UsageError("--coordinator needs --num-processes and --process-id.")
    for option in ("plot", "stream", "checkpoint"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} is not available across processes.")
    if args.engine != "fused":
        raise UsageError("across processes, --engine must be fused.")
    from jaxlr import parallel

    # The collectives library prints connection notes on the process's
    # standard output; send them to stderr, and keep stdout for the results.
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), 1)
    parallel.initialize(args.coordinator, args.num_processes, args.process_id, timeout=args.peer_timeout)
    if args.process_id != 0:  # process 0 speaks for the run; the others say only their errors
        _speaks, args.quiet = False, True
    return parallel.data_mesh(jax.devices())


class _Whole:
    """Training rows used as they come: no validation split, no scaling."""

    def __init__(self, X, y, rows, num_features, chunks):
        self.X, self.y, self.rows, self.weight = X, y, rows, None
        self.scaler = Standardizer(np.zeros(num_features), np.ones(num_features), np.zeros(1), np.ones(1))
        self.mean, self.scale = self.scaler.x_mean, self.scaler.x_scale
        self.val_X = self.val_y = self.val_y_scaled = self.start = None
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

    for option in ("val_fraction", "standardize", "early_stopping", "plot", "sample_weight"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs the data in memory; it cannot go with --stream.")
    if args.target_scaling != "none":
        raise UsageError("--target-scaling needs the data in memory; it cannot go with --stream.")
    if args.data is None or not args.data.endswith(".npy"):
        raise UsageError("--stream reads a .npy matrix: give --data FILE.npy.")
    if args.target is None or not args.target.strip().isdigit():
        raise UsageError("--stream needs --target as a 0-based column index.")
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not all(f.isdigit() for f in features):
            raise UsageError(f"--stream needs --features as 0-based column indices, got {args.features!r}.")
        features = [int(f) for f in features]
    stream = NpyStream(args.data, target=int(args.target), features=features, chunk_bytes=args.chunk_mb << 20)
    chunk_rows = max(1, (args.chunk_mb << 20) // stream.row_bytes)

    def chunks():
        for start in range(0, stream.num_rows, chunk_rows):
            yield stream.read(start, min(start + chunk_rows, stream.num_rows))

    names = tuple(str(c) for c in stream.x_columns)
    table = Table(X=None, y=None, feature_names=names, target_name=args.target.strip())
    return table, False, _Whole(stream, None, stream.num_rows, stream.num_features, chunks)


def _solve(args):
    _settle_defaults(args)
    table, is_seed_job = _load(args)
    _, split_key, _ = _keys(args)
    split = _Split(table, args, split_key)
    table = table._replace(X=None, y=None, weight=None)
    start = time.perf_counter()
    params = solve(split.X, split.y)
    jax.block_until_ready(params)
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
    model = load_model(args.model)
    path = Path(args.data)
    if model.encoding is not None and reader_for(path).read is not None:
        # The model's own columns, encoded as in training; the table's others are not read.
        table = _noted(load_table(path, target=_predict_target(args, model, path), encoding=model.encoding))
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
            print(f"against {report['target']}: MSE = {report['mse']:.4g}, R^2 = {report['r2']:.4f}", file=sys.stderr)
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
    if path.suffix.lower() in (".npy", ".npz") and not set(model.feature_names) <= set(names):
        return table  # columns named by position, not from the model's own table: nothing to match
    j = names.index(target)
    keep = [i for i in range(len(names)) if i != j]
    return table._replace(X=table.X[:, keep], y=table.X[:, j : j + 1], feature_names=tuple(names[i] for i in keep),
                          target_name=target)  # fmt: skip


def _model(params, split, table, settings):
    """The model file's contents: params on the host, the standardization, the names.

    Params trained on a scaled target are turned back into the target's own
    units, so that the model file predicts it directly.
    """
    from jaxlr.parallel import host_value

    w, b = (np.asarray(host_value(p)) for p in params)
    y_mean, y_scale = split.scaler.y_mean, split.scaler.y_scale
    if np.any(y_mean != 0) or np.any(y_scale != 1):
        w = (w.astype(np.float64) * y_scale[None, :]).astype(w.dtype)
        b = (b.astype(np.float64) * y_scale + y_mean).astype(b.dtype)
    return Model(
        params=Params(w, b),
        x_mean=split.mean,
        x_scale=split.scale,
        feature_names=table.feature_names,
        target_names=(table.target_name,),
        settings=settings,
        encoding=getattr(table, "encoding", None),
    )


def _match_features(table, model, path):
    """The table's features in the model's order; refuses any difference."""
    d = len(model.feature_names)
    if path.suffix.lower() in (".npy", ".npz") and list(table.feature_names) != list(model.feature_names):
        if table.X.shape[1] != d:
            raise DataError(f"{path.name} has {table.X.shape[1]} feature columns; the model needs {d}.")
        return table.X
    have, need = list(table.feature_names), list(model.feature_names)
    missing = [name for name in need if name not in have]
    extra = [name for name in have if name not in need]
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
    report.update(split.train_metrics(model, trained))
    if split.val_X is not None:
        report["val_rows"] = int(split.val_X.shape[0])
        report.update(host_metrics(_on_standardized(model, split.val_X), split.val_y, "val_"))
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
            print(f"{name} MSE = {report[f'{split}_mse']:.4g}, R^2 = {report[f'{split}_r2']:.4f}")
    if "best_epoch" in report:
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


def _warn_if_worse_than_the_mean(report, args):
    """One warning line when the model predicts worse than the target's mean."""
    worse = [name for key, name in (("train_r2", "training"), ("val_r2", "validation")) if report.get(key, 0) < 0]
    if not worse:
        return
    tries = []
    if not args.standardize:
        tries.append("--standardize")
    if args.target_scaling != "scale":
        tries.append("--target-scaling scale")
    if args.command is _train:
        if report.get("early_stopped") and report.get("best_epoch") == 0:
            # Not the learning rate's fault: the held-out rows never saw an improvement.
            tries.append(f"--early-stopping 0 (it kept the first epoch: the validation MSE on {report['val_rows']} "
                         "rows never fell)")  # fmt: skip
        elif report.get("early_stopped") is False or "early_stopped" not in report:
            tries.append(f"more --epochs (ran {report['epochs_run']})")
        if report.get("val_rows", MIN_VALIDATION_ROWS) < MIN_VALIDATION_ROWS:
            tries.append(f"a larger --val-fraction (validation R^2 on {report['val_rows']} rows is mostly noise)")
        if not (report.get("early_stopped") and report.get("best_epoch") == 0):
            tries.append(f"another --lr (was {args.lr})")
    scores = ", ".join(f"{name} R^2 = {report[key]:.3g}" for key, name in (("train_r2", "training"), ("val_r2", "validation")) if key in report)
    advice = f"; try {', '.join(tries)}" if tries else ""
    _warn(f"the model predicts worse than the target's mean ({scores}){advice}.")


def _warn(text):
    """A warning for the user: one line on stderr, in the form of the errors."""
    if _speaks:
        print(f"jaxlr: warning: {' '.join(str(text).split())}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Python's warnings, from the library or below it, as the command's own warning lines."""
    _warn(message)


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


def _check_destinations(args):
    """Refuses an output path whose directory is missing, or that is an input, before any work is done."""
    inputs = {option: getattr(args, option, None) for option in ("data", "model")}
    outputs: dict = {}
    for option in ("save", "plot", "output"):
        path = getattr(args, option, None)
        if path is None:
            continue
        for source, given in inputs.items():
            if given is not None and _same_file(path, given):
                raise UsageError(f"--{option} {path!r} is the --{source} file; it would be overwritten.")
        for other, given in outputs.items():
            if _same_file(path, given):
                raise UsageError(f"--{option} {path!r} is also the --{other} file; one would overwrite the other.")
        outputs[option] = path
        if Path(path).is_dir():
            raise UsageError(f"--{option} {path!r} is a directory, not a file name.")
        parent = Path(path).parent
        if not parent.is_dir():
            raise UsageError(f"--{option} {path!r}: directory {str(parent)!r} does not exist.")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return Path(a).resolve() == Path(b).resolve()


def _write_outputs(args, model, plot):
    """Writes the files last, each atomically: an error before here writes nothing."""
    if args.save:
        save_model(args.save, model)
    if plot is not None:
        atomic_write(args.plot, lambda file: file.write(plot))
