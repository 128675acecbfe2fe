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
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxlr.callbacks import EarlyStopping, Progress, combine
from jaxlr.data import DataError, load_table, synthetic_data
from jaxlr.metrics import RunningMetrics, host_metrics
from jaxlr.persist import Model, ModelFileError, atomic_write, load_model, save_model
from jaxlr.preprocessing import Standardizer
from jaxlr.solve import solve
from jaxlr.train import TrainingDiverged, fit

SEED_TRUE_W = (2.0, -3.4)
SEED_TRUE_B = 4.2


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


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train", *argv]  # `jaxlr` alone runs the lesson's job
    try:
        args = _parser().parse_args(argv)
        _check_destinations(args)
        _configure_jax(args)
        return args.command(args)
    except TrainingDiverged as err:
        print(f"jaxlr: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`jaxlr predict ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, DataError, ModelFileError, ValueError, TypeError, OSError) as err:
        print(f"jaxlr: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxlr: interrupted", file=sys.stderr)
        return 130


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
_fraction = _typed(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
_nonnegative = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_unit = _typed(float, lambda v: 0 <= v <= 1, "a number between 0 and 1")
_finite = _typed(float, math.isfinite, "a finite number")


def _parser():
    parser = _Parser(prog="jaxlr", description="Linear regression from scratch, in JAX.")
    from jaxlr import __version__

    parser.add_argument("--version", action="version", version=f"jaxlr {__version__}")
    sub = parser.add_subparsers(title="commands", parser_class=_Parser)

    data = _Parser(add_help=False)
    data.add_argument("--data", metavar="FILE", help="a CSV with a header row, a .npy matrix, or a .npz with X and y")
    data.add_argument("--target", metavar="COL", help="target column: a name, or a 0-based index")
    data.add_argument("--features", metavar="COLS", help="comma-separated feature columns (default: every other numeric column)")
    data.add_argument("--standardize", action="store_true", help="scale features to mean 0, sd 1 (statistics from the training split)")
    data.add_argument("--val-fraction", type=_fraction, metavar="F", help="hold out this fraction of rows for validation")
    data.add_argument("--seed", type=int, default=0, help="seed for the data split, initialisation and shuffling")
    data.add_argument("--save", metavar="MODEL.npz", help="write the model file here")
    common = _Parser(add_help=False)
    common.add_argument("--x64", action="store_true", help="compute in float64")
    common.add_argument("--quiet", action="store_true", help="no progress lines or bar")
    common.add_argument("--json", action="store_true", help="print one JSON object with the results")
    common.add_argument("--no-cache", action="store_true", help="do not use the persistent compilation cache")

    train = sub.add_parser("train", parents=[data, common], help="train by SGD (the lesson's job without --data)")
    train.add_argument("--epochs", type=_count, default=2)
    train.add_argument("--lr", type=_positive, default=0.001, help="learning rate")
    train.add_argument("--batch-size", type=_positive_int, default=4)
    train.add_argument("--engine", choices=("fused", "loop"), default="fused")
    train.add_argument("--optimizer", choices=("sgd", "momentum", "nesterov", "adam"), default="sgd")
    train.add_argument("--loss", choices=("squared", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"),
                       default="squared", help="the loss per example (see jaxlr.losses)")
    train.add_argument("--epsilon", type=_nonnegative, default=0.1, help="margin of the huber and epsilon-insensitive losses")
    train.add_argument("--penalty", choices=("none", "l2", "l1", "elasticnet"), default="none",
                       help="penalty on the weights")
    train.add_argument("--alpha", type=_nonnegative, default=0.0001, help="strength of the penalty")
    train.add_argument("--l1-ratio", type=_unit, default=0.15, help="L1 share of the elastic net")
    train.add_argument("--schedule", choices=("constant", "optimal", "invscaling", "adaptive"), default="constant",
                       help="learning-rate schedule (see jaxlr.schedules)")
    train.add_argument("--power-t", type=_finite, default=0.25, help="exponent of the invscaling schedule")
    train.add_argument("--average", type=_count, nargs="?", const=1, default=0, metavar="T0",
                       help="return the average of the params over the updates (from update T0, default 1)")
    train.add_argument("--sample-weight", metavar="COL", help="a column of per-row weights (not used as a feature)")
    train.add_argument("--early-stopping", type=_positive_int, metavar="N", help="stop after N epochs without validation improvement; keep the best")
    train.add_argument("--plot", metavar="PNG", help="write the loss curve and predicted against actual here")
    train.add_argument("--checkpoint", metavar="DIR", help="save the run here after every epoch (atomically)")
    train.add_argument("--stream", action="store_true", help="read a .npy table from disk in chunks (data larger than memory)")
    train.add_argument("--chunk-mb", type=_positive_int, default=64, help="chunk size for --stream, in MB")
    train.add_argument("--coordinator", metavar="HOST:PORT", help="train across processes: the address of process 0")
    train.add_argument("--num-processes", type=_positive_int, metavar="P")
    train.add_argument("--process-id", type=_count, metavar="I")
    train.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --checkpoint")
    train.set_defaults(command=_train)

    closed = sub.add_parser("solve", parents=[data, common], help="fit in closed form (least squares)")
    closed.set_defaults(command=_solve)

    predict = sub.add_parser("predict", parents=[common], help="apply a saved model to a table")
    predict.add_argument("--model", required=True, metavar="MODEL.npz")
    predict.add_argument("--data", required=True, metavar="FILE")
    predict.add_argument("--target", metavar="COL", help="if the table has the target, also report the error")
    predict.add_argument("--output", metavar="CSV", help="write predictions here (default: standard output)")
    predict.set_defaults(command=_predict)
    return parser


def _configure_jax(args):
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.no_cache or os.environ.get("JAXLR_NO_CACHE"):
        return
    # Compiled programs are kept between runs: a repeated command skips XLA.
    cache = os.environ.get("JAXLR_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    ) / "jaxlr" / "xla"
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs speed
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ------------------------------------------------------------------ data


class _Split:
    """Training and validation rows, standardized with the training statistics."""

    def host_chunks(self):
        """The training rows in original units, for the metrics."""
        return iter([(self.scaler.inverse(self.X), self.y)])

    def __init__(self, table, args, key):
        X, y, weight = table.X, table.y, table.weight
        if y is None:
            raise DataError("--target is required with --data.")
        if X.shape[0] == 0:
            raise DataError(f"{args.data} has no rows.")
        self.rows = X.shape[0]
        val_X = val_y = None
        if args.val_fraction:
            num_val = int(round(args.val_fraction * X.shape[0]))
            if not 1 <= num_val < X.shape[0]:
                raise DataError(
                    f"--val-fraction {args.val_fraction} of {X.shape[0]} rows leaves an empty split."
                )
            from jaxlr.data import permutation

            order = permutation(key, X.shape[0])
            val_X, val_y = X[order[:num_val]], y[order[:num_val]]
            X, y = X[order[num_val:]], y[order[num_val:]]
            weight = None if weight is None else weight[order[num_val:]]
        # A table's features are centred at least, in float64: training casts
        # to float32 only after. The lesson's own data is used as it comes.
        features = True if args.standardize else ("center" if args.data is not None else False)
        self.scaler = Standardizer.fit(X, features=features)
        self.mean, self.scale = self.scaler.x_mean, self.scaler.x_scale
        self.X, self.y, self.weight = self.scaler.transform(X), y, weight
        self.val_X = None if val_X is None else self.scaler.transform(val_X)
        self.val_y = val_y


def _load(args):
    """The training table: from --data, or the lesson's synthetic data."""
    features = None if args.features is None else [f.strip() for f in args.features.split(",") if f.strip()]
    if args.data is None:
        if args.target is not None or features is not None or getattr(args, "sample_weight", None):
            raise UsageError("--target, --features and --sample-weight need --data.")
        X, y = synthetic_data(_keys(args)[0], true_w=SEED_TRUE_W, true_b=SEED_TRUE_B)
        from jaxlr.data import Table

        return Table(np.asarray(X, np.float64), np.asarray(y, np.float64), ("x0", "x1"), "y"), True
    target = args.target
    if target is None:
        if not args.data.lower().endswith(".npz"):
            raise UsageError("--data needs --target (a column name or 0-based index).")
        target = "y"  # a .npz table's target is its array y
    weight = getattr(args, "sample_weight", None)
    return _noted(load_table(args.data, target=target, features=features, weight=weight)), False


def _noted(table):
    """Tells the user how the table was read (columns left out), one line each."""
    for note in table.notes:
        print(f"jaxlr: note: {note}", file=sys.stderr)
    return table


def _keys(args):
    """Three keys from --seed: the synthetic data's, the validation split's, and training's.

    Their words come from NumPy's SeedSequence on the host: deriving them with
    eager jax.random calls would compile three small programs, a tenth of a
    second of a fresh process's start.
    """
    words = np.random.SeedSequence(args.seed % 2**64).generate_state(6, np.uint32)
    return tuple(jax.random.wrap_key_data(pair) for pair in words.reshape(3, 2))


# ------------------------------------------------------------------ commands


def _train(args):
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint DIR.")
    if args.early_stopping and not args.val_fraction:
        raise UsageError("--early-stopping needs --val-fraction to measure improvement.")
    mesh = _scale_out(args)
    _, split_key, fit_key = _keys(args)
    if args.stream:
        table, is_seed_job, split = _streamed(args)
    elif mesh is not None:
        table, is_seed_job = _load(args)
        split = _ProcessShare(table, mesh)
    else:
        table, is_seed_job = _load(args)
        split = _Split(table, args, split_key)
    plot_ready = _check_plotting(args.plot)
    show_lines = not (args.quiet or args.json)
    stopper = None
    if args.early_stopping:
        stopper = EarlyStopping(args.early_stopping, split.val_X, split.val_y)
    bar = Progress(args.epochs, enabled=not args.quiet)

    start = time.perf_counter()
    try:
        result = fit(
            split.X, split.y, key=fit_key, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, optimizer=args.optimizer, engine=args.engine,
            loss=args.loss, epsilon=args.epsilon, penalty=None if args.penalty == "none" else args.penalty,
            alpha=args.alpha, l1_ratio=args.l1_ratio, schedule=args.schedule, power_t=args.power_t,
            average=args.average, sample_weight=split.weight,
            verbose=show_lines, callback=combine([stopper, bar if bar.bar is not None else None]),
            checkpoint=args.checkpoint, resume=args.resume, devices=mesh,
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
            "standardize": args.standardize, "val_fraction": args.val_fraction,
            "early_stopping": args.early_stopping, "x64": args.x64, "checkpoint": args.checkpoint,
        },
    )  # fmt: skip
    report = _report(model, split, args, elapsed)
    moving = np.asarray(result.moving_losses)
    report["final_moving_loss"] = float(moving[-1]) if moving.size else None
    report["epochs_run"] = args.epochs if stopper is None else stopper.epochs_seen
    if stopper is not None:
        report["best_epoch"] = stopper.best_epoch
    if is_seed_job:
        report["true_w"], report["true_b"] = list(SEED_TRUE_W), [SEED_TRUE_B]
    plot = plot_ready(result, model, split) if args.plot else None
    if jax.process_index() == 0:  # every process holds the same model; one writes it
        _write_outputs(args, model, plot)
        _print_report(report, args)
    return 0


def _scale_out(args):
    """Joins a multi-process run when asked to; returns its mesh, or None."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT.")
        return None
    if args.num_processes is None or args.process_id is None:
        raise UsageError("--coordinator needs --num-processes and --process-id.")
    for option in ("val_fraction", "standardize", "early_stopping", "plot", "stream", "checkpoint", "sample_weight"):
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
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    return parallel.data_mesh(jax.devices())


class _Whole:
    """Training rows used as they come: no validation split, no scaling."""

    def __init__(self, X, y, rows, num_features, chunks):
        self.X, self.y, self.rows, self.weight = X, y, rows, None
        self.mean, self.scale = np.zeros(num_features), np.ones(num_features)
        self.val_X = self.val_y = None
        self.host_chunks = chunks


def _ProcessShare(table, mesh):
    """This process's equal share of the rows, as part of global arrays."""
    from jaxlr import parallel

    rows = parallel.local_rows(table.X.shape[0])
    # Centred in float64 with the whole table's means, as one process centres it.
    mean = table.X.mean(axis=0) if table.X.shape[0] else np.zeros(table.X.shape[1])
    X, y = (table.X[rows] - mean).astype(np.float32), table.y[rows].astype(np.float32)
    share = _Whole(
        parallel.global_rows(X, mesh), parallel.global_rows(y, mesh), table.X.shape[0], X.shape[1],
        lambda: iter([(table.X[rows], y)]),
    )
    share.mean = mean
    return share


def _streamed(args):
    """A .npy table read from disk in chunks, never whole."""
    from jaxlr.data import NpyStream, Table

    for option in ("val_fraction", "standardize", "early_stopping", "plot", "sample_weight"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs the data in memory; it cannot go with --stream.")
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
    table, is_seed_job = _load(args)
    _, split_key, _ = _keys(args)
    split = _Split(table, args, split_key)
    start = time.perf_counter()
    params = solve(split.X, split.y)
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - start
    model = _model(
        params, split, table,
        {"command": "solve", "seed": args.seed, "standardize": args.standardize,
         "val_fraction": args.val_fraction, "x64": args.x64},
    )  # fmt: skip
    report = _report(model, split, args, elapsed)
    if is_seed_job:
        report["true_w"], report["true_b"] = list(SEED_TRUE_W), [SEED_TRUE_B]
    _write_outputs(args, model, None)
    _print_report(report, args)
    return 0


def _predict(args):
    model = load_model(args.model)
    path = Path(args.data)
    table = _noted(load_table(path, target=args.target))
    X = _match_features(table, model, path)
    predictions = model.predict(X)
    buffer = io.StringIO()
    # The csv module quotes a name such as "price,usd"; a plain join would split it.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(model.target_names)
    writer.writerows([repr(float(v)) for v in row] for row in predictions)
    text = buffer.getvalue()
    report = {"command": "predict", "rows": int(X.shape[0]), "output": args.output}
    if table.y is not None:
        report.update(host_metrics(predictions, table.y))
    if args.output:
        atomic_write(args.output, lambda file: file.write(text.encode()))
        _print_report(report, args)
    elif args.json:
        report["predictions"] = predictions.tolist()
        _print_report(report, args)
    else:
        sys.stdout.write(text)
    return 0


def _model(params, split, table, settings):
    """The model file's contents: params on the host, the standardization, the names."""
    from jaxlr.parallel import host_value

    return Model(
        params=jax.tree.map(host_value, params),
        x_mean=split.mean,
        x_scale=split.scale,
        feature_names=table.feature_names,
        target_names=(table.target_name,),
        settings=settings,
    )


def _match_features(table, model, path):
    """The table's features in the model's order; refuses any difference."""
    d = len(model.feature_names)
    if path.suffix.lower() in (".npy", ".npz"):
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


# ------------------------------------------------------------------ helpers


def _chunked_metrics(model, chunks, prefix):
    """MSE and R² over rows that arrive in chunks, in one pass."""
    running = RunningMetrics()
    for X, y in chunks:
        running.add(model.predict(X), y)
    return running.result(prefix)


def _report(model, split, args, elapsed):
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
    report.update(_chunked_metrics(model, split.host_chunks(), "train_"))
    if split.val_X is not None:
        raw_val = split.val_X * split.scale + split.mean
        report.update(host_metrics(model.predict(raw_val), split.val_y, "val_"))
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
        print(f"final moving loss = {report['final_moving_loss']:.3g}")
    for split in ("train", "val"):
        if f"{split}_mse" in report:
            name = "training" if split == "train" else "validation"
            print(f"{name} MSE = {report[f'{split}_mse']:.4g}, R^2 = {report[f'{split}_r2']:.4f}")
    if "mse" in report:
        print(f"MSE = {report['mse']:.4g}, R^2 = {report['r2']:.4f}")
    if "best_epoch" in report:
        print(f"early stopping: {report['epochs_run']} epochs run, best epoch {report['best_epoch']}")
    if "elapsed_s" in report:
        print(f"elapsed = {report['elapsed_s']:.2f} s (compilation included)")
    if report.get("model"):
        print(f"model saved to {report['model']}")
    if report.get("output"):
        print(f"{report['rows']} predictions written to {report['output']}")


def _check_plotting(path):
    """Fails before training, not after it, when a plot cannot be made."""
    if path is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'jaxlr[plot]'.") from None
    return _plot


def _plot(result, model, split):
    """The loss curve and predicted against actual, as PNG bytes."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.arange(1, result.losses.shape[0] + 1)
    left.semilogy(steps, np.asarray(result.losses), lw=0.3, alpha=0.4, label="batch loss")
    left.semilogy(steps, np.asarray(result.moving_losses), lw=1.5, label="moving average")
    left.set_xlabel("step")
    left.set_ylabel("squared error")
    left.legend()
    X, y, title = (split.val_X, split.val_y, "validation") if split.val_X is not None else (split.X, split.y, "training")
    predicted = model.predict(X * split.scale + split.mean)[:, 0]
    right.scatter(y[:, 0], predicted, s=3, alpha=0.4)
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    right.plot([low, high], [low, high], "k--", lw=1)
    right.set_xlabel(f"actual {model.target_names[0]}")
    right.set_ylabel("predicted")
    right.set_title(f"{title} rows")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _check_destinations(args):
    """Refuses an output path whose directory is missing, or that is an input, before any work is done."""
    inputs = {option: getattr(args, option, None) for option in ("data", "model")}
    for option in ("save", "plot", "output"):
        path = getattr(args, option, None)
        if path is None:
            continue
        for source, given in inputs.items():
            if given is not None and _same_file(path, given):
                raise UsageError(f"--{option} {path!r} is the --{source} file; it would be overwritten.")
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
