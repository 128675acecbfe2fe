"""The `jaxlr` command: parse the arguments, call the library, print the results."""

import argparse
import sys
import time

import jax
import numpy as np

from jaxlr.data import synthetic_data
from jaxlr.train import fit

SEED_TRUE_W = (2.0, -3.4)
SEED_TRUE_B = 4.2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jaxlr", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train on the lesson's synthetic data")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--lr", type=float, default=0.001)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--engine", choices=("fused", "loop"), default="fused")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["train", *(argv or [])])
    return _train_seed(args)


def _train_seed(args):
    data_key, fit_key = jax.random.split(jax.random.key(args.seed))
    X, y = synthetic_data(data_key, true_w=SEED_TRUE_W, true_b=SEED_TRUE_B)
    start = time.perf_counter()
    result = fit(
        X, y, key=fit_key, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, engine=args.engine, verbose=True,
    )  # fmt: skip
    jax.block_until_ready(result)
    elapsed = time.perf_counter() - start
    w, b = np.asarray(result.params.w).ravel(), np.asarray(result.params.b)
    print(f"learned w = {np.array2string(w, precision=4)}   true w = {list(SEED_TRUE_W)}")
    print(f"learned b = {np.array2string(b, precision=4)}   true b = [{SEED_TRUE_B}]")
    print(f"final moving loss = {float(result.moving_losses[-1]):.3g} (noise variance 1e-4)")
    print(f"elapsed = {elapsed:.2f} s (compilation included)")
    return 0
