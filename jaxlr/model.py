"""The model of the lesson: parameters, the linear network, and the squared loss."""

import jax
import jax.numpy as jnp

from jaxlr.params import Params  # weights and bias: a NamedTuple, so a pytree


def init_params(key, num_inputs, num_outputs=1, *, dtype=jnp.float32):
    """Draws w and b from a standard normal, as the lesson does.

    Args:
        key: a PRNG key, e.g. ``jax.random.key(0)``.
        num_inputs: d, the number of features.
        num_outputs: k, the number of targets.
        dtype: floating dtype of the parameters.

    Returns:
        Params with w of shape (d, k) and b of shape (k,).

    Example:
        >>> params = init_params(jax.random.key(0), 2)
        >>> params.w.shape, params.b.shape
        ((2, 1), (1,))
    """
    # One draw for w and b together: one random-number kernel to compile.
    z = jax.random.normal(key, (num_inputs * num_outputs + num_outputs,), dtype)
    return Params(w=z[:-num_outputs].reshape(num_inputs, num_outputs), b=z[-num_outputs:])


def net(params, X):
    """The linear network: one weighted sum per output plus its intercept.

    Args:
        params: Params with w of shape (d, k) and b of shape (k,).
        X: array of shape (n, d).

    Returns:
        Predictions of shape (n, k).
    """
    # b[None, :] rather than implicit rank promotion: (n, k) + (k,) is legal
    # numpy, but spelling it out keeps strict rank-promotion mode usable.
    return X @ params.w + params.b[None, :]


def square_loss(yhat, y):
    """Mean of the squared errors over every example and output.

    A mean, not half of one: the gradient is 2/n times the residuals.

    Args:
        yhat: predictions of shape (n, k).
        y: targets of the same shape.

    Returns:
        A scalar.
    """
    if jnp.shape(yhat) != jnp.shape(y):
        # (n, 1) against (n,) would broadcast to (n, n) and train on nonsense.
        raise ValueError(
            f"`yhat` shape {jnp.shape(yhat)} and `y` shape {jnp.shape(y)} differ; "
            "reshape y to (n, k), e.g. y.reshape(-1, 1)."
        )
    return jnp.mean((yhat - y) ** 2)
