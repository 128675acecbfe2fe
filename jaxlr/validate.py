"""Checks on user input, run in plain Python before anything is traced.

Every error names the argument and the value it got, so that a bad call fails
at once, with a message that says what to change, and before any work is done.
"""

import functools
import inspect
import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import arrays
from jaxlr.arrays import aligned


def takes_argument(function, position: int, name: str) -> bool:
    """Whether a user's `function` asks for an argument at `position` (from 1)
    that jaxlr may give: a loss its `epsilon` (third), a schedule the run's
    `total` updates (second). It asks when that positional parameter has no
    default or is called `name`, or when it takes ``*args``; a parameter
    there with a default and another name is the user's own, left alone."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or a C function: as few as it is given
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= position:
        wanted = positional[position - 1]
        return wanted.default is inspect.Parameter.empty or wanted.name == name
    return any(p.kind == p.VAR_POSITIONAL for p in parameters)


def takes_keyword(function, name: str) -> bool:
    """Whether a user's `function` has a keyword-only parameter `name`."""
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind == parameter.KEYWORD_ONLY


def _describe(value):
    """A short, safe description of a value for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name, value, *, low, high=None, high_name=None):
    """Returns `value` as an int, refusing bools, floats and out-of-range values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` (={_describe(value)}) must be an integer.")
    value = int(value)
    if value < low or (high is not None and value > high):
        if high is None:
            raise ValueError(f"`{name}` (={value}) must be at least {low}.")
        bound = f"{high_name} (={high})" if high_name else str(high)
        raise ValueError(f"`{name}` (={value}) must be between {low} and {bound}.")
    return value


def check_real(name, value, *, low, high=None, low_open=True):
    """Returns `value` as a float inside (low, high] (or [low, high]), finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` (={_describe(value)}) must be a real number.")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        right = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"`{name}` (={value}) must be a finite number in {left}{low}, {right}.")
    return value


def check_flag(name, value) -> bool:
    """`value` as a bool: True or False (NumPy's too, and 1 or 0). A string
    such as "False" is refused, not read by its truth (it is true)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"`{name}` (={_describe(value)}) must be True or False.")


def check_choice(name, value, choices):
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` (={_describe(value)}) must be one of {options}.")
    return value


def check_key(key, name="key"):
    """Accepts a typed key (`jax.random.key`) or a raw uint32[2] key (`PRNGKey`)."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return key
    if dtype == np.uint32 and shape == (2,):
        if isinstance(key, np.ndarray):  # the same typed key for the same words: a refit does no device work
            return _wrapped_key(key.tobytes())
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        f"`{name}` (={_describe(key)}) must be a single PRNG key, "
        "e.g. jax.random.key(0); JAX has no global seed."
    )


@functools.lru_cache(maxsize=64)
def _wrapped_key(words: bytes):
    return _wrap_key(np.frombuffer(words, np.uint32))


_wrap_key = jax.jit(jax.random.wrap_key_data)  # one dispatch: a third of wrapping eagerly


def check_optimizer(optimizer):
    if optimizer is None:
        return None
    import optax  # only when one is given: importing optax costs a tenth of a second

    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` (={_describe(optimizer)}) must be None (plain SGD) or an "
            "optax.GradientTransformation such as optax.adam(1e-2)."
        )
    return optimizer


def _is_real(dtype):
    """bool, integers and floats, including JAX's narrow floats (bfloat16, float8)."""
    return np.dtype(dtype).kind in "biuf" or jnp.issubdtype(dtype, jnp.floating)


def training_dtype(dtype):
    """The floating dtype training on data of `dtype` runs in: the data's own
    (float32 at least, float64 at most), but float64 only when x64 is on."""
    widest = np.result_type(dtype, np.float32)
    return jax.dtypes.canonicalize_dtype(np.float64 if widest.itemsize > 8 else widest)


def real_array(name, value):
    """`value` as a NumPy or JAX array of real numbers, in its own precision.

    What is not already an array (a list, a pandas frame) is read through
    NumPy; object columns, such as pandas' nullable ``Int64`` ones, are read
    as float64 with their missing values as NaN.
    """
    if not isinstance(value, (jax.Array, np.ndarray)):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` could not be read as an array: {err}") from None
    if value.dtype == object:
        value = _object_as_floats(name, value)
    if not _is_real(value.dtype):
        raise TypeError(
            f"`{name}` has dtype {value.dtype}; jaxlr trains on real numbers "
            "(bool, int and floats of any width; bool and int are cast to float)."
        )
    return value


