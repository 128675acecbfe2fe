"""The `jaxlr` command: train, solve and predict on tables, from the shell.

    jaxlr train                              the lesson's job on its synthetic data
    jaxlr train --data t.csv --target price  SGD on a table, with --save, --plot, ...
    jaxlr solve --data t.csv --target price  the closed-form fit
    jaxlr predict --model m.npz --data new.csv --output preds.csv

Errors a user can cause print one line, ``jaxlr: error: ...``, and exit with
status 2, writing no file; a diverging run exits with status 1.

This module parses the arguments and reads the table, and imports no JAX:
`jaxlr.commands` does the work, and its `train` imports JAX while the table
is read on a thread; `solve` on a table and `predict` need none.
"""

import argparse
import csv
import math
import os
import re
import sys
import threading
import warnings
from pathlib import Path

from jaxlr import names
from jaxlr.arrays import DataError
from jaxlr.tables import MAX_CATEGORIES, load_table, reader_for

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
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
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
            args.read_ahead = _ReadAhead.start(args)
            from jaxlr import commands  # `train` imports JAX as it starts, while the table is read

            status = commands.run(args)
    except FloatingPointError as err:
        if not _diverging(err):
            raise
        print(f"jaxlr: error: {_diverged(err, args)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout is guarded; this is another pipe, e.g. stderr
        return BROKEN_PIPE_STATUS
    except (UsageError, DataError, ValueError, TypeError, OSError) as err:  # a model file's errors are ValueErrors
        print(f"jaxlr: error: {_one_line(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxlr: interrupted", file=sys.stderr)
        return 130
    finally:
        if sys.stdout.__class__ is _CourteousStream:
            sys.stdout = stdout
    return BROKEN_PIPE_STATUS if _courtesy.broken and _courtesy.product else status


def _diverging(err):
    """Whether `err` is a training run's divergence (`jaxlr.train.TrainingDiverged`)."""
    train = sys.modules.get("jaxlr.train")
    return train is not None and isinstance(err, train.TrainingDiverged)


def _diverged(err, args):
    """The divergence message, without advice the run already follows."""
    text = _one_line(err, args)
    if args is not None and getattr(args, "standardize", False):
        text = re.sub(r",? or standardize the features[^.]*", "", text)
    return text


def _one_line(err, args=None):
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.strerror}: {err.filename!r}"
    checkpoint = sys.modules.get("jaxlr.checkpoint")
    if checkpoint is not None and isinstance(err, checkpoint.CheckpointError):
        for advice, option in _CHECKPOINT_ADVICE:  # what `fit` is passed, as the command's options
            text = text.replace(advice, option)
    if args is not None:
        # The library names its arguments in backquotes (`batch_size`): those
        # that are this command's options too are named as the options.
        options = vars(args)

        def as_option(match):
            name = _OPTION_OF.get(match.group(1), match.group(1))
            return f"--{name.replace('_', '-')}" if name in options else match.group(0)

        text = re.sub(r"`([a-z][a-z0-9_]*)`", as_option, text)
    return " ".join(text.split())


# The library's arguments that the command sets through an option of another name.
_OPTION_OF = {"key": "seed"}


_CHECKPOINT_ADVICE = (("pass resume=True", "give --resume"), ("pass resume='if_present'", "give --resume-if-present"),
                      ("pass overwrite=True", "give --overwrite"), ("overwrite=True", "--overwrite"))  # fmt: skip


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


class _Given(argparse.Action):
    """Stores an option's value and notes, in `given`, that it was given: an
    option whose default is a value may then be refused where it does not apply."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", set()) | {self.dest}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one; the job-dependent ones say theirs in words."""

    def _get_help_string(self, action):
        # `is`, not `in`: a default of 0 (--seed, --average) equals False and must still show.
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return _with_constants(action.help)
        return _with_constants(super()._get_help_string(action))


