"""python -m benchmarks {seed,scale,sweep,cold,practice,estimator,engines,shuffle,tables,all} [--size tiny] [--device gpu] [--batch-size N] [--json FILE]"""

import argparse
import datetime
import json
import sys

from benchmarks import cold, engines, estimator, harness, practice, scale, seed, shuffle, sweep, tables

SIZES = {
    # case: (full size, tiny size used by the tests)
    "seed": ({"num_examples": 10_000}, {"num_examples": 200}),
    "scale": ({"num_examples": 2_000_000, "num_features": 100, "batch_size": 1024},
              {"num_examples": 4096, "num_features": 8, "batch_size": 64}),  # fmt: skip
    "sweep": ({"num_examples": 10_000, "num_rates": 64}, {"num_examples": 200, "num_rates": 4}),
    "cold": ({}, {"repeats": 1}),
    "practice": ({"num_rows": 200_000, "num_tables": 3, "num_settings": 16, "num_seeds": 5},
                 {"num_rows": 2000, "num_tables": 1, "num_settings": 2, "num_seeds": 2, "budget_s": 0.1}),
    "estimator": ({}, {"num_rows": 1000, "chunk_rows": 400, "widths": (3,), "budget_s": 0.1}),
    "engines": ({}, {"num_rows": 2000, "features": (2,), "batches": (1, 64), "budget_s": 0.1, "accuracy": False}),
    "shuffle": ({"sizes": (10_000, 2_000_000)}, {"sizes": (100, 1000)}),
    "tables": ({"num_rows": 1_000_000, "num_features": 20}, {"num_rows": 2000, "num_features": 3}),
}
GPU_SCALE = {"num_examples": 20_000_000, "num_features": 100, "batch_size": 4096}
REFERENCE = {
    "seed": "scikit-learn SGDRegressor",
    "scale": "sequential pass (no shuffle)",
    "sweep": "one jaxlr fused fit",
    "cold": 'python -c "import jax"',
    "practice": "scikit-learn SGDRegressor (each group's own: the vs_sklearn column)",
    "estimator": "scikit-learn SGDRegressor (each group's own: the vs_sklearn column)",
    "engines": "the fused engine at the same features and batch size (the vs_fused column)",
    "shuffle": None,
    "tables": "pandas.read_csv + numpy lstsq",
}
MODULES = {"seed": seed, "scale": scale, "sweep": sweep, "cold": cold, "practice": practice, "estimator": estimator,
           "engines": engines, "shuffle": shuffle, "tables": tables}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("case", choices=[*MODULES, "all"])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions after a warm-up (median reported)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: the scale case on a CUDA device, larger")
    parser.add_argument("--batch-size", type=int, help="scale only: another batch size than the case's")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to write the results")
    args = parser.parse_args(argv)

    cases = list(MODULES) if args.case == "all" else [args.case]
    if args.device == "gpu":
        cases = ["scale"]
    payload = {"machine": harness.machine(), "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
               "date": datetime.date.today().isoformat(), "cases": {}}  # fmt: skip
    for case in cases:
        size = SIZES[case][args.size == "tiny"]
        options = dict(size)
        if case == "scale":
            options["device"] = args.device
            if args.device == "gpu" and args.size == "full":
                options.update(GPU_SCALE)
            if args.batch_size:
                options["batch_size"] = args.batch_size
        if case not in ("cold", "tables"):
            options["repeats"] = args.repeats
        else:
            options["repeats"] = min(args.repeats, 3)
        rows = MODULES[case].run(**options)
        checks = MODULES[case].targets(rows)
        shown = {k: v for k, v in options.items() if k != "repeats"}
        print(f"\n## {case}  ({', '.join(f'{k}={v}' for k, v in shown.items()) or 'fresh processes'})\n")
        print(harness.markdown(rows, REFERENCE[case]))
        print()
        for check, value in checks.items():
            print(f"- {check}: {value:.3g}" if isinstance(value, float) else f"- {check}: {value}")
        payload["cases"][case] = {"rows": rows, "targets": checks}
    harness.write_json(args.json, payload)
    print(f"\nmachine: {json.dumps(payload['machine'])}\nresults: {args.json}")


if __name__ == "__main__":
    main()