def _object_as_floats(name, value):
    # pandas' missing value (pd.NA) becomes NaN, which the finite check then
    # names by its row; anything but a number or a missing value is refused.
    def as_float(v):
        if isinstance(v, numbers.Real):
            return float(v)
        if v is None or type(v).__name__ in ("NAType", "NaTType"):
            return math.nan
        raise TypeError(v)

    try:
        return np.asarray(np.frompyfunc(as_float, 1, 1)(value), dtype=np.float64)
    except TypeError as err:
        raise TypeError(
            f"`{name}` has dtype object and holds {_describe(err.args[0])}, not a number; "
            "convert it first, e.g. df.to_numpy(dtype=float)."
        ) from None


def in_training_precision(name, value):
    """`value` cast to the dtype training runs in (see `training_arrays`).

    A float64 value beyond float32's range is refused by name and row,
    rather than turned into inf with a NumPy warning.
    """
    dtype = training_dtype(value.dtype)
    if value.dtype == dtype:
        return value
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    narrowed = np.dtype(dtype).itemsize < value.dtype.itemsize and value.dtype.kind == "f"
    with np.errstate(over="ignore", invalid="ignore"):
        # The copy aligned: on a CPU, JAX then uses it in place.
        cast, total = arrays.cast_and_sum(value, dtype) if narrowed else (aligned(value, dtype), None)
        if narrowed and np.isfinite(total):
            _remember_finite(cast)
        elif narrowed:
            overflowed = np.isinf(cast) & np.isfinite(value)
            if overflowed.any():
                index = np.unravel_index(int(np.argmax(overflowed)), value.shape)
                where = f" in row {index[0]} (counting from 0)" if value.ndim else ""
                raise ValueError(
                    f"`{name}` holds a value{where} beyond the range of {np.dtype(dtype).name} "
                    f"(about ±{float(np.finfo(dtype).max):.2g}). Rescale it, or compute in float64 "
                    "(jax.config.update('jax_enable_x64', True); --x64 on the command line)."
                )
    return cast


def as_array(name, value):
    """`value` as a NumPy or JAX array of real numbers in the training dtype."""
    return in_training_precision(name, real_array(name, value))


def _check_finite(X, y):
    """Raises if X or y holds NaN or inf, naming how many rows and the first."""
    if isinstance(X, jax.Array) and isinstance(y, jax.Array):
        # jax Arrays are immutable: a pair checked once stays finite, and
        # repeated fits on the same data skip the pass over it.
        if _proven_finite(X, y):
            return
        # On the device, in one pass: reading a device array into NumPy could
        # copy it (and JAX would keep that copy alive with the array).
        finite = _all_finite(X, y)
        if not finite.is_fully_addressable:  # global arrays of several processes
            finite = finite.addressable_data(0)
        if bool(finite):
            _remember_finite(X, y)
            return
    elif _finite_sums(X, y):
        # A finite sum proves every entry finite, in one pass without a
        # temporary; only a failing array pays for the row by row search.
        return
    for name, array in (("X", X), ("y", y)):
        if isinstance(array, jax.Array):
            count, first = np.asarray(_nonfinite_summary_jit(array))
        else:
            count, first = _nonfinite_summary(np, array)
        if count:
            raise ValueError(
                f"`{name}` has NaN or inf in {count} row(s); the first is row {first} (counting from 0). "
                "Drop or impute them before training."
            )


def _finite_sums(X, y):
    with np.errstate(over="ignore", invalid="ignore"):  # a sum that overflows only sends us looking
        return all(_proven_finite(a) or np.isfinite(np.sum(a)) for a in (X, y))


# Arrays (or pairs) proven finite while they live, so that `_check_finite`
# need not pass over them again: a jax pair checked once (jax Arrays are
# immutable), a cast `in_training_precision` made and summed to a finite number.
_finite = arrays.KeptWhileAlive()


def _proven_finite(*values) -> bool:
    return _finite.get(*values) is not None


def _remember_finite(*values) -> None:
    _finite.put(*values, value=True)


@jax.jit
def _all_finite(X, y):
    # Sums rather than isfinite(X).all(): a plain reduction needs no
    # temporary the size of X. A finite sum proves every entry finite.
    return jnp.isfinite(X.sum()) & jnp.isfinite(y.sum())


def _nonfinite_summary(xp, array):
    """The number of rows of `array` holding NaN or inf, and the first of them."""
    bad = ~xp.isfinite(array).all(axis=1)
    return xp.stack([bad.sum(), xp.argmax(bad)])


_nonfinite_summary_jit = jax.jit(partial(_nonfinite_summary, jnp))


def training_arrays(X, y):
    """Validates a design matrix and targets; returns X (n, d) and y (n, k).

    A 1-D y is read as one output and becomes (n, 1). The floating dtype is
    float32, or float64 when `jax_enable_x64` is on and the input is float64.
    """
    small = _small_pair(X, y)
    return small if small is not None else _checked_pair(X, y, as_array)