def _data_options(command):
    """The options that read a table, with the defaults of `command` ("train" or "solve") in their help."""
    data = _Parser(add_help=False)
    data.add_argument("--data", metavar="FILE", help="a CSV with a header row (also .csv.gz, .csv.bz2, ...) or a "
                      "Parquet file (both with the tables extra: pip install 'jaxlr[tables]'), a .npy matrix, or a .npz "
                      "with X and y (default: the lesson's synthetic data)")  # fmt: skip
    data.add_argument("--target", metavar="COL", help="target column: a name, or a 0-based index (a name first: a header's \"2\" is --target 2)")
    data.add_argument("--features", metavar="COLS", help="comma-separated feature columns, a name holding a comma in double quotes (default: every other column "
                      "that can be one: numbers, dates as days since 1970-01-01, text of few values one-hot encoded)")  # fmt: skip
    data.add_argument("--categorical", metavar="COLS", help="comma-separated columns to one-hot encode whatever they hold "
                      "(default: text columns of at most --max-categories values)")  # fmt: skip
    data.add_argument("--drop", metavar="COLS", help="comma-separated columns to leave out (default: none)")
    data.add_argument("--sample-weight", metavar="COL", help="a column of per-row weights (not used as a feature)")
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
    train.add_argument("--epochs", type=_positive_int, help="passes over the training rows, the most with early stopping ("
                       + _default("epochs") + ")")  # fmt: skip
    train.add_argument("--lr", type=_positive, help="learning rate (" + _default("lr") + ")")
    train.add_argument("--batch-size", type=_positive_int, help="rows per step (" + _default("batch_size") + "; "
                       "the default never exceeds the number of training rows)")  # fmt: skip
    train.add_argument("--engine", choices=names.ENGINES, default="fused",
                       help="fused: the whole run as one compiled program; loop: a jitted step in a Python loop; "
                            "scan: the fused run with each epoch's steps in parallel time (squared loss, sgd, "
                            "momentum or nesterov); auto: fused or scan, whichever was measured faster")  # fmt: skip
    train.add_argument("--optimizer", choices=names.RULES, default="sgd",
                       help="the update rule")
    train.add_argument("--loss", choices=names.LOSSES, default="squared", help="the loss per example (see jaxlr.losses)")
    train.add_argument("--epsilon", type=_nonnegative, action=_Given,
                       help="margin of the huber and epsilon-insensitive losses, in the target's units (default: "
                       "{MARGIN_FRACTION} x the training target's standard deviation with --data, {MARGIN_FRACTION} "
                       "for the lesson's job)")  # fmt: skip
    train.add_argument("--penalty", choices=[name or "none" for name in names.PENALTIES], default="none",
                       help="penalty on the weights")
    train.add_argument("--alpha", type=_nonnegative, action=_Given, default=0.0001, help="strength of the penalty")
    train.add_argument("--l1-ratio", type=_unit, action=_Given, default=0.15, help="L1 share of the elastic net")
    train.add_argument("--schedule", choices=names.SCHEDULES, default="constant",
                       help="learning-rate schedule (see jaxlr.schedules); adaptive divides the rate by 5 after 5 "
                       "epochs whose training loss fell by less than 0.001, and stops below 1e-6, as scikit-learn's")  # fmt: skip
    train.add_argument("--power-t", type=_finite, action=_Given, default=0.25, help="exponent of the invscaling schedule")
    train.add_argument("--average", type=_count, nargs="?", const=1, default=0, metavar="T0",
                       help="return the average of the params over the updates (from update T0, 1 if T0 is left out; "
                       "0: no averaging)")  # fmt: skip
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
    train.add_argument("--chunk-mb", type=_positive_int, action=_Given, default=64, help="chunk size for --stream, in MB")
    train.add_argument("--coordinator", metavar="HOST:PORT", help="train across processes: the address of process 0")
    train.add_argument("--num-processes", type=_positive_int, metavar="P",
                       help="how many processes take part (with --coordinator)")
    train.add_argument("--process-id", type=_count, metavar="I",
                       help="this process's index, 0 to P-1; process 0 reports and writes the files (with --coordinator)")
    train.add_argument("--peer-timeout", type=_positive, action=_Given, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
                       help="how long a process waits for the others to start (with --coordinator)")
    train.add_argument("--resume", action="store_true",
                       help="continue this run from its newest good checkpoint in --checkpoint (which must hold one)")
    train.add_argument("--resume-if-present", action="store_true",
                       help="like --resume, but start afresh when --checkpoint holds no checkpoint of this run")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh, deleting this run's checkpoints in --checkpoint (other runs' are kept)")
    train.set_defaults(command="train")

    closed = sub.add_parser("solve", parents=[_data_options("solve"), common], formatter_class=Formatter,
                            help="fit in closed form (least squares)")  # fmt: skip
    closed.set_defaults(command="solve")

    predict = sub.add_parser("predict", parents=[common], formatter_class=Formatter,
                             help="apply a saved model to a table")  # fmt: skip
    predict.add_argument("--model", required=True, metavar="MODEL.npz", help="a model file written by --save")
    predict.add_argument("--data", required=True, metavar="FILE", help="the table to predict for")
    predict.add_argument("--target", metavar="COL", help="the table's target column, to report the error "
                         "(default: the model's target, when the table has that column)")  # fmt: skip
    predict.add_argument("--output", metavar="CSV", help="write predictions here (default: standard output)")
    predict.set_defaults(command="predict")
    return parser


