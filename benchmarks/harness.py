"""Timing, result rows and tables shared by the benchmark cases."""

import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import time

import jax


@dataclasses.dataclass
class Row:
    """One measured (or skipped) contender of a case."""

    case: str
    name: str
    seconds: float | None = None  # median steady-state time
    compile_seconds: float | None = None  # first call minus the median
    metrics: dict = dataclasses.field(default_factory=dict)
    skipped: str | None = None  # why it was not measured


def measure(fn, *, repeats, budget_s=1.0, max_repeats=200):
    """Runs `fn` once to warm up, then at least `repeats` times; JAX results are waited for.

    Fast contenders repeat until `budget_s` of timing has accumulated (at most
    `max_repeats` times): on a shared machine the median of many short runs
    is steadier than the median of five.

    Returns (median seconds, first-call seconds, the last result).
    """
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    while len(times) < repeats or (sum(times) < budget_s and len(times) < max_repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), first, result


def interleaved_rows(case, contenders, *, repeats, budget_s=2.0, max_rounds=200):
    """Times several contenders in turns (A, B, C, A, B, C, ...).

    On a shared machine the load drifts over seconds; taking turns exposes
    every contender to the same drift, so the ratios between them hold even
    when the absolute times do not.

    Args:
        contenders: a list of (name, fn, metrics) with metrics a function of
            fn's result, or None.
    """
    firsts, times, results = {}, {name: [] for name, _, _ in contenders}, {}
    for name, fn, _ in contenders:
        start = time.perf_counter()
        results[name] = jax.block_until_ready(fn())
        firsts[name] = time.perf_counter() - start
    rounds = 0
    while rounds < repeats or (sum(map(sum, times.values())) < budget_s and rounds < max_rounds):
        for name, fn, _ in contenders:
            start = time.perf_counter()
            results[name] = jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
        rounds += 1
    rows = []
    for name, _, metrics in contenders:
        median = statistics.median(times[name])
        row = Row(case, name, median, max(0.0, firsts[name] - median))
        if metrics is not None:
            row.metrics.update(metrics(results[name]))
        row.metrics["runs"] = len(times[name])
        rows.append(row)
    return rows


def peak_rss_mb():
    """This process's peak resident memory, in MB.

    VmHWM where Linux has it: getrusage's ru_maxrss survives fork and exec, so
    a worker started from a large process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available(module):
    return importlib.util.find_spec(module) is not None


def machine():
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": f"{devices[0].platform}: {devices[0].device_kind}",
    }


def markdown(rows, reference=None):
    """A markdown table; `reference` names the row the ratios are taken against."""
    ref = next((r.seconds for r in rows if r.name == reference and r.seconds), None)
    metric_names = sorted({k for r in rows for k in r.metrics})
    head = ["contender", "median", "compile"] + (["vs " + reference] if ref else []) + metric_names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.skipped:
            cells = [r.name, f"skipped: {r.skipped}", ""] + ([""] if ref else []) + [""] * len(metric_names)
        else:
            cells = [r.name, _duration(r.seconds), _duration(r.compile_seconds)]
            if ref:
                cells.append(f"{r.seconds / ref:.3g}x")
            cells += [_number(r.metrics.get(k)) for k in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _duration(seconds):
    if seconds is None:
        return ""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _number(value):
    if value is None:
        return ""
    if isinstance(value, (int, bool)) or isinstance(value, str):
        return str(value)
    return f"{value:.3g}"


def write_json(path, payload):
    with open(path, "w") as file:
        json.dump(payload, file, indent=2, default=lambda r: dataclasses.asdict(r))


class CompileCounter:
    """Counts XLA compilations while active, from `jax.monitoring`'s compile events.

    Example:
        >>> with CompileCounter() as compiles:
        ...     jaxlr.fit(X, y, key=key)
        >>> compiles.count
    """

    _EVENT = "/jax/core/compile/backend_compile_duration"
    _active: list = []
    _registered = False

    def __enter__(self):
        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._heard)
            CompileCounter._registered = True
        self.count = 0
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileCounter._active.remove(self)
        return False

    @staticmethod
    def _heard(event, duration, **kwargs):
        if event == CompileCounter._EVENT:
            for counter in CompileCounter._active:
                counter.count += 1