def _small_pair(X, y):
    """A small NumPy pair of floats that needs nothing but the cast, cast;
    None for anything else (which `_checked_pair` checks and names).

    What the general path costs a small table (its aligned cast, the memo of
    its finiteness, a dozen checks) is most of a `partial_fit` call on a few
    rows: one cast and one sum of each prove the same here.
    """
    if not (type(X) is np.ndarray and type(y) is np.ndarray and X.nbytes <= _SMALL_BYTES and X.ndim == 2
            and y.ndim in (1, 2) and X.dtype.kind == "f" and y.dtype.kind == "f"):  # fmt: skip
        return None
    (n, d), dtype = X.shape, training_dtype(X.dtype)
    if not (n and d and y.shape[0] == n and y.size) or training_dtype(y.dtype) != dtype:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the sums: the general path names it
        X, y = X.astype(dtype, order="C"), y.astype(dtype, order="C").reshape(n, -1)
        if not (np.isfinite(np.sum(X)) and np.isfinite(np.sum(y))):
            return None
    return X, y


_SMALL_BYTES = 1 << 20  # as large as `fit` copies anyway, padded, to send to the program


def exact_arrays(X, y):
    """`training_arrays` without the cast: each keeps its own precision.

    Host arrays come back as NumPy arrays of at least float32 (float64 input
    stays float64 whether or not x64 is on), for statistics that must be
    taken before anything is rounded to the training dtype.
    """
    X, y = real_array("X", X), real_array("y", y)
    if isinstance(X, np.ndarray) and isinstance(y, np.ndarray):
        dtype = np.result_type(X.dtype, y.dtype, np.float32)
        X, y = X.astype(dtype, copy=False), y.astype(dtype, copy=False)
    keep_host = lambda name, v: v if isinstance(v, np.ndarray) else in_training_precision(name, v)  # noqa: E731
    return _checked_pair(X, y, keep_host)


def _checked_pair(X, y, convert):
    X = convert("X", X)
    if X.ndim != 2:
        hint = " Use X.reshape(-1, 1) for a single feature." if X.ndim == 1 else ""
        raise ValueError(f"`X` must be 2-D (examples, features), got shape {X.shape}.{hint}")
    n, d = X.shape
    if n == 0:
        raise ValueError(f"`X` (shape {X.shape}) has no examples.")
    if d == 0:
        raise ValueError(f"`X` (shape {X.shape}) has no features.")
    y = convert("y", y)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise ValueError(f"`y` must be 1-D or 2-D (examples, outputs), got shape {y.shape}.")
    if y.shape[0] != n:
        raise ValueError(f"`y` has {y.shape[0]} rows but `X` has {n}; they must match.")
    if y.shape[1] == 0:
        raise ValueError(f"`y` (shape {y.shape}) has no outputs.")
    if y.dtype != X.dtype:
        y = y.astype(X.dtype)
    _check_same_devices(X, y)
    _check_finite(X, y)
    return X, y


def _check_same_devices(X, y):
    """Refuses X and y committed to different devices, before JAX does it less clearly."""
    if not (isinstance(X, jax.Array) and isinstance(y, jax.Array) and X.committed and y.committed):
        return
    x_devices, y_devices = X.sharding.device_set, y.sharding.device_set
    if x_devices != y_devices:
        names = lambda devices: ", ".join(sorted(str(d) for d in devices))  # noqa: E731
        raise ValueError(
            f"`X` is on {names(x_devices)} but `y` is on {names(y_devices)}; put them on the same "
            "device(s), e.g. y = jax.device_put(y, X.sharding)."
        )


def cached(function, *args):
    """``function(*args)`` through its `functools.lru_cache`, or past it where
    an argument cannot key the cache (a user's function holding a list, say):
    such a call is worked out each time."""
    try:
        hash(args)
    except TypeError:
        return function.__wrapped__(*args)
    return function(*args)


def check_params(params, num_inputs, num_outputs, *, name="params"):
    """Checks that `params` fits data with d inputs and k outputs."""
    from jaxlr.model import Params

    if not isinstance(params, Params):
        raise TypeError(f"`{name}` (={_describe(params)}) must be jaxlr.Params(w, b).")
    want_w, want_b = (num_inputs, num_outputs), (num_outputs,)
    if jnp.shape(params.w) != want_w or jnp.shape(params.b) != want_b:
        raise ValueError(
            f"`{name}` has w {jnp.shape(params.w)} and b {jnp.shape(params.b)}, but the data "
            f"needs w {want_w} and b {want_b}."
        )
    return params