def _with_constants(text):
    """Help text with the library's constants filled in, read only when help is shown:
    the library's losses import JAX, which a command that only reads a table need not wait for."""
    if text is None or "{MARGIN_FRACTION}" not in text:
        return text
    from jaxlr.losses import MARGIN_FRACTION

    return text.replace("{MARGIN_FRACTION}", str(MARGIN_FRACTION))


# ------------------------------------------------------------------ messages

# False in the processes of a multi-process run other than process 0.
_speaks = True


def _note(text):
    """A remark for the user (not a problem): one line on stderr."""
    if _speaks:
        print(f"jaxlr: note: {' '.join(str(text).split())}", file=sys.stderr)



def _warn(text):
    """A warning for the user: one line on stderr, in the form of the errors."""
    if _speaks:
        print(f"jaxlr: warning: {' '.join(str(text).split())}", file=sys.stderr)



def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Python's warnings, from the library or below it, as the command's own warning lines."""
    _warn(message)


# ------------------------------------------------------------------ files

def _check_destinations(args):
    """Refuses an output path whose directory is missing, or that is an input, before any work is done."""
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and Path(checkpoint).exists() and not Path(checkpoint).is_dir():
        raise UsageError(f"--checkpoint {checkpoint!r} is a file; it names the directory that holds the checkpoints.")
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
        if option == "save" and Path(path).exists() and not _is_model_file(path):
            raise UsageError(f"--save {path!r} exists and is not a model file this jaxlr reads; it would be "
                             "overwritten: choose another name, or remove it first.")  # fmt: skip


def _is_model_file(path):
    from jaxlr.persist import ModelFileError, load_model

    try:
        load_model(path)
    except (ModelFileError, OSError, ValueError):
        return False
    return True



def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return Path(a).resolve() == Path(b).resolve()


# ------------------------------------------------------------------ tables

def column_list(text):
    """A comma-separated list of column names, as a list (empty for None).

    The list is read as a CSV row, so a name holding a comma is given in
    double quotes: ``--features '"size, m2",rooms'``."""
    if text is None:
        return []
    (row,) = csv.reader([text], skipinitialspace=True) if text.strip() else [[]]
    return [name.strip() for name in row if name.strip()]


def column_name(text):
    """One column's name, in double quotes or not (as `column_list` reads one); None for None."""
    if text is None or not text.strip().startswith('"'):
        return text
    names = column_list(text)
    if len(names) != 1:
        raise UsageError(f"{text!r} names {len(names)} columns where one is wanted.")
    return names[0]


def table_request(args):
    """The arguments of `load_table` for the table that --data names (None for the lesson's data)."""
    if args.data is None:
        given = [f"--{name.replace('_', '-')}" for name in ("target", "features", "sample_weight", "categorical", "drop")
                 if getattr(args, name, None) is not None]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --data.")
        return None
    target = column_name(args.target) if args.target is not None else reader_for(args.data).target
    if target is None:
        raise UsageError("--data needs --target (a column name or 0-based index).")
    features = None if args.features is None else column_list(args.features)
    return dict(path=args.data, target=target, features=features, weight=column_name(getattr(args, "sample_weight", None)),
                categorical=column_list(args.categorical), drop=column_list(args.drop), max_categories=args.max_categories)


class _ReadAhead:
    """The table of a `train` or `solve` command, read on a thread of its own.

    Reading a CSV or Parquet file (pyarrow's parsing and NumPy's copies
    release the interpreter) then overlaps the import of JAX and of the
    training code. `table(request)` gives it to the command, which asks
    with the same request; its errors are raised there, in their turn.
    """

    def __init__(self, request):
        self.request, self._table, self._error = request, None, None
        self._thread = threading.Thread(target=self._read, name="jaxlr-read-ahead", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, args):
        """A read ahead for `args`, or None where the command reads no table in memory."""
        if args.command not in ("train", "solve") or getattr(args, "stream", False):
            return None
        try:
            request = table_request(args)
        except UsageError:
            return None  # said by the command, after the checks that come first
        if request is None or reader_for(request["path"]).read is None:
            return None  # the lesson's data, or a NumPy file (read by mapping it: nothing to overlap)
        return cls(request)

    def _read(self):
        try:
            self._table = load_table(**self.request)
        except BaseException as err:  # raised again in the command's thread
            self._error = err

    def table(self, request):
        """The table read for `request`, given once; None when it was read for another one."""
        if request != self.request:
            return None
        self._thread.join()
        if self._error is not None:
            raise self._error
        table, self._table = self._table, None  # the command alone holds it: it lets the table go after its split
        return table

